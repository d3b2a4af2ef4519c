"""Predict images with a trained run: preprocess, the method's full inference procedure, back to the input's
exact geometry (MONAI ``Invertd`` undoes resampling and reorientation on the probabilities), argmax, save.
Several runs (the folds of a cross-validation) predict as an :class:`Ensemble`: the mean of their probabilities.
Images already in memory: :meth:`Predictor.predict_array`.

NIfTI predictions keep the input's shape, affine and header; PNG predictions the input's size (or, on request,
another grid: ``--upsample``, ``--grid``; see :class:`unetzoo.methods.Grid`). A 3D+t input (4D NIfTI for a
1-channel model) is preprocessed frame by frame, predicted as one sequence and saved 4D (X, Y, Z, T). The run's
connected-component post-processing (``postprocessing.json``, chosen by training on the validation fold) is applied
to the labels (of each frame) unless turned off or replaced (``--no-postprocess``, ``--keep-largest``; see
:mod:`unetzoo.inference.postprocessing`). The output folder records what predict wrote there
(:class:`PredictionRecord`): a folder holding image files it did not write is refused, and a case already predicted
(every output written) is skipped unless ``overwrite``; files are written under a temporary name and renamed, and
the temporary files a killed run left are removed when the next one starts.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from unetzoo.config import Config, PredictConfig
from unetzoo.data.datasets import prediction_inputs
from unetzoo.data.plan import Plan
from unetzoo.data.transforms import preprocessing
from unetzoo.device import inference_precision, resolve_device
from unetzoo.errors import UnetzooError, file_error
from unetzoo.inference.postprocessing import keep_largest, parse_rules, run_rules
from unetzoo.io import (
    NIFTI_ENDINGS,
    SUPPORTED_ENDINGS,
    Image,
    case_frames,
    check_affine,
    ending_dims,
    file_ending,
    format_name,
    image_dims,
    label_dtype,
    output_ending,
    output_folder,
    read_array,
    read_json,
    remove_leftovers,
    write_array,
    write_bytes,
    write_text,
)
from unetzoo.methods import Grid, build_method, inference_context, method_class
from unetzoo.methods.grid import coarse_grid, refined_affine
from unetzoo.runfolder import RunFolder

log = logging.getLogger(__name__)


def load_weights(model: torch.nn.Module, checkpoint_path: Path) -> dict:
    """Load the model weights of a Lightning checkpoint (keys ``model.*``); returns the checkpoint. A file without
    weights, or whose weights do not fit ``model`` (the run's ``config.json`` edited after training), is one line
    naming it and the first mismatch."""
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise file_error(checkpoint_path, f"cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    weights = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict):
        raise file_error(
            checkpoint_path, "holds no 'state_dict' (the model weights): not a checkpoint of a unetzoo run"
        )
    state = {k[len("model.") :]: v for k, v in weights.items() if k.startswith("model.")}
    mismatch = _mismatch(model.state_dict(), state)
    if mismatch:
        raise file_error(
            checkpoint_path,
            f"does not fit the model of the run's config.json ({mismatch}): were its model_args changed after training?",
        )
    model.load_state_dict(state)
    return checkpoint


def _mismatch(own: dict, state: dict) -> str:
    """What keeps the weights ``state`` from loading into a model whose state dict is ``own``: the first tensor of
    another shape, missing or unexpected, with how many; '' when they fit."""
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    problems = []
    if shapes:
        first = shapes[0]
        problems.append(
            f"{len(shapes)} tensor(s) of another shape, e.g. {first}: {tuple(state[first].shape)} in the checkpoint, "
            f"{tuple(own[first].shape)} in the model"
        )
    if missing:
        problems.append(f"{len(missing)} tensor(s) of the model missing, e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) the model lacks, e.g. {unexpected[0]}")
    return "; ".join(problems)


PREDICTION_RECORD = ".unetzoo-predictions.json"  # in an output folder: the files predict wrote there


class PredictionRecord:
    """The files predict wrote into an output folder, by name with their size (None while one is being written),
    kept in ``.unetzoo-predictions.json`` there and rewritten (atomically) as each prediction lands. An image file
    of the folder that it does not list (a reference, an image, a prediction changed since) is not predict's: the
    folder is refused rather than its files taken for finished predictions or overwritten; a killed predict resumes,
    redoing the case it was writing."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / PREDICTION_RECORD
        record = read_json(self.path, {"files": {}})
        self.files = record.get("files") if isinstance(record, dict) else None
        if not isinstance(self.files, dict):
            raise file_error(self.path, "not a record of predictions (an object with 'files'): remove it")

    def check(self) -> None:
        """One line naming an image file of the folder that predict did not write, and how many there are."""
        folder = self.path.parent
        if not folder.is_dir():
            return
        foreign = sorted(p.name for p in folder.iterdir() if _is_output(p) and not self._own(p))
        if foreign:
            raise file_error(
                folder,
                f"holds {len(foreign)} image file(s) that predict did not write (e.g. {foreign[0]}): predict into an "
                "empty or new folder",
            )

    def _own(self, path: Path) -> bool:
        return path.name in self.files and self.files[path.name] in (None, path.stat().st_size)

    def finished(self, paths: list[Path]) -> bool:
        """Whether predict wrote every one of ``paths`` to the end."""
        return all(p.is_file() and self.files.get(p.name) == p.stat().st_size for p in paths)

    def writing(self, paths: list[Path]) -> None:
        self._save({p.name: None for p in paths})

    def written(self, paths: list[Path]) -> None:
        self._save({p.name: p.stat().st_size for p in paths})

    def _save(self, entries: dict) -> None:
        self.files.update(entries)
        write_text(self.path, json.dumps({"files": self.files}, indent=1) + "\n")


def _is_output(path: Path) -> bool:
    """An image, label or probabilities file (what predict writes, or could take for its own)."""
    name = path.name.lower()
    return not name.startswith(".") and name.endswith((*SUPPORTED_ENDINGS, ".npz")) and path.is_file()


COMPATIBLE = ("spatial_dims", "channel_names", "n_channel_files", "labels")  # plan fields an ensemble's runs share


class Predictor:
    """A trained run ready to predict: ``Predictor(run_dir).predict_cases({name: [files]}, out_dir)``, or
    ``Predictor(run_dir).predict_array(array, affine)`` for an image in memory.

    ``options`` (:class:`unetzoo.config.PredictConfig`, the options of ``unetzoo predict``; checked first), or its
    fields as keywords (``Predictor(run, device="cpu", upsample=2)``, on top of ``options``):
    outputs lie on the input file's own grid, or on a target grid: ``upsample`` F > 1 refines the input's grid
    F times (same world extent), ``grid`` (a NIfTI file) takes that image's grid (another plane, another
    resolution). Methods with a continuous function sample it there; the others' probabilities are resampled.
    ``checkpoint`` None (default) the run's reported weights (its ``train.select``: "last" unless it chose "best"),
    "best" (falls back to the last one, with a warning, when the run has none), "last" or a snapshot "at_N"
    (``train.snapshots``); the file loaded is ``checkpoint_path``. ``overlap``, ``mirror`` and ``precision``, where not None, replace the run's
    ``inference`` settings; ``precision`` (default the run's ``inference.precision``, ``auto``): fp32 unless bf16 was
    checked to give the same labels on this kind of device (:func:`unetzoo.device.inference_precision`).
    Post-processing: ``keep_largest`` ``{class: K}`` keeps the K largest connected components of each listed class
    in the label maps, ``{}`` turns post-processing off, a text "K" or "CLASS:K,..." (``--keep-largest``) is read
    against the run's classes; without it, the options' ``keep_largest`` text or ``no_postprocess``, else the run's
    own choice (``postprocessing.json``).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        options: PredictConfig | None = None,
        keep_largest: dict[int, int] | str | None = None,
        **fields,
    ):
        options = _options(options, fields)
        run = RunFolder(run_dir).require()
        run_dir = run.path
        config = options.override(Config.load(run.config))  # a corrupt one is named before the choice it holds is read
        self.checkpoint_path = run.checkpoint(options.checkpoint)  # a bad or missing one is refused before any build
        if options.fit_slices != 1:
            # fit at test time on every K-th slice only (Stolt-Ansó et al. 2023, arXiv:2309.08643, Fig. 5)
            if not method_class(config.model).grad_at_inference:
                raise UnetzooError(f"--fit-slices needs a model that fits at test time (nisf), not {config.model!r}")
            config.method_args["fit_slices"] = options.fit_slices
        config.validate()
        self.options = options
        self.plan = Plan.load(run.plan)
        if options.output_format and self.plan.spatial_dims not in ending_dims(options.output_format):
            raise UnetzooError(
                f"--output-format {options.output_format}: a {format_name(options.output_format)} file cannot "
                f"hold the {self.plan.spatial_dims}D images this run predicts"
            )
        self.device = resolve_device(options.device)
        self.precision, self.precision_line = inference_precision(config.inference.precision, self.device, run_dir)
        self.method, self.config = build_method(config, self.plan)
        self.upsample = options.upsample
        self.grid_reference = Path(options.grid) if options.grid is not None else None
        if self.grid_reference is not None:
            if self.plan.spatial_dims != 3 or file_ending(self.grid_reference) not in NIFTI_ENDINGS:
                raise file_error(
                    self.grid_reference, "--grid needs a NIfTI reference image and a run trained on 3D NIfTI data"
                )
            if not self.grid_reference.is_file():
                raise file_error(self.grid_reference, "--grid reference image not found")
        load_weights(self.method.model, self.checkpoint_path)
        self.method.model.to(self.device).eval()
        self.preprocess = preprocessing(self.plan, with_label=False)
        rules = _postprocessing(options, keep_largest, self.plan)
        self.keep_largest = run_rules(run_dir) if rules is None else rules

    def target_geometry(self, source: list[Path] | Image) -> tuple[np.ndarray | None, tuple[int, ...], object]:
        """(affine, shape, header) of the output of a case (its files, or an :class:`Image` in memory): the --grid
        reference's, or the input's (refined F times with --upsample); 2D inputs have no affine or header."""
        if self.grid_reference is not None or not isinstance(source, Image):
            affine, shape, header = file_geometry(self.grid_reference or source[0])
        else:
            affine = source.affine if source.spatial_dims == 3 else None
            shape, header = source.spatial_shape, source.header
        if self.upsample > 1:
            shape = tuple(self.upsample * s for s in shape)
            affine = refined_affine(affine, self.upsample) if affine is not None else None
        return affine, shape, header

    def check_files(self, paths: list[Path]) -> None:
        """The case's files are what the run was trained on (2D PNG or 3D NIfTI, one file per channel file of the
        plan), before anything is read: a one-line error naming the file otherwise."""
        trained = f"{self.plan.spatial_dims}D {format_name(self.plan.file_ending)}"
        for path in paths:
            dims = image_dims(path)
            if dims != self.plan.spatial_dims:
                raise file_error(
                    path, f"a {dims}D {format_name(path)} image, but the run was trained on {trained} images"
                )
        if len(paths) != self.plan.n_channel_files:
            raise file_error(
                paths[0],
                f"{len(paths)} channel file(s) for this case, the run expects {self.plan.n_channel_files} "
                f"(CASE_0000{self.plan.file_ending} ... one per channel {self.plan.channel_names})",
            )

    def predict_probabilities(self, source: list[Path] | Image) -> torch.Tensor:
        """Class probabilities of one case (its files, checked first by :meth:`check_files`, or an :class:`Image` in
        memory) on its output grid (:meth:`target_geometry`): (K, *spatial), or (K, *spatial, T) for a 3D+t case, whose
        T frames go to the method together (:meth:`Method.predict_sequence`)."""
        in_memory = isinstance(source, Image)
        if not in_memory:
            self.check_files(source)
        frames = 1 if in_memory else case_frames(source, self.plan.in_channels)
        image = source if in_memory else [str(p) for p in source]
        items = [self.preprocess({"image": image, "frame_index": t, "num_frames": frames}) for t in range(frames)]
        channels = items[0]["image"].shape[0]
        if channels != self.plan.in_channels:
            hint = (
                " (a 4D image is 3D+t only for a 1-channel model; for a C-channel one it holds the C channels)"
                if self.plan.in_channels > 1
                else ""
            )
            raise file_error(
                source.path if in_memory else source[0],
                f"has {channels} channel(s), the model expects {self.plan.in_channels}{hint}",
            )
        images = [data["image"].as_tensor()[None].to(self.device) for data in items]
        own_grid = self.upsample == 1 and self.grid_reference is None
        coarse = self.plan.downsample > 1  # a 2D plan's coarse grid: back to the input's pixels through a grid
        grid = None if own_grid and not coarse else self._grid(items[0]["image"], source)
        bf16 = self.precision == "bf16-mixed"
        with inference_context(self.method), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            probs = (
                [self.method.predict(images[0], grid)] if frames == 1 else self.method.predict_sequence(images, grid)
            )
        probs = [p[0].float().cpu() for p in probs]
        if own_grid and self.plan.spatial_dims == 3:  # undo resampling and reorientation exactly (MONAI Invertd)
            probs = [self._invert(p, data) for p, data in zip(probs, items)]
        return probs[0] if frames == 1 else torch.stack(probs, dim=-1)

    def _grid(self, image: MetaTensor, source: list[Path] | Image) -> Grid:
        """The output grid (--upsample, --grid) in the frame of the preprocessed image."""
        affine, shape, _ = self.target_geometry(source)
        if self.plan.spatial_dims == 3:
            return Grid.between(image.affine.numpy(), affine, shape)
        # a 2D image is predicted in its own pixel frame, refined --upsample times, through the plan's coarse grid
        pixels = tuple(s // self.upsample for s in shape)
        to_coarse = coarse_grid(pixels, image.shape[1:])
        return Grid(shape, to_coarse @ refined_affine(np.eye(len(shape) + 1), self.upsample))

    def _invert(self, probs: torch.Tensor, data: dict) -> torch.Tensor:
        image = data["image"]
        pred = MetaTensor(probs, affine=image.affine, meta=dict(image.meta))
        pred.applied_operations = list(image.applied_operations)
        data = Invertd("pred", transform=self.preprocess, orig_keys="image", nearest_interp=False)(
            {**data, "pred": pred}
        )
        return data["pred"].as_tensor()

    def label_map(self, probs: torch.Tensor) -> np.ndarray:
        """The label map of class probabilities ``(K, *spatial)`` or, 3D+t, ``(K, *spatial, T)``: argmax, then each
        class's label id (the plan's ids, which need not be consecutive), in the type the ids need (:func:`label_dtype`),
        post-processed by ``keep_largest`` (whose rules name label ids; frame by frame)."""
        ids = np.asarray(self.plan.label_ids)
        label = ids[probs.argmax(0).numpy()].astype(label_dtype(ids))
        return (
            keep_largest(label, self.keep_largest, frames=label.ndim > self.plan.spatial_dims)
            if self.keep_largest
            else label
        )

    def predict_cases(
        self,
        cases: dict[str, list[Path]],
        out_dir: str | Path,
        overwrite: bool | None = None,
        save_probabilities: bool | None = None,
    ) -> list[Path]:
        """Predict every case into ``out_dir/CASE.<input ending>`` (never an input's own folder, nor one holding image
        files predict did not write: :class:`PredictionRecord`); returns the written (or kept) files. ``overwrite``,
        ``save_probabilities``: None takes the options'."""
        from tqdm import tqdm

        overwrite = self.options.overwrite if overwrite is None else overwrite
        save_probabilities = self.options.save_probabilities if save_probabilities is None else save_probabilities
        for paths in cases.values():  # every case's files of the run's kind before the first is predicted
            self.check_files(paths)
        if Path(out_dir).resolve() in {path.parent.resolve() for paths in cases.values() for path in paths}:
            raise file_error(
                out_dir,
                "is the input folder: the predictions would mix with the images (CASE.ext beside CASE_0000.ext, "
                "or overwrite an image of the same name); choose another output folder",
            )
        record = PredictionRecord(out_dir)
        record.check()
        out_dir = output_folder(out_dir)
        remove_leftovers(out_dir)
        written = []
        for name, paths in tqdm(sorted(cases.items()), desc="predicting", unit="case", disable=len(cases) < 2):
            target = out_dir / f"{name}{output_ending(paths[0], self.options.output_format)}"
            outputs = [target, out_dir / f"{name}.npz"] if save_probabilities else [target]
            if record.finished(outputs) and not overwrite:
                written.append(target)
                continue
            probs = self.predict_probabilities(paths)
            affine, shape, header = self.target_geometry(paths)
            frames = case_frames(paths, self.plan.in_channels)
            shape = (*shape, frames) if frames > 1 else shape  # 3D+t: (X, Y, Z, T) like the input
            label = self.label_map(probs)
            if tuple(label.shape) != tuple(shape):
                raise file_error(paths[0], f"internal error: prediction shape {label.shape} != output shape {shape}")
            record.writing(outputs)
            if save_probabilities:
                save_npz(outputs[1], probabilities=probs.numpy().astype(np.float16))
            write_array(label, target, affine, header)
            record.written(outputs)
            written.append(target)
        return written

    def predict_array(self, array: np.ndarray, affine: np.ndarray | None = None) -> np.ndarray:
        """The label map (label ids, as :meth:`label_map`) of an image in memory, in the input's geometry (or on
        --grid / --upsample's grid).

        ``array`` is channel-first ``(C, *spatial)`` as :func:`unetzoo.io.read_image` gives (``(*spatial)`` for
        one channel); ``affine`` its 4x4 voxel-to-world matrix (3D; identity when None, ignored in 2D), which
        decides orientation and spacing exactly as a file's affine does.
        """
        image = array_image(array, affine, self.plan)
        return self.label_map(self.predict_probabilities(image))


