"""Validation at a bounded cost: per-epoch pseudo Dice on a fixed number of validation patches, the whole held-out
fold once after training (nnU-Net: "a fixed number of validation batches" per epoch, then the full validation)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_config
from unetzoo.data.datasets import load_dataset
from unetzoo.data.plan import make_plan
from unetzoo.data.val_patches import spread, validation_patches
from unetzoo.methods import Method, build_method


def _item(case_index: int, frame: int = 0, shape=(10, 12, 8), foreground=True) -> dict:
    label = torch.zeros(1, *shape, dtype=torch.uint8)
    if foreground:
        label[0, 7:9, 8:11, 5:7] = 2
    return {
        "image": torch.rand(1, *shape),
        "label": label,
        "name": f"case{case_index}",
        "case_index": case_index,
        "frame_index": frame,
    }


def test_spread_takes_every_subject_before_a_second_frame():
    items = [_item(0, 0), _item(0, 1), _item(0, 2), _item(1, 0), _item(1, 1), _item(2, 0)]
    order = [(i["case_index"], i["frame_index"]) for i in spread(items, 10)]
    assert order == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (0, 2)]
    assert len(spread(items, 4)) == 4


def test_patches_are_fixed_bounded_and_of_the_patch_size():
    items = [_item(k) for k in range(5)]
    patches = validation_patches(items, [4, 6, 8], count=3, seed=0)
    assert [p["name"] for p in patches] == ["case0", "case1", "case2"]
    assert all(p["image"].shape == (1, 4, 6, 8) and p["label"].shape == (1, 4, 6, 8) for p in patches)
    again = validation_patches(items, [4, 6, 8], count=3, seed=0)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(patches, again))  # the same voxels every epoch
    # positive 1: every patch is centred on foreground, so it holds some
    assert all((p["label"] > 0).any() for p in validation_patches(items, [4, 4, 4], count=5, seed=1, positive=1.0))
    # a patch larger than the image is the whole image, taken once however many are asked for
    whole = validation_patches(items[:1], [16, 16, 16], count=4, seed=0)
    assert len(whole) == 1 and whole[0]["image"].shape == (1, 10, 12, 8)


@pytest.mark.slow
def test_per_epoch_validation_touches_at_most_n_cases_and_the_end_covers_the_fold(organs, tmp_path, monkeypatch):
    """2 epochs with train.val_patches=1 and train.select=best: the method's per-epoch prediction runs once per epoch
    on one patch of one inner validation case, then the held-out fold is predicted whole (every case in
    validation/summary.json)."""
    from unetzoo.training.run import train

    seen = []
    original = Method.validation_predict

    def counting(self, image):
        seen.append(tuple(image.shape))
        return original(self, image)

    monkeypatch.setattr(Method, "validation_predict", counting)
    config = tiny_config(epochs=2)
    config.train.iters_per_epoch, config.train.val_patches, config.train.select = 1, 1, "best"
    run = train(organs, tmp_path / "run", config)
    assert seen == [(1, 1, 16, 16, 16)] * 2
    fold = json.loads((run / "splits.json").read_text())[0]["val"]
    assert sorted(c["case"] for c in json.loads((run / "validation" / "summary.json").read_text())["cases"]) == fold


def test_fold_all_validates_a_bounded_number_of_patches(organs):
    """--fold all: the per-epoch validation items are every training case, but only val_patches patches are scored."""
    from unetzoo.training.module import SegmentationModule

    dataset = load_dataset(organs)
    plan = make_plan(dataset, dataset.cases, [16, 16, 16])
    method, config = build_method(tiny_config(), plan)
    config.train.val_patches = 4
    names = [c.name for c in dataset.cases]
    module = SegmentationModule(method, config, plan, dataset.frame_items(names), dataset.frame_items(names))
    patches = list(module.val_dataloader().dataset)
    assert len(patches) == 4 and len({p["name"] for p in patches}) == 4
    config.train.val_patches = 0  # whole cases, as before
    assert len(list(module.val_dataloader().dataset)) == len(names)


def test_whole_volume_methods_validate_per_epoch_on_whole_volumes(organs):
    """A projection model's output on a crop is not its output on the volume (the rotation centre and the detector
    follow the extent): its per-epoch validation scores whole cases, whatever train.val_patches says."""
    from unetzoo.training.module import SegmentationModule

    dataset = load_dataset(organs)
    plan = make_plan(dataset, dataset.cases, [16, 16, 16], cap_patch=False)
    method, config = build_method(tiny_config(model="projection-2.5d-unet"), plan)
    config.train.val_patches = 4
    names = [c.name for c in dataset.cases]
    module = SegmentationModule(method, config, plan, dataset.frame_items(names[:2]), dataset.frame_items(names[2:]))
    cases = list(module.val_dataloader().dataset)
    assert [tuple(c["image"].shape) for c in cases] == [
        tuple(module._cached(dataset.frame_items([n]))[0]["image"].shape) for n in names[2:]
    ]


def test_nisf_per_epoch_validation_fits_few_steps(monkeypatch):
    """nisf's per-epoch validation fits ``val_fit_steps`` latent steps of ``val_points`` voxels, not the paper's 672 steps
    (``fit_steps``) of ``points``."""
    from unetzoo.config import Config
    from unetzoo.data.plan import Plan
    from unetzoo.methods.nisf import NISFMethod

    config = Config(model="nisf", model_args={"width": 8, "depth": 2, "latent_size": 8})
    method, _ = build_method(config, Plan.synthetic([6, 6, 4]))
    steps = []
    fit = NISFMethod.fit_latent
    monkeypatch.setattr(
        NISFMethod,
        "fit_latent",
        lambda self, frames, n, *a, **k: (steps.append((n, k.get("points"))), fit(self, frames, 0))[1],
    )
    method.validation_predict(torch.rand(1, 1, 6, 6, 4))
    method.predict(torch.rand(1, 1, 6, 6, 4))
    assert steps == [(10, 2000), (672, None)]
