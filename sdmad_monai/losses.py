"""Loss modules for MONAI trainers: thin wrappers over :mod:`sdmad_monai.functional` (Eq. 3-5), and MVFA's
segmentation terms for the pixel-level protocol.

Each takes the :class:`~sdmad_monai.networks.outputs.DetectorOutput` that ``SignDrivenDetector(image, output="all")``
returns (or any mapping with its keys) as its prediction and the ``[B, K]``
multi-hot labels as target, the ``loss(pred, label)`` call MONAI's ``SupervisedTrainer`` makes. With pixel-level
training the target is instead the mapping ``{"label": [B, K], "mask": [B, 1, H, W], "mask_valid": [B]}`` that
:class:`sdmad_monai.workflows.PrepareBatchWithMasks` builds.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from monai.losses import DiceLoss, FocalLoss
from torch import nn

from .functional import anchor_loss, anchor_loss_terms, category_ranking_loss, image_text_loss, patch_grid_to_image

__all__ = ["ImageTextLoss", "AnchorLoss", "SDMADLoss", "PixelSegmentationLoss"]

_REQUIRED = ("image_features", "text_features", "prompt_categories")


def _unpack(outputs: Mapping[str, torch.Tensor], need_anchor: bool) -> tuple[torch.Tensor, ...]:
    if not isinstance(outputs, Mapping):
        raise TypeError(
            "SD-MAD losses take the DetectorOutput of SignDrivenDetector(image, output='all'), got "
            f"{type(outputs).__name__}; use sdmad_monai.inferers.DetectorInferer(output='all') or call the network "
            "with output='all'."
        )
    keys = _REQUIRED + (("anchor_feature",) if need_anchor else ())
    missing = [k for k in keys if k not in outputs]
    if missing:
        raise KeyError(f"Detector outputs lack {missing}; got {sorted(outputs)}.")
    return tuple(outputs[k] for k in keys)


def _as_labels(labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if isinstance(labels, Mapping):
        if "label" not in labels:
            raise KeyError(f"The loss target mapping needs a 'label' entry, got {sorted(labels)}.")
        labels = labels["label"]
    return labels.to(device=like.device, dtype=like.dtype)


class PixelSegmentationLoss(nn.Module):
    """MVFA's segmentation terms (Huang et al., CVPR 2024): focal + Dice between each map layer's zero-shot map and
    the anomaly mask, averaged over the map layers.

    As in MVFA, each layer's zero-shot logits (``patch_logits`` of the detector, :func:`~sdmad_monai.functional.
    zero_shot_patch_logits`) are upsampled bilinearly to the mask size and compared there; the sigmoid of the logit
    is MVFA's 2-way softmax, so MONAI's sigmoid losses take the logits directly:

    - focal: :class:`monai.losses.FocalLoss` (``gamma=2``, no alpha: MVFA's ``FocalLoss``), mean over pixels;
    - Dice: :class:`monai.losses.DiceLoss` per image (``batch=False``) with ``smooth_nr = smooth_dr = 1``, MVFA's
      ``BinaryDiceLoss``. A normal image (empty mask) therefore costs ``1 - 1 / (1 + sum p)``: its map is pushed to 0.

    MVFA sums the layers (``M`` times this mean). Images whose ``mask_valid`` is 0 (abnormal images without a mask)
    do not enter the loss; a batch without any valid image gives 0 (with a gradient of 0).

    Args:
        focal_weight: weight of the focal term.
        dice_weight: weight of the Dice term.
        gamma: focal exponent.
    """

    def __init__(self, focal_weight: float = 1.0, dice_weight: float = 1.0, gamma: float = 2.0) -> None:
        super().__init__()
        self.focal_weight = float(focal_weight)
        self.dice_weight = float(dice_weight)
        self.focal = FocalLoss(gamma=gamma, use_softmax=False, reduction="none")
        self.dice = DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0, batch=False, reduction="none")
        self.components: dict[str, float] = {}

    def forward(
        self, outputs: Mapping[str, torch.Tensor], masks: torch.Tensor, mask_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args:
            outputs: detector outputs with ``patch_logits`` ``[B, L, h, w]``.
            masks: ``[B, 1, H, W]`` or ``[B, H, W]`` anomaly masks (> 0.5 is anomalous), at any size.
            mask_valid: ``[B]`` 1 where the mask is known (default: all).

        Returns:
            Scalar loss.
        """
        if not isinstance(outputs, Mapping) or "patch_logits" not in outputs:
            raise KeyError(
                "The pixel-level loss needs the detector's 'patch_logits' (output='all' on a detector with "
                f"map_layers); got {sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__}."
            )
        logits = outputs["patch_logits"]
        if masks.ndim == 3:
            masks = masks[:, None]
        if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[0] != logits.shape[0]:
            raise ValueError(
                f"masks must be [B, 1, H, W] or [B, H, W] with B={logits.shape[0]}, got shape {tuple(masks.shape)}."
            )
        b, layers, h, w = logits.shape
        target = (masks.to(device=logits.device) > 0.5).to(logits.dtype)
        upsampled = patch_grid_to_image(logits.reshape(b, layers, h * w), (h, w), masks.shape[-2:])
        focal = torch.stack([self.focal(upsampled[:, i : i + 1], target).mean(dim=(1, 2, 3)) for i in range(layers)])
        dice = torch.stack([self.dice(upsampled[:, i : i + 1], target).reshape(b) for i in range(layers)])
        per_image = (self.focal_weight * focal + self.dice_weight * dice).mean(dim=0)  # [B]
        valid = torch.ones(b, device=logits.device) if mask_valid is None else mask_valid.to(logits.device).reshape(b)
        valid = valid.to(logits.dtype)
        count = valid.sum()
        self.components = {
            "pixel_focal": float((focal.mean(0) * valid).sum().detach() / count.clamp(min=1)),
            "pixel_dice": float((dice.mean(0) * valid).sum().detach() / count.clamp(min=1)),
            "pixel_images": float(count),
        }
        return (per_image * valid).sum() / count.clamp(min=1)


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
    """The SD-MAD training loss, Eq. 5: ``L = L_img-text + L_anchor`` (optionally weighted), plus, for the
    pixel-level protocol, ``pixel_loss_weight`` times MVFA's segmentation terms (:class:`PixelSegmentationLoss`):
    the paper's Section 4.2 "aggregates our inter-anomaly loss with the losses of MVFA"; and, only when asked for,
    ``ranking_loss_weight`` times a category ranking term that is not the paper's.

    After each call, :attr:`components` holds the batch means of the image-text loss, the positive and negative
    anchor hinges and the number of violated Remark 3.1 orderings (and the pixel terms when on), for logging handlers.

    Args:
        image_text_weight: weight of Eq. 3 (1 in the paper).
        anchor_weight: weight of Eq. 4 (1 in the paper).
        pixel_loss_weight: weight of the segmentation terms; 0 (default) is the paper's image-level training and
            accepts a plain ``[B, K]`` label target. Above 0 the target must be the mapping of
            :class:`sdmad_monai.workflows.PrepareBatchWithMasks` (``label``, ``mask``, ``mask_valid``).
        ranking_loss_weight: weight of :func:`~sdmad_monai.functional.category_ranking_loss`, a term the paper does not
            have; 0 (default) is the paper's loss. It orders the images for each category (what category AUROC
            measures), which Eq. 3-5 do not: with no prior it turns 4 shots into a category-AUROC gain where Eq. 5
            gains little; on the demo backbone it adds 0.01-0.02 and lowers Eq. 8's Hamming score
            (benchmarks/RESULTS.md section 9).
        ranking_margin: its margin ``m`` in cosine units.
    """

    def __init__(
        self,
        image_text_weight: float = 1.0,
        anchor_weight: float = 1.0,
        pixel_loss_weight: float = 0.0,
        ranking_loss_weight: float = 0.0,
        ranking_margin: float = 0.2,
    ) -> None:
        super().__init__()
        for name, value in (
            ("pixel_loss_weight", pixel_loss_weight),
            ("ranking_loss_weight", ranking_loss_weight),
            ("ranking_margin", ranking_margin),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        self.image_text_weight = float(image_text_weight)
        self.anchor_weight = float(anchor_weight)
        self.pixel_loss_weight = float(pixel_loss_weight)
        self.ranking_loss_weight = float(ranking_loss_weight)
        self.ranking_margin = float(ranking_margin)
        self.pixel_loss = PixelSegmentationLoss() if self.pixel_loss_weight > 0 else None
        self.components: dict[str, float] = {}

    def forward(self, outputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        image, text, categories, anchor = _unpack(outputs, need_anchor=True)
        target = labels
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
        loss = self.image_text_weight * alignment + self.anchor_weight * anchor_term
        if self.ranking_loss_weight > 0:
            ranking = category_ranking_loss(image, text, categories, labels, self.ranking_margin)
            self.components["category_ranking"] = float(ranking.detach())
            loss = loss + self.ranking_loss_weight * ranking
        if self.pixel_loss is None:
            return loss
        if not isinstance(target, Mapping) or "mask" not in target:
            raise KeyError(
                f"pixel_loss_weight={self.pixel_loss_weight} needs masks: the target must be the mapping of "
                "sdmad_monai.workflows.PrepareBatchWithMasks ({'label', 'mask', 'mask_valid'}) with a 'mask' entry; "
                "set the trainer's prepare_batch to it and give the datalist items a 'mask' (normal images may omit "
                "it)."
            )
        pixel = self.pixel_loss(outputs, target["mask"], target.get("mask_valid"))
        self.components.update(self.pixel_loss.components)
        return loss + self.pixel_loss_weight * pixel
