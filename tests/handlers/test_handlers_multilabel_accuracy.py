import pytest
import torch
from ignite.engine import Engine
from sklearn.metrics import accuracy_score, hamming_loss

from sdmad_monai.handlers import HammingScore, SubsetAccuracy


def _data(seed=0, n_batches=3, b=4, k=3):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        y = (torch.rand(b, k, generator=g) < 0.5).float()
        flip = torch.rand(b, k, generator=g) < 0.2
        batches.append((torch.where(flip, 1 - y, y), y))
    p = torch.cat([x for x, _ in batches]).int().numpy()
    t = torch.cat([y for _, y in batches]).int().numpy()
    return batches, p, t


def _engine():
    return Engine(lambda engine, batch: batch)  # state.output = (y_pred, y)


def test_hamming_score_handler_matches_sklearn():
    batches, p, t = _data(0)
    engine = _engine()
    HammingScore().attach(engine, "hamming")
    HammingScore(reduction="mean_batch", save_details=False).attach(engine, "hamming_per_category")
    engine.run(batches, max_epochs=2)  # the metric is reset each epoch
    assert engine.state.metrics["hamming"] == pytest.approx(1 - hamming_loss(t, p), abs=1e-6)
    assert torch.allclose(engine.state.metrics["hamming_per_category"], torch.tensor((p == t).mean(0)).float())
    assert engine.state.metric_details["hamming"].shape == (12, 3)


def test_subset_accuracy_handler_with_output_transform():
    batches, p, t = _data(1)
    engine = Engine(lambda engine, batch: {"pred": batch[0], "label": batch[1]})
    SubsetAccuracy(output_transform=lambda out: (list(out["pred"]), list(out["label"]))).attach(engine, "subset")
    engine.run(batches)
    assert engine.state.metrics["subset"] == pytest.approx(accuracy_score(t, p), abs=1e-6)
    assert engine.state.metric_details["subset"].shape == (12, 1)


def test_handler_surfaces_non_binary_error():
    engine = _engine()
    HammingScore().attach(engine, "hamming")
    with pytest.raises(ValueError, match=r"`y_pred` must be binary.*\[0\.5\]"):
        engine.run([(torch.tensor([[0.5, 1.0]]), torch.tensor([[0.0, 1.0]]))])
