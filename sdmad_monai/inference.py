"""Volume-level inference: one function from a volume on disk to per-slice results and study-level findings.

Every inference entry point (``configs/inference.json``, and later the MONAI Deploy operator, the MONAI Label task and
the PACS command) calls :func:`infer_volume`; none re-implements preprocessing or scoring.

Study-level aggregation (:func:`study_findings`), per category over the processed slices:

- study score = the highest slice score (Eq. 7): a finding is as strong as its clearest slice;
- study finding = 1 if at least one slice is predicted positive by the anchor rule (Eq. 8); the slices that are
  positive are listed, so a reader can go to them.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from monai.data import MetaTensor

from .networks.detector import SignDrivenDetector
from .transforms import ExtractSlices, LoadSlices, clip_slice_transforms
from .utils import atomic_write_json, atomic_write_text

__all__ = ["VolumeResult", "study_findings", "infer_volume", "infer_volumes", "write_volume_results", "find_volumes"]

logger = logging.getLogger(__name__)


def study_findings(
    slice_indices: Sequence[int],
    scores: torch.Tensor,
    predictions: torch.Tensor,
    category_labels: Sequence[str],
    display_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One study-level finding per category from per-slice results (aggregation documented in the module).

    Args:
        slice_indices: ``N`` slice indices of the rows.
        scores: ``[N, K]`` Eq. 7 scores.
        predictions: ``[N, K]`` Eq. 8 predictions.
        category_labels: ``K`` labels.
        display_names: ``K`` short names (defaults to the labels).

    Returns:
        ``K`` dicts: ``label``, ``display_name``, ``score``, ``finding`` (0/1), ``positive_slices``,
        ``max_score_slice``.
    """
    if scores.ndim != 2 or scores.shape != predictions.shape or scores.shape[0] != len(slice_indices):
        raise ValueError(
            f"scores {tuple(scores.shape)} and predictions {tuple(predictions.shape)} must be [N, K] with "
            f"N={len(slice_indices)} slices."
        )
    if scores.shape[0] == 0:
        raise ValueError("No slice was processed: a study-level finding needs at least one slice.")
    names = list(display_names) if display_names is not None else list(category_labels)
    best = scores.argmax(dim=0)
    findings = []
    for k, label in enumerate(category_labels):
        positive = [int(slice_indices[i]) for i in torch.nonzero(predictions[:, k] > 0).flatten().tolist()]
        findings.append(
            {
                "label": label,
                "display_name": names[k],
                "score": float(scores[best[k], k]),
                "finding": int(bool(positive)),
                "positive_slices": positive,
                "max_score_slice": int(slice_indices[int(best[k])]),
            }
        )
    return findings


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "source": self.source,
            "axis": self.axis,
            "model": self.model,
            "findings": self.findings,
            "slices": [
                {
                    "slice": index,
                    "image_score": float(self.image_scores[row]),
                    "scores": dict(zip(self.category_labels, self.scores[row].tolist())),
                    "predictions": dict(zip(self.category_labels, [int(v) for v in self.predictions[row].tolist()])),
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


@torch.no_grad()
def infer_volume(
    detector: SignDrivenDetector,
    path: str | Path | MetaTensor,
    axis: str = "axial",
    indices: Sequence[int] | None = None,
    positions: Sequence[float] | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> VolumeResult:
    """Score the chosen slices of one volume (NIfTI file, DICOM series folder, fastMRI ``.h5``, or a volume in
    memory).

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

    Returns:
        :class:`VolumeResult`.
    """
    if indices is None and positions is None and stride is None:
        stride = 1
    detector.eval()
    device = device or next(detector.parameters()).device
    if isinstance(path, MetaTensor):
        slices = ExtractSlices(axis, indices, positions, stride)(path)
        source = str(path.meta.get("filename_or_obj", "") or "<in-memory volume>")
    else:
        slices = LoadSlices(axis, indices, positions, stride)(path)
        source = str(path)
    preprocess = clip_slice_transforms("image", detector.image_size, detector.image_mean, detector.image_std)
    images = torch.stack([torch.as_tensor(preprocess({"image": s})["image"]) for s in slices])
    slice_indices = [int(s.meta["slice_index"]) for s in slices]
    outputs: list[dict[str, torch.Tensor]] = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device=device, dtype=torch.float32)
        result = detector(batch, output="all")
        outputs.append({k: result[k].cpu() for k in ("scores", "predictions", "image_score")})
    scores = torch.cat([o["scores"] for o in outputs])
    predictions = torch.cat([o["predictions"] for o in outputs])
    return VolumeResult(
        source=source,
        axis=axis,
        slice_indices=slice_indices,
        scores=scores,
        predictions=predictions,
        image_scores=torch.cat([o["image_score"] for o in outputs]),
        findings=study_findings(
            slice_indices, scores, predictions, detector.category_labels, detector.prompt_bank.display_names
        ),
        category_labels=detector.category_labels,
        model=_model_description(detector),
    )


def write_volume_results(results: Sequence[VolumeResult], output_dir: str | Path) -> dict[str, Path]:
    """Write ``findings.json`` (everything) and ``slices.csv`` / ``findings.csv`` (one row per slice / finding).

    Returns:
        The written paths by name.
    """
    output_dir = Path(output_dir)
    paths = {
        "json": atomic_write_json(output_dir / "findings.json", {"volumes": [r.to_dict() for r in results]}),
    }
    slice_rows = io.StringIO()
    writer = csv.writer(slice_rows)
    labels = results[0].category_labels if results else []
    writer.writerow(
        ["source", "axis", "slice", "image_score"] + [f"score:{l}" for l in labels] + [f"prediction:{l}" for l in labels]
    )
    for result in results:
        for row, index in enumerate(result.slice_indices):
            writer.writerow(
                [result.source, result.axis, index, f"{float(result.image_scores[row]):.6g}"]
                + [f"{v:.6g}" for v in result.scores[row].tolist()]
                + [int(v) for v in result.predictions[row].tolist()]
            )
    paths["slices_csv"] = atomic_write_text(output_dir / "slices.csv", slice_rows.getvalue())
    finding_rows = io.StringIO()
    writer = csv.writer(finding_rows)
    writer.writerow(["source", "label", "display_name", "finding", "score", "max_score_slice", "positive_slices"])
    for result in results:
        for finding in result.findings:
            writer.writerow(
                [
                    result.source,
                    finding["label"],
                    finding["display_name"],
                    finding["finding"],
                    f"{finding['score']:.6g}",
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


def infer_volumes(
    detector: SignDrivenDetector,
    inputs: Iterable[str | Path],
    output_dir: str | Path,
    **kwargs: Any,
) -> list[VolumeResult]:
    """:func:`infer_volume` over several volumes, logging progress, then :func:`write_volume_results`.

    Args:
        detector: the trained detector.
        inputs: volume paths (files or DICOM folders).
        output_dir: where the JSON and CSV files go.
        kwargs: slice policy and batching, passed to :func:`infer_volume`.
    """
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("No input volume given: pass at least one NIfTI file, DICOM folder or fastMRI .h5 file.")
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise FileNotFoundError(f"Input volumes not found: {missing}.")
    results = []
    for number, path in enumerate(inputs, start=1):
        result = infer_volume(detector, path, **kwargs)
        positives = [f["display_name"] for f in result.findings if f["finding"]]
        logger.info("[%d/%d] %s: %d slices, findings: %s", number, len(inputs), path, len(result.slice_indices),
                    ", ".join(positives) or "none")
        results.append(result)
    paths = write_volume_results(results, output_dir)
    logger.info("Wrote %s", ", ".join(str(p) for p in paths.values()))
    return results
