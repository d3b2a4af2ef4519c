"""Cross-validation splits that never separate the cases of one subject.

A split is nnU-Net's ``splits_final.json`` format: a list of folds ``{"train": [case, ...], "val": [case, ...]}``.
The subject of a case is the match of ``group_by`` (a regular expression searched in the case name, e.g.
``patient\\d+`` puts ACDC's ``patient001_frame01`` and ``patient001_frame12`` together); a case it does not match
is its own subject, and without ``group_by`` every case is. A 3D+t case (one 4D file) is always one case, so all
its frames stay in one fold whatever the grouping. Subjects, not cases, are shuffled and dealt to the folds.

:func:`splits_for` is what ``train`` and ``compare`` call: the splits of ``data.splits_file`` if set (nnU-Net's file
accepted as is), else :func:`make_splits` grouped by ``data.group_by``; :func:`fold_split` then picks one fold.
:func:`inner_split` splits a fold's training cases once more, by subjects too, for a per-epoch validation that never
looks at the held-out fold.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from unetzoo.errors import UnetzooError, file_error
from unetzoo.io import read_json


def subjects(case_names: list[str], group_by: str = "", require_match: bool = True) -> dict[str, list[str]]:
    """Subject -> its cases (sorted); the subject is ``group_by``'s match in the case name, else the name itself.
    A pattern that is not a regular expression, or (``require_match``) that matches no case, is a one-line error."""
    if not group_by:
        return {name: [name] for name in sorted(case_names)}
    try:
        pattern = re.compile(group_by)
    except re.error as exc:
        raise UnetzooError(f"--group-by '{group_by}': not a regular expression ({exc})") from None
    groups: dict[str, list[str]] = {}
    matched = False
    for name in sorted(case_names):
        match = pattern.search(name)
        matched |= match is not None
        groups.setdefault(match.group(0) if match else name, []).append(name)
    if require_match and not matched:
        raise UnetzooError(
            f"--group-by '{group_by}' matches no case name (e.g. {sorted(case_names)[0]!r}); the subject is the part of the name it matches"
        )
    return groups


def make_splits(case_names: list[str], folds: int = 5, seed: int = 0, group_by: str = "") -> list[dict[str, list[str]]]:
    """k-fold cross-validation splits over subjects (:func:`subjects`), shuffled from ``seed``: the subjects, largest
    first (ties in shuffled order), each go to the fold with the fewest cases so far, so folds hold about equal
    numbers of cases; with one case per subject this is a round robin over the shuffled cases."""
    if folds < 2:
        raise UnetzooError(f"cross-validation needs at least 2 folds, got {folds}")
    groups = subjects(case_names, group_by)
    if len(groups) < folds:
        what = f"{len(groups)} subject(s) (--group-by '{group_by}')" if group_by else f"{len(groups)} case(s)"
        advice = (
            f"use --folds {len(groups)} or fewer (compare: --set data.folds={len(groups)}; each fold needs a "
            "validation case)"
            if len(groups) >= 2  # one subject cannot be both a fold's training and its validation
            else "no fold count works (each fold needs a training and a validation case): "
            + ("give another --group-by, " if group_by else "")
            + "add cases, or train on every case with --fold all"
        )
        raise UnetzooError(f"the dataset has {what}, fewer than the {folds} folds requested; {advice}")
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda subject: -len(groups[subject]))  # stable: equal sizes keep the shuffled order
    val: list[list[str]] = [[] for _ in range(folds)]
    for subject in order:
        smallest = min(range(folds), key=lambda k: len(val[k]))
        val[smallest] += groups[subject]
    return [{"train": sorted(set(case_names) - set(v)), "val": sorted(v)} for v in val]


def load_splits(path: str | Path, case_names: list[str], group_by: str = "") -> list[dict[str, list[str]]]:
    """Read a splits file (nnU-Net's ``splits_final.json``: a list of ``{"train": [...], "val": [...]}``) and check it
    against the dataset: every named case exists, once per list, no case is on both sides of a fold and, with
    ``group_by``, no subject is either; every fold trains on a case and validates on one. One-line errors name the
    file."""
    path = Path(path)
    if path.is_dir():
        raise file_error(path, "is a folder: give a splits file (nnU-Net's splits_final.json)")
    splits = read_json(path, missing="splits file not found")
    shape = 'a list of {"train": [case, ...], "val": [case, ...]} folds (nnU-Net\'s splits_final.json)'
    if not isinstance(splits, list) or not splits:
        raise file_error(path, f"expected {shape}")
    known = set(case_names)
    subject = {name: s for s, names in subjects(case_names, group_by).items() for name in names}
    for k, fold in enumerate(splits):
        if not isinstance(fold, dict) or not all(
            isinstance(fold.get(key), list) and all(isinstance(n, str) for n in fold[key]) for key in ("train", "val")
        ):
            raise file_error(path, f"fold {k}: expected {shape}")
        unknown = sorted(set(fold["train"] + fold["val"]) - known)
        if unknown:
            raise file_error(path, f"fold {k} names {len(unknown)} case(s) not in the dataset, e.g. {unknown[0]!r}")
        for key in ("train", "val"):
            twice = sorted({n for n in fold[key] if fold[key].count(n) > 1})
            if twice:
                raise file_error(path, f"fold {k} lists case {twice[0]!r} twice in {key}")
        both = sorted({subject[n] for n in fold["train"]} & {subject[n] for n in fold["val"]})
        if both:
            what = f"subject {both[0]!r} (--group-by '{group_by}')" if group_by else f"case {both[0]!r}"
            raise file_error(path, f"fold {k} has {what} in both train and val")
        if not fold["val"]:
            raise file_error(path, f"fold {k} has no validation case")
        if not fold["train"]:
            raise file_error(path, f"fold {k} has no training case")
    return [{"train": sorted(f["train"]), "val": sorted(f["val"])} for f in splits]


def splits_for(case_names: list[str], data_config, seed: int) -> list[dict[str, list[str]]]:
    """The splits a run uses: ``data_config.splits_file`` if set (checked by :func:`load_splits`), else
    :func:`make_splits` with ``data_config.folds`` and ``data_config.group_by``."""
    if data_config.splits_file:
        return load_splits(data_config.splits_file, case_names, data_config.group_by)
    return make_splits(case_names, data_config.folds, seed, data_config.group_by)


def fold_split(splits: list[dict[str, list[str]]], fold, source: str = "splits.json") -> dict[str, list[str]]:
    """Fold ``fold`` of ``splits``; a fold that does not exist is a one-line error naming ``source``."""
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < len(splits):
        raise UnetzooError(f"fold {fold!r} does not exist: {source} has folds 0..{len(splits) - 1} (or use fold all)")
    return splits[fold]


def inner_split(train_names: list[str], group_by: str = "", seed: int = 0, fraction: float = 0.2) -> tuple[list, list]:
    """A fold's training cases split into those that train and an inner validation set: about ``fraction`` of the
    subjects (:func:`subjects`; at least one, and one left to train), drawn whole with ``seed``, so that a resumed run
    draws the same. Returns (training cases, inner validation cases), each sorted."""
    groups = subjects(train_names, group_by, require_match=False)  # the pattern matched the dataset's cases
    if len(groups) < 2:
        raise UnetzooError(
            f"the fold has {len(groups)} training subject(s): too few to keep an inner validation subject out of "
            "training (needed by train.select=best, train.early_stop and the plateau scheduler); train without them "
            "or with fewer folds"
        )
    count = min(max(1, round(fraction * len(groups))), len(groups) - 1)
    inner = sorted(name for subject in random.Random(seed).sample(sorted(groups), count) for name in groups[subject])
    return sorted(set(train_names) - set(inner)), inner
