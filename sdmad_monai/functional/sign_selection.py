"""Sign selection at inference, Eq. 6 (Section 3.3): drop the prompts whose nearest other prompt belongs to another
category, with the fallback to all prompts for a category that would keep none, and the kept-prompt membership that
Eq. 7 and Eq. 8 read.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from .common import _check_prompt_args, cosine_distance_matrix

__all__ = ["select_signs", "selection_with_fallback", "kept_prompt_membership"]


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
