"""Preprocessed cases cached on disk per dataset and plan: the second run reads them instead of the files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from unetzoo.data.cache import plan_folder, preprocessed_cases
from unetzoo.data.datasets import load_dataset
from unetzoo.data.phantoms import write_organs_phantom
from unetzoo.data.plan import make_plan
from unetzoo.data.transforms import preprocessing


def test_second_read_comes_from_the_cache_and_changed_files_are_redone(tmp_path, monkeypatch):
    dataset = load_dataset(write_organs_phantom(tmp_path / "data", cases=3, seed=3, shape=(16, 20, 12)))
    cases = dataset.cases
    plan = make_plan(dataset, cases)
    items = [{**c.as_dict(), "case_index": i} for i, c in enumerate(cases)]
    first = preprocessed_cases(items, plan, tmp_path / "cache")
    folder = plan_folder(plan, tmp_path / "cache")
    assert len(list(folder.glob("*.pt"))) == 3
    direct = preprocessing(plan)(items[1])
    assert torch.equal(first[1]["image"].as_tensor(), direct["image"].as_tensor())
    assert torch.equal(first[1]["image"].affine, direct["image"].affine)

    reads = []
    import unetzoo.data.transforms as transforms

    original = transforms.read_image
    monkeypatch.setattr(transforms, "read_image", lambda *a, **k: reads.append(a) or original(*a, **k))
    second = preprocessed_cases(items, plan, tmp_path / "cache", workers=2)
    assert reads == []  # nothing was read or resampled again
    assert [c["case_index"] for c in second] == [0, 1, 2] and [c["name"] for c in second] == [c.name for c in cases]
    for a, b in zip(first, second):
        assert torch.equal(a["image"].as_tensor(), b["image"].as_tensor()) and torch.equal(
            a["label"].as_tensor(), b["label"].as_tensor()
        )

    path = cases[2].images[0]  # a file only touched (same content) is still read from the cache
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    preprocessed_cases(items, plan, tmp_path / "cache")
    assert reads == [] and len(list(folder.glob("*.pt"))) == 3
    image = nib.load(path)  # a changed file is preprocessed again
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj) + 1, image.affine), path)
    preprocessed_cases(items, plan, tmp_path / "cache")
    assert len(reads) == 1 and len(list(folder.glob("*.pt"))) == 4
    other_plan = make_plan(dataset, cases, target_spacing=[2.0, 2.0, 2.0])
    assert plan_folder(other_plan, tmp_path / "cache") != folder


@pytest.mark.slow
def test_training_fills_the_cache_of_its_plan(trained_run, organs):
    """Every training case of the fold is cached (the held-out ones are predicted from their files, after training;
    other runs of the session may have cached them)."""
    from unetzoo.data.cache import cache_root, files_hash
    from unetzoo.data.datasets import file_digest
    from unetzoo.data.plan import Plan

    folder = plan_folder(Plan.load(trained_run / "plan.json"), cache_root())
    items = load_dataset(organs).frame_items(json.loads((trained_run / "splits.json").read_text())[0]["train"])
    digests = {str(Path(p).resolve()): file_digest(Path(p)) for item in items for p in [*item["image"], item["label"]]}
    assert {f"{files_hash(item, digests)}.pt" for item in items} <= {p.name for p in folder.glob("*.pt")}


def test_each_frame_of_a_3d_t_case_has_its_own_entry(tmp_path):
    from unetzoo.data.phantoms import write_cardiac_phantom

    dataset = load_dataset(write_cardiac_phantom(tmp_path / "data", cases=1, frames=3, seed=0, shape=(16, 16, 6)))
    plan = make_plan(dataset, dataset.cases)
    items = dataset.frame_items([dataset.cases[0].name])
    cached = preprocessed_cases(items, plan, tmp_path / "cache")
    assert len(list(plan_folder(plan, tmp_path / "cache").glob("*.pt"))) == 3
    again = preprocessed_cases(items, plan, tmp_path / "cache")
    for item, a, b in zip(items, cached, again):
        direct = preprocessing(plan)(item)
        assert torch.equal(a["label"].as_tensor(), direct["label"].as_tensor()) and torch.equal(
            b["label"].as_tensor(), direct["label"].as_tensor()
        )
    assert not torch.equal(cached[0]["label"].as_tensor(), cached[1]["label"].as_tensor())  # the heart beats
