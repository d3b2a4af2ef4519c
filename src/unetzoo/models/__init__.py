"""Networks. Importing this package registers every model (one module per architecture)."""

from unetzoo.models import unet  # noqa: F401  (registers unet, unet2d-slices)
from unetzoo.models import unetpp, sd_unet  # noqa: F401
from unetzoo.models import implicit_unet  # noqa: F401  (registers implicit-unet)
from unetzoo.models import attention_unet, tv_softmax  # noqa: F401  (registers attention-unet, regularized-unet)
from unetzoo.models import projection_unet  # noqa: F401  (registers projection-2.5d-unet, random-2.5d-unet)
from unetzoo.models import nisf  # noqa: F401  (registers nisf)
from unetzoo.models.registry import create_model, list_models, model_info, register

__all__ = ["create_model", "list_models", "model_info", "register"]
