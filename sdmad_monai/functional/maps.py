"""Patch-level anomaly maps (pixel-level protocol of Table 1). The paper obtains pixel scores by combining SD-MAD with
MVFA (Huang et al., "Adapting Visual-Language Models for Generalizable Anomaly Detection in Medical Images", CVPR 2024);
these are MVFA's map formulas, written against SD-MAD's prompt bank and anchor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .common import _check_prompt_args

__all__ = [
    "zero_shot_patch_logits",
    "nearest_normal_patch_distance",
    "patch_grid_to_image",
    "zero_shot_anomaly_map",
    "few_shot_anomaly_map",
    "combine_anomaly_maps",
    "smooth_anomaly_map",
]


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


def _layer_grids_to_image(layer_values: torch.Tensor, size: Sequence[int], name: str) -> torch.Tensor:
    """``[B, L, h, w]`` per-layer patch-grid values upsampled to ``[B, L, H, W]`` (:func:`patch_grid_to_image`)."""
    if layer_values.ndim != 4:
        raise ValueError(f"{name} must be [B, L, h, w], got shape {tuple(layer_values.shape)}.")
    b, layers, h, w = layer_values.shape
    return patch_grid_to_image(layer_values.reshape(b, layers, h * w), (h, w), size)


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
    return torch.sigmoid(_layer_grids_to_image(layer_logits, size, "layer_logits")).mean(dim=1)


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
    return _layer_grids_to_image(layer_distances, size, "layer_distances").mean(dim=1)


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
