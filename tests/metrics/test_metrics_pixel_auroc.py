"""Tests for the streamed pixel AUROC (sdmad_monai.metrics.pixel_auroc) against scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from sdmad_monai.metrics import (
    PixelAUROCMetric,
    histogram_auroc,
    histogram_auroc_error_bound,
)


def _maps_and_masks(seed, batches=3, b=2, size=8):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        mask = torch.zeros(b, 1, size, size)
        mask[:, :, 2:5, 3:6] = 1.0
        out.append((torch.rand(b, size, size, generator=g), mask))
    return out


def test_exact_when_scores_sit_on_bin_centres():
    num_bins, g = 20, torch.Generator().manual_seed(0)
    metric = PixelAUROCMetric(score_range=(0.0, 1.0), num_bins=num_bins)
    preds, labels = [], []
    for _ in range(4):
        mask = (torch.rand(3, 1, 6, 6, generator=g) < 0.3).float()
        # scores on the bin centres, positives shifted up by a few bins: many ties inside and across classes
        bins = torch.randint(0, num_bins - 4, (3, 6, 6), generator=g) + 4 * mask[:, 0].long()
        pred = (bins.double() + 0.5) / num_bins
        metric(y_pred=pred, y=mask)
        preds.append(pred.flatten())
        labels.append(mask.flatten())
    expected = roc_auc_score(torch.cat(labels).numpy(), torch.cat(preds).numpy())
    assert metric.aggregate().item() == pytest.approx(expected, abs=1e-12)


def test_random_scores_within_stated_bound():
    batches = _maps_and_masks(1)
    metric = PixelAUROCMetric(score_range=(0.0, 1.0), num_bins=50)
    for pred, mask in batches:
        metric(y_pred=pred, y=mask)
    p = torch.cat([x.flatten() for x, _ in batches]).numpy()
    t = torch.cat([y.flatten() for _, y in batches]).numpy()
    exact = roc_auc_score(t, p)
    bound = metric.error_bound().item()
    assert 0 < bound < 0.02  # 50 bins over uniform scores: same-bin pairs are about 1/50 of all pairs, halved
    assert abs(metric.aggregate().item() - exact) <= bound
    fine = PixelAUROCMetric(num_bins=100_000)
    for pred, mask in batches:
        fine(y_pred=pred, y=mask)
    assert fine.aggregate().item() == pytest.approx(exact, abs=1e-4)


def test_list_input_and_channel_dim_match_batch_input():
    pred, mask = _maps_and_masks(2, batches=1)[0]
    a, b = PixelAUROCMetric(num_bins=64), PixelAUROCMetric(num_bins=64)
    a(y_pred=pred, y=mask)
    b(y_pred=[p for p in pred.unsqueeze(1)], y=[m for m in mask])
    assert torch.equal(a.counts(), b.counts())
    assert a.counts().sum() == pred.numel()


def test_missing_class_gives_nan_and_warning():
    metric = PixelAUROCMetric()
    metric(y_pred=torch.rand(2, 4, 4), y=torch.zeros(2, 4, 4))
    with pytest.warns(UserWarning, match="all 32 pixels are normal"):
        assert np.isnan(metric.aggregate().item())
    assert np.isnan(histogram_auroc_error_bound(metric.counts()).item())


def test_memory_does_not_grow_with_batches():
    metric = PixelAUROCMetric(num_bins=128)
    pred, mask = _maps_and_masks(3, batches=1)[0]
    metric(y_pred=pred, y=mask)
    first = [t.shape for t in metric._buffers[0]]
    for _ in range(25):
        metric(y_pred=pred, y=mask)
    assert [t.shape for t in metric._buffers[0]] == first == [torch.Size([256])]
    assert metric.counts().sum() == 26 * pred.numel()
    metric.reset()
    with pytest.raises(ValueError, match="no data accumulated"):
        metric.aggregate()


def test_out_of_range_scores_clamped_with_warning():
    metric = PixelAUROCMetric(score_range=(0.0, 1.0), num_bins=10)
    pred = torch.tensor([[[-1.0, 0.05], [0.95, 3.0]]])
    mask = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    metric(y_pred=pred, y=mask)
    assert metric.clipped == 2
    with pytest.warns(UserWarning, match="2 pixel score"):
        assert metric.aggregate().item() == pytest.approx(1.0)


def test_histogram_auroc_hand_computed():
    # negatives in bins 0, 1, 1; positives in bins 1, 2: pairs (pos1: 1 + 2 * 0.5) + (pos2: 3) = 5 of 6
    counts = torch.tensor([[1, 2, 0], [0, 1, 1]])
    assert histogram_auroc(counts).item() == pytest.approx(5 / 6)
    assert histogram_auroc_error_bound(counts).item() == pytest.approx(2 / 12)


def test_bad_inputs():
    with pytest.raises(ValueError, match="score_range"):
        PixelAUROCMetric(score_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="num_bins"):
        PixelAUROCMetric(num_bins=1)
    metric = PixelAUROCMetric()
    with pytest.raises(ValueError, match="same size"):
        metric(y_pred=torch.rand(2, 4, 4), y=torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="binary"):
        metric(y_pred=torch.rand(1, 2, 2), y=torch.full((1, 2, 2), 0.5))
    with pytest.raises(ValueError, match="NaN"):
        metric(y_pred=torch.full((1, 2, 2), float("nan")), y=torch.zeros(1, 2, 2))


def test_pixel_average_precision_and_best_dice_match_exact_computations():
    """Scores on the bin centres (so a bin's scores are equal): AP equals scikit-learn's, the best Dice a brute force
    over every threshold."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    bins = 50
    masks = rng.random((6, 8, 8)) < 0.2
    levels = rng.integers(0, bins, size=masks.shape) + masks * rng.integers(0, 20, size=masks.shape)
    scores = (np.clip(levels, 0, bins - 1) + 0.5) / bins
    metric = PixelAUROCMetric(score_range=(0.0, 1.0), num_bins=bins)
    metric(y_pred=torch.as_tensor(scores[:3]), y=torch.as_tensor(masks[:3]).float())
    metric(y_pred=torch.as_tensor(scores[3:]), y=torch.as_tensor(masks[3:]).float())
    y, s = masks.reshape(-1), scores.reshape(-1)
    assert float(metric.average_precision()) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    best, threshold = metric.best_dice()
    dices = {t: 2 * (y & (s >= t)).sum() / ((s >= t).sum() + y.sum()) for t in np.unique(s)}
    expected = max(dices, key=dices.get)
    assert float(best) == pytest.approx(dices[expected], abs=1e-12)
    assert threshold <= expected < threshold + 1 / bins  # the lower edge of the best threshold's bin
    empty = PixelAUROCMetric(num_bins=4)
    empty(y_pred=torch.zeros(1, 2, 2), y=torch.zeros(1, 2, 2))
    assert torch.isnan(empty.average_precision()) and torch.isnan(empty.best_dice()[0])
