"""The ignore label: a label named ``ignore`` in ``dataset.json`` (the highest id, as in nnU-Net) marks unlabelled
voxels. Requirement: it "is excluded from every method's loss, from validation and from evaluate's metrics; the
planner and the sampler treat it as unlabelled; predictions never contain it"."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from unetzoo.config import AugmentConfig, Config
from unetzoo.data.datasets import load_dataset
from unetzoo.data.phantoms import write_organs_phantom
from unetzoo.data.plan import Plan, make_plan
from unetzoo.data.transforms import augmentation
from unetzoo.data.val_patches import validation_patches
from unetzoo.errors import UnetzooError
from unetzoo.evaluation import case_metrics, evaluate_folder
from unetzoo.io import read_label, write_array
from unetzoo.methods import METHODS, build_method
from unetzoo.methods.dense import LOSSES, dice_ce, summed_dice_ce
from unetzoo.methods.projection import dice_loss
from unetzoo.models import list_models, model_info

IGNORE = 4  # the organs phantom has labels 0..3: its ignore label is 4
SHAPE = (24, 28, 20)


def _with_ignore(root, ignore_id: int = IGNORE, halve: bool = True):
    """The organs phantom at ``root`` with a label ``ignore`` of ``ignore_id`` in dataset.json and, with ``halve``,
    the upper half of every label map (along the first axis) replaced by it."""
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"]["ignore"] = ignore_id
    (root / "dataset.json").write_text(json.dumps(meta))
    if halve:
        for path in sorted((root / "labelsTr").iterdir()):
            label = read_label(path, 3)
            array = label.array.copy()
            array[array.shape[0] // 2 :] = ignore_id
            write_array(array.astype(np.uint8), path, label.affine)
    return root


# ---- (a) dataset.json --------------------------------------------------------------------------------------------


def test_an_ignore_label_below_the_highest_id_is_refused_in_one_line(tmp_path):
    """Requirement: "it must be the highest id, as in nnU-Net": a dataset.json whose ``ignore`` label is not the highest id is
    refused in one line naming dataset.json."""
    root = write_organs_phantom(tmp_path / "d", cases=2, seed=0, shape=(12, 12, 12))
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"]["ignore"] = 2  # organ3 is 3
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(UnetzooError) as error:
        load_dataset(root)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(root / "dataset.json"))
    assert "ignore" in message and "highest id" in message


@pytest.mark.parametrize(
    "labels,problem",
    [
        ({"0": "background", "1": "ignore", "2": "organ"}, "the label named 'ignore' has id 1, but .* label 2"),
        ({"0": "background", "1": "ignore", "2": "ignore"}, r"labels \[1, 2\] are all named 'ignore'"),
    ],
)
def test_msd_layout_ignore_label_below_the_highest_id_is_refused(tmp_path, labels, problem):
    """The same rule for an MSD dataset.json (id -> name), where two ids may even share the name."""
    root = write_organs_phantom(tmp_path / "d", cases=2, seed=0, shape=(12, 12, 12))
    meta = {
        "modality": {"0": "MRI"},
        "labels": labels,
        "training": [
            {"image": f"./imagesTr/organs_00{i}_0000.nii.gz", "label": f"./labelsTr/organs_00{i}.nii.gz"}
            for i in range(2)
        ],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(UnetzooError, match=r"dataset\.json: " + problem):
        load_dataset(root)


def test_the_plan_records_the_ignore_label_and_the_network_has_no_channel_for_it(tmp_path):
    """Requirement: "the network's output channels are the labels without ignore": the plan's labels and classes leave it out
    and record its id."""
    root = _with_ignore(write_organs_phantom(tmp_path / "d", cases=2, seed=0, shape=SHAPE))
    dataset = load_dataset(root)
    assert dataset.ignore_label == IGNORE and dataset.labels[IGNORE] == "ignore"
    plan = make_plan(dataset, dataset.cases, patch_size=[16, 16, 16])
    assert plan.ignore_label == IGNORE and plan.num_classes == 4 and plan.label_ids == [0, 1, 2, 3]
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))).ignore_label == IGNORE
    method, _ = build_method(Config(model="unet"), plan)
    method.model.eval()
    with torch.no_grad():
        assert method.model(torch.zeros(1, 1, 16, 16, 16)).shape[1] == 4


# ---- (b) every method's loss --------------------------------------------------------------------------------------


def _nisf_loss(logits, label):
    """NISF's segmentation loss on (B, K, *S) logits and (B, 1, *S) labels (it takes points: (B, N, K), (B, N))."""
    return _method("nisf").segmentation_loss(logits.flatten(2).transpose(1, 2), label.flatten(1))


