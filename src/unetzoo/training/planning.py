"""The plan of a run: what ``train`` makes before it builds the network, and what ``compare`` measures a model's
width on before any run starts (the same call, so that both see the same patch, batch and spacing). It is made from
the fold's training cases only (nnU-Net fingerprints every case of the dataset, held-out folds included): nothing
computed from a held-out case reaches the plan or the training. Every file is still checked before any work, the
held-out ones too (readable, on its image's grid, label values listed), so that a bad file is one line now and not
after the training."""

from __future__ import annotations

from tqdm import tqdm

from unetzoo.config import Config
from unetzoo.data.plan import Plan, make_plan, verify_case
from unetzoo.device import resolve_device
from unetzoo.methods import method_class


def check_held_out(dataset, names: list[str]) -> None:
    """Check the files of every case not in ``names`` (the held-out ones) as any input is checked, a bad one a
    one-line error naming it; what the check reads is dropped."""
    chosen = set(names)
    held_out = [case for case in dataset.cases if case.name not in chosen]
    for case in tqdm(held_out, desc="checking held-out files", unit="case", disable=len(held_out) < 10, leave=False):
        verify_case(case, dataset)


def plan_for(dataset, config: Config, names: list[str]) -> Plan:
    """The plan of ``config``'s model from the cases ``names`` of ``dataset`` (the fold's training cases; every case
    for fold ``all``), its patch capped unless the method trains on whole volumes, for the run's device and
    resolution."""
    chosen = set(names)
    check_held_out(dataset, names)
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
