"""NISF (Stolt-Ansó et al. 2023, arXiv:2309.08643): the WIRE layer, the residual/latent wiring, the latent table,
the coordinate frame, latent fitting (only the latent moves; held-out slices are never read), training +
calibration end to end, --grid, --fit-slices, 3D+t sequences."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from unetzoo.config import Config
from unetzoo.data.plan import Plan
from unetzoo.methods import Grid, build_method
from unetzoo.methods.nisf import coordinates
from unetzoo.models.implicit_unet import voxel_grid
from unetzoo.models.nisf import WIRE, ResMLP

SMALL = {"width": 16, "latent_size": 16, "depth": 2}


def _method(shape=(6, 7, 5), train_cases=3, **method_args):
    config = Config(model="nisf")
    config.model_args.update(SMALL)
    config.method_args.update(method_args)
    return build_method(config, Plan.synthetic(list(shape), classes=3), train_cases=train_cases)


def test_wire_layer_matches_hand_computed_value():
    layer = WIRE(2, 1, omega0=10.0, scale0=10.0)
    with torch.no_grad():
        layer.freqs.weight.copy_(torch.tensor([[0.1, 0.2]]))
        layer.freqs.bias.fill_(0.05)
        layer.scale.weight.copy_(torch.tensor([[0.03, -0.01]]))
        layer.scale.bias.fill_(0.02)
    y = layer(torch.tensor([[1.0, 2.0]]))
    # freqs(x) = 0.1 + 0.4 + 0.05 = 0.55; scale(x) = 0.03 - 0.02 + 0.02 = 0.03
    assert y.item() == pytest.approx(math.cos(10 * 0.55) * math.exp(-((10 * 0.03) ** 2)), rel=1e-5)


@pytest.mark.parametrize("coords_to_all_layers", [False, True])
def test_resmlp_latent_is_the_first_skip(coords_to_all_layers):
    """With zero weights every WIRE layer outputs cos(0) exp(0) = 1, so out_0 = 1 + h and out_1 = 1 + out_0."""
    mlp = ResMLP(
        coord_features=4,
        latent_size=8,
        width=8,
        depth=2,
        omega0=10,
        scale0=10,
        coords_to_all_layers=coords_to_all_layers,
    )
    for p in mlp.parameters():
        torch.nn.init.zeros_(p)
    h = torch.randn(1, 5, 8)
    assert torch.allclose(mlp(torch.randn(1, 5, 4), h), 2 + h)
    assert mlp.layers[0].freqs.in_features == 4 + 8  # the latent enters at the input ...
    assert mlp.layers[1].freqs.in_features == 8 + (4 if coords_to_all_layers else 0)  # ... and not again


def test_latent_table_has_one_row_per_training_subject():
    for n in (3, 7):
        method, resolved = _method(train_cases=n)
        assert method.model.latents.num_embeddings == n and resolved.model_args["num_subjects"] == n
    with pytest.raises(Exception, match="latent_size"):
        build_method(
            Config(model="nisf", model_args={"latent_size": 8, "width": 16}), Plan.synthetic([6, 6, 6]), train_cases=2
        )


def test_coordinates_are_the_same_anatomy_at_any_resolution():
    """The 2x finer grid's voxels 2i and 2i+1 straddle voxel i: their coordinates average to voxel i's; the centre
    of the volume is 0 and the dataset's half extent is 1."""
    shape, half = (4, 6), torch.tensor([2.0, 3.0])
    coarse = coordinates(voxel_grid(shape).reshape(4, 6, 2), shape, half)
    fine = coordinates(Grid.refinement(shape, 2).points(), shape, half)
    pooled = fine.reshape(4, 2, 6, 2, 3).mean(dim=(1, 3))
    assert torch.allclose(pooled, coarse, atol=1e-6)
    assert torch.allclose(coarse[0, 0, :2], torch.tensor([-1.5 / 2, -2.5 / 3])) and torch.all(coarse[..., 2] == 0)


