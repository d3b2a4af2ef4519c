"""Damaged data and the preprocessing cache: a damaged or inconsistent input is one line naming its files (never read
as data), label ids keep their values whatever their size, and the disk cache survives full disks, damaged entries,
read-only folders and files changed in place."""

from __future__ import annotations

import errno
import gzip
import json
import logging
import os
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from unetzoo.data.cache import plan_folder, preprocessed_cases
from unetzoo.data.datasets import load_dataset, prediction_inputs
from unetzoo.data.phantoms import write_organs_phantom
from unetzoo.data.plan import Plan, make_plan
from unetzoo.data.transforms import preprocessing
from unetzoo.errors import UnetzooError
from unetzoo.evaluation import evaluate_folder
from unetzoo.inference.predictor import Predictor
from unetzoo.io import check_affine, file_ending, read_image, read_label, write_array
from unetzoo.runfolder import RunFolder
from unetzoo.training.validation import postprocess_validation

# ---- damaged .nii.gz --------------------------------------------------------------------------------------------


def _blob(shape=(12, 12, 12)) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[3:9, 3:9, 3:9] = 1
    return label


def _bad_crc(path: Path) -> None:
    """Half the voxel bytes of ``path`` zeroed inside a well-formed gzip stream that keeps the old CRC and length
    (what zeroed bytes mid-stream give a reader that stops at the last voxel)."""
    raw = path.read_bytes()
    data = bytearray(gzip.decompress(raw))
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
    path.write_bytes(gzip.compress(bytes(data))[:-8] + raw[-8:])


def test_damaged_gzip_is_one_line_naming_the_file(tmp_path):
    """A damaged `.nii.gz` is read without error: bytes zeroed mid-stream (bad gzip CRC) train, predict and
    evaluate; read to the end and check the CRC; one line naming the file."""
    image, label = tmp_path / "c_0000.nii.gz", tmp_path / "c.nii.gz"
    write_array(_blob().astype(np.float32) + 1, image)
    write_array(_blob(), label)
    assert read_label(label).array.sum() == _blob().sum()  # intact files read as before
    _bad_crc(image)
    _bad_crc(label)
    for read, path in [(read_image, image), (read_label, label)]:
        with pytest.raises(UnetzooError, match="damaged") as error:
            read(path)
        assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)
    write_array(_blob(), tmp_path / "pred" / "c.nii.gz")  # evaluate reads through the same reader
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "c.nii.gz").write_bytes(label.read_bytes())
    with pytest.raises(UnetzooError, match=rf"^{tmp_path / 'ref' / 'c.nii.gz'}: .*damaged"):
        evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "out")
    truncated = tmp_path / "t.nii.gz"
    write_array(_blob(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:-20])
    with pytest.raises(UnetzooError, match=rf"^{truncated}: .*damaged"):
        read_label(truncated)


# ---- the preprocessing cache ----------------------------------------------------------------------------------


@pytest.fixture
def one_case(tmp_path):
    dataset = load_dataset(write_organs_phantom(tmp_path / "data", cases=2, seed=0, shape=(16, 16, 12)))
    items = [case.as_dict() for case in dataset.cases]
    return items, make_plan(dataset, dataset.cases), tmp_path / "cache"


def _same(cases, items, plan) -> bool:
    return all(
        torch.equal(case["image"].as_tensor(), preprocessing(plan)(item)["image"].as_tensor())
        for case, item in zip(cases, items)
    )


def _cache_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "cache" in r.getMessage()]


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_full_disk_leaves_no_partial_entry_and_a_damaged_entry_is_rebuilt(one_case, monkeypatch, caplog, damage):
    """A full disk while the cache is written leaves a truncated file, and every later run on that plan fails until
    it is deleted by hand; a truncated or empty cache file crashes: write cache entries atomically and treat an
    unreadable entry as a miss (rebuild it, one warning)."""
    items, plan, root = one_case
    folder = plan_folder(plan, root)
    real_save = torch.save

    def full(obj, f, *args, **kwargs):  # half the bytes reach the file (a path or an open file), then the disk is full
        buffer = BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        Path(f).write_bytes(half) if isinstance(f, (str, os.PathLike)) else f.write(half)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UnetzooError, match="disk is full"):
        preprocessed_cases(items, plan, root)
    assert [p.name for p in folder.iterdir()] == []  # nothing half-written, under its name or a temporary one
    monkeypatch.setattr(torch, "save", real_save)
    preprocessed_cases(items, plan, root)
    entries = sorted(folder.glob("*.pt"))
    assert len(entries) == 2
    entries[0].write_bytes(b"" if damage == "empty" else entries[0].read_bytes()[:1000])  # a copy cut short
    with caplog.at_level(logging.WARNING):
        cases = preprocessed_cases(items, plan, root)
    assert _same(cases, items, plan)
    warnings = _cache_warnings(caplog)
    assert len(warnings) == 1 and str(entries[0]) in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # rebuilt: read back without a warning
        preprocessed_cases(items, plan, root)
    assert _cache_warnings(caplog) == [] and entries[0].stat().st_size > 1000


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_read_only_cache_folder_falls_back_to_no_cache(one_case, monkeypatch, caplog, code):
    """A read-only cache folder crashes on a miss: fall back to no cache when the folder is not writable (one
    warning). (Injected: the tests may run as root, whom permissions do not stop.)"""
    items, plan, root = one_case

    def read_only(obj, f, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(f))

    monkeypatch.setattr(torch, "save", read_only)
    with caplog.at_level(logging.WARNING):
        cases = preprocessed_cases(items, plan, root, workers=2)
    assert _same(cases, items, plan)
    warnings = _cache_warnings(caplog)
    assert len(warnings) == 1 and "preprocessing cache" in warnings[0]
    assert list(plan_folder(plan, root).glob("*.pt")) == []


