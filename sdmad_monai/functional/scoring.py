"""Inference scores of Section 3.3: Eq. 7 (continuous category score, max over the kept prompts), Eq. 8 (binary
prediction against the anchor), the anchor feature and the image-level anomaly score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import NORMAL_CATEGORY, _check_prompt_args
from .sign_selection import kept_prompt_membership

__all__ = [
    "category_scores",
    "category_scores_from_similarities",
    "anchor_predictions",
    "anchor_predictions_from_similarities",
    "anchor_feature_from_normal_prompts",
    "image_anomaly_score",
]


def _per_category_similarities(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    prompt_categories: torch.Tensor,
    keep: torch.Tensor,
    num_categories: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, P]`` cosine similarities and the ``[K, P]`` kept-membership mask."""
    _check_prompt_args(text_features, prompt_categories)
    membership = kept_prompt_membership(prompt_categories, keep, num_categories)
    similarities = F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T  # [B, P]
    return similarities, membership


def category_scores_from_similarities(similarities: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """Eq. 7 on precomputed cosine similarities: ``s_c`` is the max over the kept prompts of category ``c``.

    Args:
        similarities: ``[B, P]`` cosine similarity of each image to each prompt.
        membership: ``[K, P]`` from :func:`kept_prompt_membership`.

    Returns:
        ``[B, K]`` scores ``s_c``.
    """
    return similarities[:, None, :].masked_fill(~membership[None], float("-inf")).amax(dim=2)


def category_scores(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    prompt_categories: torch.Tensor,
    keep: torch.Tensor,
    num_categories: int,
) -> torch.Tensor:
    """Continuous category scores, Eq. 7: max cosine similarity over the kept prompts of each category.

    The features-level entry of :func:`category_scores_from_similarities`.

    Args:
        image_features: ``[B, D]`` image embeddings.
        text_features: ``[P, D]`` prompt embeddings.
        prompt_categories: ``[P]`` category index per prompt, ``-1`` for normal prompts.
        keep: ``[P]`` bool mask of kept prompts (all ``True`` for no sign selection).
        num_categories: number of anomaly categories ``K``.

    Returns:
        ``[B, K]`` scores ``s_c`` in ``[-1, 1]``.
    """
    similarities, membership = _per_category_similarities(
        image_features, text_features, prompt_categories, keep, num_categories
    )
    return category_scores_from_similarities(similarities, membership)


def anchor_predictions_from_similarities(
    similarities: torch.Tensor, membership: torch.Tensor, anchor_similarity: torch.Tensor
) -> torch.Tensor:
    """Eq. 8 on precomputed cosine similarities: ``p_c = 1`` iff the min similarity over the kept prompts of
    category ``c`` exceeds the similarity to the anchor (strictly).

    Args:
        similarities: ``[B, P]`` cosine similarity of each image to each prompt.
        membership: ``[K, P]`` from :func:`kept_prompt_membership`.
        anchor_similarity: ``[B]`` cosine similarity of each image to the anchor feature.

    Returns:
        ``[B, K]`` 0/1 predictions in the dtype of ``similarities``.
    """
    lowest = similarities[:, None, :].masked_fill(~membership[None], float("inf")).amin(dim=2)  # [B, K]
    return (lowest > anchor_similarity[:, None]).to(similarities.dtype)


def anchor_predictions(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    prompt_categories: torch.Tensor,
    keep: torch.Tensor,
    anchor_feature: torch.Tensor,
    num_categories: int,
) -> torch.Tensor:
    """Binary predictions with the anchor, Eq. 8.

    ``p_c = 1`` iff ``I_c``, the min cosine similarity over the kept prompts of category ``c``, exceeds the cosine
    similarity to the anchor feature (strictly). The features-level entry of
    :func:`anchor_predictions_from_similarities`.

    Args:
        image_features: ``[B, D]`` image embeddings.
        text_features: ``[P, D]`` prompt embeddings.
        prompt_categories: ``[P]`` category index per prompt, ``-1`` for normal prompts.
        keep: ``[P]`` bool mask of kept prompts.
        anchor_feature: ``[D]`` anchor embedding.
        num_categories: number of anomaly categories ``K``.

    Returns:
        ``[B, K]`` float tensor of 0/1 predictions.
    """
    similarities, membership = _per_category_similarities(
        image_features, text_features, prompt_categories, keep, num_categories
    )
    anchor_similarity = F.normalize(image_features, dim=-1) @ F.normalize(anchor_feature, dim=-1)  # [B]
    return anchor_predictions_from_similarities(similarities, membership, anchor_similarity).to(image_features.dtype)


def anchor_feature_from_normal_prompts(text_features: torch.Tensor, prompt_categories: torch.Tensor) -> torch.Tensor:
    """The anchor ``f_anchor``: the normalised mean of the L2-normalised normal-prompt features.

    The paper sets the anchor to "the feature of the text prompt corresponding to normal images"; with several normal
    prompts (a prompt ensemble, as in CLIP zero-shot classification) their normalised centroid is used.

    Args:
        text_features: ``[P, D]`` prompt embeddings.
        prompt_categories: ``[P]`` category index per prompt, ``-1`` for normal prompts.

    Returns:
        ``[D]`` unit-norm anchor feature.
    """
    _check_prompt_args(text_features, prompt_categories)
    normal = prompt_categories == NORMAL_CATEGORY
    if not normal.any():
        raise ValueError("No normal prompt (category -1) given: the anchor feature needs at least one.")
    return F.normalize(F.normalize(text_features[normal], dim=-1).mean(dim=0), dim=0)


def image_anomaly_score(scores: torch.Tensor, anchor_similarity: torch.Tensor) -> torch.Tensor:
    """Image-level anomaly score for normal-vs-abnormal AUROC: ``max_c s_c - cos(img, anchor)``.

    The margin by which the most likely anomaly category (Eq. 7 score) beats the normal anchor. Subtracting the
    anchor similarity removes the per-image offset of CLIP similarities (some slices are closer to every brain-MRI
    prompt), in the same spirit as Eq. 8, which compares each category with the anchor.

    Args:
        scores: ``[B, K]`` category scores from :func:`category_scores`.
        anchor_similarity: ``[B]`` cosine similarity of each image to the anchor feature.

    Returns:
        ``[B]`` image scores; higher means more abnormal.
    """
    if scores.ndim != 2 or anchor_similarity.shape != scores.shape[:1]:
        raise ValueError(
            f"scores must be [B, K] and anchor_similarity [B], got {tuple(scores.shape)} and "
            f"{tuple(anchor_similarity.shape)}."
        )
    return scores.amax(dim=1) - anchor_similarity