def test_training_loss_is_the_papers_sum():
    """Eq. 3: rec BCE x rec_weight + seg (BCE + Dice per class, summed) + latent L2 (mean) + backbone L2 (sum).
    Stolt-Ansó et al. 2023, Sec. 3: "adding a weighting factor ... to the image reconstruction loss component
    yielded inference-time improvements": the default weight is 10, the authors' configs' value (not their code's
    unweighted 1)."""
    method, _ = _method(points=64)
    assert method.rec_weight == 10.0
    batch = method.example_batch(torch.Generator().manual_seed(0))
    assert (
        batch["coords"].shape == (2, 64, 4)
        and batch["label"].shape == (2, 64)
        and batch["case_index"].tolist() == [0, 1]
    )
    latent = method.model.latents(batch["case_index"])
    seg, img = method.model(batch["coords"], latent)
    rec = 10.0 * torch.nn.functional.binary_cross_entropy(torch.sigmoid(img), batch["intensity"])
    probs, onehot = torch.softmax(seg, -1), torch.nn.functional.one_hot(batch["label"], 3).float()
    bce = torch.nn.functional.binary_cross_entropy(probs, onehot, reduction="none").mean(1)
    dice = 1 - (2 * (probs * onehot).sum(1) + 1e-5) / (probs.sum(1) + onehot.sum(1) + 1e-5)
    l2 = 1e-4 * latent.pow(2).mean() + 1e-4 * sum(p.pow(2).sum() for p in method.model.backbone.parameters())
    expected = rec + (bce + dice).sum(-1).mean() + l2
    assert method.training_loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)
    assert batch["intensity"].min() >= 0 and batch["intensity"].max() <= 1
    logits = torch.tensor([[[120.0, 0.0, 0.0], [0.0, 120.0, 0.0]]], requires_grad=True)
    saturated = method.segmentation_loss(logits, torch.tensor([[1, 1]]))
    saturated.backward()  # a saturated softmax (p = 1 exactly) keeps a finite loss and gradient
    assert torch.isfinite(saturated) and torch.isfinite(logits.grad).all()


def test_frames_of_a_sequence_carry_their_time():
    """Training items of frame f of T have t = f / T as the last coordinate (3D cases: 0)."""
    method, _ = _method(points=32)
    image, label = torch.rand(1, 6, 7, 5), torch.zeros(1, 6, 7, 5)
    sample = method.train_transform()(
        {"image": image, "label": label, "case_index": 1, "frame_index": 2, "num_frames": 4}
    )
    assert (
        torch.all(sample["coords"][:, -1] == 0.5)
        and sample["coords"].shape == (32, 4)
        and int(sample["case_index"]) == 1
    )
    assert torch.all(method.train_transform()({"image": image, "label": label, "case_index": 0})["coords"][:, -1] == 0)


@pytest.mark.parametrize("tune_backbone", [False, True])
def test_fit_changes_only_the_latent(tune_backbone):
    method, _ = _method(fit_steps=5, fit_lr=1e-2, tune_backbone=tune_backbone)
    before = {k: v.clone() for k, v in method.model.state_dict().items()}
    image = torch.rand(1, 6, 7, 5)
    model, latent = method.fit_latent([image], 5)
    start = torch.randn(1, 16, generator=torch.Generator().manual_seed(0)) * 1e-4
    assert not torch.allclose(latent, start), "the latent moved"
    assert all(torch.equal(before[k], v) for k, v in method.model.state_dict().items()), (
        "the trained model is untouched"
    )
    assert all(p.grad is None for p in method.model.parameters())
    tuned = any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert tuned == tune_backbone  # only the option tunes (a copy of) the backbone
    assert torch.equal(model.seg_head.weight, method.model.seg_head.weight)  # the seg head never learns at test time


def test_fit_slices_never_reads_the_other_slices():
    """Stolt-Ansó et al. 2023, Sec. 4: "producing segmentations for held-out sections of the image volume ...
    despite not having access to the image information". Fitting on every 2nd slice (last axis): the odd slices,
    which here hold the image's minimum and maximum, change nothing, not even through the min-max normalisation."""
    method, _ = _method(fit_steps=4, fit_lr=1e-2, fit_slices=2)
    image = torch.rand(1, 6, 7, 5)
    image[0, 2, 3, 1], image[0, 4, 0, 3] = -5.0, 7.0  # the extremes lie in unseen slices
    other = image.clone()
    other[..., 1::2] = torch.rand_like(other[..., 1::2])  # other extremes: min and max now in the seen slices
    assert torch.equal(method.fit_latent([image], 4)[1], method.fit_latent([other], 4)[1])
    every, _ = _method(fit_steps=4, fit_lr=1e-2)
    assert not torch.equal(every.fit_latent([image], 4)[1], every.fit_latent([other], 4)[1])
    assert method.fit_index((2, 2, 5)).tolist() == [0, 2, 4, 5, 7, 9, 10, 12, 14, 15, 17, 19]