class Ensemble(Predictor):
    """Several runs of one dataset (the folds of a cross-validation) predicting as one: the mean of their class
    probabilities, nnU-Net's default. The runs must share channels and labels; each preprocesses with its own
    plan and returns probabilities on the same output grid, so models, spacings and patches may differ. ``options``
    and ``keep_largest`` as :class:`Predictor`'s, for every run; without a post-processing choice the ensemble keeps
    the largest component of the classes for which every run chose to."""

    def __init__(
        self,
        run_dirs: list[str | Path],
        *,
        options: PredictConfig | None = None,
        keep_largest: dict[int, int] | str | None = None,
        **fields,
    ):
        options = _options(options, fields)
        self.members = [Predictor(run_dir, options=options, keep_largest=keep_largest) for run_dir in run_dirs]
        first = self.members[0]
        for run_dir, member in zip(run_dirs[1:], self.members[1:]):
            for name in COMPATIBLE:
                if getattr(member.plan, name) != getattr(first.plan, name):
                    raise file_error(
                        RunFolder(run_dir).plan,
                        f"cannot ensemble with {run_dirs[0]}: {name} "
                        f"{getattr(member.plan, name)} differs from {getattr(first.plan, name)}",
                    )
        self.options, self.plan = options, first.plan
        self.upsample, self.grid_reference = first.upsample, first.grid_reference
        shared = set.intersection(*(set(m.keep_largest.items()) for m in self.members))
        chosen = keep_largest is not None or options.no_postprocess or options.keep_largest is not None
        self.keep_largest = dict(first.keep_largest) if chosen else dict(shared)

    def predict_probabilities(self, source: list[Path] | Image) -> torch.Tensor:
        return sum(member.predict_probabilities(source) for member in self.members) / len(self.members)


