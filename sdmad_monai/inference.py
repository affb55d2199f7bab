"""Volume-level inference: one function from a volume on disk to per-slice results and study-level findings.

Every inference entry point runs the same two steps, :func:`prepare_volume` (read the requested slices, refuse what
cannot be assessed, preprocess) and :func:`score_volume` (Eq. 7 scores, Eq. 8 predictions, calibrated probabilities,
study findings): the MONAI Deploy operator, the MONAI Label task and the PACS commands through :func:`infer_volume`,
``configs/inference.json`` as a MONAI evaluator (:class:`PrepareVolumed`, :class:`~sdmad_monai.inferers.VolumeInferer`,
:class:`~sdmad_monai.handlers.VolumeResultsWriter`); none re-implements preprocessing or scoring.

Study-level aggregation (:func:`study_findings`), per category over the processed slices:

- study score = the highest slice score (Eq. 7): a finding is as strong as its clearest slice;
- study probability = the highest slice probability, for a calibrated checkpoint (:mod:`sdmad_monai.calibration`);
- study finding = 1 if at least one slice is positive by the category's decision rule (Eq. 8, the anchor rule, by
  default; a calibrated-probability threshold under an operating point); the positive slices are listed, so a
  reader can go to them; ``eq8_finding`` is always Eq. 8's.

With ``anomaly_maps=True`` the detector's per-slice anomaly maps are kept too, and :func:`write_volume_results` writes
for each volume a 3D anomaly-map NIfTI on the scan's voxel grid with the scan's affine
(:mod:`sdmad_monai.anomaly_volume`; slices not processed are 0, the processed ones are listed in the header and a
JSON sidecar) and PNG overlays of the highest-scoring and a seeded random sample of slices
(:mod:`sdmad_monai.visualize`).

Nothing wrong passes as "no finding": a slice that is blank, constant or mostly NaN, or non-finite model scores,
raise :class:`NotAssessableError` for that volume (:func:`slice_problem`); :func:`infer_volumes` then writes the
other volumes' results, lists the failed ones with their reasons in ``findings.json`` and ends with
:class:`VolumesFailedError`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .anomaly_volume import anomaly_volume, write_anomaly_volume
from .calibration import calibration_margin
from .errors import is_user_error, one_line
from .networks.detector import SignDrivenDetector
from .transforms import ExtractSlices, LoadSlices, clip_slice_transforms
from .utils import atomic_write_json, atomic_write_text, ensure_writable_folder
from .visualize import OverlayItem, OverlaySelector, display_image, write_overlays

__all__ = [
    "FailedVolume",
    "NotAssessableError",
    "PrepareVolumed",
    "PreparedVolume",
    "VolumeResult",
    "VolumeResultsCollector",
    "VolumesFailedError",
    "check_volume_inputs",
    "clear_previous_outputs",
    "collate_volumes",
    "find_volumes",
    "infer_volume",
    "infer_volumes",
    "prepare_volume",
    "prepare_volume_batch",
    "score_volume",
    "slice_problem",
    "study_findings",
    "volume_datalist",
    "volume_stem",
    "volume_stems",
    "OVERLAY_SCOPES",
    "offer_volume_slices",
    "write_volume_maps",
    "write_volume_results",
]

logger = logging.getLogger(__name__)


def study_findings(
    slice_indices: Sequence[int],
    scores: torch.Tensor,
    predictions: torch.Tensor,
    category_labels: Sequence[str],
    display_names: Sequence[str] | None = None,
    probabilities: np.ndarray | None = None,
    rules: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One study-level finding per category from per-slice results (aggregation documented in the module).

    Args:
        slice_indices: ``N`` slice indices of the rows.
        scores: ``[N, K]`` Eq. 7 scores.
        predictions: ``[N, K]`` Eq. 8 predictions.
        category_labels: ``K`` labels.
        display_names: ``K`` short names (defaults to the labels).
        probabilities: ``[N, K]`` calibrated probabilities (:mod:`sdmad_monai.calibration`; ``NaN`` where a
            category is not calibrated), or ``None`` for a detector without calibration.
        rules: ``K`` decision rules (:meth:`SignDrivenDetector.decision_rules`); default Eq. 8 for all.

    Returns:
        ``K`` dicts: ``label``, ``display_name``, ``score`` (Eq. 7, highest slice), ``probability`` (highest slice
        probability, ``None`` when not calibrated), ``finding`` (0/1 by the category's rule) and its
        ``positive_slices``, ``eq8_finding`` (0/1, Eq. 8 on any slice), ``decision`` (the rule and its threshold),
        ``max_score_slice``.
    """
    if scores.ndim != 2 or scores.shape != predictions.shape or scores.shape[0] != len(slice_indices):
        raise ValueError(
            f"scores {tuple(scores.shape)} and predictions {tuple(predictions.shape)} must be [N, K] with "
            f"N={len(slice_indices)} slices."
        )
    if scores.shape[0] == 0:
        raise ValueError("No slice was processed: a study-level finding needs at least one slice.")
    if probabilities is not None and tuple(np.shape(probabilities)) != tuple(scores.shape):
        raise ValueError(f"probabilities {tuple(np.shape(probabilities))} must be [N, K] like the scores.")
    names = list(display_names) if display_names is not None else list(category_labels)
    rules = list(rules) if rules is not None else [{"rule": "eq8"}] * len(category_labels)
    best = scores.argmax(dim=0)
    findings = []
    for k, label in enumerate(category_labels):
        eq8 = [int(slice_indices[i]) for i in torch.nonzero(predictions[:, k] > 0).flatten().tolist()]
        column = None if probabilities is None else np.asarray(probabilities)[:, k]
        calibrated = column is not None and not np.isnan(column).any()
        rule = dict(rules[k])
        if rule.get("rule") == "probability" and calibrated:
            positive = [int(slice_indices[i]) for i in np.flatnonzero(column >= rule["threshold"]).tolist()]
        else:
            positive = eq8
        findings.append(
            {
                "label": label,
                "display_name": names[k],
                "score": float(scores[best[k], k]),
                "probability": float(column.max()) if calibrated else None,
                "finding": int(bool(positive)),
                "positive_slices": positive,
                "eq8_finding": int(bool(eq8)),
                "decision": rule,
                "max_score_slice": int(slice_indices[int(best[k])]),
            }
        )
    return findings