@pytest.mark.slow
def test_train_calibrate_and_predict_on_grid(tmp_path):
    """End to end on the organs phantom: training, calibration (Dice-vs-steps curve in the run folder, fit_steps
    recorded), validation; then ``predict --grid REF`` gives REF's exact geometry and ``--fit-slices`` runs."""
    import nibabel as nib

    from unetzoo.cli import main
    from unetzoo.data.phantoms import write_organs_phantom
    from unetzoo.inference import Predictor
    from unetzoo.methods.grid import refined_affine
    from unetzoo.training.run import train

    data = write_organs_phantom(tmp_path / "data", cases=4, seed=0, shape=(16, 18, 12))
    config = Config(model="nisf")
    config.data.num_workers = config.data.cache_workers = 0
    config.train.epochs, config.train.iters_per_epoch, config.train.batch_size = 1, 3, 1
    config.data.folds = 4
    config.model_args.update(SMALL)
    config.method_args.update(
        {
            "points": 256,
            "fit_steps": 2,
            "calibrate_steps": 4,
            "calibrate_every": 2,
            "calibrate_cases": 1,
            "calibrate_voxels": 500,
        }
    )
    run = train(data, tmp_path / "run", config)
    saved = Config.load(run / "config.json")
    assert saved.model_args["num_subjects"] == 2 and saved.method_args["fit_steps"] in (
        0,
        2,
        4,
    )  # 3 training cases, 1 kept out
    assert (run / "fit_curve.png").is_file() and (run / "validation" / "summary.json").is_file()
    split, calibrated = (
        json.loads((run / "splits.json").read_text())[0],
        json.loads((run / "fit_curve.json").read_text())["cases"],
    )
    assert len(calibrated) == 1 and calibrated[0] in split["train"] and calibrated[0] not in split["val"]

    case = sorted((data / "imagesTr").glob("*_0000.nii.gz"))[0]
    reference = nib.load(str(case))
    fine = nib.Nifti1Image(np.zeros([2 * s for s in reference.shape], np.float32), refined_affine(reference.affine, 2))
    nib.save(fine, str(tmp_path / "ref.nii.gz"))
    assert main(["predict", str(run), str(case), str(tmp_path / "grid"), "--grid", str(tmp_path / "ref.nii.gz")]) == 0
    out = nib.load(str(tmp_path / "grid" / case.name.replace("_0000", "")))
    assert out.shape == fine.shape and np.allclose(out.affine, fine.affine, atol=1e-6)

    # --fit-slices K: the latent sees every K-th slice, the output is every slice in the input's geometry
    assert main(["predict", str(run), str(case), str(tmp_path / "half"), "--fit-slices", "2"]) == 0
    half = nib.load(str(tmp_path / "half" / case.name.replace("_0000", "")))
    assert half.shape == reference.shape and np.allclose(half.affine, reference.affine)
    assert Predictor(run, fit_slices=2).method.fit_slices == 2 and Predictor(run).method.fit_slices == 1


