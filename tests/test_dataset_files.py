"""Dataset files that are fine but easy to misdescribe: a ``file_ending`` that matches no
file says what the folder holds; a palette label PNG is read by its indices."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unetzoo.data.datasets import load_dataset
from unetzoo.errors import UnetzooError
from unetzoo.io import read_image, read_label, read_label_frames, write_array


def _nnunet(root, image_name: str, label_name: str, ending: str):
    write_array(np.ones((4, 4, 4), np.float32), root / "imagesTr" / image_name)
    write_array(np.zeros((4, 4, 4), np.uint8), root / "labelsTr" / label_name)
    meta = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "x": 1}, "numTraining": 1, "file_ending": ending}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize(
    "ending, files, found",
    [(".nii", ".nii.gz", ".nii.gz"), (".nii.gz", ".nii", ".nii"), (".png", ".nii.gz", ".nii.gz")],
)
def test_file_ending_that_matches_no_image(tmp_path, ending, files, found):
    root = _nnunet(tmp_path / "d", f"a_0000{files}", f"a{files}", ending)
    with pytest.raises(UnetzooError) as error:
        load_dataset(root)
    assert str(error.value) == (
        f"{root / 'dataset.json'}: file_ending {ending!r} does not match the image files: {root / 'imagesTr'} "
        f"holds 1 {found!r} file(s) (e.g. a_0000{files})"
    )


def test_label_ending_that_differs_from_file_ending(tmp_path):
    root = _nnunet(tmp_path / "d", "a_0000.nii", "a.nii.gz", ".nii")
    with pytest.raises(
        UnetzooError,
        match=r"labelsTr/a.nii: label file missing for this training case: found a.nii.gz, whose ending "
        r"differs from file_ending '.nii' in dataset.json$",
    ):
        load_dataset(root)


def test_palette_label_png_is_read_by_its_indices(tmp_path):
    """A label PNG saved with a palette (mode P) holds the label values as indices; their colours (here white for 1)
    are only how a viewer shows them. An image PNG with a palette is still its colours."""
    from PIL import Image as PILImage

    label = np.zeros((8, 10), np.uint8)
    label[2:5, 3:7] = 1
    pil = PILImage.frombytes("P", (10, 8), label.tobytes())
    pil.putpalette([0, 0, 0, 255, 255, 255])
    pil.save(tmp_path / "a.png")
    assert PILImage.open(tmp_path / "a.png").mode == "P"
    assert np.array_equal(read_label(tmp_path / "a.png").array, label)
    assert np.array_equal(read_label_frames(tmp_path / "a.png")[0].array, label)
    image = read_image(tmp_path / "a.png")
    assert image.array.shape == (3, 8, 10) and set(np.unique(image.array)) == {0, 255}