def array_image(array: np.ndarray, affine: np.ndarray | None, plan: Plan) -> Image:
    """An in-memory image as :class:`Image` (what reading a file of the plan's kind gives); wrong dimensions or
    channels, or non-finite values, are a one-line error."""
    array = np.asarray(array, dtype=np.float32)
    dims = plan.spatial_dims
    if array.ndim == dims:
        array = array[None]
    if array.ndim != dims + 1 or array.shape[0] != plan.in_channels:
        raise UnetzooError(
            f"array of shape {array.shape}: the run expects {plan.in_channels} channel(s) of a {dims}D image, "
            f"shaped (C, {', '.join('XYZ'[:dims]) if dims == 3 else 'H, W'})"
        )
    if not np.all(np.isfinite(array)):
        raise UnetzooError(f"array of shape {array.shape} contains NaN or infinite values")
    affine = np.eye(4) if affine is None or dims == 2 else np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise UnetzooError(f"affine must be a 4x4 matrix, got shape {affine.shape}")
    check_affine("array", affine)
    return Image(array, affine, Path("array" + (".nii.gz" if dims == 3 else ".png")))


def file_geometry(path: Path) -> tuple[np.ndarray | None, tuple[int, ...], object]:
    """(affine, spatial shape, header) of a 3D image (a NIfTI's header, others' None); (None, (H, W), None) of a 2D
    one."""
    if not Path(path).is_dir() and file_ending(path) in NIFTI_ENDINGS:
        import nibabel as nib

        try:
            ref = nib.load(str(path))
        except Exception as exc:
            raise file_error(path, f"cannot read NIfTI file ({type(exc).__name__}: {exc})") from None
        check_affine(path, ref.affine)
        return np.asarray(ref.affine, dtype=np.float64), tuple(int(s) for s in ref.shape[:3]), ref.header
    data, affine, _ = read_array(path)
    dims = image_dims(path)
    return (affine if dims == 3 else None), tuple(data.shape[:dims]), None


