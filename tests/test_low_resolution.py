"""The low-resolution configuration: a plan whose patch sees too little of an image proposes a coarser grid, no
coarser than keeps the smallest structure 8 voxels across; training and prediction run on it, and predictions come
back on the input's grid."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from test_bad_input import untrained_run
from unetzoo.data.datasets import load_dataset
from unetzoo.data.phantoms import write_ellipses_phantom, write_nuclei_phantom, write_organs_phantom
from unetzoo.data.plan import (
    LOW_FACTOR_STEP,
    MIN_STRUCTURE_PIXELS,
    STEP_BUDGET,
    low_resolution_factor,
    make_plan,
    plan_patch,
    structure_thickness,
)
from unetzoo.data.transforms import Downsampled, preprocessing
from unetzoo.errors import UnetzooError
from unetzoo.io import read_array, write_array
from unetzoo.methods.grid import Grid, coarse_grid

BUDGET_2D = STEP_BUDGET["cpu"][2]


@pytest.fixture(scope="module")
def ellipses(tmp_path_factory):
    return write_ellipses_phantom(tmp_path_factory.mktemp("data") / "ellipses", cases=4, seed=0)


def test_thickness_is_the_width_of_a_bar_and_scales_with_spacing():
    """A structure's thickness is twice its largest inscribed radius: a straight bar of width w is w thick (its
    middle row lies w/2 from the rows outside it); with 2-mm rows, 2w mm. The ignore label is no structure."""
    label = np.zeros((40, 60), np.uint8)
    label[10:16, 5:55] = 1  # a bar 6 rows wide
    label[25:35, 5:55] = 2  # a bar 10 rows wide
    label[37:40, 0:60] = 3  # the ignore label
    assert sorted(structure_thickness(label, None, ignore_label=3)) == [6.0, 10.0]
    assert sorted(structure_thickness(label, (2.0, 1.0), ignore_label=3)) == [12.0, 20.0]


def test_factor_is_capped_by_the_smallest_structure():
    """The coarse grid keeps the smallest structure MIN_STRUCTURE_PIXELS voxels across: a structure 12 pixels thick
    allows 12 / 8 = 1.5x; 10 pixels only 1.25x, under the smallest factor worth a second configuration: none, and
    the reason names the structure."""
    assert MIN_STRUCTURE_PIXELS == 8
    assert low_resolution_factor((540, 800), None, BUDGET_2D, lambda: 12.0) == (1.5, "")
    factor, reason = low_resolution_factor((540, 800), None, BUDGET_2D, lambda: 10.0)
    assert factor is None and "10 voxels across" in reason and "1.25x" in reason


def test_factor_is_the_smallest_at_which_the_patch_covers_the_median_image():
    """Without a structure limit, the factor is the first of the 1.03^k search whose planned patch covers the
    whole median image: 540x800 on the CPU 2D budget (320x384 patch, 28 % of the image) needs about 2.1x."""
    factor, _ = low_resolution_factor((540, 800), None, BUDGET_2D, lambda: 1000.0)
    median = np.array([540.0, 800.0])
    covers = lambda f: all(p >= s for p, s in zip(plan_patch(median / f, None, BUDGET_2D), median / f))  # noqa: E731
    assert covers(factor) and not covers(factor / LOW_FACTOR_STEP)
    assert 2.0 < factor < 2.2


def test_an_explicit_patch_decides_the_coverage_and_no_label_no_proposal():
    """A patch given by hand is the patch on either grid: one that holds the image asks for no coarser grid, a
    small one is covered once the image shrinks to it (640x640 on a 256x256 patch: 2.5x). A dataset without a
    labelled voxel has no structure to keep: none, and the reason says so."""
    assert low_resolution_factor((540, 800), None, BUDGET_2D, lambda: 100.0, [544, 800])[0] is None
    factor, _ = low_resolution_factor((640, 640), None, BUDGET_2D, lambda: 100.0, [256, 256])
    assert 640 / factor <= 256 < 640 * LOW_FACTOR_STEP / factor
    factor, reason = low_resolution_factor((540, 800), None, BUDGET_2D, lambda: None)
    assert factor is None and reason.endswith("but no case has a labelled voxel")


def test_no_proposal_when_the_patch_holds_half_the_image():
    """A median image the patch holds half of or more is planned at full resolution, the structures not measured."""

    def never():
        raise AssertionError("structures measured for an image the patch covers")

    factor, reason = low_resolution_factor((256, 256), None, BUDGET_2D, never)
    assert factor is None and reason == "the patch holds 100% of the median image"


@pytest.mark.slow
def test_plan_picks_low_resolution_for_the_large_2d_phantom(ellipses):
    """The ellipses phantom (540x800): the full-resolution patch holds 28 % of an image, so the plan trains on a
    grid about 2x coarser whose patch covers the median image; ``full`` keeps the data's pixels and records the
    proposal; the plan says which it uses."""
    dataset = load_dataset(ellipses)
    plan = make_plan(dataset, dataset.cases)
    assert plan.resolution == "low" and 2.0 < plan.low_factor < 2.2 and plan.downsample == plan.low_factor
    assert plan.median_shape == pytest.approx([540 / plan.low_factor, 800 / plan.low_factor])
    assert all(p >= s for p, s in zip(plan.patch_size, plan.median_shape))
    assert "low resolution" in plan.describe()
    full = make_plan(dataset, dataset.cases, resolution="full")
    assert full.resolution == "full" and full.low_factor == plan.low_factor and full.downsample == 1.0
    assert full.median_shape == [540.0, 800.0] and full.patch_size == [320, 384]
    assert "--set data.resolution=low" in full.describe()
    whole = make_plan(dataset, dataset.cases, cap_patch=False)  # whole-image methods keep the pixels unless asked
    assert whole.resolution == "full"


@pytest.mark.parametrize("kind", ["organs", "nuclei"])
def test_small_images_stay_at_full_resolution(tmp_path, kind):
    """Images a patch covers (3D volumes like hippocampus's, 2D images like nuclei's) keep their resolution, and
    asking for a low one is one line saying why there is none."""
    writer = write_organs_phantom if kind == "organs" else write_nuclei_phantom
    dataset = load_dataset(writer(tmp_path / kind, cases=3, seed=0))
    plan = make_plan(dataset, dataset.cases)
    assert plan.resolution == "full" and plan.low_factor is None and "of the median image" in plan.low_reason
    with pytest.raises(UnetzooError, match=r"data.resolution=low: the plan of .* proposes no coarser grid \(the patch"):
        make_plan(dataset, dataset.cases, resolution="low")


def test_3d_low_resolution_coarsens_the_target_spacing(tmp_path):
    """In 3D the coarse grid is the target spacing times the factor: a 1-mm volume of 96^3 (the CPU patch holds
    about an eighth of it) with a structure 30 mm thick is planned at 30 / 8 = 3.75 mm at most."""
    image = np.random.default_rng(0).random((96, 96, 96)).astype(np.float32)
    label = np.zeros((96, 96, 96), np.uint8)
    label[30:60, 20:80, 20:80] = 1  # a slab 30 voxels thick
    write_array(image, tmp_path / "d" / "imagesTr" / "a_0000.nii.gz")
    write_array(label, tmp_path / "d" / "labelsTr" / "a.nii.gz")
    (tmp_path / "d" / "dataset.json").write_text(
        '{"channel_names": {"0": "MRI"}, "labels": {"background": 0, "slab": 1}, "numTraining": 1, "file_ending": ".nii.gz"}'
    )
    dataset = load_dataset(tmp_path / "d")
    plan = make_plan(dataset, dataset.cases)
    assert plan.resolution == "low" and 1.5 <= plan.low_factor <= 30 / MIN_STRUCTURE_PIXELS
    assert plan.target_spacing == pytest.approx([plan.low_factor] * 3)
    assert plan.downsample == 1.0  # 3D resamples through the target spacing
    explicit = make_plan(dataset, dataset.cases, target_spacing=[1.0, 1.0, 1.0])
    assert explicit.resolution == "full" and explicit.low_factor is None


def test_downsampled_labels_keep_thin_structures_and_the_grid_maps_back():
    """A label is downsampled one class at a time (one-hot, linear, argmax), so a bar 3 pixels wide survives a
    2x coarser grid; probabilities on the coarse grid resampled through :func:`coarse_grid` come back on the input's
    pixels, equal to the label away from its edges."""
    label = np.zeros((60, 90), np.float32)
    label[20:40, 30:70] = 1
    label[50:53, 10:80] = 2  # 3 pixels wide
    data = Downsampled(["image", "label"], 2.0, num_classes=3)(
        {"image": torch.as_tensor(label)[None], "label": torch.as_tensor(label)[None]}
    )
    small = data["label"][0].numpy()
    assert small.shape == (30, 45) and (small == 2).any() and (small == 1).sum() == pytest.approx(200, rel=0.1)
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(small).long(), 3).movedim(-1, 0).float()[None]
    grid = Grid((60, 90), coarse_grid((60, 90), (30, 45)))
    back = grid.resample(one_hot)[0].argmax(0).numpy()
    assert back.shape == (60, 90)
    assert (back[22:38, 32:68] == 1).all() and (back[:16] == 0).all() and (back[51] == 2)[12:78].all()


def test_coarse_grid_centres_coarse_pixels_as_pytorch_does():
    """Coarse pixel j is centred on input pixel (j + 1/2) S / n - 1/2 (PyTorch's align_corners=False): the map
    from input index i is its inverse, i -> (i + 1/2) n / S - 1/2. Checked by hand, and on a ramp of row indices
    that :class:`Downsampled` resizes: the coarse pixels hold the input rows the grid puts them on."""
    affine = coarse_grid((10, 8), (5, 2))
    assert affine[:2, :2] == pytest.approx(np.diag([0.5, 0.25]))
    assert affine[:2, 2] == pytest.approx([-0.25, -0.375])
    rows = torch.arange(540, dtype=torch.float32)[:, None].expand(540, 800)[None]
    coarse = Downsampled(["image"], 2.094, num_classes=1)({"image": rows})["image"][0]
    to_coarse = coarse_grid((540, 800), coarse.shape)
    centres = (np.arange(coarse.shape[0]) - to_coarse[0, 2]) / to_coarse[0, 0]  # input row of each coarse row
    assert np.abs(coarse[5:-5, 100].numpy() - centres[5:-5]).max() < 0.05


@pytest.mark.slow
def test_low_resolution_prediction_comes_back_on_the_input_grid(ellipses, tmp_path):
    """A run on the coarse grid predicts an 800x540 image into an 800x540 label map (probabilities resampled,
    then argmax), and its preprocessing gives the network the coarse image."""
    from unetzoo.inference import predict

    dataset = load_dataset(ellipses)
    plan = make_plan(dataset, dataset.cases)
    plan = dataclasses.replace(plan, patch_size=[128, 192], strides=None, kernel_sizes=None)  # a smaller network
    run = untrained_run(tmp_path / "run", plan)
    image = dataset.cases[0].images
    coarse = preprocessing(plan, with_label=False)({"image": [str(p) for p in image]})["image"]
    assert tuple(coarse.shape[1:]) == (round(540 / plan.low_factor), round(800 / plan.low_factor))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / image[0].name).symlink_to(image[0])
    (written,) = predict(run, tmp_path / "in", tmp_path / "out", device="cpu")
    label = read_array(written, label=True)[0]
    assert label.shape == (540, 800) and set(np.unique(label)) <= {0, 1}


@pytest.mark.slow
@pytest.mark.skipif(not (__import__("conftest").SHARED_DATA / "nuclei").is_dir(), reason="shared data not present")
@pytest.mark.parametrize("name", ["hippocampus", "nuclei"])
def test_real_datasets_keep_their_resolution(name):
    """hippocampus's volumes and nuclei's images fit the patch the budget affords: no coarser grid is proposed (40
    cases drawn with a fixed seed stand for the dataset)."""
    from conftest import SHARED_DATA

    dataset = load_dataset(SHARED_DATA / name)
    cases = [dataset.cases[i] for i in np.random.default_rng(0).choice(len(dataset.cases), 40, replace=False)]
    plan = make_plan(dataset, cases)
    assert plan.resolution == "full" and plan.low_factor is None and "of the median image" in plan.low_reason
