"""Loss modules for MONAI trainers: thin wrappers over :mod:`sdmad_monai.functional` (Eq. 3-5).

Each takes the dict that ``SignDrivenDetector(image, output="all")`` returns as its prediction and the ``[B, K]``
multi-hot labels as target, the ``loss(pred, label)`` call MONAI's ``SupervisedTrainer`` makes.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .functional import anchor_loss, anchor_loss_terms, image_text_loss

__all__ = ["ImageTextLoss", "AnchorLoss", "SDMADLoss"]

_REQUIRED = ("image_features", "text_features", "prompt_categories")


def _unpack(outputs: Mapping[str, torch.Tensor], need_anchor: bool) -> tuple[torch.Tensor, ...]:
    if not isinstance(outputs, Mapping):
        raise TypeError(
            "SD-MAD losses take the dict of SignDrivenDetector(image, output='all'), got "
            f"{type(outputs).__name__}; use SDMADTrainingInferer or call the network with output='all'."
        )
    keys = _REQUIRED + (("anchor_feature",) if need_anchor else ())
    missing = [k for k in keys if k not in outputs]
    if missing:
        raise KeyError(f"Detector outputs lack {missing}; got {sorted(outputs)}.")
    return tuple(outputs[k] for k in keys)


def _as_labels(labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return labels.to(device=like.device, dtype=like.dtype)


class ImageTextLoss(nn.Module):
    """Eq. 3 (:func:`~sdmad_monai.functional.image_text_loss`) as a module."""

    def forward(self, outputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        image, text, categories = _unpack(outputs, need_anchor=False)
        return image_text_loss(image, text, categories, _as_labels(labels, image))


class AnchorLoss(nn.Module):
    """Eq. 4 (:func:`~sdmad_monai.functional.anchor_loss`) as a module."""

    def forward(self, outputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        image, text, categories, anchor = _unpack(outputs, need_anchor=True)
        return anchor_loss(image, text, categories, anchor, _as_labels(labels, image))


class SDMADLoss(nn.Module):
    """The SD-MAD training loss, Eq. 5: ``L = L_img-text + L_anchor`` (optionally weighted).

    After each call, :attr:`components` holds the batch means of the image-text loss, the positive and negative
    anchor hinges and the number of violated Remark 3.1 orderings, for logging handlers.

    Args:
        image_text_weight: weight of Eq. 3 (1 in the paper).
        anchor_weight: weight of Eq. 4 (1 in the paper).
    """

    def __init__(self, image_text_weight: float = 1.0, anchor_weight: float = 1.0) -> None:
        super().__init__()
        self.image_text_weight = float(image_text_weight)
        self.anchor_weight = float(anchor_weight)
        self.components: dict[str, float] = {}

    def forward(self, outputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        image, text, categories, anchor = _unpack(outputs, need_anchor=True)
        labels = _as_labels(labels, image)
        alignment = image_text_loss(image, text, categories, labels)
        terms = anchor_loss_terms(image, text, categories, anchor, labels)
        anchor_term = (terms.positive + terms.negative).mean()
        self.components = {
            "image_text": float(alignment.detach()),
            "anchor_positive": float(terms.positive.detach().mean()),
            "anchor_negative": float(terms.negative.detach().mean()),
            "remark31_violations": float(terms.violations.sum()),
        }
        return self.image_text_weight * alignment + self.anchor_weight * anchor_term
