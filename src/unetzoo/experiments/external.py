"""Held-out predictions made by any other tool, ranked beside the trained models (``compare --external NAME=DIR``).

``DIR`` holds one label map per held-out case of the compared folds, named as the case (``CASE.nii.gz``, or the
dataset's file ending) and in its reference's geometry, as the tool wrote them (e.g. nnU-Net's
``nnUNetv2_predict`` of each fold's validation cases). Each fold's cases are evaluated against the dataset's labels
into ``OUT/external/NAME/foldK/summary.json``, with the evaluation every run's held-out fold has, so the leaderboard
ranks them with the same statistics (one "seed": the tool ran once). Their costs are unknown to unetzoo.
"""

from __future__ import annotations

from pathlib import Path

from unetzoo.errors import UnetzooError, file_error
from unetzoo.experiments.experiment import SPLITS_FILE, Experiment


def external_folder(out, name: str, fold: int) -> Path:
    """Where the tool's predictions of ``fold`` are evaluated."""
    return Path(out) / "external" / name / f"fold{fold}"


def parse_external(values: list[str], models: list[str]) -> dict[str, str]:
    """``NAME=DIR`` options as {name: absolute folder}; a name that is a compared model's, given twice, or a folder that
    does not exist, is a one-line error."""
    external = {}
    for value in values:
        name, _, folder = value.partition("=")
        if not name or not folder:
            raise UnetzooError(f"--external expects NAME=DIR, got {value!r}")
        if name in models or name in external:
            raise UnetzooError(f"--external {name}: the name of a compared model or of another --external")
        if not Path(folder).is_dir():
            raise file_error(folder, "--external: folder not found")
        external[name] = str(Path(folder).resolve())
    return external


def score_external(out, experiment: Experiment) -> None:
    """Evaluate every external tool's predictions of every compared fold not evaluated yet."""
    from unetzoo.data.datasets import load_dataset
    from unetzoo.data.splits import fold_split, load_splits
    from unetzoo.evaluation import evaluate_folder, link_references

    if not experiment.external:
        return
    dataset = load_dataset(experiment.data)
    names = [c.name for c in dataset.cases]
    group_by = experiment.config["data"].get("group_by", "")
    splits_file = experiment.config["data"].get("splits_file") or str(Path(out) / SPLITS_FILE)
    splits = load_splits(splits_file, names, group_by)
    labels = sorted(k for k in dataset.class_labels if k)
    for name, folder in experiment.external.items():
        for fold in experiment.folds:
            target = external_folder(out, name, fold)
            if (target / "summary.json").is_file():
                continue
            held_out = {case: dataset.case(case).label for case in fold_split(splits, fold)["val"]}
            references = link_references(held_out, target / "labels")
            evaluate_folder(folder, references, target, label_ids=labels, ignore_label=dataset.ignore_label)