def save_npz(path: Path, **arrays) -> Path:
    """``np.savez_compressed`` written atomically (temporary name in the same folder, then rename)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_bytes(path, buffer.getvalue())


def predict(
    run_dir,
    input_path,
    output_dir,
    *,
    options: PredictConfig | None = None,
    keep_largest: dict[int, int] | str | None = None,
    **fields,
) -> list[Path]:
    """Predict a folder (``CASE_0000.ext`` or MSD ``NAME.ext`` files) or one file into ``output_dir`` with one run,
    or with a list of runs as an :class:`Ensemble`. ``options`` (:class:`unetzoo.config.PredictConfig`) or its fields
    as keywords (``predict(run, images, out, device="cpu", overwrite=True)``): ``upsample`` F > 1 writes F-times finer
    outputs of the same world extent, ``grid`` outputs on that image's grid, ``fit_slices`` K > 1 fits a test-time
    latent on every K-th slice only (nisf), ...; ``keep_largest`` as :class:`Predictor`'s."""
    options = _options(options, fields)
    runs = list(run_dir) if isinstance(run_dir, (list, tuple)) else [run_dir]
    chosen = {"options": options, "keep_largest": keep_largest}
    predictor = Ensemble(runs, **chosen) if len(runs) > 1 else Predictor(runs[0], **chosen)
    cases = prediction_inputs(input_path, predictor.plan.n_channel_files)
    return predictor.predict_cases(cases, output_dir)


def _options(options: PredictConfig | None, fields: dict) -> PredictConfig:
    """:meth:`PredictConfig.merged`; ``grid_reference`` is the older name of ``grid``."""
    fields = {("grid" if name == "grid_reference" else name): value for name, value in fields.items()}
    return PredictConfig.merged(options, **fields)


def _postprocessing(
    options: PredictConfig, keep_largest: dict[int, int] | str | None, plan: Plan
) -> dict[int, int] | None:
    """The connected-component rules asked for: ``keep_largest``, else ``{}`` for ``no_postprocess``, else the
    options' ``keep_largest``; a text ("K", "CLASS:K,...") is read for the plan's classes. None where nothing was
    asked (the run's own choice)."""
    if keep_largest is None:
        keep_largest = {} if options.no_postprocess else options.keep_largest
    if isinstance(keep_largest, str):
        return parse_rules(keep_largest, plan.label_ids[1:])
    return None if keep_largest is None else dict(keep_largest)
