"""Generated images for the baselines' tests: one smooth "anatomy" shared by all images plus a small smooth
per-image variation (normal), the same with a bright square (abnormal), and a random-weight CLIP teacher at 64 px."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sdmad_monai.baselines import CLIPTeacher

SIZE = 64


def textures(n: int, seed: int, anomalous: bool = False) -> torch.Tensor:
    """``[n, 3, 64, 64]`` grey images: a fixed smooth field (the shared anatomy, as in aligned medical images) plus
    0.6 times a per-image smooth field; anomalous ones have 1.0 added on a 14 px square at a random place (about one
    standard deviation of the images: visible, not trivial)."""
    generator = torch.Generator().manual_seed(seed)
    anatomy = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(12345))
    coarse = anatomy + 0.6 * torch.randn(n, 1, 8, 8, generator=generator)
    field = F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    if anomalous:
        for i in range(n):
            y, x = (int(v) for v in torch.randint(4, SIZE - 18, (2,), generator=generator))
            field[i, :, y : y + 14, x : x + 14] += 1.0
    return field.expand(n, 3, SIZE, SIZE).contiguous()


@pytest.fixture(scope="module")
def teacher():
    return CLIPTeacher.from_clip("sdmad-tiny", None, SIZE, seed=0)


@pytest.fixture(scope="session")
def make_textures():
    """:func:`textures`, for the tests (test folders are not packages)."""
    return textures
