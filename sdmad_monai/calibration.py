"""Per-category probabilities and operating points: what a clinical reader can act on, beside the paper's scores.

The paper's outputs are the Eq. 7 score ``s_c`` (a cosine similarity, used for its AUROCs) and the Eq. 8 decision
(the kept prompts of category ``c`` all closer to the image than the normal anchor). Neither is a probability. This
module adds, per category, a monotone logistic calibration fitted on the validation split after training:

- the calibrated quantity is the **margin** ``m_c = s_c - cos(image, anchor)`` (:func:`calibration_margin`): the
  score with the per-image offset of CLIP similarities removed, as in Eq. 8 and the image score;
- ``p_c = sigmoid(a_c * m_c + b_c)`` with ``a_c >= 0`` (:meth:`Calibration.probabilities`), so a higher score never
  gives a lower probability. It is fitted by scikit-learn's logistic regression on the standardised margin (L2,
  ``C = 1``); a fit whose slope is not positive (no increasing relation on validation) is replaced by the constant
  base rate, and a category without positive or without negative validation slices gets no
  probability (``None``) rather than an invented one;
- the **operating point** is chosen by the user (:class:`OperatingPoint`): Eq. 8's decision (default, the paper's),
  or a probability threshold reaching a target sensitivity on the validation slices, computed from the validation
  margins stored with the calibration, so a new operating point needs no new data.

Everything here is stored in the checkpoint (the detector's description) and reproduces from it
(:meth:`Calibration.to_dict` / :meth:`Calibration.from_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "Calibration",
    "CategoryCalibration",
    "OperatingPoint",
    "calibration_margin",
    "fit_calibration",
]


def calibration_margin(scores: torch.Tensor, anchor_similarity: torch.Tensor) -> torch.Tensor:
    """The calibrated quantity: ``m_c = s_c - cos(image, anchor)``, ``[N, K]``.

    Args:
        scores: ``[N, K]`` Eq. 7 scores.
        anchor_similarity: ``[N]`` cosine similarity of each image to the anchor feature.
    """
    if scores.ndim != 2 or anchor_similarity.shape != scores.shape[:1]:
        raise ValueError(
            f"scores must be [N, K] and anchor_similarity [N], got {tuple(scores.shape)} and "
            f"{tuple(anchor_similarity.shape)}."
        )
    return scores - anchor_similarity[:, None]


@dataclass(frozen=True)
class OperatingPoint:
    """How a category's decision is made: Eq. 8 (``target_sensitivity=None``, the paper's), or
    ``probability >= threshold`` with the threshold that reaches ``target_sensitivity`` on the validation slices.

    Args:
        target_sensitivity: in ``(0, 1]``, or ``None`` for Eq. 8.
    """

    target_sensitivity: float | None = None

    def __post_init__(self) -> None:
        if self.target_sensitivity is not None and not 0.0 < float(self.target_sensitivity) <= 1.0:
            raise ValueError(
                f"operating_point target_sensitivity must be in (0, 1] (or null for Eq. 8), got "
                f"{self.target_sensitivity!r}."
            )

    @classmethod
    def from_config(cls, value: Any) -> OperatingPoint:
        """From a config value: ``None`` / ``"eq8"`` or ``{"target_sensitivity": 0.9}``."""
        if value is None or value == "eq8":
            return cls()
        if isinstance(value, OperatingPoint):
            return value
        if isinstance(value, Mapping) and set(value) == {"target_sensitivity"}:
            return cls(float(value["target_sensitivity"]))
        raise ValueError(
            f'operating_point must be null or "eq8" (Eq. 8 decides) or {{"target_sensitivity": <0..1>}}, got {value!r}.'
        )

    def to_config(self) -> Any:
        return None if self.target_sensitivity is None else {"target_sensitivity": self.target_sensitivity}


@dataclass(frozen=True)
class CategoryCalibration:
    """One category's calibration and the validation data it was fitted on.

    Attributes:
        label: the category.
        slope: ``a_c >= 0``; ``None`` when not calibrated.
        intercept: ``b_c``; ``None`` when not calibrated.
        positives: validation slices with the category.
        negatives: validation slices without it.
        auroc: validation AUROC of the margin (``None`` without both classes).
        note: why the fit is constant or missing, empty otherwise.
        positive_margins: the positives' margins (for operating points).
        negative_margins: the negatives' margins.
    """

    label: str
    slope: float | None
    intercept: float | None
    positives: int
    negatives: int
    auroc: float | None
    note: str = ""
    positive_margins: tuple[float, ...] = field(default=(), repr=False)
    negative_margins: tuple[float, ...] = field(default=(), repr=False)

    @property
    def calibrated(self) -> bool:
        return self.slope is not None

    def probability(self, margins: np.ndarray) -> np.ndarray | None:
        """``sigmoid(a m + b)`` of an array of margins; ``None`` when not calibrated."""
        if not self.calibrated:
            return None
        return self._probability(margins)

    def _probability(self, margins: np.ndarray) -> np.ndarray:
        """``sigmoid(a m + b)`` of an array of margins, for a calibrated category."""
        if self.slope is None or self.intercept is None:
            raise ValueError(
                f"category {self.label!r} is not calibrated (slope {self.slope}, intercept {self.intercept})."
            )
        z = self.slope * np.asarray(margins, dtype=np.float64) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def threshold(self, point: OperatingPoint) -> dict[str, Any]:
        """The decision rule of ``point`` for this category, with what it gives on the validation slices.

        Returns:
            ``{"rule": "eq8"}``; or ``{"rule": "probability", "threshold": t, "target_sensitivity",
            "validation_sensitivity", "validation_specificity"}``: ``t`` is the highest probability whose
            ``p >= t`` keeps at least the target share of the validation positives; or ``{"rule": "eq8", "note"}``
            when the category has no calibration to threshold.
        """
        if point.target_sensitivity is None:
            return {"rule": "eq8"}
        if not self.calibrated or not self.positive_margins:
            return {"rule": "eq8", "note": f"no probability threshold: {self.note or 'not calibrated'}; Eq. 8 decides"}
        positives = np.sort(self._probability(np.asarray(self.positive_margins)))[::-1]
        needed = max(1, math.ceil(point.target_sensitivity * len(positives) - 1e-9))
        threshold = float(positives[needed - 1])
        negatives = self._probability(np.asarray(self.negative_margins)) if self.negative_margins else np.zeros(0)
        return {
            "rule": "probability",
            "threshold": threshold,
            "target_sensitivity": point.target_sensitivity,
            "validation_sensitivity": float(np.mean(positives >= threshold)),
            "validation_specificity": float(np.mean(negatives < threshold)) if negatives.size else None,
        }


@dataclass(frozen=True)
class Calibration:
    """The per-category calibrations of a detector, as stored in its checkpoint.

    Attributes:
        categories: one :class:`CategoryCalibration` per category, in the detector's order.
        split: the split it was fitted on.
        num_slices: validation slices used.
    """

    categories: tuple[CategoryCalibration, ...]
    split: str = "validation"
    num_slices: int = 0

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.categories]

    def probabilities(self, margins: torch.Tensor | np.ndarray) -> np.ndarray:
        """``[N, K]`` probabilities of ``[N, K]`` margins; ``NaN`` in the columns of categories not calibrated."""
        margins = np.asarray(torch.as_tensor(margins, dtype=torch.float64).cpu())
        if margins.ndim != 2 or margins.shape[1] != len(self.categories):
            raise ValueError(f"margins must be [N, {len(self.categories)}], got {tuple(margins.shape)}.")
        columns = [c.probability(margins[:, k]) for k, c in enumerate(self.categories)]
        return np.stack([np.full(margins.shape[0], np.nan) if p is None else p for p in columns], axis=1)

    def summary(self) -> list[dict[str, Any]]:
        """What was fitted, per category, without the stored validation margins."""
        return [
            {k: v for k, v in asdict(c).items() if k not in ("positive_margins", "negative_margins")}
            for c in self.categories
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "num_slices": self.num_slices,
            "categories": [
                {
                    **asdict(c),
                    "positive_margins": list(c.positive_margins),
                    "negative_margins": list(c.negative_margins),
                }
                for c in self.categories
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        categories = tuple(
            CategoryCalibration(
                **{
                    **c,
                    "positive_margins": tuple(c.get("positive_margins", ())),
                    "negative_margins": tuple(c.get("negative_margins", ())),
                }
            )
            for c in data["categories"]
        )
        return cls(
            categories=categories, split=str(data.get("split", "validation")), num_slices=int(data.get("num_slices", 0))
        )


def _stored(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in values.tolist())


def fit_calibration(
    margins: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    categories: Sequence[str],
    split: str = "validation",
) -> Calibration:
    """Fit the per-category monotone logistic calibration (module docstring) on validation slices.

    Args:
        margins: ``[N, K]`` :func:`calibration_margin` of the validation slices.
        labels: ``[N, K]`` multi-hot labels.
        categories: ``K`` labels.
        split: name of the data (recorded).

    Returns:
        :class:`Calibration`.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    margins = np.asarray(torch.as_tensor(margins, dtype=torch.float64).cpu())
    labels = np.asarray(torch.as_tensor(labels).cpu()) > 0.5
    if margins.shape != labels.shape or margins.ndim != 2 or margins.shape[1] != len(categories):
        raise ValueError(
            f"margins {tuple(margins.shape)} and labels {tuple(labels.shape)} must both be [N, {len(categories)}]."
        )
    fitted = []
    for k, label in enumerate(categories):
        x, y = margins[:, k], labels[:, k]
        positives, negatives = int(y.sum()), int((~y).sum())
        stored = {"positive_margins": _stored(x[y]), "negative_margins": _stored(x[~y])}
        if positives == 0 or negatives == 0:
            missing = "positive" if positives == 0 else "negative"
            fitted.append(CategoryCalibration(
                label, None, None, positives, negatives, None,
                note=f"the {split} split has no {missing} slice of this category", **stored,
            ))  # fmt: skip
            continue
        auroc = float(roc_auc_score(y, x))
        mean, std = float(x.mean()), float(x.std()) or 1.0
        model = LogisticRegression(C=1.0).fit(((x - mean) / std)[:, None], y)
        coefficient, offset = float(model.coef_[0, 0]), float(model.intercept_[0])
        if coefficient > 0:
            slope, intercept, note = coefficient / std, offset - coefficient * mean / std, ""
        else:
            rate = positives / (positives + negatives)
            slope, intercept = 0.0, math.log(rate / (1.0 - rate))
            note = (
                f"the logistic fit found no increasing relation to the score on {split} (slope <= 0, AUROC "
                f"{auroc:.3f}): constant base rate"
            )
        fitted.append(CategoryCalibration(label, slope, intercept, positives, negatives, auroc, note, **stored))
    return Calibration(categories=tuple(fitted), split=split, num_slices=int(margins.shape[0]))
