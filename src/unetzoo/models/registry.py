"""Model registry: ``register`` a builder under a name, ``create_model`` by name, ``list_models``.

As in timm and segmentation_models_pytorch, every model is reachable through one factory, and an unknown
name is an error that lists the valid ones. Each entry also names the paper it comes from, the *method* that
trains and runs it (``dense``, ``implicit``, ...; see ``unetzoo.methods``), the method arguments this model
needs (``method_defaults``), and ``plan_defaults(plan, config, train_cases) -> dict``: the model arguments that
depend on the data (depth from the patch, the number of training subjects ...), which the pipeline fills unless
the user set them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from unetzoo.errors import UnetzooError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    paper: str
    method: str = "dense"
    spatial_dims: tuple[int, ...] = (2, 3)
    plan_defaults: Callable[..., dict] | None = None
    method_defaults: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register(
    name: str,
    *,
    description: str,
    paper: str,
    method: str = "dense",
    spatial_dims: tuple[int, ...] = (2, 3),
    plan_defaults: Callable[..., dict] | None = None,
    method_defaults: dict | None = None,
):
    """Decorator: register ``builder(spatial_dims, in_channels, out_channels, **kwargs) -> nn.Module`` (a class or a
    function) with its method, its data-dependent defaults ``plan_defaults(plan, config, train_cases)`` and the
    method arguments it needs."""

    def decorator(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(
            name, builder, description, paper, method, tuple(spatial_dims), plan_defaults, dict(method_defaults or {})
        )
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelEntry:
    """The registry entry of ``name``; an unknown name raises an error listing the valid ones."""
    if name not in _REGISTRY:
        raise UnetzooError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    return _REGISTRY[name]


WIDTHS = ("base_features", "max_features")  # channels of the first and of the widest stage, wherever a model takes them


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_model_args(name: str, model_args: dict) -> None:
    """The model exists and its widths (:data:`WIDTHS`) are positive whole numbers: one line, checked by
    :func:`create_model` and, before any work, by the commands that build models later (train, compare, benchmark)."""
    model_info(name)
    for argument in WIDTHS:
        if argument in model_args and not _positive_int(model_args[argument]):
            raise UnetzooError(
                f"model_args.{argument} ({name}): expected an integer >= 1 (a number of channels), "
                f"got {model_args[argument]!r}"
            )


def create_model(name: str, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, **kwargs) -> nn.Module:
    """Build model ``name`` for ``spatial_dims``-D inputs with the given channels; ``kwargs`` override its defaults.

    Example::

        net = create_model("unet", spatial_dims=2, in_channels=1, out_channels=3)
    """
    entry = model_info(name)
    for argument, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not _positive_int(value):
            raise UnetzooError(f"model {name!r}: {argument} must be an integer >= 1, got {value!r}")
    if not _positive_int(spatial_dims) or spatial_dims not in entry.spatial_dims:
        raise UnetzooError(f"model {name!r} supports spatial_dims {entry.spatial_dims}, not {spatial_dims!r}")
    check_model_args(name, kwargs)
    try:
        return entry.builder(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
    except (ValueError, TypeError) as exc:  # a model argument the builder rejects (--set model_args...): one line
        raise UnetzooError(f"model {name!r} with model_args {kwargs}: {exc}") from exc
