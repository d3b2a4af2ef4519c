"""Dataset folders in the two layouts users already have: Medical Segmentation Decathlon and nnU-Net v2.

- MSD: ``dataset.json`` with ``modality`` ({"0": "MRI"}), ``labels`` ({"0": "background", "1": ...}) and a
  ``training`` list of ``{"image": "./imagesTr/NAME.nii.gz", "label": "./labelsTr/NAME.nii.gz"}``; a
  multi-modal image is one 4D file with the channels last.
- nnU-Net v2: ``dataset.json`` with ``channel_names``, ``labels`` (name -> int) and ``file_ending``; one file
  per channel ``imagesTr/CASE_0000.ext``, ``CASE_0001.ext`` ...; labels ``labelsTr/CASE.ext``.
  NIfTI for 3D, PNG (grey or RGB in one file) for 2D.

In both layouts a 1-channel dataset may hold 3D+t cases: one 4D NIfTI (X, Y, Z, T) image and label per subject.
Splits (:mod:`unetzoo.data.splits`) are over cases, so all frames of a subject fall in the same fold;
:meth:`Dataset.frame_items` then lists one item per frame for training.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from unetzoo.errors import UnetzooError, file_error
from unetzoo.io import (
    PILLOW_ENDINGS,
    SUPPORTED_ENDINGS,
    TIFF_ENDINGS,
    case_frames,
    file_ending,
    image_dims,
    read_json,
    strip_ending,
)
from unetzoo.itk_io import dicom_series

log = logging.getLogger(__name__)
IGNORE = "ignore"  # the name of nnU-Net's ignore label in dataset.json: voxels no class is known for


@dataclass
class Case:
    name: str
    images: list[Path]  # one file per channel (nnU-Net) or one file holding every channel (MSD, RGB PNG)
    label: Path | None = None

    def as_dict(self) -> dict:
        item = {"image": [str(p) for p in self.images], "name": self.name}
        if self.label is not None:
            item["label"] = str(self.label)
        return item


@dataclass
class Dataset:
    root: Path
    layout: str  # "msd" or "nnunet"
    channel_names: list[str]  # modality of every input channel, e.g. ["MRI"], ["CT"], ["R", "G", "B"]
    labels: dict[int, str]  # label id -> name, background included, the ignore label too
    file_ending: str
    cases: list[Case]

    @property
    def spatial_dims(self) -> int:
        return image_dims(self.cases[0].images[0])  # a TIFF is 3D with its spacing file (nnU-Net's Tiff3DIO)

    @property
    def ignore_label(self) -> int | None:
        """The id of the label named ``ignore`` (nnU-Net's ignore label: unlabelled voxels, the highest id), or None."""
        return ignore_label(self.labels)

    @property
    def class_labels(self) -> dict[int, str]:
        """The labels the network predicts: every label but the ignore label."""
        return {k: v for k, v in self.labels.items() if k != self.ignore_label}

    @property
    def num_classes(self) -> int:
        return len(self.class_labels)  # one class per label id, consecutive or not (see Plan.labels)

    def frame_items(self, names: list[str]) -> list[dict]:
        """One loader item per 3D frame of the named cases: the case's files plus ``case_index`` (position of the
        case in ``names``: the subject), ``frame_index`` and ``num_frames`` (0 and 1 for a 3D or 2D case)."""
        items = []
        for index, name in enumerate(names):
            case = self.case(name)
            frames = case_frames(case.images, len(self.channel_names))
            items += [
                {**case.as_dict(), "case_index": index, "frame_index": t, "num_frames": frames} for t in range(frames)
            ]
        return items

    def case(self, name: str) -> Case:
        for case in self.cases:
            if case.name == name:
                return case
        raise UnetzooError(f"{self.root}: no case named {name!r}")


def dataset_warnings(dataset: Dataset, label_values: set[int]) -> list[str]:
    """One line, naming the files, for each thing training survives but should not go unnoticed: cases whose image
    files are identical (one image under two names: if the folds separate them, validation scores an image the
    network trained on), label files no case uses (a label without its image), and label ids of ``dataset.json``
    that ``label_values`` (the values found in the training cases' label maps) never holds."""
    lines = []
    for cases in _identical_images(dataset.cases):
        lines.append(
            f"{' and '.join(str(c.images[0]) for c in cases)}: identical image files under {len(cases)} case names "
            f"({', '.join(c.name for c in cases)}): a duplicate that cross-validation may put on both sides of a split"
        )
    used = {case.label.resolve() for case in dataset.cases}
    for folder in sorted({case.label.parent for case in dataset.cases}):
        unused = sorted(
            p.name
            for p in folder.iterdir()
            if p.name.endswith(dataset.file_ending) and not p.name.startswith(".") and p.resolve() not in used
        )
        if unused:
            lines.append(
                f"{folder}: {len(unused)} label file(s) without an image (not trained on): {', '.join(unused)}"
            )
    absent = sorted(set(dataset.class_labels) - set(label_values))
    if absent:
        names = ", ".join(f"{label} ({dataset.labels[label]})" for label in absent)
        lines.append(
            f"{dataset.root / 'dataset.json'}: label id(s) {names} appear in no training case's label map: "
            "the network gets no example of them"
        )
    return lines


def _identical_images(cases: list[Case]) -> list[list[Case]]:
    """Groups of cases whose image files have the same bytes (compared by size first, then by SHA-256)."""
    by_size: dict[tuple, list[Case]] = {}
    for case in cases:
        by_size.setdefault(tuple(p.stat().st_size for p in case.images), []).append(case)
    groups: dict[tuple, list[Case]] = {}
    for same_size in by_size.values():
        for case in same_size if len(same_size) > 1 else []:
            groups.setdefault(tuple(file_digest(p) for p in case.images), []).append(case)
    return [group for group in groups.values() if len(group) > 1]


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    sha = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def load_dataset(root: str | Path) -> Dataset:
    """Read ``root/dataset.json`` and list the training cases; MSD or nnU-Net layout is detected."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not root.is_dir():
        raise file_error(root, "dataset folder not found")
    if not meta_path.is_file():
        raise file_error(meta_path, "missing dataset.json (expected the MSD or nnU-Net v2 layout)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise file_error(meta_path, f"invalid JSON ({exc})") from None
    except OSError as exc:
        raise file_error(meta_path, f"cannot read the file ({exc.strerror or type(exc).__name__})") from None
    if not isinstance(meta, dict):
        raise file_error(
            meta_path, "expected a JSON object with 'labels' and 'training' (MSD) or 'channel_names' (nnU-Net)"
        )
    if "labels" not in meta:
        raise file_error(meta_path, "no 'labels' entry")
    if not isinstance(meta["labels"], dict):
        raise file_error(
            meta_path,
            '\'labels\' must be an object: {"0": "background", ...} (MSD) or {"background": 0, ...} (nnU-Net)',
        )
    if "training" in meta and "channel_names" not in meta:
        dataset = _load_msd(root, meta, meta_path)
    elif "channel_names" in meta:
        dataset = _load_nnunet(root, meta, meta_path)
    else:
        raise file_error(meta_path, "neither an MSD ('training' list) nor an nnU-Net v2 ('channel_names') dataset.json")
    if not dataset.cases:
        raise file_error(root / "imagesTr", "no training cases found")
    if 0 not in dataset.labels:
        raise file_error(meta_path, "the labels must include background as 0")
    return dataset


def _int_labels(meta: dict, meta_path: Path, msd: bool) -> dict[int, str]:
    try:
        if msd:
            labels = {int(k): str(v) for k, v in meta["labels"].items()}
        else:
            labels = {int(v): str(k) for k, v in meta["labels"].items()}
    except (TypeError, ValueError):
        raise file_error(meta_path, "labels must map ids to names (MSD) or names to integer ids (nnU-Net)") from None
    ignored = sorted(k for k, v in labels.items() if v == IGNORE)
    if len(ignored) > 1:
        raise file_error(
            meta_path, f"labels {ignored} are all named {IGNORE!r}: the ignore label is one id, the highest"
        )
    if ignored and ignored[0] != max(labels):
        top = max(labels)
        raise file_error(
            meta_path,
            f"the label named {IGNORE!r} has id {ignored[0]}, but the ignore label must have the highest id "
            f"(as in nnU-Net): label {top} ({labels[top]}) is higher",
        )
    return labels


def ignore_label(labels: dict[int, str]) -> int | None:
    """The id of the label named ``ignore`` in ``labels`` (id -> name), or None."""
    return next((k for k, v in labels.items() if v == IGNORE), None)


def folder_ignore_label(labels_dir: Path) -> int | None:
    """The ignore label of the dataset a label folder belongs to (``labelsTr`` or ``labelsTs`` beside a
    ``dataset.json``), or None when the parent folder holds no dataset.json or it names no ignore label."""
    meta_path = Path(labels_dir).parent / "dataset.json"
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), dict):
        return None
    return ignore_label(_int_labels(meta, meta_path, msd="channel_names" not in meta))


def _channel_names(meta: dict, key: str, default: dict, meta_path: Path) -> list[str]:
    names = meta.get(key, default)
    if not isinstance(names, dict) or not names or not all(str(k).isdigit() for k in names):
        raise file_error(meta_path, f'\'{key}\' must map channel indices to names, e.g. {{"0": "MRI"}}')
    return [str(names[k]) for k in sorted(names, key=int)]


def _load_msd(root: Path, meta: dict, meta_path: Path) -> Dataset:
    channels = _channel_names(meta, "modality", {"0": "MRI"}, meta_path)
    if not isinstance(meta["training"], list):
        raise file_error(meta_path, '\'training\' must be a list of {"image": ..., "label": ...} entries')
    cases = []
    for i, entry in enumerate(meta["training"]):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("image", "label")):
            raise file_error(
                meta_path, f"training entry {i} must have an 'image' and a 'label' path, got {json.dumps(entry)[:80]}"
            )
        image = (root / entry["image"]).resolve()
        label = (root / entry["label"]).resolve()
        for path in (image, label):
            if not path.is_file():
                raise file_error(path, f"listed in {meta_path.name} but missing")
        name = strip_ending(image)
        same = next((case.images[0] for case in cases if case.name == name), None)
        if same is not None:
            raise file_error(
                meta_path,
                f"training images {same} and {image} have one case name {name!r} (the file name without its ending): "
                "case names must be unique, rename one",
            )
        cases.append(Case(name, [image], label))
    ending = file_ending(cases[0].images[0]) if cases else ".nii.gz"
    return Dataset(root, "msd", channels, _int_labels(meta, meta_path, msd=True), ending, cases)


def _load_nnunet(root: Path, meta: dict, meta_path: Path) -> Dataset:
    channels = _channel_names(meta, "channel_names", {}, meta_path)
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in SUPPORTED_ENDINGS:
        raise file_error(meta_path, f"file_ending {ending!r} not supported (use one of {', '.join(SUPPORTED_ENDINGS)})")
    if ending in PILLOW_ENDINGS + TIFF_ENDINGS and channels in (["R", "G", "B"], ["r", "g", "b"]):
        channels_in_files = 1  # nnU-Net's NaturalImage2DIO: RGB in one file
    else:
        channels_in_files = len(channels)
    groups = group_channel_files(root / "imagesTr", ending)
    if not groups:
        _check_ending(root / "imagesTr", ending, meta_path)
    cases = []
    for case_name, images in sorted(groups.items()):
        if len(images) != channels_in_files:
            raise file_error(
                root / "imagesTr" / f"{case_name}_0000{ending}",
                f"case has {len(images)} channel file(s), dataset.json lists {len(channels)} channel(s)",
            )
        label = root / "labelsTr" / f"{case_name}{ending}"
        if not label.is_file():
            endings = SUPPORTED_ENDINGS + tuple(e.upper() for e in SUPPORTED_ENDINGS)
            other = [p.name for e in endings if (p := label.parent / f"{case_name}{e}").is_file()]
            hint = (
                f": found {other[0]}, whose ending differs from file_ending {ending!r} in {meta_path.name}"
                if other
                else ""
            )
            raise file_error(label, f"label file missing for this training case{hint}")
        cases.append(Case(case_name, images, label))
    return Dataset(root, "nnunet", channels, _int_labels(meta, meta_path, msd=False), ending, cases)


def _check_ending(folder: Path, ending: str, meta_path: Path) -> None:
    """No image file has the ``file_ending`` of dataset.json: say so, and which endings the folder holds instead
    (".nii" while the files are ".nii.gz" would otherwise read as an empty dataset)."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.lower().endswith(SUPPORTED_ENDINGS) and not path.name.startswith("."):
            found.setdefault(file_ending(path), []).append(path.name)
    if found:
        held = ", ".join(f"{len(names)} {e!r} file(s) (e.g. {names[0]})" for e, names in found.items())
        raise file_error(meta_path, f"file_ending {ending!r} does not match the image files: {folder} holds {held}")


def channel_file(stem: str) -> tuple[str, int] | None:
    """(case, channel index) of an nnU-Net channel file's name without its ending (``CASE_0000``); None otherwise."""
    case, _, channel = stem.rpartition("_")
    return (case, int(channel)) if case and channel.isdigit() and len(channel) == 4 else None


def group_channel_files(folder: Path, ending: str) -> dict[str, list[Path]]:
    """``CASE_0000.ext``, ``CASE_0001.ext`` ... grouped by case, channels in order."""
    if not folder.is_dir():
        raise file_error(folder, "folder not found")
    files = [path for path in folder.iterdir() if path.name.lower().endswith(ending) and not path.name.startswith(".")]
    for path in files:
        file_ending(path)  # an upper-case ending is one line naming the file, not a file left out
        if channel_file(path.name[: -len(ending)]) is None:
            raise file_error(path, "image names must end in _XXXX (channel index), as CASE_0000" + ending)
    return _by_case(files, ending)


def _by_case(files: list[Path], ending: str) -> dict[str, list[Path]]:
    """Channel files (all named ``CASE_XXXX.ext``) grouped by case, channels in order; channels numbered otherwise
    than ``_0000``, ``_0001`` ... without a gap are one line naming the files (a channel missing, or misnumbered)."""
    groups: dict[str, list[tuple[int, Path]]] = {}
    for path in files:
        case, channel = channel_file(path.name[: -len(ending)])
        groups.setdefault(case, []).append((channel, path))
    for case, items in groups.items():
        if [channel for channel, _ in sorted(items)] != list(range(len(items))):
            raise file_error(
                items[0][1].parent,
                f"case {case!r} has the channel files {', '.join(p.name for _, p in sorted(items))}: channels are "
                f"numbered from _0000 without a gap ({case}_0000{ending}, {case}_0001{ending} ...)",
            )
    return {case: [p for _, p in sorted(items)] for case, items in groups.items()}


def prediction_inputs(input_path: str | Path, n_channel_files: int) -> dict[str, list[Path]]:
    """Cases to predict from a folder (nnU-Net ``CASE_0000.ext`` or MSD ``NAME.ext`` files, else DICOM series:
    :func:`dicom_cases`) or a single file. In a folder with ``CASE_0000`` files, any other file (a label ``CASE.ext``
    left beside its image) is skipped with a warning naming it, instead of being predicted as an image."""
    input_path = Path(input_path)
    if input_path.is_file():
        ending, stem = file_ending(input_path), strip_ending(input_path)
        numbered = channel_file(stem)
        if n_channel_files > 1 or numbered:
            if not numbered:
                raise file_error(
                    input_path,
                    f"the model expects {n_channel_files} channel files per case, named CASE_0000{ending} ...",
                )
            case = numbered[0]  # its channel files beside it; any other file there (its label CASE.ext) is not read
            siblings = input_path.parent.glob(f"{glob.escape(case)}_[0-9][0-9][0-9][0-9]{ending}")
            files = _by_case(list(siblings), ending)[case]
            if len(files) != n_channel_files:
                raise file_error(
                    input_path,
                    f"case {case!r} has {len(files)} channel file(s) in {input_path.parent}, the model expects {n_channel_files}",
                )
            return {case: files}
        return {stem: [input_path]}
    if not input_path.is_dir():
        raise file_error(input_path, "input not found")
    files = sorted(
        p for p in input_path.iterdir() if not p.name.startswith(".") and p.name.lower().endswith(SUPPORTED_ENDINGS)
    )
    if not files:
        series = dicom_cases(input_path)
        if series:
            return series
        raise file_error(
            input_path,
            f"no image files ({', '.join(SUPPORTED_ENDINGS)}) in this folder, nor DICOM series in it or its sub-folders",
        )
    ending = file_ending(files[0])
    stems = [strip_ending(p) for p in files]
    numbered = [p for p, s in zip(files, stems) if channel_file(s) is not None and p.name.endswith(ending)]
    if numbered:  # nnU-Net channel naming: a file without the suffix is no image of it (a label, most often)
        skipped = [p.name for p in files if p not in numbered]
        if skipped:
            log.warning(
                f"{input_path}: skipping {len(skipped)} file(s) not named like the images (CASE_0000{ending}; "
                f"a label?): {', '.join(skipped)}"
            )
        groups = _by_case(numbered, ending)
        for case, paths in groups.items():
            if len(paths) != n_channel_files:
                raise file_error(
                    paths[0], f"case {case!r} has {len(paths)} channel file(s), the model expects {n_channel_files}"
                )
        return groups
    if n_channel_files > 1:
        raise file_error(
            input_path, f"the model expects {n_channel_files} channel files per case, named CASE_0000{ending} ..."
        )
    return {s: [p] for s, p in zip(stems, files)}


def dicom_cases(folder: Path) -> dict[str, list[Path]]:
    """The DICOM series in ``folder`` and in its sub-folders, one case per series: ``{FOLDER_SERIESUID: [folder]}``,
    read by ITK's series reader in the series' geometry. A folder holding several series is refused (one series per
    folder) rather than mixed into one volume."""
    cases = {}
    for sub in [folder, *sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))]:
        series = dicom_series(sub)
        if len(series) > 1:
            raise file_error(sub, f"holds {len(series)} DICOM series ({', '.join(series)}): give one series per folder")
        if series:
            cases[f"{sub.resolve().name}_{series[0]}"] = [sub]
    return cases
