"""One volume through the model: :func:`prepare_volume` (read, refuse what cannot be assessed, preprocess) and
:func:`score_volume` (Eq. 7 scores, Eq. 8 predictions, calibrated probabilities, study findings), their MONAI
dictionary transform :class:`PrepareVolumed` and :func:`infer_volume`, both steps in one call.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..calibration import calibration_margin
from ..errors import is_user_error, one_line
from ..networks.detector import SignDrivenDetector
from ..transforms import ExtractSlices, LoadSlices, clip_slice_transforms
from ..visualize import display_image
from .results import NotAssessableError, VolumeResult, _model_description, slice_problem, study_findings

__all__ = [
    "FailedVolume",
    "PrepareVolumed",
    "PreparedVolume",
    "check_volume_inputs",
    "collate_volumes",
    "infer_volume",
    "prepare_volume",
    "prepare_volume_batch",
    "score_volume",
    "volume_datalist",
]

logger = logging.getLogger(__name__)


@dataclass
class PreparedVolume:
    """One volume read, checked and preprocessed for the detector: what :func:`score_volume` takes.

    Attributes:
        source: the volume's path (or ``meta["filename_or_obj"]`` of an in-memory volume).
        axis: slicing axis.
        images: ``[N, 3, S, S]`` float32 CLIP inputs of the slices to score.
        slice_indices: their ``N`` canonical slice indices.
        not_assessed: slices left out of a scan because they cannot be assessed, with the reason.
        slice_shape: ``(rows, cols)`` of the slices before resizing.
        volume_affine: the scan's 4x4 RAS+ affine.
        volume_shape: the scan's three spatial sizes.
    """

    source: str
    axis: str
    images: torch.Tensor
    slice_indices: list[int]
    not_assessed: dict[int, str]
    slice_shape: tuple[int, int]
    volume_affine: np.ndarray
    volume_shape: tuple[int, int, int]


def prepare_volume(
    path: str | Path | MetaTensor,
    image_size: int,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    axis: str = "axial",
    indices: Sequence[int] | None = None,
    positions: Sequence[float] | None = None,
    stride: int | None = None,
) -> PreparedVolume:
    """Read the chosen slices of one volume, refuse the ones that cannot be assessed and preprocess them.

    Only the requested slices are read. With no index policy given, every slice is taken. Arguments as in
    :func:`infer_volume`; ``image_size``, ``image_mean`` and ``image_std`` are the detector's.

    Raises:
        NotAssessableError: a slice asked for by index is blank, constant or mostly NaN (when scanning with
            ``stride``/``positions``, such slices are left out and listed in ``not_assessed`` unless none is left).
    """
    scanning = indices is None
    if indices is None and positions is None and stride is None:
        stride = 1
    if isinstance(path, MetaTensor):
        slices = ExtractSlices(axis, indices, positions, stride)(path)
        source = str(path.meta.get("filename_or_obj", "") or "<in-memory volume>")
    else:
        slices = LoadSlices(axis, indices, positions, stride)(path)
        source = str(path)
    problems = {int(s.meta["slice_index"]): p for s in slices if (p := slice_problem(s)) is not None}
    if problems and (not scanning or len(problems) == len(slices)):
        listed = "; ".join(f"slice {k}: {v}" for k, v in problems.items())
        raise NotAssessableError(
            f"{source}: cannot be assessed ({listed}); no findings are reported for it (a blank or corrupt image is "
            "not a normal one)."
        )
    if problems:
        logger.warning("%s: %d slice(s) left out, they cannot be assessed: %s", source, len(problems), problems)
        slices = [s for s in slices if int(s.meta["slice_index"]) not in problems]
    preprocess = clip_slice_transforms("image", image_size, image_mean, image_std)
    first = slices[0].meta
    return PreparedVolume(
        source=source,
        axis=axis,
        images=torch.stack([torch.as_tensor(preprocess({"image": s})["image"]) for s in slices]).float(),
        slice_indices=[int(s.meta["slice_index"]) for s in slices],
        not_assessed=problems,
        # a slice's spatial_shape has two sizes, its volume's three (by construction of ExtractSlices/LoadSlices)
        slice_shape=cast("tuple[int, int]", tuple(int(v) for v in first["spatial_shape"])),
        # an array of its own, not a view of the slice metadata's tensor memory
        volume_affine=np.array(first["volume_affine"], dtype=np.float64, copy=True),
        volume_shape=cast("tuple[int, int, int]", tuple(int(v) for v in first["volume_spatial_shape"])),
    )


@torch.no_grad()
def score_volume(
    detector: SignDrivenDetector,
    volume: PreparedVolume,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    anomaly_maps: bool = False,
    display_images: bool | None = None,
) -> VolumeResult:
    """Score a :class:`PreparedVolume`: Eq. 7 scores, Eq. 8 predictions and study findings per volume.

    Args:
        detector: the trained detector (switched to eval mode here).
        volume: from :func:`prepare_volume` (with this detector's image size and normalisation).
        batch_size: slices per forward pass.
        device: where to run; defaults to the detector's device.
        anomaly_maps: keep the detector's ``"anomaly_map"`` output per slice (same backbone pass as the scores) and
            the slices as seen, for the 3D map and the overlays.
        display_images: keep the uint8 slices as the detector saw them (``VolumeResult.display_images``, what the
            overlays draw on); default: with the maps. ``False`` for callers that write maps but never draw them
            (the DICOM Parametric Map, MONAI Label's label volume).

    Raises:
        ValueError: ``anomaly_maps`` is asked for but the detector gives no ``"anomaly_map"``.
        NotAssessableError: the model gives non-finite scores.
    """
    detector.eval()
    device = device or next(detector.parameters()).device
    source, images = volume.source, volume.images
    keys = ("scores", "predictions", "image_score", "anchor_similarity") + (("anomaly_map",) if anomaly_maps else ())
    outputs: list[dict[str, torch.Tensor]] = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device=device, dtype=torch.float32)
        result = detector(batch, output="all", maps=anomaly_maps)
        if anomaly_maps and not result.has_maps:
            raise ValueError(
                f"{source}: anomaly maps were asked for but the detector gives none; build it with map layers "
                "(SignDrivenDetector(map_layers=None or a list), not map_layers=[])."
            )
        outputs.append({k: result[k].cpu() for k in keys})
    scores = torch.cat([o["scores"] for o in outputs])
    predictions = torch.cat([o["predictions"] for o in outputs])
    image_scores = torch.cat([o["image_score"] for o in outputs])
    if not (torch.isfinite(scores).all() and torch.isfinite(image_scores).all()):
        raise NotAssessableError(
            f"{source}: the model gave non-finite (NaN or infinite) scores; no findings are reported. Check the "
            "checkpoint and the device."
        )
    probabilities = None
    if detector.calibration is not None:
        margins = calibration_margin(scores, torch.cat([o["anchor_similarity"] for o in outputs]))
        probabilities = detector.calibration.probabilities(margins)
    maps: dict[str, Any] = {}
    if anomaly_maps:
        maps = {
            "anomaly_maps": torch.cat([o["anomaly_map"] for o in outputs]).to(torch.float32),
            "display_images": np.stack([display_image(x, detector.image_mean, detector.image_std) for x in images])
            if (anomaly_maps if display_images is None else display_images)
            else None,
            "slice_shape": volume.slice_shape,
            "volume_affine": volume.volume_affine,
            "volume_shape": volume.volume_shape,
        }
    return VolumeResult(
        source=source,
        axis=volume.axis,
        slice_indices=list(volume.slice_indices),
        scores=scores,
        predictions=predictions,
        image_scores=image_scores,
        findings=study_findings(
            volume.slice_indices,
            scores,
            predictions,
            detector.category_labels,
            detector.prompt_bank.display_names,
            probabilities=probabilities,
            rules=detector.decision_rules(),
        ),
        probabilities=probabilities,
        category_labels=detector.category_labels,
        model=_model_description(detector),
        not_assessed=dict(volume.not_assessed),
        **maps,
    )


@dataclass
class FailedVolume:
    """A volume that could not be processed, with the reason (one line): what the bundle's inference carries for
    it instead of a result, so that it never sinks the other volumes and is listed in ``findings.json``."""

    source: str
    error: str

    @classmethod
    def from_error(cls, source: str, error: Exception) -> FailedVolume:
        """The failure of ``source`` when ``error`` is the user's (:func:`~sdmad_monai.errors.is_user_error`);
        any other error (a bug) is raised again."""
        if not is_user_error(error):
            raise error
        return cls(str(source), one_line(error))


class _VolumeSettings(TypedDict):
    """The :func:`prepare_volume` arguments a :class:`PrepareVolumed` holds."""

    image_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    axis: str
    indices: list[int] | None
    positions: Sequence[float] | None
    stride: int | None


class PrepareVolumed(MapTransform):
    """Dictionary transform of the bundle's inference: ``d[key]`` (a volume path) -> ``d["volume"]``, the
    :class:`PreparedVolume` of :func:`prepare_volume`, or a :class:`FailedVolume` when the volume is the user's
    problem (unreadable, not assessable, missing slices: :func:`~sdmad_monai.errors.is_user_error`); other errors
    (bugs) propagate.

    Catching here is what keeps one bad volume from sinking a run read by a ``DataLoader`` (the error would
    otherwise end the evaluator). Arguments as in :func:`prepare_volume`.
    """

    def __init__(
        self,
        keys: str,
        image_size: int,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        axis: str = "axial",
        indices: Sequence[int] | None = None,
        positions: Sequence[float] | None = None,
        stride: int | None = None,
        output_key: str = "volume",
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"PrepareVolumed takes one key (the volume path), got {list(self.keys)}.")
        self.settings = _VolumeSettings(
            image_size=int(image_size),
            image_mean=tuple(image_mean),
            image_std=tuple(image_std),
            axis=axis,
            indices=None if indices is None else list(indices),
            positions=positions,
            stride=stride,
        )
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        (key,) = self.keys
        source = str(d[key])
        try:
            d[self.output_key] = prepare_volume(d[key], **self.settings)
        except Exception as error:
            d[self.output_key] = FailedVolume.from_error(source, error)
        return d


def volume_datalist(inputs: Iterable[str | Path]) -> list[dict[str, str]]:
    """``[{"image": path}, ...]`` for the bundle's inference dataset, after :func:`check_volume_inputs`."""
    return [{"image": str(p)} for p in check_volume_inputs(inputs)]


def collate_volumes(batch: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``collate_fn`` of the inference ``DataLoader``: volumes have different slice counts, so a batch is the list
    of its items (each volume is scored in slice batches of its own)."""
    return list(batch)


def prepare_volume_batch(
    batchdata: Sequence[Mapping[str, Any]], device: Any = None, non_blocking: bool = False, **kwargs: Any
) -> tuple[list[PreparedVolume | FailedVolume], None]:
    """``prepare_batch`` of the inference evaluator: the prepared volumes of a batch, no target (the inferer moves
    each slice batch to the network's device)."""
    return [item["volume"] for item in batchdata], None


def infer_volume(
    detector: SignDrivenDetector,
    path: str | Path | MetaTensor,
    axis: str = "axial",
    indices: Sequence[int] | None = None,
    positions: Sequence[float] | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    anomaly_maps: bool = False,
    display_images: bool | None = None,
) -> VolumeResult:
    """Score the chosen slices of one volume (NIfTI file, DICOM series folder, fastMRI ``.h5``, or a volume in
    memory): :func:`prepare_volume` then :func:`score_volume`.

    Only the requested slices are read. With no index policy given, every slice is scored.

    Args:
        detector: the trained detector (switched to eval mode here).
        path: the volume on disk, or a loaded ``MetaTensor`` ``[C, X, Y, Z]`` whose ``affine`` maps voxels to RAS
            world coordinates (what ``LoadImage(ensure_channel_first=True)`` returns; the MONAI Deploy operator
            passes the series it received this way). Its ``meta["filename_or_obj"]`` names the source when set.
        axis: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        indices: explicit canonical slice indices (fastMRI+: ``[0, 5, 10]``).
        positions: relative positions in ``[0, 1]``.
        stride: every ``stride``-th slice.
        batch_size: slices per forward pass.
        device: where to run; defaults to the detector's device.
        anomaly_maps: keep the detector's ``"anomaly_map"`` output per slice (same backbone pass as the scores) and
            the slices as seen, for the 3D map and the overlays.
        display_images: see :func:`score_volume` (default: with the maps).

    Returns:
        :class:`VolumeResult`.

    Raises:
        ValueError: ``anomaly_maps`` is asked for but the detector gives no ``"anomaly_map"``.
        NotAssessableError: a slice asked for by index is blank, constant or mostly NaN (when scanning with
            ``stride``/``positions``, such slices are left out and listed in ``not_assessed`` unless none is left),
            or the model gives non-finite scores.
    """
    volume = prepare_volume(
        path, detector.image_size, detector.image_mean, detector.image_std, axis, indices, positions, stride
    )
    return score_volume(
        detector, volume, batch_size=batch_size, device=device, anomaly_maps=anomaly_maps, display_images=display_images
    )


def check_volume_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """The volume paths of a run, refused before any work when there are none or some do not exist.

    Raises:
        ValueError: no input.
        FileNotFoundError: some inputs do not exist (all are listed).
    """
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ValueError("No input volume given: pass at least one NIfTI file, DICOM folder or fastMRI .h5 file.")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"Input volumes not found: {missing}.")
    return paths
