import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.engines import SupervisedEvaluator
from monai.handlers import from_engine
from sklearn.metrics import roc_auc_score

from sdmad_monai.handlers import CategoryAUROC, ImageAUROC


def _data(seed=0, n_batches=4, b=6, k=3):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        y = (torch.rand(b, k, generator=g) < 0.4).float()
        scores = y * 0.5 + torch.randint(0, 3, (b, k), generator=g).float() * 0.4  # coarse grid: ties
        batches.append((scores, y))
    p = torch.cat([x for x, _ in batches]).numpy()
    t = torch.cat([y for _, y in batches]).numpy()
    return batches, p, t


def test_category_auroc_handler_matches_sklearn():
    batches, p, t = _data(0)
    engine = Engine(lambda engine, batch: batch)
    CategoryAUROC().attach(engine, "auroc")
    CategoryAUROC(average="none", category_names=["a", "b", "c"], save_details=True).attach(engine, "auroc_cat")
    engine.run(batches)
    per_cat = [roc_auc_score(t[:, k], p[:, k]) for k in range(3)]
    assert engine.state.metrics["auroc"] == pytest.approx(np.mean(per_cat), abs=1e-9)
    np.testing.assert_allclose(engine.state.metrics["auroc_cat"].numpy(), per_cat, atol=1e-9)
    scores, labels = engine.state.metric_details["auroc_cat"]
    assert scores.shape == labels.shape == (24, 3)


def test_image_auroc_handler_matches_sklearn():
    batches, p, t = _data(1)
    engine = Engine(lambda engine, batch: batch)
    ImageAUROC(output_transform=lambda out: (out[0].max(dim=1).values, out[1])).attach(engine, "image_auroc")
    engine.run(batches)
    expected = roc_auc_score(t.any(axis=1), p.max(axis=1))
    assert engine.state.metrics["image_auroc"] == pytest.approx(expected, abs=1e-9)


def test_handlers_with_monai_supervised_evaluator():
    batches, p, t = _data(2)
    data = [{"image": x, "label": y} for x, y in batches]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=data,
        network=torch.nn.Identity(),  # the "network" outputs the [B, K] scores it is given
        key_val_metric={"val_auroc": CategoryAUROC(output_transform=from_engine(["pred", "label"]))},
        additional_metrics={
            "val_image_auroc": ImageAUROC(
                output_transform=lambda out: (
                    [o["pred"].max() for o in out],
                    [o["label"] for o in out],
                )
            )
        },
    )
    evaluator.run()
    per_cat = [roc_auc_score(t[:, k], p[:, k]) for k in range(3)]
    assert evaluator.state.metrics["val_auroc"] == pytest.approx(np.mean(per_cat), abs=1e-6)
    expected = roc_auc_score(t.any(axis=1), p.max(axis=1))
    assert evaluator.state.metrics["val_image_auroc"] == pytest.approx(expected, abs=1e-6)
