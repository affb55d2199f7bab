"""The SD-MAD paper's math as pure tensor functions (Eq. 3, 4, 6, 7, 8), and MVFA's patch-level map formulas.

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
from collections.abc import Sequence
from typing import NamedTuple

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
    "kept_prompt_membership",
    "category_scores",
    "category_scores_from_similarities",
    "anchor_predictions",
    "anchor_predictions_from_similarities",
    "anchor_feature_from_normal_prompts",
    "image_anomaly_score",
    "zero_shot_patch_logits",
    "nearest_normal_patch_distance",
    "patch_grid_to_image",
    "zero_shot_anomaly_map",
    "few_shot_anomaly_map",
    "combine_anomaly_maps",
    "smooth_anomaly_map",
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
    warn: bool = True,
) -> torch.Tensor:
    """Give a category whose prompts were all discarded by :func:`select_signs` back all of its prompts.

    This is the one place where the fallback lives; :func:`category_scores` and :func:`anchor_predictions` take
    ``keep`` as given. A warning names each category that fell back.

    Args:
        keep: ``[P]`` bool mask from :func:`select_signs`.
        prompt_categories: ``[P]`` category index per prompt, ``-1`` for normal prompts.
        num_categories: number of anomaly categories ``K``.
        category_names: optional names used in the warning.
        warn: warn for each category that fell back (``False`` where the mask is not used for scoring).

    Returns:
        ``[P]`` bool mask in which every category ``0..K-1`` has at least one kept prompt.
    """
    keep = keep.clone()
    for category in range(num_categories):
        members = prompt_categories == category
        if members.any() and not (keep & members).any():
            if warn:
                name = category_names[category] if category_names is not None else f"category {category}"
                warnings.warn(
                    f"Sign selection kept no prompt of {name!r}; using all {int(members.sum())} of its prompts "
                    "instead.",
                    stacklevel=2,
                )
            keep |= members
    return keep


def kept_prompt_membership(prompt_categories: torch.Tensor, keep: torch.Tensor, num_categories: int) -> torch.Tensor:
    """Which prompts score each category in Eq. 7 and Eq. 8: the kept prompts of that category.

    Depends on the prompts only, so a caller that scores many batches against the same prompts (the detector)
    computes it once.

    Args:
        prompt_categories: ``[P]`` category index per prompt, ``-1`` for normal prompts.
        keep: ``[P]`` bool mask of kept prompts.
        num_categories: number of anomaly categories ``K``.

    Returns:
        ``[K, P]`` bool: prompt ``p`` is a kept prompt of category ``k``.

    Raises:
        ValueError: ``keep`` does not match ``prompt_categories``, or a category has no kept prompt.
    """
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


# ---------------------------------------------------------------------------------------------------------------------
# Patch-level anomaly maps (pixel-level protocol of Table 1). The paper obtains pixel scores by combining SD-MAD with
# MVFA (Huang et al., "Adapting Visual-Language Models for Generalizable Anomaly Detection in Medical Images",
# CVPR 2024); these are MVFA's map formulas, written against SD-MAD's prompt bank and anchor.
# ---------------------------------------------------------------------------------------------------------------------


def _check_patch_features(patch_features: torch.Tensor) -> None:
    if patch_features.ndim != 3:
        raise ValueError(f"patch_features must be [B, N, D], got shape {tuple(patch_features.shape)}.")


def zero_shot_patch_logits(
    patch_features: torch.Tensor,
    text_features: torch.Tensor,
    prompt_categories: torch.Tensor,
    keep: torch.Tensor,
    anchor_feature: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Zero-shot (text) branch of the patch-level anomaly map, as a logit per patch (MVFA, CVPR 2024).

    MVFA scores each patch token ``p`` with a 2-way softmax over its similarities to a normal and an abnormal text
    feature, ``softmax([cos(p, t_n), cos(p, t_a)] / T)[abnormal] = sigmoid((cos(p, t_a) - cos(p, t_n)) / T)``, with
    ``1 / T = 100`` (CLIP's logit scale). This function returns the logit ``(cos(p, t_a) - cos(p, t_n)) / T``; its
    sigmoid is the map value, and MONAI's sigmoid focal / Dice losses take it directly. With SD-MAD's prompt bank:

    - ``t_n`` is the anchor ``f_anchor`` (the normalised mean normal prompt, Section 3.2), the boundary Eq. 4 trains.
    - ``cos(p, t_a)`` is ``max_c s_c(p)``: Eq. 7 applied to the patch, the highest similarity over the kept prompts
      (Eq. 6) of any category. A patch showing one sign must only match that sign, not the centroid of every sign of
      every category (a mean of craniotomy and ventricle prompts describes neither). The logit is thus the patch
      version of :func:`image_anomaly_score` (``max_c s_c - cos(img, anchor)``), divided by ``T``.

    Args:
        patch_features: ``[B, N, D]`` patch tokens in the joint image-text space.
        text_features: ``[P, D]`` prompt embeddings.
        prompt_categories: ``[P]`` category index per prompt, ``-1`` for normal prompts.
        keep: ``[P]`` bool mask of kept prompts (sign selection, Eq. 6).
        anchor_feature: ``[D]`` anchor (normal) embedding.
        temperature: softmax temperature ``T`` (> 0); MVFA uses 0.01.

    Returns:
        ``[B, N]`` logits; higher means more anomalous.
    """
    _check_patch_features(patch_features)
    _check_prompt_args(text_features, prompt_categories)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if keep.shape != prompt_categories.shape:
        raise ValueError(
            f"keep must have the shape of prompt_categories {tuple(prompt_categories.shape)}, got {tuple(keep.shape)}."
        )
    abnormal = keep.bool() & (prompt_categories >= 0)
    if not abnormal.any():
        raise ValueError("No kept category prompt: the zero-shot map needs at least one abnormal prompt.")
    patches = F.normalize(patch_features, dim=-1)
    abnormal_similarity = (patches @ F.normalize(text_features[abnormal], dim=-1).T).amax(dim=-1)  # [B, N]
    normal_similarity = patches @ F.normalize(anchor_feature, dim=0)  # [B, N]
    return (abnormal_similarity - normal_similarity) / temperature


