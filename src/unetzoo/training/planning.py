"""The plan of a run: what ``train`` makes before it builds the network, and what ``compare`` measures a model's
width on before any run starts (the same call, so that both see the same patch, batch and spacing). It is made from
the fold's training cases only: the held-out cases, their labels included, stay unread until the final evaluation
(nnU-Net fingerprints every training case of the dataset, held-out folds included)."""

from __future__ import annotations

from unetzoo.config import Config
from unetzoo.data.plan import Plan, make_plan
from unetzoo.device import resolve_device
from unetzoo.methods import method_class


def plan_for(dataset, config: Config, names: list[str]) -> Plan:
    """The plan of ``config``'s model from the cases ``names`` of ``dataset`` (the fold's training cases; every case
    for fold ``all``), its patch capped unless the method trains on whole volumes, for the run's device and
    resolution."""
    chosen = set(names)
    return make_plan(
        dataset,
        [case for case in dataset.cases if case.name in chosen],
        config.data.patch_size,
        config.data.target_spacing,
        config.seed,
        cap_patch=not method_class(config.model).whole_volumes,
        device=resolve_device(config.train.device).type,
        resolution=config.data.resolution,
    )
