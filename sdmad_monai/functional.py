"""The SD-MAD paper's math as pure tensor functions (Eq. 3, 4, 6, 7, 8).

Conventions shared by every function here:

- Features are L2-normalised inside each function, so callers may pass raw encoder outputs.
- ``d(a, b) = 1 - cosine(a, b)`` is the cosine distance of the paper.
- ``prompt_categories`` is a LongTensor ``[P]`` giving, for each text prompt, its category index ``0..K-1``, or
  ``-1`` for a normal-image prompt.
- ``labels`` is a multi-hot float tensor ``[B, K]``; an all-zero row is a normal image.
- Losses sum over prompts as the paper writes them, then take the mean over the batch.

No state, no I/O: the modules in :mod:`sdmad_monai.networks` and :mod:`sdmad_monai.losses` call these.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "NORMAL_CATEGORY",
    "cosine_distance_matrix",
    "image_text_loss",
    "anchor_loss_terms",
    "anchor_loss",
    "AnchorLossTerms",
    "select_signs",
    "selection_with_fallback",
    "category_scores",
    "anchor_predictions",
    "anchor_feature_from_normal_prompts",
    "image_anomaly_score",
]

#: Category index used in ``prompt_categories`` for the normal-image prompts.
NORMAL_CATEGORY = -1


def _check_prompt_args(text_features: torch.Tensor, prompt_categories: torch.Tensor) -> None:
    if text_features.ndim != 2:
        raise ValueError(f"text_features must be [P, D], got shape {tuple(text_features.shape)}.")
    if prompt_categories.ndim != 1 or prompt_categories.shape[0] != text_features.shape[0]:
        raise ValueError(
            f"prompt_categories must be [P] with P={text_features.shape[0]} (one entry per text feature), "
            f"got shape {tuple(prompt_categories.shape)}."
        )


def _check_labels(image_features: torch.Tensor, labels: torch.Tensor, prompt_categories: torch.Tensor) -> None:
    if image_features.ndim != 2:
        raise ValueError(f"image_features must be [B, D], got shape {tuple(image_features.shape)}.")
    if labels.ndim != 2 or labels.shape[0] != image_features.shape[0]:
        raise ValueError(
            f"labels must be multi-hot [B, K] with B={image_features.shape[0]}, got shape {tuple(labels.shape)}."
        )
    num_prompt_categories = int(prompt_categories.max().item()) + 1 if prompt_categories.numel() else 0
    if num_prompt_categories > labels.shape[1]:
        raise ValueError(
            f"prompt_categories refer to {num_prompt_categories} categories but labels have K={labels.shape[1]} "
            "columns."
        )


def cosine_distance_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine distance ``d = 1 - cos`` between every row of ``a`` ``[N, D]`` and of ``b`` ``[M, D]`` -> ``[N, M]``."""
    return 1.0 - F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def _positive_prompt_mask(labels: torch.Tensor, prompt_categories: torch.Tensor, include_normal: bool) -> torch.Tensor:
    """``[B, P]`` bool: prompt ``p`` belongs to a category that image ``b`` has.

    With ``include_normal``, a normal image (all-zero label row) is matched to the normal prompts.
    """
    labels = labels.bool()
    is_category_prompt = prompt_categories >= 0
    index = prompt_categories.clamp(min=0)
    mask = labels[:, index] & is_category_prompt[None, :]  # [B, P]
    if include_normal:
        is_normal_image = ~labels.any(dim=1)  # [B]
        mask = mask | (is_normal_image[:, None] & (prompt_categories == NORMAL_CATEGORY)[None, :])
    return mask


def _negative_prompt_mask(labels: torch.Tensor, prompt_categories: torch.Tensor) -> torch.Tensor:
    """``[B, P]`` bool: prompt ``p`` belongs to a category (not normal) that image ``b`` does not have."""
    is_category_prompt = prompt_categories >= 0
    index = prompt_categories.clamp(min=0)
    return (~labels.bool())[:, index] & is_category_prompt[None, :]


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
        image_features: ``[B, D]`` image embeddings.
        text_features: ``[P, D]`` prompt embeddings.
        prompt_categories: ``[P]`` category index per prompt, ``-1`` for normal prompts.
        anchor_feature: ``[D]`` anchor (normal) embedding.
        labels: ``[B, K]`` multi-hot labels.

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


