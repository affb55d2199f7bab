"""The baselines' shared arithmetic (sdmad_monai.baselines.functional) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from sdmad_monai.baselines import cosine_distance_map, reconstruction_anomaly_map, scale_cosine_loss


def test_cosine_distance_by_hand():
    # one image, 2 channels, 1 x 2 positions: (1, 0) vs (0, 1) -> 1; (1, 1) vs (2, 2) -> 0
    target = torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]]]])
    rebuilt = torch.tensor([[[[0.0, 2.0]], [[1.0, 2.0]]]])
    assert cosine_distance_map(target, rebuilt).flatten().tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    # (1, 0) vs (1, 1): 1 - 1/sqrt(2)
    assert float(cosine_distance_map(torch.tensor([[[[1.0]], [[0.0]]]]), torch.tensor([[[[1.0]], [[1.0]]]]))) == (
        pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    )
    with pytest.raises(ValueError, match="one shape"):
        cosine_distance_map(target, rebuilt[:, :1])


def test_map_is_the_sum_of_upsampled_scale_distances():
    # scale 1 at 2 x 2 with distances [[1, 0], [0, 0]], scale 2 at 1 x 1 with distance 1 everywhere; sigma 0
    t1 = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    r1 = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]]])
    t2, r2 = torch.tensor([[[[1.0]], [[0.0]]]]), torch.tensor([[[[0.0]], [[1.0]]]])
    anomaly_map = reconstruction_anomaly_map([t1, t2], [r1, r2], (2, 2), sigma=0)
    assert anomaly_map.flatten().tolist() == pytest.approx([2.0, 1.0, 1.0, 1.0], abs=1e-6)
    up = reconstruction_anomaly_map([t1], [r1], (4, 4), sigma=0)[0]
    assert float(up[0, 0]) == pytest.approx(1.0) and float(up[3, 3]) == pytest.approx(0.0)  # bilinear, corners kept
    smoothed = reconstruction_anomaly_map([t1], [r1], (16, 16), sigma=2)
    assert smoothed.shape == (1, 16, 16) and float(smoothed.max()) < float(reconstruction_anomaly_map(
        [t1], [r1], (16, 16), sigma=0).max())  # fmt: skip
    assert float(scale_cosine_loss([t1, t2], [r1, r2])) == pytest.approx(0.25 + 1.0, abs=1e-6)