def test_cache_folder_that_cannot_be_created_falls_back_to_no_cache(one_case, caplog):
    """Fall back to no cache when the folder is not writable (one warning): here a file stands where it should be."""
    items, plan, root = one_case
    root.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        cases = preprocessed_cases(items, plan, root)
    assert _same(cases, items, plan)
    warnings = _cache_warnings(caplog)
    assert len(warnings) == 1 and str(root) in warnings[0]


def test_cache_is_keyed_on_content_not_size_and_mtime(tmp_path):
    """An image changed with the same size and restored mtime gets its stale cached version served: key the
    entries on content (a hash of the file, not size and mtime)."""
    root, rng = tmp_path / "data", np.random.default_rng(0)
    for i in range(2):  # uncompressed NIfTI: new voxel values keep the file's size
        write_array(rng.normal(size=_blob().shape).astype(np.float32), root / "imagesTr" / f"c{i}_0000.nii")
        write_array(_blob(), root / "labelsTr" / f"c{i}.nii")
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "x": 1}, "file_ending": ".nii"})
    )
    dataset = load_dataset(root)
    items, plan = [c.as_dict() for c in dataset.cases], make_plan(dataset, dataset.cases)
    first = preprocessed_cases(items, plan, tmp_path / "cache")
    path = dataset.cases[0].images[0]
    stat = path.stat()
    write_array(rng.normal(size=_blob().shape).astype(np.float32), path, nib.load(path).affine)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    second = preprocessed_cases(items, plan, tmp_path / "cache")
    assert _same(second, items, plan)
    assert not torch.equal(first[0]["image"].as_tensor(), second[0]["image"].as_tensor())


# ---- channel files ----------------------------------------------------------------------------------------------


def _nnunet(root: Path, files: dict[str, np.ndarray], channels: int, affines: dict | None = None) -> Path:
    for name, array in files.items():
        write_array(array, root / name, (affines or {}).get(name))
    meta = {"channel_names": {str(i): "MRI" for i in range(channels)}, "labels": {"background": 0, "x": 1}}
    (root / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".nii.gz"}))
    return root


def test_channels_without_0000_or_on_a_flipped_grid_are_refused(tmp_path):
    """A case with channels `_0001` and `_0002` but no `_0000` is accepted; a channel stored on a flipped grid is
    accepted (channels misaligned): refuse both, naming the files."""
    image = _blob().astype(np.float32)
    gap = _nnunet(
        tmp_path / "gap",
        {"imagesTr/c_0001.nii.gz": image, "imagesTr/c_0002.nii.gz": image, "labelsTr/c.nii.gz": _blob()},
        channels=2,
    )
    with pytest.raises(UnetzooError, match=r"c_0001\.nii\.gz.*c_0002\.nii\.gz.*_0000") as error:
        load_dataset(gap)
    assert "\n" not in str(error.value)
    with pytest.raises(UnetzooError, match=r"c_0001\.nii\.gz.*_0000"):  # predict: the same folder of channels
        prediction_inputs(gap / "imagesTr", 2)

    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped[0, 3] = 11.0  # the same field of view, its first axis reversed
    files = {"imagesTr/c_0000.nii.gz": image, "imagesTr/c_0001.nii.gz": image[::-1], "labelsTr/c.nii.gz": _blob()}
    root = _nnunet(tmp_path / "flip", files, channels=2, affines={"imagesTr/c_0001.nii.gz": flipped})
    paths = load_dataset(root).cases[0].images
    with pytest.raises(UnetzooError, match=rf"^{paths[1]}: .*{paths[0].name}.*grid"):
        read_image(paths)


# ---- label ids ------------------------------------------------------------------------------------------------------