def select_signs(text_features: torch.Tensor, prompt_categories: torch.Tensor) -> torch.Tensor:
    """Sign selection, Eq. 6 of the paper: which prompts keep their category label.

    Prompt ``p`` of category ``c`` is kept iff ``D_inf(p, c)`` -- the distance to its nearest *other* prompt of the
    same category -- is strictly smaller than ``delta`` -- the distance to the nearest prompt of any other category,
    where the normal prompts count as one more category. A prompt alone in its category has no same-category
    neighbour (``D_inf = inf``) and is therefore not kept. The rule is applied to normal prompts too; the anchor
    feature is nevertheless built from all normal prompts (see :func:`anchor_feature_from_normal_prompts`).

    Args:
        text_features: ``[P, D]`` prompt embeddings.
        prompt_categories: ``[P]`` category index per prompt, ``-1`` for normal prompts.

    Returns:
        ``[P]`` bool mask of kept prompts (``h_new(p) = c``); ``False`` means ``h_new(p) = -1`` (discarded).
    """
    _check_prompt_args(text_features, prompt_categories)
    distances = cosine_distance_matrix(text_features, text_features)  # [P, P]
    num_prompts = distances.shape[0]
    inf = torch.tensor(float("inf"), dtype=distances.dtype, device=distances.device)
    same = prompt_categories[:, None] == prompt_categories[None, :]
    not_self = ~torch.eye(num_prompts, dtype=torch.bool, device=distances.device)
    nearest_same = torch.where(same & not_self, distances, inf).amin(dim=1) if num_prompts else distances.sum(1)
    nearest_other = torch.where(~same, distances, inf).amin(dim=1) if num_prompts else distances.sum(1)
    return nearest_same < nearest_other


def selection_with_fallback(
    keep: torch.Tensor,
    prompt_categories: torch.Tensor,
    num_categories: int,
    category_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Give a category whose prompts were all discarded by :func:`select_signs` back all of its prompts.

    This is the one place where the fallback lives; :func:`category_scores` and :func:`anchor_predictions` take
    ``keep`` as given. A warning names each category that fell back.

    Args:
        keep: ``[P]`` bool mask from :func:`select_signs`.
        prompt_categories: ``[P]`` category index per prompt, ``-1`` for normal prompts.
        num_categories: number of anomaly categories ``K``.
        category_names: optional names used in the warning.

    Returns:
        ``[P]`` bool mask in which every category ``0..K-1`` has at least one kept prompt.
    """
    keep = keep.clone()
    for category in range(num_categories):
        members = prompt_categories == category
        if members.any() and not (keep & members).any():
            name = category_names[category] if category_names is not None else f"category {category}"
            warnings.warn(
                f"Sign selection kept no prompt of {name!r}; using all {int(members.sum())} of its prompts instead.",
                stacklevel=2,
            )
            keep |= members
    return keep


def _kept_membership(prompt_categories: torch.Tensor, keep: torch.Tensor, num_categories: int) -> torch.Tensor:
    """``[K, P]`` bool: prompt ``p`` is a kept prompt of category ``k``; errors if a category has none."""
    if keep.shape != prompt_categories.shape:
        raise ValueError(
            f"keep must have the shape of prompt_categories {tuple(prompt_categories.shape)}, got {tuple(keep.shape)}."
        )
    categories = torch.arange(num_categories, device=prompt_categories.device)
    membership = (prompt_categories[None, :] == categories[:, None]) & keep.bool()[None, :]
    empty = (~membership.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"Categories {empty} have no kept prompt; pass keep through selection_with_fallback() first, or check "
            "that every category has prompts."
        )
    return membership


def _per_category_similarities(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    prompt_categories: torch.Tensor,
    keep: torch.Tensor,
    num_categories: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, K, P]`` cosine similarities and the ``[K, P]`` kept-membership mask."""
    _check_prompt_args(text_features, prompt_categories)
    membership = _kept_membership(prompt_categories, keep, num_categories)
    similarities = F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T  # [B, P]
    return similarities[:, None, :].expand(-1, num_categories, -1), membership


def category_scores(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    prompt_categories: torch.Tensor,
    keep: torch.Tensor,
    num_categories: int,
) -> torch.Tensor:
    """Continuous category scores, Eq. 7: max cosine similarity over the kept prompts of each category.

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
    return similarities.masked_fill(~membership[None], float("-inf")).amax(dim=2)


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
    similarity to the anchor feature (strictly).

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
    lowest = similarities.masked_fill(~membership[None], float("inf")).amin(dim=2)  # [B, K]
    anchor_similarity = F.normalize(image_features, dim=-1) @ F.normalize(anchor_feature, dim=-1)  # [B]
    return (lowest > anchor_similarity[:, None]).to(image_features.dtype)


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