def _method(method_name: str):
    model = next(m for m in list_models() if model_info(m).method == method_name and 3 in model_info(m).spatial_dims)
    config = Config(model=model)
    config.train.batch_size = 2
    plan = Plan.synthetic([16, 16, 16], classes=3)
    plan.ignore_label = 3
    return build_method(config, plan, train_cases=2)[0]


def _implicit_loss(logits, label):
    return _method("implicit").loss(logits, label)


# per method: its loss functions on (B, K, *S) logits and (B, 1, *S) labels, each with a hand reference on the
# labelled voxels only, ``per_image`` when the loss is a mean over images (each image's labelled voxels apart)
MONAI_DICE_CE = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
LOSS_CASES = {
    "dense": [(dice_ce, MONAI_DICE_CE, False), (summed_dice_ce, summed_dice_ce, True)],
    "slices": [(dice_ce, MONAI_DICE_CE, False), (summed_dice_ce, summed_dice_ce, True)],
    "implicit": [(_implicit_loss, MONAI_DICE_CE, False)],
    "projection": [(dice_loss, None, False)],  # None: Eq. (1) written out below
    "nisf": [(_nisf_loss, _nisf_loss, True)],
}


def _eq1(logits, label, eps=1e-6):
    """Angermann & Haltmeier's Eq. (1) on (1, K, N): per foreground class, averaged."""
    probs = torch.softmax(logits.float(), 1)
    scores = [
        1 - 2 * (probs[0, c] * (label[0, 0] == c)).sum() / (probs[0, c].sum() + (label[0, 0] == c).sum() + eps)
        for c in range(1, logits.shape[1])
    ]
    return torch.stack(scores).mean()


def test_every_method_has_a_loss_case():
    """A new method must say here how its loss treats the ignore label."""
    assert set(LOSS_CASES) == set(METHODS)


@pytest.mark.parametrize("method_name", sorted(LOSS_CASES))
def test_each_loss_counts_only_labelled_voxels_and_gives_ignored_ones_no_gradient(method_name):
    """Requirement: "excluded from every method's loss": with ignored voxels (class index K, the plan's number of classes) the
    loss equals the loss on the labelled voxels alone, and its gradient at the ignored voxels is exactly zero."""
    generator = torch.Generator().manual_seed(0)
    classes = 3
    for loss, reference, per_image in LOSS_CASES[method_name]:
        logits = torch.randn(2, classes, 6, 5, 4, generator=generator).requires_grad_()
        label = torch.randint(0, classes, (2, 1, 6, 5, 4), generator=generator).float()
        ignored = torch.rand(2, 1, 6, 5, 4, generator=generator) < 0.5
        label[ignored] = classes  # the ignore label's class index
        value = loss(logits, label)
        value.backward()
        assert torch.isfinite(value)
        assert (logits.grad * ignored).abs().max() == 0, "no gradient at ignored voxels"
        assert (logits.grad * ~ignored).abs().max() > 0

        def labelled(b):  # image b's labelled voxels as a (1, K, N) / (1, 1, N) pair
            keep = ~ignored[b, 0]
            return logits[b][:, keep][None], label[b, 0][keep][None, None]

        pieces = [labelled(b) for b in range(2)]
        hand = reference or _eq1
        if per_image:
            expected = torch.stack([hand(x, y) for x, y in pieces]).mean()
        else:  # batch statistics: every labelled voxel of the batch together
            expected = hand(torch.cat([x for x, _ in pieces], 2), torch.cat([y for _, y in pieces], 2))
        assert value.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


