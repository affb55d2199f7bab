"""What every SD-MAD formula shares: the normal-prompt category index, the cosine distance ``d = 1 - cos`` of the
paper, argument checks and the prompt masks that pick an image's positive and negative prompts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["NORMAL_CATEGORY", "cosine_distance_matrix"]

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
