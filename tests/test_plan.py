"""The planner: topology per axis (nnU-Net's get_pool_and_conv_props), target spacing, patch and batch from the
step budget, the slice axis of the 2D configuration, and what the user overrides. Expectations are hand-computed
in the comments."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from unetzoo.config import Config
from unetzoo.data.datasets import load_dataset
from unetzoo.data.phantoms import write_organs_phantom
from unetzoo.data.plan import (
    STEP_BUDGET,
    Plan,
    anisotropic_target_spacing,
    make_plan,
    plan_batch,
    plan_patch,
    through_plane_axis,
)
from unetzoo.data.topology import divisor, pool_and_conv, shape_spacing
from unetzoo.methods import build_method


def _poolings(strides) -> list[int]:
    return [sum(s[a] == 2 for s in strides) for a in range(len(strides[0]))]


def test_anisotropic_patch_pools_in_plane_six_times_and_through_plane_once():
    """A 10x256x224 volume gives 6 in-plane poolings and 1 through-plane (unknown spacing: voxel counts).
    10 -> 5 stops (5 // 2 < 4); 256 -> 4 after 6; 224 -> 7 after 5 (7 // 2 < 4): depth from the largest axis."""
    strides, kernels = pool_and_conv([10, 256, 224])
    assert _poolings(strides) == [1, 6, 5]
    assert len(strides) == 7 and strides[0] == [1, 1, 1] and strides[1] == [2, 2, 2] and strides[-1] == [1, 2, 1]
    assert kernels == [[3, 3, 3]] * 7
    assert divisor(strides) == [2, 64, 32]


def test_isotropic_3d_topology():
    """64^3 at 1 mm: 64 -> 32 -> 16 -> 8 -> 4, four poolings of every axis, kernel 3 everywhere (5 stages);
    256^3 is capped at 7 stages (6 poolings)."""
    strides, kernels = pool_and_conv([64, 64, 64], [1.0, 1.0, 1.0])
    assert strides == [[1, 1, 1]] + [[2, 2, 2]] * 4 and kernels == [[3, 3, 3]] * 5
    assert len(pool_and_conv([256, 256, 256])[0]) == 7


def test_anisotropic_spacing_pools_the_thick_axis_late_with_in_plane_kernels_first():
    """20x160x160 at 5x1x1 mm. Step 1: the thick axis is 5x the finest -> not pooled, kernel 1 -> [1,3,3]; spacing
    5,2,2. Step 2: 5/2 = 2.5 >= 2 -> same; spacing 5,4,4. Step 3: 5/4 < 2 -> pooled, kernel 3; sizes 10,20,20.
    Step 4: all pooled; sizes 5,10,10. Step 5: 5 // 2 < 4 -> in-plane only; sizes 5,5,5. Then nothing (6 stages)."""
    strides, kernels = pool_and_conv([20, 160, 160], [5.0, 1.0, 1.0])
    assert strides == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert kernels == [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]


def test_unknown_spacing_reads_a_stack_of_thick_slices_from_the_shape():
    """ACDC (identity affines), median 256x216x9: 9 * 3 < 216, so axis 2 is a stack counted 216 / 9 = 24x coarser.
    Patch 160x128x5: kernel 1 across it while 24 / 2^k >= 2 (stages 0-3), 3 from stage 4 (24 / 16 < 2); never pooled
    (5 // 2 < 4). Hippocampus-like 35x50x36 (35 * 3 >= 36) and 2D shapes stay on voxel counts."""
    assert shape_spacing([256, 216, 9]) == [1.0, 1.0, 24.0]
    assert shape_spacing([35, 50, 36]) is None and shape_spacing([1000, 200]) is None
    strides, kernels = pool_and_conv([160, 128, 5], shape_spacing([256, 216, 9]))
    assert strides == [[1, 1, 1]] + [[2, 2, 1]] * 5
    assert kernels == [[3, 3, 1]] * 4 + [[3, 3, 3]] * 2


def test_2d_topology_depth_cap():
    """2D: 256 -> 4 after 6 poolings (7 stages); 1024 would take 8 poolings, capped at 8 stages (7 poolings)."""
    assert pool_and_conv([256, 256])[0] == [[1, 1]] + [[2, 2]] * 6
    assert len(pool_and_conv([1024, 1024])[0]) == 8


def test_target_spacing_takes_the_10th_percentile_of_a_coarse_axis():
    """nnU-Net: coarse axis > 3x the others and < 1/3 of their voxels -> its 10th percentile (of 4, 5, 6, 8, 10:
    4 + 0.4 * (5 - 4) = 4.4), the others' medians; a coarse axis with as many voxels keeps the median (6)."""
    spacings = np.array([[4, 1, 1], [5, 1, 1], [6, 0.8, 0.8], [8, 1, 1], [10, 1.2, 1.2]], float)
    thin = np.array([[10, 200, 200]] * 5, float)
    assert anisotropic_target_spacing(spacings, thin).tolist() == pytest.approx([4.4, 1.0, 1.0])
    thick = np.array([[200, 200, 200]] * 5, float)
    assert anisotropic_target_spacing(spacings, thick).tolist() == pytest.approx([6.0, 1.0, 1.0])


def test_slice_axis_is_the_coarsest_spacing_or_else_the_shortest_axis():
    assert through_plane_axis([1.5, 1.5, 10.0], [256, 216, 9]) == 2  # known: the coarse axis
    assert through_plane_axis([10.0, 1.5, 1.5], [90, 216, 256]) == 0  # known: coarse even when not the shortest
    assert through_plane_axis(None, [256, 216, 9]) == 2  # unknown: the shortest axis
    assert through_plane_axis([1.0, 1.0, 1.0], [35, 50, 36]) == 0  # isotropic: the shortest (hippocampus-like)


def test_patch_and_batch_from_the_step_budget():
    """Isotropic median 100^3, CPU budget 2 x 48^3: initial min(256, 100) = 100, rounded up to the 16 of four
    poolings -> 112^3; too large, so axes shrink by 16 in turn (ties: the last) down to 48^3 = budget / 2; batch
    2 (and 2 of the 5 % cap: 100 cases x 1e6 x 0.05 / 48^3 = 45). 2D median 256^2: the whole image, batch
    4 x 256^2 / 256^2 = 4, unless 5 % of a 10-image dataset (0.5 images) caps it at the minimum 2."""
    budget = STEP_BUDGET["cpu"][3]
    patch = plan_patch([100, 100, 100], [1.0, 1.0, 1.0], budget)
    assert patch == [48, 48, 48] and np.prod(patch) <= budget // 2
    assert plan_batch(patch, budget, 100 * 100**3) == 2
    patch2d = plan_patch([256, 256], None, STEP_BUDGET["cpu"][2])
    assert patch2d == [256, 256]
    assert plan_batch(patch2d, STEP_BUDGET["cpu"][2], 1000 * 256**2) == 4
    assert plan_batch(patch2d, STEP_BUDGET["cpu"][2], 10 * 256**2) == 2


def test_anisotropic_median_keeps_its_shape_within_the_budget():
    """ACDC-like median 256x216x9, unknown spacing: every axis a multiple of its strides, the voxels within
    budget / 2 and more than half of it used; no per-axis cap (the GPU budget holds the whole 256x224x10)."""
    patch = plan_patch([256, 216, 9], None, STEP_BUDGET["cpu"][3])
    assert all(p % m == 0 for p, m in zip(patch, divisor(pool_and_conv(patch)[0])))
    assert STEP_BUDGET["cpu"][3] // 4 < np.prod(patch) <= STEP_BUDGET["cpu"][3] // 2
    assert plan_patch([256, 216, 9], None, STEP_BUDGET["cuda"][3]) == [256, 224, 10]


def _identity_dataset(root, shape=(9, 40, 36), n=4):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n):
        label = np.zeros(shape, np.uint8)
        label[2:5, 10:20, 10:20] = 1
        nib.save(
            nib.Nifti1Image(np.random.rand(*shape).astype(np.float32), np.eye(4)),
            str(root / "imagesTr" / f"c_{i:03d}_0000.nii.gz"),
        )
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / f"c_{i:03d}.nii.gz"))
    meta = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "fg": 1},
        "numTraining": n,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_identity_affines_mean_unknown_spacing_and_the_plan_says_so(tmp_path):
    dataset = load_dataset(_identity_dataset(tmp_path / "id"))
    plan = make_plan(dataset, dataset.cases)
    assert plan.spacing_known is False and plan.slice_axis == 0  # the 9-voxel axis
    assert "spacing unknown" in plan.describe()
    # 9x40x36 with one axis under 1/3 of the others: a stack of slices counted 36 / 9 = 4x coarser; patch 10x40x40:
    # kernel 1 across the stack while it is >= 2x the in-plane spacing (1, 2), pooled with them once they reach 4
    assert plan.strides == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]]
    assert plan.kernel_sizes == [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]]
    assert "axis 0: a stack of thick slices, counted 4x coarser" in plan.describe()
    saved = Plan.load(_saved(plan, tmp_path / "plan.json"))
    assert saved == plan  # every new field round-trips through plan.json