def test_dice_ce_without_ignored_voxels_is_monais():
    """The dense loss stays nnU-Net's Dice+CE (MONAI's DiceCELoss) when every voxel is labelled."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 5, 6, 7, generator=generator)
    label = torch.randint(0, 4, (2, 1, 5, 6, 7), generator=generator).float()
    assert float(dice_ce(logits, label)) == pytest.approx(float(MONAI_DICE_CE(logits, label)), rel=1e-6)
    assert set(LOSSES) == {"dice-ce", "summed-dice-ce"}


@pytest.mark.parametrize("method_name", sorted(METHODS))
def test_every_method_trains_on_a_batch_with_ignored_voxels(method_name):
    """Each method's own training step on its example batch with half the voxels ignored: a finite loss and
    finite gradients."""
    method = _method(method_name)
    batch = method.example_batch(torch.Generator().manual_seed(0))
    label = batch["label"]
    label[torch.rand(label.shape, generator=torch.Generator().manual_seed(1)) < 0.5] = method.num_classes
    loss = method.training_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in method.model.parameters() if p.grad is not None)


# ---- (c) evaluate -------------------------------------------------------------------------------------------------


def _pair(seed: int = 0, shape=(14, 12, 10)):
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, np.uint8)
    ref[2:9, 2:8, 2:7] = 1
    ref[8:12, 6:11, 4:9] = 2
    pred = np.where(rng.random(shape) < 0.15, rng.integers(0, 3, shape), ref).astype(np.uint8)
    ref[:, :, shape[2] // 2 :] = 3  # half the reference ignored, where the prediction still has labels
    return pred, ref


def _hand(pred, ref, label, ignore=3):
    keep = ref != ignore
    p, r = pred[keep] == label, ref[keep] == label
    tp, fp, fn = int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())
    return {"Dice": 2 * tp / (2 * tp + fp + fn), "TP": tp, "FP": fp, "FN": fn, "TN": int(keep.sum()) - tp - fp - fn}


def test_evaluate_counts_only_labelled_voxels(tmp_path):
    """Requirement: "excluded from evaluate's metrics": Dice and the counts equal a hand computation on the voxels whose
    reference is not the ignore label; NSD and HD95 compare the reference with the prediction restricted to those
    voxels; MA and mean IU leave the ignored voxels out; the ignore id is no label id."""
    pred, ref = _pair()
    write_array(pred, tmp_path / "pred" / "case.nii.gz", np.eye(4))
    write_array(ref, tmp_path / "ref" / "case.nii.gz", np.eye(4))
    summary = evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", ignore_label=3)
    assert summary["label_ids"] == [1, 2] and summary["ignore_label"] == 3
    metrics = summary["cases"][0]["metrics"]
    keep = ref != 3
    for label in (1, 2):
        for key, value in _hand(pred, ref, label).items():
            assert metrics[str(label)][key] == pytest.approx(value), (label, key)
        masked = np.where(keep, pred, 0)
        surface = case_metrics(masked, np.where(keep, ref, 0), [label], (1.0, 1.0, 1.0))[label]
        assert metrics[str(label)]["HD95"] == pytest.approx(surface["HD95"])
        assert metrics[str(label)]["NSD"] == pytest.approx(surface["NSD"])
    recalls = [((pred[keep] == c) & (ref[keep] == c)).sum() / (ref[keep] == c).sum() for c in (0, 1, 2)]
    assert summary["cases"][0]["MA"] == pytest.approx(float(np.mean(recalls)))
    unmasked = evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "plain", label_ids=[1, 2])
    assert unmasked["cases"][0]["metrics"]["1"]["FP"] != metrics["1"]["FP"], "the ignored voxels held predictions"


def test_evaluate_command_takes_the_ignore_label_of_the_dataset_json_beside_the_labels(tmp_path, capsys):
    """`evaluate` gets the ignore id from the dataset.json next to the reference folder (``--ignore-label ID``
    otherwise), and refuses the ignore id as a label to evaluate."""
    from unetzoo.cli import run

    pred, ref = _pair()
    write_array(pred, tmp_path / "pred" / "case.nii.gz", np.eye(4))
    write_array(ref, tmp_path / "data" / "labelsTr" / "case.nii.gz", np.eye(4))
    labels = {"background": 0, "a": 1, "b": 2, "ignore": 3}
    (tmp_path / "data" / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": labels}))
    run(["evaluate", str(tmp_path / "pred"), str(tmp_path / "data" / "labelsTr"), "--out", str(tmp_path / "out")])
    assert "ignore label 3" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["ignore_label"] == 3 and summary["label_ids"] == [1, 2]
    assert summary["cases"][0]["metrics"]["1"]["TP"] == _hand(pred, ref, 1)["TP"]

    write_array(ref, tmp_path / "bare" / "case.nii.gz", np.eye(4))  # no dataset.json: the option says it
    bare = [str(tmp_path / "pred"), str(tmp_path / "bare"), "--out", str(tmp_path / "o2"), "--ignore-label", "3"]
    run(["evaluate", *bare])
    assert json.loads((tmp_path / "o2" / "summary.json").read_text())["label_ids"] == [1, 2]
    with pytest.raises(UnetzooError, match="3 is the ignore label"):
        evaluate_folder(tmp_path / "pred", tmp_path / "bare", tmp_path / "o3", label_ids=[1, 3], ignore_label=3)
    assert not (tmp_path / "o3").exists()


# ---- (d) sampler and planner --------------------------------------------------------------------------------------


def _quiet() -> AugmentConfig:
    return AugmentConfig(rotation_p=0, scaling_p=0, flip_p=0, noise_p=0, contrast_p=0)


def test_the_sampler_centres_patches_on_labelled_voxels_only():
    """Requirement: "the sampler treats it as unlabelled": positive patches are centred on a foreground class, negative ones on
    background, never on an ignored voxel (odd 3^3 patches: the centre is the middle voxel)."""
    label = torch.full((1, 12, 12, 12), 3.0)  # class index 3: ignored, most of the volume
    label[0, 2:4, 2:4, 2:4] = 1.0
    label[0, 8:10, 8:10, 8:10] = 0.0
    data = {"image": torch.randn(1, 12, 12, 12), "label": label}
    for pos_neg, allowed in (([1, 0], {1.0}), ([0, 1], {0.0}), ([1, 1], {0.0, 1.0})):
        chain = augmentation([3, 3, 3], _quiet(), pos_neg, samples=20, ignore_class=3)
        centres = {float(s["label"][0, 1, 1, 1]) for s in chain(data)}
        assert centres <= allowed, (pos_neg, centres)
        assert all(set(s) == {"image", "label"} for s in chain(data)), "no sampler keys left in the samples"
    everything_ignored = {"image": data["image"], "label": torch.full((1, 12, 12, 12), 3.0)}
    with pytest.warns(UserWarning, match="Num foregrounds 0"):  # MONAI's: negative patches only, anywhere
        assert len(augmentation([3, 3, 3], _quiet(), [1, 2], samples=4, ignore_class=3)(everything_ignored)) == 4


def test_validation_patches_are_not_centred_on_ignored_voxels():
    """The per-epoch validation's positive patches are centred on a foreground class, not on the ignore label."""
    label = torch.full((1, 12, 12, 12), 3.0)
    label[0, 2:4, 2:4, 2:4] = 1.0
    label[0, 8:, 8:, 8:] = 0.0
    items = [{"image": torch.randn(1, 12, 12, 12), "label": label, "case_index": 0}]
    patches = validation_patches(items, [3, 3, 3], count=10, seed=0, positive=1.0, num_classes=3)
    assert {float(p["label"][0, 1, 1, 1]) for p in patches} == {1.0}


