import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, hamming_loss

from sdmad_monai.metrics import (
    HammingScoreMetric,
    SubsetAccuracyMetric,
    compute_hamming_score,
    compute_subset_accuracy,
)


def _batches(seed=0, n_batches=4, b=5, k=3, p_flip=0.25):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        y = (torch.rand(b, k, generator=g) < 0.4).float()
        flip = torch.rand(b, k, generator=g) < p_flip
        y_pred = torch.where(flip, 1 - y, y)
        out.append((y_pred, y))
    return out


def _stack(batches):
    y_pred = torch.cat([p for p, _ in batches]).numpy().astype(int)
    y = torch.cat([t for _, t in batches]).numpy().astype(int)
    return y_pred, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hamming_score_matches_sklearn(seed):
    batches = _batches(seed)
    metric = HammingScoreMetric()
    for y_pred, y in batches:
        metric(y_pred=y_pred, y=y)
    p, t = _stack(batches)
    assert metric.aggregate().item() == pytest.approx(1 - hamming_loss(t, p), abs=1e-6)
    # per-category accuracy and per-image score
    np.testing.assert_allclose(metric.aggregate("mean_batch").numpy(), (p == t).mean(0), atol=1e-6)
    np.testing.assert_allclose(metric.aggregate("mean_channel").numpy(), (p == t).mean(1), atol=1e-6)
    assert metric.get_buffer().shape == (20, 3)


def test_hamming_score_list_input_and_reset():
    batches = _batches(3)
    metric = HammingScoreMetric()
    for y_pred, y in batches:
        metric(y_pred=list(y_pred.bool()), y=list(y))  # decollated [K] items, bool predictions
    p, t = _stack(batches)
    assert metric.aggregate().item() == pytest.approx(1 - hamming_loss(t, p), abs=1e-6)
    metric.reset()
    metric(y_pred=torch.tensor([[1, 0]]), y=torch.tensor([[1, 1]]))
    assert metric.aggregate().item() == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subset_accuracy_matches_sklearn(seed):
    batches = _batches(seed, p_flip=0.1)
    metric = SubsetAccuracyMetric()
    for y_pred, y in batches:
        metric(y_pred=y_pred, y=y)
    p, t = _stack(batches)
    assert metric.aggregate().item() == pytest.approx(accuracy_score(t, p), abs=1e-6)
    assert metric.aggregate("none").shape == (20, 1)


def test_subset_accuracy_list_input():
    batches = _batches(4, p_flip=0.1)
    metric = SubsetAccuracyMetric(get_not_nans=True)
    for y_pred, y in batches:
        metric(y_pred=list(y_pred), y=list(y))
    p, t = _stack(batches)
    acc, not_nans = metric.aggregate()
    assert acc.item() == pytest.approx(accuracy_score(t, p), abs=1e-6)
    assert not_nans.item() == 20


def test_hand_computed_values():
    y_pred = torch.tensor([[1, 0, 1], [0, 0, 0]])
    y = torch.tensor([[1, 0, 0], [0, 0, 0]])
    assert compute_hamming_score(y_pred, y).mean().item() == pytest.approx(5 / 6)
    assert compute_subset_accuracy(y_pred, y).flatten().tolist() == [0.0, 1.0]


@pytest.mark.parametrize("cls", [HammingScoreMetric, SubsetAccuracyMetric])
def test_shape_mismatch_names_both_shapes(cls):
    with pytest.raises(ValueError, match=r"y_pred shape \(2, 3\).*y shape \(2, 4\)"):
        cls()(y_pred=torch.zeros(2, 3), y=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(2, 3, 1\)"):
        cls()(y_pred=torch.zeros(2, 3, 1), y=torch.zeros(2, 3, 1))


@pytest.mark.parametrize("cls", [HammingScoreMetric, SubsetAccuracyMetric])
def test_non_binary_values_are_named(cls):
    with pytest.raises(ValueError, match=r"`y` must be binary.*\[2\]"):
        cls()(y_pred=torch.zeros(2, 2), y=torch.tensor([[0.0, 2.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"`y_pred` must be binary.*\[0\.3, 0\.7\]"):
        cls()(y_pred=torch.tensor([[0.3, 0.7], [1.0, 0.0]]), y=torch.zeros(2, 2))


def test_aggregate_without_data_raises():
    with pytest.raises(ValueError, match="no data"):
        HammingScoreMetric().aggregate()


@pytest.mark.parametrize("metric", [HammingScoreMetric(), SubsetAccuracyMetric()])
def test_aggregate_before_any_call_says_so(metric):
    with pytest.raises(ValueError, match=f"{type(metric).__name__}: no data accumulated"):
        metric.aggregate()