def _saved(plan, path):
    plan.save(path)
    return path


def test_known_spacing_dataset(tmp_path):
    """Rotated 1.5x1x1 mm phantom (spacing known, anisotropy 1.5 < 3: the median)."""
    root = write_organs_phantom(tmp_path / "organs", cases=3, seed=0, shape=(12, 16, 14))
    dataset = load_dataset(root)
    plan = make_plan(dataset, dataset.cases)
    assert plan.spacing_known is True and plan.batch_size >= 2
    assert plan.strides == pool_and_conv(plan.patch_size, plan.target_spacing)[0]


def test_user_values_win(tmp_path):
    dataset = load_dataset(_identity_dataset(tmp_path / "id"))
    plan = make_plan(dataset, dataset.cases, patch_size=[8, 32, 32])
    assert plan.patch_size == [8, 32, 32] and plan.strides == pool_and_conv([8, 32, 32], plan.topology_spacing)[0]
    config = Config(model="unet")
    method, resolved = build_method(config, plan)
    assert (
        resolved.train.batch_size == plan.batch_size and resolved.model_args["strides"] == plan.strides
    )  # None: the plan's
    config.train.batch_size = 3
    config.set("model_args.strides=[1, [1, 2, 2]]")
    method, resolved = build_method(config, plan)
    assert resolved.train.batch_size == 3 and resolved.model_args["strides"] == [1, [1, 2, 2]]
    assert method.model.topology.divisor == (1, 2, 2) and "kernel_sizes" not in resolved.model_args


