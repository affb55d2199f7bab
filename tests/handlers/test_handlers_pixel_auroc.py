"""Tests for the PixelAUROC ignite handler."""

import pytest
import torch
from ignite.engine import Engine
from sklearn.metrics import roc_auc_score

from sdmad_monai.handlers import PixelAUROC, detector_output


def test_pixel_auroc_handler_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        mask = (torch.rand(2, 1, 8, 8, generator=g) < 0.2).float()
        bins = torch.randint(0, 14, (2, 8, 8), generator=g) + 2 * mask[:, 0].long()  # positives two bins higher
        amap = (bins.double() + 0.5) / 16  # on the bin centres: the histogram AUROC is exact
        batches.append({"pred": {"anomaly_map": amap}, "pixel_label": mask})
    engine = Engine(lambda engine, batch: batch)
    handler = PixelAUROC(
        num_bins=16, output_transform=detector_output("anomaly_map", label_key="pixel_label"), save_details=True
    )
    handler.attach(engine, "pixel_auroc")
    engine.run(batches)
    p = torch.cat([b["pred"]["anomaly_map"].flatten() for b in batches]).numpy()
    t = torch.cat([b["pixel_label"].flatten() for b in batches]).numpy()
    assert engine.state.metrics["pixel_auroc"] == pytest.approx(roc_auc_score(t, p), abs=1e-12)
    assert engine.state.metric_details["pixel_auroc"].sum() == p.size
