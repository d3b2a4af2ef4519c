"""Training and inference procedures (one per model family) and the factory that pairs model and method."""

from __future__ import annotations

import copy

from unetzoo.config import Config
from unetzoo.data.plan import Plan
from unetzoo.methods.base import Method, inference_context
from unetzoo.methods.dense import DenseMethod, SliceMethod
from unetzoo.methods.grid import Grid
from unetzoo.methods.implicit import ImplicitMethod
from unetzoo.methods.nisf import NISFMethod
from unetzoo.methods.projection import ProjectionMethod
from unetzoo.models import create_model, model_info

METHODS: dict[str, type[Method]] = {
    "dense": DenseMethod,
    "slices": SliceMethod,
    "implicit": ImplicitMethod,
    "projection": ProjectionMethod,
    "nisf": NISFMethod,
}

__all__ = ["METHODS", "Grid", "Method", "build_method", "inference_context", "method_class"]


def method_class(model_name: str) -> type[Method]:
    """The Method subclass that trains and runs registered model ``model_name``."""
    return METHODS[model_info(model_name).method]


def build_method(config: Config, plan: Plan, train_cases: int | None = None) -> tuple[Method, Config]:
    """Create the configured model for the plan's data, wrap it in its method; returns ``(method, resolved)``.

    ``resolved`` is a copy of ``config`` with every default the data decides filled in (the model's
    ``plan_defaults``: topology from the plan, number of training subjects ...; the plan's batch size when
    ``train.batch_size`` is None) and the method arguments the model's
    registration asks for, so that the run folder records exactly what was built. ``train_cases`` is the number of
    training cases (for models with per-subject state, and ``method.train_cases`` for methods that count passes over
    the training set); a run folder's resolved config already holds it.
    """
    entry = model_info(config.model)
    resolved = copy.deepcopy(config)
    defaults = entry.plan_defaults(plan, config, train_cases) if entry.plan_defaults else {}
    resolved.model_args = {**defaults, **config.model_args}
    resolved.method_args = {**entry.method_defaults, **config.method_args}
    if resolved.train.batch_size is None:
        resolved.train.batch_size = plan.batch_size
    model = create_model(
        config.model,
        spatial_dims=plan.spatial_dims,
        in_channels=plan.in_channels,
        out_channels=plan.num_classes,
        **resolved.model_args,
    )
    method = METHODS[entry.method](model, plan, resolved, **resolved.method_args)
    method.train_cases = train_cases
    return method, resolved
