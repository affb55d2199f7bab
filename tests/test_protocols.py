"""The protocol registry names what the reports write: every metric of protocols 2-3 and protocol 1's image AUROC is
a key of protocol_metrics' result, and protocol_metric_handlers computes the same numbers as protocol_metrics."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from sdmad_monai.handlers import protocol_metric_handlers, protocol_metrics
from sdmad_monai.protocols import PROTOCOLS, protocol

NAMES = ["a", "b"]


def test_registry_matches_what_the_report_writes():
    assert [p.number for p in PROTOCOLS] == [1, 2, 3]
    assert protocol("multi_label") is protocol(2) and protocol(3).paper_table == "Table 3"
    written = protocol_metrics(torch.rand(6, 2), torch.ones(6, 2), torch.rand(6), torch.eye(2).repeat(3, 1), NAMES)
    for entry in PROTOCOLS:
        for metric in entry.metrics:
            if metric != "pixel_auroc":  # BMAD pixel level: DetectionReport, not this table
                assert metric in written, (entry.name, metric)
    with pytest.raises(KeyError, match="No protocol 4"):
        protocol(4)


def test_metric_handlers_give_protocol_metrics_values():
    torch.manual_seed(0)
    labels = torch.tensor([[1, 0], [0, 1], [0, 0], [1, 1], [0, 0], [1, 0], [0, 1], [0, 0]], dtype=torch.float32)
    outputs = {
        v: {"scores": torch.rand(8, 2), "predictions": (torch.rand(8, 2) > 0.5).float(), "image_score": torch.rand(8)}
        for v in ("clip", "sdmad")
    }
    batches = [
        {
            "pred": {v: {k: x[i : i + 4] for k, x in out.items()} for v, out in outputs.items()},
            "label": labels[i : i + 4],
        }
        for i in (0, 4)
    ]
    engine = Engine(lambda engine, batch: batch)
    handlers = {
        **protocol_metric_handlers(["clip", "sdmad"], NAMES, key=True),
        **protocol_metric_handlers(["clip", "sdmad"], NAMES),
    }
    assert len(handlers) == 8 and list(handlers)[0] == "clip/image_auroc"
    for name, handler in handlers.items():
        handler.attach(engine, name)
    metrics = engine.run(batches).metrics
    for variant, out in outputs.items():
        expected = protocol_metrics(out["scores"], out["predictions"], out["image_score"], labels, NAMES)
        for key in ("image_auroc", "hamming_score", "subset_accuracy"):
            assert metrics[f"{variant}/{key}"] == pytest.approx(expected[key], abs=1e-6)
        per_category = torch.as_tensor(metrics[f"{variant}/category_auroc"]).tolist()
        assert per_category == pytest.approx([expected["category_auroc"][n] for n in NAMES], abs=1e-6)