def test_label_ids_keep_their_values_in_every_written_label_map(tmp_path):
    """Label ids above 255 are written wrapped (300 -> 44) in `validation/postprocessed`, and the run can never
    finish; above 32767 they wrap in `io.py` (65537 -> 1). Choose the output dtype from the label ids."""
    big = tmp_path / "big.nii.gz"
    write_array(np.full((4, 4, 4), 65537, np.uint32), big)
    assert read_label(big).array.max() == 65537

    run = RunFolder(tmp_path / "run")
    plan = Plan.synthetic([12, 12, 12])
    plan.labels = {"0": "background", "300": "x"}
    run.path.mkdir()
    plan.save(run.plan)
    write_array(_blob().astype(np.uint16) * 300, run.validation / "c.nii.gz")
    write_array(_blob().astype(np.uint16) * 300, run.validation_labels / "c.nii.gz")
    postprocess_validation(run.path, logging.getLogger("test"))
    assert read_label(run.postprocessed / "c.nii.gz").array.max() == 300

    predictor = SimpleNamespace(plan=Plan.synthetic([4, 4, 4]), keep_largest={})
    predictor.plan.labels = {"0": "background", "65537": "x"}
    probs = torch.zeros(2, 4, 4, 4)
    probs[1] = 1
    assert Predictor.label_map(predictor, probs).max() == 65537  # predict's label maps too


# ---- MSD case names -------------------------------------------------------------------------------------------------


def test_msd_files_of_one_name_in_two_folders_are_refused(tmp_path):
    """An MSD `training` list with two files of one name in different folders logs 7 cases and silently drops one."""
    training = []
    for folder in ("siteA", "siteB"):
        write_array(_blob().astype(np.float32), tmp_path / "imagesTr" / folder / "case1.nii.gz")
        write_array(_blob(), tmp_path / "labelsTr" / folder / "case1.nii.gz")
        training.append({"image": f"./imagesTr/{folder}/case1.nii.gz", "label": f"./labelsTr/{folder}/case1.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "x"}, "training": training}))
    with pytest.raises(UnetzooError, match=r"siteA/case1\.nii\.gz.*siteB/case1\.nii\.gz") as error:
        load_dataset(tmp_path)
    assert str(error.value).startswith(str(tmp_path / "dataset.json")) and "\n" not in str(error.value)


# ---- one-line refusals, and what must not be refused --------------------------------------------------------------


def test_a_real_small_spacing_is_accepted_and_only_a_true_zero_refused(tmp_path):
    """A real 1e-4 mm spacing refused as zero: accept a real small spacing; refuse only a true zero/non-finite one."""
    path = tmp_path / "micro.nii.gz"
    write_array(_blob().astype(np.float32), path, np.diag([1e-4, 1e-4, 2e-4, 1.0]))
    assert np.allclose(read_image(path).spacing, [1e-4, 1e-4, 2e-4])
    for bad in (np.diag([1.0, 0.0, 1.0, 1.0]), np.diag([1.0, np.nan, 1.0, 1.0])):
        with pytest.raises(UnetzooError, match="zero or invalid voxel spacing"):
            check_affine(path, bad)
    parallel = np.eye(4)
    parallel[:3, 1] = parallel[:3, 0]  # two axes along one direction: no grid at all
    with pytest.raises(UnetzooError, match="invalid"):
        check_affine(path, parallel)


def test_one_channel_file_with_its_label_beside_it_is_predicted(tmp_path):
    """A single `CASE_0000` file refused because of a label beside it: a file naming one channel file
    `X_0000.nii.gz` must work even if a label file sits beside it."""
    image = tmp_path / "X_0000.nii.gz"
    write_array(_blob().astype(np.float32), image)
    write_array(_blob(), tmp_path / "X.nii.gz")
    assert prediction_inputs(image, 1) == {"X": [image]}


def test_upper_case_endings_are_one_line_everywhere(tmp_path):
    """`.NII.GZ` endings named inconsistently: handle them consistently everywhere (here: refused in one line
    naming the file, whichever command meets it first)."""
    image = tmp_path / "in" / "Y_0000.NII.GZ"
    write_array(_blob().astype(np.float32), tmp_path / "in" / "Y_0000.nii.gz")
    (tmp_path / "in" / "Y_0000.nii.gz").rename(image)
    for call in (
        lambda: file_ending(image),
        lambda: prediction_inputs(image, 1),
        lambda: prediction_inputs(image.parent, 1),
    ):
        with pytest.raises(UnetzooError, match=rf"^{image}: .*lower case") as error:
            call()
        assert "\n" not in str(error.value)
    root = _nnunet(
        tmp_path / "data", {"imagesTr/Y_0000.nii.gz": _blob().astype(np.float32), "labelsTr/Y.nii.gz": _blob()}, 1
    )
    (root / "imagesTr" / "Y_0000.nii.gz").rename(root / "imagesTr" / "Y_0000.NII.GZ")
    with pytest.raises(UnetzooError, match=rf"^{root / 'imagesTr' / 'Y_0000.NII.GZ'}: .*lower case"):
        load_dataset(root)