def nearest_normal_patch_distance(patch_features: torch.Tensor, memory_bank: torch.Tensor) -> torch.Tensor:
    """Few-shot (memory-bank) branch of the patch-level anomaly map (MVFA, CVPR 2024).

    Per patch, the cosine distance to the nearest patch token of the few-shot normal images:
    ``1 - max_m cos(p, m)``. Zero for a patch that is in the bank; at most 2.

    Args:
        patch_features: ``[B, N, D]`` patch tokens.
        memory_bank: ``[M, D]`` normal patch tokens (same layer and space).

    Returns:
        ``[B, N]`` distances; higher means more anomalous.
    """
    _check_patch_features(patch_features)
    if memory_bank.ndim != 2 or memory_bank.shape[1] != patch_features.shape[2] or memory_bank.shape[0] == 0:
        raise ValueError(
            f"memory_bank must be a non-empty [M, D] with D={patch_features.shape[2]}, got {tuple(memory_bank.shape)}."
        )
    similarity = F.normalize(patch_features, dim=-1) @ F.normalize(memory_bank, dim=-1).T  # [B, N, M]
    return 1.0 - similarity.amax(dim=-1)


def patch_grid_to_image(patch_values: torch.Tensor, grid: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """Reshape per-patch values to the patch grid and upsample them bilinearly to the image size (MVFA, CVPR 2024).

    Patches are in row-major order (as a ViT flattens its patch embedding). ``align_corners=False`` places each
    value at its patch centre; MVFA uses ``align_corners=True``, which shifts the map by up to half a patch towards
    the image borders.

    Args:
        patch_values: ``[B, C, N]`` values per patch (``C`` channels, e.g. one per layer), ``N = grid[0] * grid[1]``.
        grid: patch grid ``(h, w)``.
        size: output size ``(H, W)`` in pixels.

    Returns:
        ``[B, C, H, W]``.
    """
    if patch_values.ndim != 3:
        raise ValueError(f"patch_values must be [B, C, N], got shape {tuple(patch_values.shape)}.")
    height, width = int(grid[0]), int(grid[1])
    if height * width != patch_values.shape[2]:
        raise ValueError(f"{patch_values.shape[2]} patches do not fill a {height} x {width} grid.")
    grid_values = patch_values.reshape(patch_values.shape[0], patch_values.shape[1], height, width)
    target = (int(size[0]), int(size[1]))
    if target == (height, width):
        return grid_values
    return F.interpolate(grid_values, size=target, mode="bilinear", align_corners=False)


def zero_shot_anomaly_map(layer_logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zero-shot anomaly map at the image size from per-layer patch logits (MVFA, CVPR 2024).

    As in MVFA, the logits (not the probabilities) are upsampled, then each layer's map is its sigmoid (the
    abnormal entry of the 2-way softmax); the layers are averaged (MVFA sums them; the mean keeps the map in
    ``[0, 1]`` and does not change its ranking).

    Args:
        layer_logits: ``[B, L, h, w]`` logits of :func:`zero_shot_patch_logits` per layer on the patch grid.
        size: output size ``(H, W)``.

    Returns:
        ``[B, H, W]`` map in ``[0, 1]``.
    """
    if layer_logits.ndim != 4:
        raise ValueError(f"layer_logits must be [B, L, h, w], got shape {tuple(layer_logits.shape)}.")
    b, layers, h, w = layer_logits.shape
    upsampled = patch_grid_to_image(layer_logits.reshape(b, layers, h * w), (h, w), size)
    return torch.sigmoid(upsampled).mean(dim=1)


def few_shot_anomaly_map(layer_distances: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Few-shot anomaly map at the image size from per-layer nearest-normal distances (MVFA, CVPR 2024).

    Each layer's :func:`nearest_normal_patch_distance` grid is upsampled bilinearly; the layers are averaged (MVFA
    sums them; same ranking).

    Args:
        layer_distances: ``[B, L, h, w]`` distances per layer on the patch grid.
        size: output size ``(H, W)``.

    Returns:
        ``[B, H, W]`` map in ``[0, 2]``.
    """
    if layer_distances.ndim != 4:
        raise ValueError(f"layer_distances must be [B, L, h, w], got shape {tuple(layer_distances.shape)}.")
    b, layers, h, w = layer_distances.shape
    return patch_grid_to_image(layer_distances.reshape(b, layers, h * w), (h, w), size).mean(dim=1)


def combine_anomaly_maps(
    zero_shot: torch.Tensor, few_shot: torch.Tensor | None, few_shot_weight: float = 0.5
) -> torch.Tensor:
    """Combine the zero-shot and few-shot branches: ``(1 - w) * zero_shot + w * few_shot`` (MVFA, CVPR 2024).

    MVFA adds the two branches with weight 0.5 each, after min-max normalising each over the whole test set. That
    normalisation needs every test image before the first map can be written, so it is not done here: both branches
    already share a scale (a probability in ``[0, 1]`` and a cosine distance, in ``[0, 1]`` for all but opposite
    features), and each image's map is final when it is computed (streamed evaluation, per-volume inference).

    Args:
        zero_shot: ``[B, H, W]`` map of :func:`zero_shot_anomaly_map`.
        few_shot: ``[B, H, W]`` map of :func:`few_shot_anomaly_map`, or ``None`` (no memory bank): then the zero-shot
            map is returned unchanged.
        few_shot_weight: ``w`` in ``[0, 1]``.

    Returns:
        ``[B, H, W]``.
    """
    if not 0.0 <= few_shot_weight <= 1.0:
        raise ValueError(f"few_shot_weight must be in [0, 1], got {few_shot_weight}.")
    if few_shot is None:
        return zero_shot
    if few_shot.shape != zero_shot.shape:
        raise ValueError(f"Branch maps differ in shape: {tuple(zero_shot.shape)} vs {tuple(few_shot.shape)}.")
    return (1.0 - few_shot_weight) * zero_shot + few_shot_weight * few_shot


def smooth_anomaly_map(anomaly_map: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of anomaly maps at the image size, as WinCLIP (CVPR 2023) and APRIL-GAN post-process them.

    Separable Gaussian (MONAI's ``gaussian_1d``, truncated at 4 sigma) with reflected borders, so the map keeps its
    level at the image edge. ``sigma = 0`` returns the map unchanged (MVFA does not smooth).

    Args:
        anomaly_map: ``[B, H, W]`` maps.
        sigma: standard deviation in pixels (>= 0).

    Returns:
        ``[B, H, W]``.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 pixels, got {sigma}.")
    if anomaly_map.ndim != 3:
        raise ValueError(f"anomaly_map must be [B, H, W], got shape {tuple(anomaly_map.shape)}.")
    if sigma == 0:
        return anomaly_map
    from monai.networks.layers.convutils import gaussian_1d
    from monai.networks.layers.simplelayers import separable_filtering

    kernel = gaussian_1d(torch.tensor(float(sigma)), truncated=4.0, approx="erf", normalize=True)
    kernel = kernel.to(device=anomaly_map.device, dtype=anomaly_map.dtype)
    half = (kernel.numel() - 1) // 2
    if half >= min(anomaly_map.shape[-2:]):
        raise ValueError(f"sigma {sigma} px is too large for a {tuple(anomaly_map.shape[-2:])} map.")
    return separable_filtering(anomaly_map[:, None], [kernel, kernel], mode="reflect")[:, 0]