def test_unet2d_slices_slices_along_the_planned_axis_with_the_plane_topology():
    """Known spacing 1x1x4 mm, patch 64x48x12: slice axis 2 (coarsest); the plane 64x48 at 1x1 mm gets its own 2D
    topology (64 -> 4: 4 poolings, 48 -> 6: 3), not the volume's."""
    plan = Plan.synthetic([64, 48, 12], patch=[64, 48, 12])
    plan = Plan.from_dict({**plan.to_dict(), "target_spacing": [1.0, 1.0, 4.0], "strides": None, "slice_axis": None})
    assert plan.slice_axis == 2
    _, resolved = build_method(Config(model="unet2d-slices"), plan)
    assert resolved.model_args["slice_axis"] == 2
    assert resolved.model_args["strides"] == pool_and_conv([64, 48], [1.0, 1.0])[0]
    assert _poolings(resolved.model_args["strides"]) == [4, 3]
    user = Config(model="unet2d-slices", model_args={"slice_axis": 0})
    _, resolved = build_method(user, plan)
    assert (
        resolved.model_args["slice_axis"] == 0
        and resolved.model_args["strides"] == pool_and_conv([48, 12], [1.0, 4.0])[0]
    )


def test_an_old_plan_and_config_still_load():
    """plan.json written before the topology fields: they are computed from its patch (batch 2, the old default);
    a config.json with n_stages builds the old isotropic network."""
    old = {
        k: v
        for k, v in Plan.synthetic([40, 56, 40]).to_dict().items()
        if k not in ("spacing_known", "batch_size", "strides", "kernel_sizes", "slice_axis")
    }
    plan = Plan.from_dict(old)
    assert (
        plan.batch_size == 2 and plan.spacing_known and plan.strides == pool_and_conv([40, 56, 40], [1.0, 1.0, 1.0])[0]
    )
    config = Config(model="unet", model_args={"n_stages": 3, "deep_supervision": True})
    method, resolved = build_method(config, plan)
    assert "strides" not in resolved.model_args and method.model.topology.strides == [(1, 1, 1), (2, 2, 2), (2, 2, 2)]


def test_bad_topology_override_is_a_one_line_error():
    from unetzoo.errors import UnetzooError

    config = Config(model="unet", model_args={"strides": [2, 2]})
    with pytest.raises(UnetzooError, match=r"model 'unet' with model_args .*strides.*first stage has stride 1"):
        build_method(config, Plan.synthetic([16, 16, 16]))