class VolumesFailedError(ValueError):
    """Some volumes of a run could not be processed; the others were, and their results written."""


class NotAssessableError(ValueError):
    """A volume (or the slices asked for) cannot be assessed: blank, constant or corrupt images. Never "no finding"."""


def slice_problem(plane: torch.Tensor, max_nonfinite: float = 0.01) -> str | None:
    """Why a raw slice cannot be assessed, or ``None`` when it can.

    Args:
        plane: the slice as read, before any normalisation (``[C, H, W]``).
        max_nonfinite: largest share of NaN / infinite voxels tolerated.

    Returns:
        ``"all voxels are NaN or infinite"``, ``"<share> of its voxels are NaN or infinite"``,
        ``"constant intensity <value>"`` (a blank image: the per-slice normalisation would turn it into an
        arbitrary flat image), or ``None``.
    """
    x = torch.as_tensor(plane).float()
    finite = torch.isfinite(x)
    values = x[finite]
    if values.numel() == 0:
        return "all voxels are NaN or infinite"
    share = 1.0 - values.numel() / x.numel()
    if share > max_nonfinite:
        return f"{share:.0%} of its voxels are NaN or infinite"
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-6 * max(1.0, abs(low), abs(high)):
        return f"constant intensity {low:g}"
    return None


@dataclass
class VolumeResult:
    """Per-slice results and study-level findings of one volume.

    Attributes:
        source: the volume's path.
        axis: slicing axis.
        slice_indices: ``N`` canonical slice indices (see :mod:`sdmad_monai.transforms.slices`).
        scores: ``[N, K]`` Eq. 7 scores.
        predictions: ``[N, K]`` Eq. 8 predictions.
        image_scores: ``[N]`` normal-vs-abnormal scores.
        findings: study-level findings (:func:`study_findings`).
        category_labels: ``K`` labels.
        model: description of the model (backbone, prompt bank, version).
        anomaly_maps: ``[N, S, S]`` anomaly maps at the detector's input size, or ``None`` when not asked for.
        display_images: ``[N, S, S, 3]`` uint8 slices as the detector saw them (for overlays), with the maps.
        slice_shape: ``(rows, cols)`` of the slices before resizing (display orientation).
        volume_affine: the scan's 4x4 RAS+ affine.
        volume_shape: the scan's three spatial sizes.
        map_files: where :func:`write_volume_maps` wrote the 3D map and overlays (relative paths), once written.
        not_assessed: slices left out of a scan of the volume (``stride``/``positions``) because they cannot be
            assessed (:func:`slice_problem`), with the reason; the findings cover the other slices only.
        probabilities: ``[N, K]`` calibrated probabilities (``NaN`` for categories not calibrated), or ``None``
            when the detector has no calibration.
    """

    source: str
    axis: str
    slice_indices: list[int]
    scores: torch.Tensor
    predictions: torch.Tensor
    image_scores: torch.Tensor
    findings: list[dict[str, Any]]
    category_labels: list[str]
    model: dict[str, Any] = field(default_factory=dict)
    anomaly_maps: torch.Tensor | None = None
    display_images: np.ndarray | None = None
    slice_shape: tuple[int, int] | None = None
    volume_affine: np.ndarray | None = None
    volume_shape: tuple[int, int, int] | None = None
    map_files: dict[str, Any] | None = None
    not_assessed: dict[int, str] = field(default_factory=dict)
    probabilities: np.ndarray | None = None

    def anomaly_volume(self) -> np.ndarray:
        """The anomaly maps stacked back onto the scan's voxel grid ``[X, Y, Z]`` (0 on unprocessed slices).

        Raises:
            ValueError: the result holds no anomaly maps.
        """
        if self.anomaly_maps is None or self.slice_shape is None or self.volume_shape is None:
            raise ValueError(f"{self.source}: no anomaly maps were computed (infer_volume(..., anomaly_maps=True)).")
        return anomaly_volume(
            self.anomaly_maps,
            self.slice_indices,
            self.slice_shape,
            self.volume_affine,
            self.volume_shape,
            axis=self.axis,
            source=self.source,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "source": self.source,
            "axis": self.axis,
            "model": self.model,
            "findings": self.findings,
            "not_assessed_slices": {str(k): v for k, v in self.not_assessed.items()},
            "slices": [
                {
                    "slice": index,
                    "image_score": float(self.image_scores[row]),
                    "scores": dict(zip(self.category_labels, self.scores[row].tolist())),
                    "predictions": dict(zip(self.category_labels, [int(v) for v in self.predictions[row].tolist()])),
                    "probabilities": None
                    if self.probabilities is None
                    else dict(
                        zip(self.category_labels, [None if np.isnan(v) else float(v) for v in self.probabilities[row]])
                    ),
                }
                for row, index in enumerate(self.slice_indices)
            ],
        }