def test_planner_statistics_leave_out_ignored_voxels(tmp_path):
    """Requirement: "the planner treats it as unlabelled": the CT foreground statistics never see an ignored voxel (there the
    image is 10,000, far above every organ)."""
    root = write_organs_phantom(tmp_path / "d", cases=2, seed=0, shape=SHAPE)
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "CT"}
    (root / "dataset.json").write_text(json.dumps(meta))
    _with_ignore(root, halve=False)
    from unetzoo.io import read_image

    for case in sorted((root / "labelsTr").iterdir()):
        label = read_label(case, 3)
        image_path = root / "imagesTr" / case.name.replace(".nii.gz", "_0000.nii.gz")
        image = read_image([image_path], 3)
        array, image_array = label.array.copy(), image.array[0].copy()
        array[:, :, :6] = IGNORE
        image_array[:, :, :6] = 10_000.0
        write_array(array.astype(np.uint8), case, label.affine)
        write_array(image_array.astype(np.float32), image_path, image.affine)
    dataset = load_dataset(root)
    plan = make_plan(dataset, dataset.cases, patch_size=[16, 16, 16])
    assert plan.ct_stats["0"]["p99_5"] < 1_000 and plan.ignore_label == IGNORE


# ---- (e) a phantom half ignored trains ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_phantom_half_ignored_trains_and_its_validation_counts_labelled_voxels(tmp_path):
    """Requirement: "a phantom whose labels are half replaced by ignore trains, and its metrics equal those computed on the
    labelled voxels by hand"; its predictions never contain the ignore id."""
    from conftest import tiny_config
    from unetzoo.runfolder import RunFolder
    from unetzoo.training.run import train

    data = _with_ignore(write_organs_phantom(tmp_path / "data", cases=5, seed=2, shape=SHAPE))
    config = tiny_config()
    config.train.val_patches, config.train.select = 2, "best"  # a per-epoch validation, on inner validation cases
    run = RunFolder(train(data, tmp_path / "run", config))
    assert Plan.load(run.plan).ignore_label == IGNORE
    history = json.loads(run.history.read_text())
    assert history and all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_dice"]) for h in history)
    summary = json.loads((run.validation / "summary.json").read_text())
    assert summary["label_ids"] == [1, 2, 3] and summary["ignore_label"] == IGNORE
    for case in summary["cases"]:
        pred = read_label(case["prediction_file"], 3).array
        ref = read_label(case["reference_file"], 3).array
        assert IGNORE not in np.unique(pred), "predictions never contain the ignore id"
        assert (ref == IGNORE).any()
        for label in (1, 2, 3):
            metrics, hand = case["metrics"][str(label)], _hand(pred, ref, label, ignore=IGNORE)
            assert {k: metrics[k] for k in ("TP", "FP", "FN", "TN")} == {k: hand[k] for k in ("TP", "FP", "FN", "TN")}
