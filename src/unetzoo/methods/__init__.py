"""Training and inference procedures (one per model family) and the factory that pairs model and method."""

from __future__ import annotations

from unetzoo.config import Config
from unetzoo.methods.base import Method
from unetzoo.methods.dense import DenseMethod, SliceMethod
from unetzoo.methods.implicit import ImplicitMethod
from unetzoo.models import create_model, model_info
from unetzoo.models.blocks import stages_for_patch

METHODS: dict[str, type[Method]] = {"dense": DenseMethod, "slices": SliceMethod, "implicit": ImplicitMethod}


def build_method(config: Config, plan: dict) -> Method:
    """Create the configured model for the plan's data and wrap it in its method.

    Patch-dependent defaults are filled here and written back into ``config.model_args`` so that the run
    folder records them: a model that takes ``n_stages`` gets nnU-Net's depth rule for the patch.
    """
    entry = model_info(config.model)
    model_args = dict(config.model_args)
    if entry.accepts("n_stages") and "n_stages" not in model_args:
        model_args["n_stages"] = stages_for_patch(plan["patch_size"])
    if entry.accepts("deep_supervision") and "deep_supervision" not in model_args:
        model_args["deep_supervision"] = config.train.deep_supervision
    config.model_args = model_args
    model = create_model(
        config.model,
        spatial_dims=plan["spatial_dims"],
        in_channels=len(plan["channel_names"]),
        out_channels=plan["num_classes"],
        **model_args,
    )
    method_cls = METHODS[entry.method]
    return method_cls(model, plan["num_classes"], plan["patch_size"], config.inference, **config.method_args)
