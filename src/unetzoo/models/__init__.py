"""Networks. Importing this package registers every model (one module per architecture; ``unetzoo models`` lists
them)."""

from unetzoo.models import (  # noqa: F401  (each module registers its models)
    attention_unet,  # attention-unet
    implicit_unet,  # implicit-unet
    nisf,  # nisf
    projection_unet,  # projection-2.5d-unet, random-2.5d-unet
    resenc_unet,  # resenc-unet
    sd_unet,  # sd-unet, sdn-unetpp
    segresnet,  # segresnet
    tv_softmax,  # regularized-unet
    unet,  # unet, unet2d-slices
    unetpp,  # unetpp
)
from unetzoo.models.registry import create_model, list_models, model_info, register

__all__ = ["create_model", "list_models", "model_info", "register"]