def test_calibration_subjects_are_kept_out_of_training_and_of_the_reported_fold():
    """Stolt-Ansó et al. 2023, Sec. 4: "The dataset split included 1000 subjects for the prior training, 50 for
    validation, and 100 for testing" and fit_steps was chosen "based on the Dice score of the best validation run":
    the cases that choose the step count are neither trained on nor reported. Here they are ``calibrate_cases``
    training cases, drawn with the seed (the same ones in any order, so a resumed run keeps them), and removed from
    the prior training."""
    from unetzoo.errors import UnetzooError
    from unetzoo.training.run import _calibration_split

    names = [f"case{i}" for i in range(10)]
    config = Config(model="nisf")
    config.method_args["calibrate_cases"] = 3
    kept, held = _calibration_split(names, config)
    assert len(held) == 3 and set(held).isdisjoint(kept) and sorted(kept + held) == names
    assert _calibration_split(names[::-1], config)[1] == held
    assert len(_calibration_split(names, Config(model="nisf"))[1]) == 5  # the default
    assert _calibration_split(names, Config(model="unet")) == (names, [])  # dense models calibrate nothing
    config.method_args["calibrate_cases"] = 10
    with pytest.raises(UnetzooError, match="calibration"):
        _calibration_split(names, config)


@pytest.mark.slow
def test_fit_slices_is_refused_for_models_that_fit_nothing(trained_run, organs, capsys):
    from unetzoo.cli import main

    image = sorted((organs / "imagesTr").glob("*_0000.nii.gz"))[0]
    assert main(["predict", str(trained_run), str(image), str(organs.parent / "out"), "--fit-slices", "2"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--fit-slices" in err[0] and "'unet'" in err[0]


def test_predict_sequence_fits_one_latent_over_all_frames():
    """3D+t: one latent for the subject (changing frame 1 changes frame 0's segmentation, unlike frame-by-frame
    prediction), and time is an input (identical frames at t = 0 and 1/2 are segmented differently)."""
    method, _ = _method(fit_steps=5, fit_lr=5e-2)
    frame = torch.rand(1, 1, 6, 7, 5)
    same = method.predict_sequence([frame, frame.clone()])
    assert (
        len(same) == 2 and same[0].shape == (1, 3, 6, 7, 5) and torch.allclose(same[0].sum(1), torch.ones(1), atol=1e-5)
    )
    assert not torch.allclose(same[0], same[1])
    changed = method.predict_sequence([frame, torch.rand(1, 1, 6, 7, 5)])
    assert not torch.allclose(changed[0], same[0])
    grid = Grid.refinement((6, 7, 5), 2)
    assert method.predict_sequence([frame, frame], grid)[1].shape == (1, 3, 12, 14, 10)


@pytest.mark.slow
def test_cardiac_sequence_trains_and_predicts_4d_in_the_input_geometry(tmp_path):
    """`phantom cardiac` 3D+t end to end: nisf trains on frames, the Predictor hands a case's frames to
    predict_sequence together (one latent per subject), and the 4D prediction has the input's exact shape and affine."""
    import nibabel as nib

    from unetzoo.data.phantoms import write_cardiac_phantom
    from unetzoo.inference import Predictor
    from unetzoo.training.run import train

    hearts = write_cardiac_phantom(tmp_path / "hearts", cases=3, frames=3, seed=3, shape=(16, 16, 6))
    config = Config(model="nisf")
    config.data.num_workers = config.data.cache_workers = 0
    config.data.folds = 3
    config.train.epochs, config.train.iters_per_epoch, config.train.batch_size = 1, 3, 1
    config.model_args.update(SMALL)
    config.method_args.update(
        {"points": 256, "fit_steps": 2, "calibrate_steps": 2, "calibrate_every": 1, "calibrate_cases": 1}
    )
    run = train(hearts, tmp_path / "run", config)
    assert (
        Config.load(run / "config.json").model_args["num_subjects"] == 1
    )  # 2 training subjects, 1 kept out to calibrate; not 1 per frame
    name = json.loads((run / "splits.json").read_text())[0]["val"][0]
    source, result = (
        nib.load(str(hearts / "imagesTr" / f"{name}.nii.gz")),
        nib.load(str(run / "validation" / f"{name}.nii.gz")),
    )
    assert result.shape == source.shape == (16, 16, 6, 3) and np.array_equal(result.affine, source.affine)

    predictor = Predictor(run)
    fits = []
    fit = predictor.method.fit_latent
    predictor.method.fit_latent = lambda frames, *a, **k: fits.append(len(frames)) or fit(frames, *a, **k)
    probs = predictor.predict_probabilities([hearts / "imagesTr" / f"{name}.nii.gz"])
    assert fits == [3] and probs.shape == (4, 16, 16, 6, 3)