def _model_description(detector: SignDrivenDetector) -> dict[str, Any]:
    from . import __version__

    return {
        "sdmad_monai_version": __version__,
        "backbone": detector.config["model_name"],
        "weights": detector.description()["config"]["pretrained"],
        "prompt_bank": f"{detector.prompt_bank.name} {detector.prompt_bank.version}",
        "sign_selection": detector.sign_selection,
    }


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
        slice_shape=tuple(int(v) for v in first["spatial_shape"]),
        volume_affine=np.asarray(first["volume_affine"], dtype=np.float64),
        volume_shape=tuple(int(v) for v in first["volume_spatial_shape"]),
    )


@torch.no_grad()
def score_volume(
    detector: SignDrivenDetector,
    volume: PreparedVolume,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    anomaly_maps: bool = False,
) -> VolumeResult:
    """Score a :class:`PreparedVolume`: Eq. 7 scores, Eq. 8 predictions and study findings per volume.

    Args:
        detector: the trained detector (switched to eval mode here).
        volume: from :func:`prepare_volume` (with this detector's image size and normalisation).
        batch_size: slices per forward pass.
        device: where to run; defaults to the detector's device.
        anomaly_maps: keep the detector's ``"anomaly_map"`` output per slice (same backbone pass as the scores) and
            the slices as seen, for the 3D map and the overlays.

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
        if anomaly_maps and "anomaly_map" not in result:
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
            "display_images": np.stack([display_image(x, detector.image_mean, detector.image_std) for x in images]),
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
        self.settings = dict(
            image_size=int(image_size),
            image_mean=tuple(image_mean),
            image_std=tuple(image_std),
            axis=axis,
            indices=None if indices is None else list(indices),
            positions=positions,
            stride=stride,
        )
        self.output_key = output_key

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
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
    return score_volume(detector, volume, batch_size=batch_size, device=device, anomaly_maps=anomaly_maps)


def volume_stem(source: str) -> str:
    """File-safe name of a volume for its output files: the file name without ``.nii.gz``/``.nii``/``.h5``, or the
    DICOM folder's name."""
    name = Path(source.rstrip("/\\")).name or "volume"
    name = re.sub(r"\.(nii\.gz|nii|h5|hdf5)$", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "volume"


def volume_stems(sources: Sequence[str]) -> list[str]:
    """The map file names of volumes processed in this order (:func:`volume_stem`, numbered when two sources share
    a name), the names :class:`VolumeResultsCollector` gives them."""
    used: dict[str, int] = {}
    return [_unique_stem(used, str(source)) for source in sources]


def _unique_stem(used: dict[str, int], source: str) -> str:
    stem = volume_stem(source)
    used[stem] = used.get(stem, 0) + 1
    return stem if used[stem] == 1 else f"{stem}_{used[stem]}"  # same name from another folder: keep both


def write_volume_maps(
    result: VolumeResult,
    output_dir: str | Path,
    stem: str | None = None,
    overlays_top: int = 5,
    overlays_random: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Write one volume's 3D anomaly map (``maps/<stem>_anomaly_map.nii.gz`` + ``.json``) and its overlays
    (``overlays/<stem>/top|random/*.png`` + ``index.csv``).

    Args:
        result: an :func:`infer_volume` result with ``anomaly_maps``.
        output_dir: the inference output folder.
        stem: name of the volume's files (default :func:`volume_stem` of the source).
        overlays_top: highest-scoring slices (image score) drawn.
        overlays_random: seeded random sample of slices drawn.
        seed: seed of the sample.

    Returns:
        ``{"nifti", "json", "overlays"}``: paths relative to ``output_dir`` (overlays: the folder, or ``None``).
    """
    output_dir = Path(output_dir)
    stem = stem or volume_stem(result.source)
    try:
        return _write_volume_maps(result, output_dir, stem, overlays_top, overlays_random, seed)
    except BaseException:  # all of a volume's files or none: remove what this call wrote before the failure
        import shutil

        for partial in (
            output_dir / "maps" / f"{stem}_anomaly_map.nii.gz",
            output_dir / "maps" / f"{stem}_anomaly_map.json",
        ):
            partial.unlink(missing_ok=True)
        shutil.rmtree(output_dir / "overlays" / stem, ignore_errors=True)
        raise


def _write_volume_maps(
    result: VolumeResult, output_dir: Path, stem: str, overlays_top: int, overlays_random: int, seed: int
) -> dict[str, Any]:
    written = write_anomaly_volume(
        output_dir / "maps" / f"{stem}_anomaly_map.nii.gz",
        result.anomaly_volume(),
        result.volume_affine,
        result.slice_indices,
        result.axis,
        source=result.source,
        info={"model": result.model},
    )
    paths: dict[str, Any] = {k: str(v.relative_to(output_dir)) for k, v in written.items()}
    paths["overlays"] = None
    if overlays_top or overlays_random:
        selector = OverlaySelector(overlays_top, overlays_random, seed)
        offer_volume_slices(selector, result, stem)
        folder = output_dir / "overlays" / stem
        write_overlays(selector, folder, score_name="image score")
        paths["overlays"] = str(folder.relative_to(output_dir))
    return paths


#: Where inference overlays are chosen: over the whole run (one gallery) or per volume.
OVERLAY_SCOPES = ("run", "volume")
#: Slices per volume at most, for the gallery's keys (volume position * this + slice row).
_SLICES_KEY_STRIDE = 1 << 20


def offer_volume_slices(selector: OverlaySelector, result: VolumeResult, stem: str, position: int = 0) -> None:
    """Offer every processed slice of ``result`` (with maps) to an overlay selector, ranked by image score, named
    ``<stem>_<axis>_slice<index>`` and keyed by ``(position, row)``, so that the choice depends only on the volumes'
    places in the input list, not on the order or the process they are scored in."""
    for row, index in enumerate(result.slice_indices):
        selector.offer(
            float(result.image_scores[row]),
            lambda row=row, index=index: OverlayItem(
                score=float(result.image_scores[row]),
                name=f"{stem}_{result.axis}_slice{index:03d}",
                image=result.display_images[row],
                anomaly_map=result.anomaly_maps[row].numpy(),
            ),
            index=position * _SLICES_KEY_STRIDE + row,
        )


def write_volume_results(
    results: Sequence[VolumeResult],
    output_dir: str | Path,
    overlays_top: int = 5,
    overlays_random: int = 5,
    seed: int = 0,
    failed: Mapping[str, str] | None = None,
    overlays: str | None = None,
) -> dict[str, Path]:
    """Write ``findings.json`` (everything) and ``slices.csv`` / ``findings.csv`` (one row per slice / finding); for
    results with anomaly maps whose maps are not written yet also the 3D map and per-volume overlays of
    :func:`write_volume_maps` (listed per volume in ``findings.json`` under ``"anomaly_map"``). ``failed`` (source ->
    reason) lists the volumes that could not be processed, in ``findings.json`` under ``"failed"``; ``overlays``
    (the run's overlay gallery, relative to ``output_dir``) goes under ``"overlays"``.

    Returns:
        The written paths by name.
    """
    output_dir = Path(output_dir)
    documents = [r.to_dict() for r in results]
    used: dict[str, int] = {}
    for result, document in zip(results, documents):
        if result.map_files is None and result.anomaly_maps is not None:
            stem = _unique_stem(used, result.source)
            result.map_files = write_volume_maps(result, output_dir, stem, overlays_top, overlays_random, seed)
        if result.map_files is not None:
            document["anomaly_map"] = result.map_files
    paths = {
        "json": atomic_write_json(
            output_dir / "findings.json",
            {"volumes": documents, "failed": [{"source": k, "error": v} for k, v in (failed or {}).items()]}
            | ({"overlays": overlays} if overlays is not None else {}),
        ),
    }
    slice_rows = io.StringIO()
    writer = csv.writer(slice_rows)
    labels = results[0].category_labels if results else []
    writer.writerow(
        ["source", "axis", "slice", "image_score"]
        + [f"score:{l}" for l in labels]
        + [f"prediction:{l}" for l in labels]
        + [f"probability:{l}" for l in labels]
    )
    for result in results:
        for row, index in enumerate(result.slice_indices):
            probabilities = (
                [""] * len(labels)
                if result.probabilities is None
                else ["" if np.isnan(v) else f"{v:.6g}" for v in result.probabilities[row]]
            )
            writer.writerow(
                [result.source, result.axis, index, f"{float(result.image_scores[row]):.6g}"]
                + [f"{v:.6g}" for v in result.scores[row].tolist()]
                + [int(v) for v in result.predictions[row].tolist()]
                + probabilities
            )
    paths["slices_csv"] = atomic_write_text(output_dir / "slices.csv", slice_rows.getvalue())
    finding_rows = io.StringIO()
    writer = csv.writer(finding_rows)
    writer.writerow(
        [
            "source",
            "label",
            "display_name",
            "finding",
            "score",
            "probability",
            "decision_rule",
            "threshold",
            "eq8_finding",
            "max_score_slice",
            "positive_slices",
        ]
    )
    for result in results:
        for finding in result.findings:
            rule = finding["decision"]
            writer.writerow(
                [
                    result.source,
                    finding["label"],
                    finding["display_name"],
                    finding["finding"],
                    f"{finding['score']:.6g}",
                    "" if finding["probability"] is None else f"{finding['probability']:.6g}",
                    rule["rule"],
                    f"{rule['threshold']:.6g}" if "threshold" in rule else "",
                    finding["eq8_finding"],
                    finding["max_score_slice"],
                    " ".join(str(i) for i in finding["positive_slices"]),
                ]
            )
    paths["findings_csv"] = atomic_write_text(output_dir / "findings.csv", finding_rows.getvalue())
    return paths


#: File names :func:`find_volumes` takes as volumes.
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".h5", ".hdf5")


def find_volumes(input_dir: str | Path) -> list[Path]:
    """The volumes in ``input_dir``: NIfTI and fastMRI ``.h5`` files, and sub-folders holding a DICOM series.

    A sub-folder counts as a DICOM series when it contains at least one file; it is validated when read.

    Raises:
        FileNotFoundError: ``input_dir`` is not a folder.
    """
    folder = Path(input_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"Input folder {folder} does not exist (expected NIfTI/.h5 files or DICOM folders).")
    files = [p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)]
    series = [p for p in folder.iterdir() if p.is_dir() and any(q.is_file() for q in p.iterdir())]
    return sorted(files + series)


def clear_previous_outputs(output_dir: str | Path) -> list[Path]:
    """Remove what an earlier run wrote into ``output_dir``, as listed in its ``findings.json`` (3D maps, their JSON,
    overlay folders), so that a reused folder never shows stale maps beside new findings. Only paths inside
    ``output_dir`` are touched; an unreadable ``findings.json`` is left alone.

    Returns:
        The removed paths.
    """
    import shutil

    output_dir = Path(output_dir)
    try:
        previous = json.loads((output_dir / "findings.json").read_text(encoding="utf-8"))
        volumes = list(previous.get("volumes", []))
        run_overlays = previous.get("overlays")
    except (OSError, ValueError, AttributeError, TypeError):
        return []
    root = output_dir.resolve()
    removed = []
    listed = [{"overlays": run_overlays}] if isinstance(run_overlays, str) else []
    for files in listed + [d.get("anomaly_map") if isinstance(d, Mapping) else None for d in volumes]:
        if not isinstance(files, Mapping):
            continue
        for relative in files.values():
            if not isinstance(relative, str):
                continue
            target = (output_dir / relative).resolve()
            if root not in target.parents or not target.exists():
                continue
            shutil.rmtree(target) if target.is_dir() else target.unlink()
            removed.append(target)
    if removed:
        logger.info("Removed %d output(s) of the previous run in %s.", len(removed), output_dir)
    return removed


class VolumeResultsCollector:
    """The output side of inference over many volumes, for every loop that runs it (:func:`infer_volumes`, the
    bundle's :class:`~sdmad_monai.handlers.VolumeResultsWriter`): the output folder checked and cleared of the
    previous run's maps before any work, each volume's maps and overlays written as soon as it is scored (memory
    stays one volume's), failures collected with their reasons, and at the end ``findings.json`` / CSVs
    (:func:`write_volume_results`), one line saying where everything is, and :class:`VolumesFailedError` if any
    volume failed (after the others' results are written).

    Overlays (with maps) are chosen over the whole run by default (``overlay_scope="run"``): one gallery,
    ``overlays/top|random/*.png`` + ``index.csv``, of the ``overlays_top`` highest-scoring slices of all volumes and
    a seeded random sample of ``overlays_random`` others, drawn at the end; its cost does not grow with the number
    of volumes, so an archive run pays for a fixed number of PNGs (``benchmarks/bench_inference_outputs.py``).
    ``overlay_scope="volume"`` draws them per volume instead, in ``overlays/<name>/top|random/``, as soon as the
    volume is scored (about 25 ms per PNG on a 2-core CPU: several times the tiny model's cost per volume).

    Args:
        output_dir: where the JSON and CSV files (and maps and overlays) go.
        total: number of volumes of the run (for the ``[n/total]`` progress lines).
        overlays_top: with maps: highest-scoring slices drawn as PNG overlays (of the run, or of each volume).
        overlays_random: with maps: seeded random slices drawn (of the run, or of each volume).
        seed: seed of the random overlay sample.
        clear_previous: remove the previous run's maps first (:func:`clear_previous_outputs`).
        overlay_scope: ``"run"`` (default) or ``"volume"``, see above.
    """

    def __init__(
        self,
        output_dir: str | Path,
        total: int,
        overlays_top: int = 10,
        overlays_random: int = 10,
        seed: int = 0,
        clear_previous: bool = True,
        overlay_scope: str = "run",
    ) -> None:
        if overlay_scope not in OVERLAY_SCOPES:
            raise ValueError(f"overlay_scope must be one of {OVERLAY_SCOPES}, got {overlay_scope!r}.")
        self.output_dir = Path(output_dir)
        self.total = int(total)
        self.overlays_top, self.overlays_random, self.seed = int(overlays_top), int(overlays_random), int(seed)
        self.overlay_scope = overlay_scope
        #: the run's overlay gallery (``overlay_scope="run"`` with overlays on), merged across processes by
        #: :class:`~sdmad_monai.handlers.VolumeResultsWriter`
        self.selector: OverlaySelector | None = (
            OverlaySelector(self.overlays_top, self.overlays_random, self.seed)
            if overlay_scope == "run" and (self.overlays_top or self.overlays_random) else None
        )  # fmt: skip
        self.results: list[VolumeResult] = []
        self.failed: dict[str, str] = {}
        self._stems: dict[str, int] = {}
        ensure_writable_folder(self.output_dir)  # before the work, not after it
        if clear_previous:  # one process of a distributed run clears, the others must not race it
            clear_previous_outputs(self.output_dir)

    @property
    def count(self) -> int:
        """Volumes handled so far, scored or failed."""
        return len(self.results) + len(self.failed)

    def add(self, result: VolumeResult, stem: str | None = None, position: int | None = None) -> None:
        """Take one scored volume: write its maps (and, per volume, its overlays) now, offer its slices to the
        run's gallery, and let the arrays go.

        Args:
            result: the scored volume.
            stem: the name of its map files (default: from its source, numbered when two sources share a name,
                in the order the volumes are added; a distributed run passes the names of the whole input list).
            position: its place in the whole input list (default: the number of volumes added before it; a
                distributed run passes it), which keys the gallery's random sample.
        """
        position = self.count if position is None else int(position)
        if result.anomaly_maps is not None:
            stem = stem or _unique_stem(self._stems, result.source)
            per_volume = self.overlay_scope == "volume"
            result.map_files = write_volume_maps(
                result, self.output_dir, stem, self.overlays_top if per_volume else 0,
                self.overlays_random if per_volume else 0, self.seed,
            )  # fmt: skip
            if self.selector is not None:
                offer_volume_slices(self.selector, result, stem, position)
            result.anomaly_maps = result.display_images = None
        self.results.append(result)
        positives = [f["display_name"] for f in result.findings if f["finding"]]
        logger.info(
            "[%d/%d] %s: %d slices, findings: %s",
            self.count,
            self.total,
            result.source,
            len(result.slice_indices),
            ", ".join(positives) or "none",
        )

    def fail(self, source: str, error: str | BaseException) -> None:
        """Record a volume that could not be processed, with the reason (one line)."""
        self.failed[str(source)] = error if isinstance(error, str) else one_line(error)
        logger.error("[%d/%d] %s: not processed: %s", self.count, self.total, source, self.failed[str(source)])

    def _write_gallery(self) -> Path:
        """The run's overlays, drawn into a temporary sibling folder and moved into place: a failure half way
        (a full disk) leaves no partial gallery."""
        import shutil

        gallery = self.output_dir / "overlays"
        partial = self.output_dir / f".overlays.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            write_overlays(self.selector, partial, score_name="image score")
            if gallery.exists():
                shutil.rmtree(gallery)
            os.replace(partial, gallery)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return gallery

    def finish(self) -> list[VolumeResult]:
        """Write the run's overlay gallery, ``findings.json`` and the CSVs, say where the outputs are.

        Raises:
            VolumesFailedError: some volumes failed (their reasons are in the message and in ``findings.json``).
        """
        results, failed, output_dir = self.results, self.failed, self.output_dir
        gallery = None
        if self.selector is not None and self.selector.num_seen:
            gallery = self._write_gallery()
        paths = write_volume_results(
            results, output_dir, self.overlays_top, self.overlays_random, self.seed, failed=failed,
            overlays=None if gallery is None else str(gallery.relative_to(output_dir)),
        )  # fmt: skip
        maps = [r.map_files for r in results if r.map_files]
        where = f"findings {paths['json']} (per slice: {paths['slices_csv']}, per finding: {paths['findings_csv']})"
        if maps:
            where += f"; 3D anomaly maps in {output_dir / 'maps'}"
            if gallery is not None or any(m.get("overlays") for m in maps):
                where += f", overlays in {output_dir / 'overlays'}"
        logger.info("Inference done for %d of %d volume(s): %s.", len(results), self.count, where)
        if failed:
            raise VolumesFailedError(
                f"{len(failed)} of {self.count} volume(s) could not be processed ("
                + "; ".join(v if v.startswith(k) else f"{k}: {v}" for k, v in failed.items())
                + f"); the results of the other {len(results)} are in {paths['json']} (which lists the failures too)."
            )
        return results


def check_volume_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """The volume paths of a run, refused before any work when there are none or some do not exist.

    Raises:
        ValueError: no input.
        FileNotFoundError: some inputs do not exist (all are listed).
    """
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("No input volume given: pass at least one NIfTI file, DICOM folder or fastMRI .h5 file.")
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise FileNotFoundError(f"Input volumes not found: {missing}.")
    return inputs


def infer_volumes(
    detector: SignDrivenDetector,
    inputs: Iterable[str | Path],
    output_dir: str | Path,
    overlays_top: int = 10,
    overlays_random: int = 10,
    seed: int = 0,
    overlay_scope: str = "run",
    **kwargs: Any,
) -> list[VolumeResult]:
    """:func:`infer_volume` over several volumes, one after the other, with the outputs of
    :class:`VolumeResultsCollector` (``configs/inference.json`` runs the same steps in a MONAI evaluator).

    Args:
        detector: the trained detector.
        inputs: volume paths (files or DICOM folders).
        output_dir: where the JSON and CSV files (and, with ``anomaly_maps=True``, maps and overlays) go.
        overlays_top: with maps: highest-scoring slices drawn as PNG overlays (of the run, or of each volume).
        overlays_random: with maps: seeded random slices drawn (of the run, or of each volume).
        seed: seed of the random overlay sample.
        overlay_scope: ``"run"``: one overlay gallery over all volumes; ``"volume"``: per volume
            (:class:`VolumeResultsCollector`).
        kwargs: slice policy, batching and ``anomaly_maps``, passed to :func:`infer_volume`.

    Raises:
        VolumesFailedError: some volumes could not be processed (the others' results are written first).
    """
    inputs = check_volume_inputs(inputs)
    collector = VolumeResultsCollector(
        output_dir, len(inputs), overlays_top, overlays_random, seed, overlay_scope=overlay_scope
    )
    for path in inputs:
        try:
            result = infer_volume(detector, path, **kwargs)
        except Exception as error:  # one bad volume never sinks the others; a bug still stops the run
            failure = FailedVolume.from_error(str(path), error)
            collector.fail(failure.source, failure.error)
            continue
        collector.add(result)
    return collector.finish()
