"""The plan of a run: what ``train`` makes before it builds the network, and what ``compare`` measures a model's
width on before any run starts (the same call, so that both see the same patch, batch and spacing)."""

from __future__ import annotations

from unetzoo.config import Config
from unetzoo.data.plan import Plan, make_plan
from unetzoo.device import resolve_device
from unetzoo.methods import method_class


def plan_for(dataset, config: Config) -> Plan:
    """The plan of ``config``'s model on ``dataset`` (every case; its patch capped unless the method trains on whole
    volumes), for the run's device and resolution."""
    return make_plan(
        dataset,
        dataset.cases,
        config.data.patch_size,
        config.data.target_spacing,
        config.seed,
        cap_patch=not method_class(config.model).whole_volumes,
        device=resolve_device(config.train.device).type,
        resolution=config.data.resolution,
    )
