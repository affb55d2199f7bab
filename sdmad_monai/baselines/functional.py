"""The feature-reconstruction arithmetic shared by the baselines (D²4FAD, SIR): one function per concept.

Both compare a target feature map with its reconstruction by ``1 - cosine`` per spatial position (over channels), sum
that over the scales at the image size, and smooth it (the RD4AD family's anomaly map); their losses are the mean
of the same distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F

from ..functional import smooth_anomaly_map

__all__ = ["cosine_distance_map", "reconstruction_anomaly_map", "scale_cosine_loss"]


def cosine_distance_map(target: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """``1 - cos(target, reconstruction)`` over the channels at every position.

    Args:
        target: ``[B, C, h, w]``.
        reconstruction: ``[B, C, h, w]``.

    Returns:
        ``[B, h, w]`` in ``[0, 2]``.
    """
    if target.shape != reconstruction.shape or target.ndim != 4:
        raise ValueError(
            f"target and reconstruction must be [B, C, h, w] of one shape, got {tuple(target.shape)} and "
            f"{tuple(reconstruction.shape)}."
        )
    return 1.0 - F.cosine_similarity(target, reconstruction, dim=1, eps=1e-8)


def reconstruction_anomaly_map(
    targets: Sequence[torch.Tensor],
    reconstructions: Sequence[torch.Tensor],
    size: Sequence[int],
    sigma: float = 4.0,
) -> torch.Tensor:
    """The anomaly map of a multi-scale reconstruction: the sum over scales of :func:`cosine_distance_map`, each
    upsampled bilinearly to ``size``, then Gaussian-smoothed (:func:`~sdmad_monai.functional.smooth_anomaly_map`).

    Args:
        targets: per scale ``[B, C_s, h_s, w_s]``.
        reconstructions: the same shapes.
        size: ``(H, W)`` of the map.
        sigma: smoothing in pixels at ``size`` (D²4FAD: 4; 0: none).

    Returns:
        ``[B, H, W]``.
    """
    if len(targets) != len(reconstructions) or not targets:
        raise ValueError(f"Need one reconstruction per scale, got {len(targets)} targets, {len(reconstructions)}.")
    total: torch.Tensor | None = None
    for target, reconstruction in zip(targets, reconstructions):
        distance = cosine_distance_map(target, reconstruction)[:, None]
        distance = F.interpolate(distance, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
        total = distance if total is None else total + distance
    if total is None:  # unreachable: ``targets`` is checked non-empty above
        raise ValueError("Need at least one scale.")
    return smooth_anomaly_map(total[:, 0], sigma)


def scale_cosine_loss(targets: Sequence[torch.Tensor], reconstructions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over scales of the mean :func:`cosine_distance_map` (RD4AD's loss; D²4FAD's TSD and SSD terms)."""
    if len(targets) != len(reconstructions) or not targets:
        raise ValueError(f"Need one reconstruction per scale, got {len(targets)} targets, {len(reconstructions)}.")
    # a tensor, not sum()'s 0 start: ``targets`` is checked non-empty above
    return cast(torch.Tensor, sum(cosine_distance_map(t, r).mean() for t, r in zip(targets, reconstructions)))
