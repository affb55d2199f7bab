"""The decoder both baselines use: the teacher's scales rebuilt from its deepest feature, deep to shallow.

A cascade (the "reverse distillation" shape of RD4AD and D²4FAD's de-ResNet student): starting from the deepest
feature, each step resizes the running feature to the next shallower scale (bilinear; a no-op for a ViT teacher,
whose scales share one grid) and applies a residual-free block ``conv3x3 - BatchNorm - ReLU - conv3x3`` to that
scale's channel count. The last convolution has no activation: teacher features (CLIP tokens) can be negative and
are compared by cosine.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ReconstructionDecoder", "resize_to"]


def resize_to(feature: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of ``[B, C, h, w]`` to ``size`` (returned as is when it already has that size)."""
    if tuple(feature.shape[-2:]) == tuple(size):
        return feature
    return F.interpolate(feature, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
    )


class ReconstructionDecoder(nn.Module):
    """Args:
    deep_channels: channels of the input (the teacher's deepest feature).
    scale_shapes: ``(C, h, w)`` of each scale to rebuild, shallow to deep (the teacher's).
    """

    def __init__(self, deep_channels: int, scale_shapes: Sequence[Sequence[int]]) -> None:
        super().__init__()
        if not scale_shapes:
            raise ValueError("The decoder needs at least one scale to rebuild.")
        self.scale_shapes = [tuple(int(v) for v in shape) for shape in scale_shapes]
        blocks, channels = [], int(deep_channels)
        for c, _, _ in reversed(self.scale_shapes):
            blocks.append(_block(channels, c))
            channels = c
        self.blocks = nn.ModuleList(blocks)  # deep to shallow

    def forward(self, deepest: torch.Tensor) -> list[torch.Tensor]:
        """Returns: per scale ``[B, C_s, h_s, w_s]``, shallow to deep (the teacher's order)."""
        outputs, h = [], deepest
        for block, (_, height, width) in zip(self.blocks, reversed(self.scale_shapes)):
            h = block(resize_to(h, (height, width)))
            outputs.append(h)
        return outputs[::-1]
