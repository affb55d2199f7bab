"""The inter-anomaly training loss of Section 3.2: Eq. 3 (image-text alignment) and Eq. 4 (anchor loss, Remark 3.1).
Eq. 5, their sum, is :class:`sdmad_monai.losses.SDMADLoss`.

Also here, and not in the paper: :func:`category_ranking_loss`, an optional term of ``SDMADLoss`` (off by default)
that orders images for each category, measured in benchmarks/RESULTS.md section 9.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .common import (
    _check_labels,
    _check_prompt_args,
    _negative_prompt_mask,
    _positive_prompt_mask,
    cosine_distance_matrix,
)
from .scoring import category_scores

__all__ = ["image_text_loss", "AnchorLossTerms", "anchor_loss_terms", "anchor_loss", "category_ranking_loss"]


def image_text_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    prompt_categories: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Image-text alignment loss, Eq. 3 of the paper.

    Per image, the sum of ``d(img, t)`` over the prompts of every positive category; for a normal image (all-zero
    label row) over the normal prompts. Mean over the batch.

    Args:
        image_features: ``[B, D]`` image embeddings.
        text_features: ``[P, D]`` prompt embeddings.
        prompt_categories: ``[P]`` category index per prompt, ``-1`` for normal prompts.
        labels: ``[B, K]`` multi-hot labels.

    Returns:
        Scalar loss.
    """
    _check_prompt_args(text_features, prompt_categories)
    _check_labels(image_features, labels, prompt_categories)
    distances = cosine_distance_matrix(image_features, text_features)  # [B, P]
    mask = _positive_prompt_mask(labels, prompt_categories, include_normal=True)
    return (distances * mask).sum(dim=1).mean()


class AnchorLossTerms(NamedTuple):
    """Per-image terms of Eq. 4 and the Remark 3.1 orderings they violate.

    Attributes:
        positive: ``[B]`` sum of positive hinges ``max(0, d(img, t) - d(img, anchor))``.
        negative: ``[B]`` sum of negative hinges ``max(0, d(img, anchor) - d(img, t))``.
        violations: ``[B]`` number of (image, prompt) pairs whose hinge is active, i.e. Remark 3.1 orderings
            broken (ties count as not violated).
    """

    positive: torch.Tensor
    negative: torch.Tensor
    violations: torch.Tensor


def anchor_loss_terms(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    prompt_categories: torch.Tensor,
    anchor_feature: torch.Tensor,
    labels: torch.Tensor,
) -> AnchorLossTerms:
    """The per-image positive and negative hinge sums of the anchor loss, Eq. 4 (see :func:`anchor_loss`).

    Args:
        image_features, text_features, prompt_categories, anchor_feature, labels: as in :func:`anchor_loss`.

    Returns:
        :class:`AnchorLossTerms` with ``[B]`` tensors.
    """
    _check_prompt_args(text_features, prompt_categories)
    _check_labels(image_features, labels, prompt_categories)
    if anchor_feature.ndim != 1 or anchor_feature.shape[0] != image_features.shape[1]:
        raise ValueError(
            f"anchor_feature must be [D] with D={image_features.shape[1]}, got shape {tuple(anchor_feature.shape)}."
        )
    distances = cosine_distance_matrix(image_features, text_features)  # [B, P]
    anchor_distance = cosine_distance_matrix(image_features, anchor_feature[None, :])  # [B, 1]
    positive_mask = _positive_prompt_mask(labels, prompt_categories, include_normal=False)
    negative_mask = _negative_prompt_mask(labels, prompt_categories)
    positive_hinge = torch.clamp(distances - anchor_distance, min=0) * positive_mask
    negative_hinge = torch.clamp(anchor_distance - distances, min=0) * negative_mask
    violations = (positive_hinge > 0).sum(dim=1) + (negative_hinge > 0).sum(dim=1)
    return AnchorLossTerms(positive_hinge.sum(dim=1), negative_hinge.sum(dim=1), violations)


def anchor_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    prompt_categories: torch.Tensor,
    anchor_feature: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Anchor (inter-anomaly) loss, Eq. 4 of the paper.

    With ``a = d(img, anchor)``, per image the positive term is ``sum max(0, d(img, t) - a)`` over the prompts of the
    image's positive categories and the negative term is ``sum max(0, a - d(img, t))`` over the prompts of every
    category the image does not have (all K categories for a normal image, whose positive term is therefore empty).
    Normal prompts do not enter this loss: the anchor stands for them. Mean over the batch of (positive + negative).

    Note:
        The paper prints the negative term as ``max(0, d(img, t_j^k) - d(img, t_j^k))``, which is identically zero
        (a typo). The form used here is the one Remark 3.1 states: the anchor must be closer to the image than any
        prompt of a category the image does not have, ``d(img, anchor) <= inf_{k != c, j} d(img, t_j^k)``.

    Args:
        image_features: ``[B, D]`` image embeddings.
        text_features: ``[P, D]`` prompt embeddings.
        prompt_categories: ``[P]`` category index per prompt, ``-1`` for normal prompts.
        anchor_feature: ``[D]`` anchor (normal) embedding.
        labels: ``[B, K]`` multi-hot labels.

    Returns:
        Scalar loss.
    """
    terms = anchor_loss_terms(image_features, text_features, prompt_categories, anchor_feature, labels)
    return (terms.positive + terms.negative).mean()


def category_ranking_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    prompt_categories: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
) -> torch.Tensor:
    """Category ranking hinge: **not in the paper**, the column counterpart of Remark 3.1.

    Remark 3.1 and Eq. 3-4 order one image's distances to the prompts (a row of the image-prompt matrix). The
    category AUROC of the paper's third protocol ranks the images for one category (a column), which no term of Eq. 5
    asks for (benchmarks/RESULTS.md section 8). This term does: for every category ``c`` with positive and negative
    images in the batch, the mean over (positive ``i``, negative ``j``) pairs of ``max(0, m - (s_c(f_i) - s_c(f_j)))``,
    with ``s_c`` Eq. 7's score over all of ``c``'s prompts (sign selection is an inference step); summed over those
    categories. Categories without prompts or without both kinds of images in the batch add nothing.

    Args:
        image_features: ``[B, D]`` image embeddings.
        text_features: ``[P, D]`` prompt embeddings.
        prompt_categories: ``[P]`` category index per prompt, ``-1`` for normal prompts.
        labels: ``[B, K]`` multi-hot labels.
        margin: ``m``, in cosine units.

    Returns:
        Scalar loss (0 when no category of the batch has both positive and negative images).
    """
    _check_prompt_args(text_features, prompt_categories)
    _check_labels(image_features, labels, prompt_categories)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}.")
    keep = torch.ones_like(prompt_categories, dtype=torch.bool)
    scores = category_scores(image_features, text_features, prompt_categories, keep, labels.shape[1])  # [B, K]
    positive = labels > 0.5
    terms = []
    for k in range(labels.shape[1]):
        is_positive = positive[:, k]
        if not bool((prompt_categories == k).any()) or not bool(is_positive.any()) or bool(is_positive.all()):
            continue
        gap = scores[is_positive, k][:, None] - scores[~is_positive, k][None, :]
        terms.append(torch.clamp(margin - gap, min=0).mean())
    return torch.stack(terms).sum() if terms else image_features.sum() * 0.0  # 0, still in the graph
