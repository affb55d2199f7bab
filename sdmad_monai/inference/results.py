"""Per-volume results and their study-level aggregation: :class:`VolumeResult`, :func:`study_findings`, the
not-assessable checks (:func:`slice_problem`) and the errors of volume inference.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import torch

from ..anomaly_volume import anomaly_volume
from ..networks.detector import SignDrivenDetector

__all__ = [
    "Finding",
    "NotAssessableError",
    "StudyFindings",
    "VolumeResult",
    "VolumesFailedError",
    "slice_problem",
    "study_findings",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Finding(Mapping[str, Any]):
    """One category's study-level finding (:func:`study_findings`; aggregation in :mod:`sdmad_monai.inference`).

    Read as attributes; also a read-only mapping (``finding["score"]``, ``dict(finding)``) with the keys of its JSON
    form, which :meth:`to_dict` gives (``findings.json``, the SR's JSON copy, MONAI Label's result).

    Attributes:
        label: the category label (the prompt bank's).
        display_name: its short name.
        score: Eq. 7 score of the highest-scoring slice.
        probability: highest calibrated slice probability, ``None`` when the category is not calibrated.
        finding: 1 when at least one slice is positive by the category's decision rule, else 0.
        positive_slices: the slices positive by that rule.
        eq8_finding: 1 when Eq. 8 is positive on at least one slice (whatever the rule).
        decision: the rule (``{"rule": "eq8"}`` or ``{"rule": "probability", "threshold": t, ...}``).
        max_score_slice: the slice of :attr:`score`.
    """

    label: str
    display_name: str
    score: float
    probability: float | None
    finding: int
    positive_slices: list[int]
    eq8_finding: int
    decision: dict[str, Any]
    max_score_slice: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return {
            name: (list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value)
            for name, value in self.items()
        }

    def __getitem__(self, key: str) -> Any:
        if key not in _FINDING_FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_FINDING_FIELDS)

    def __len__(self) -> int:
        return len(_FINDING_FIELDS)


_FINDING_FIELDS = tuple(f.name for f in dataclasses.fields(Finding))


class StudyFindings(Sequence[Finding]):
    """The study-level findings of one volume or series, one :class:`Finding` per category in the prompt bank's
    order.

    Args:
        findings: the findings, one per category.
    """

    def __init__(self, findings: Iterable[Finding]) -> None:
        self._findings = tuple(findings)

    @overload
    def __getitem__(self, index: int) -> Finding: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Finding]: ...

    def __getitem__(self, index: int | slice) -> Finding | Sequence[Finding]:
        return self._findings[index]

    def __len__(self) -> int:
        return len(self._findings)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable-style equality with lists: unhashable, as a list

    def __repr__(self) -> str:
        return f"StudyFindings({list(self._findings)!r})"

    @property
    def positive(self) -> list[Finding]:
        """The findings that are positive by their decision rule."""
        return [f for f in self._findings if f.finding]

    def positive_names(self) -> list[str]:
        """Display names of the positive findings (what logs and reports print; empty for "no finding")."""
        return [f.display_name for f in self.positive]

    def by_label(self) -> dict[str, Finding]:
        """The findings by category label."""
        return {f.label: f for f in self._findings}

    def to_list(self) -> list[dict[str, Any]]:
        """JSON-ready list (:meth:`Finding.to_dict` of each)."""
        return [f.to_dict() for f in self._findings]


def study_findings(
    slice_indices: Sequence[int],
    scores: torch.Tensor,
    predictions: torch.Tensor,
    category_labels: Sequence[str],
    display_names: Sequence[str] | None = None,
    probabilities: np.ndarray | None = None,
    rules: Sequence[Mapping[str, Any]] | None = None,
) -> StudyFindings:
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
        ``K`` :class:`Finding`: ``label``, ``display_name``, ``score`` (Eq. 7, highest slice), ``probability``
        (highest slice probability, ``None`` when not calibrated), ``finding`` (0/1 by the category's rule) and its
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
            Finding(
                label=label,
                display_name=names[k],
                score=float(scores[best[k], k]),
                probability=float(column.max()) if calibrated and column is not None else None,
                finding=int(bool(positive)),
                positive_slices=positive,
                eq8_finding=int(bool(eq8)),
                decision=rule,
                max_score_slice=int(slice_indices[int(best[k])]),
            )
        )
    return StudyFindings(findings)


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
    findings: StudyFindings
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
        return self.slices_to_volume(self.anomaly_maps)

    def slices_to_volume(self, planes: Any) -> np.ndarray:
        """Per-slice planes at the detector's input size (``[N, S, S]``, like :attr:`anomaly_maps`) placed onto the
        scan's voxel grid as the anomaly maps are (:func:`~sdmad_monai.anomaly_volume.anomaly_volume`).

        Args:
            planes: ``[N, S, S]`` values, one plane per processed slice, e.g. a per-slice class.

        Returns:
            ``[X, Y, Z]`` float32 array, 0 on the slices not processed.

        Raises:
            ValueError: the result has no slice or volume shape (no anomaly maps were computed).
        """
        if self.slice_shape is None or self.volume_shape is None:
            raise ValueError(f"{self.source}: no anomaly maps were computed (infer_volume(..., anomaly_maps=True)).")
        return anomaly_volume(
            planes,
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
            "findings": self.findings.to_list(),
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
    from .. import __version__

    return {
        "sdmad_monai_version": __version__,
        "backbone": detector.config["model_name"],
        "weights": detector.description()["config"]["pretrained"],
        "prompt_bank": f"{detector.prompt_bank.name} {detector.prompt_bank.version}",
        "sign_selection": detector.sign_selection,
    }
