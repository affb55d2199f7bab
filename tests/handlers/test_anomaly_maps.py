"""DetectionReport and AnomalyMapOverlays (sdmad_monai/handlers/anomaly_maps.py) on tiny hand-made batches run by a
real ignite Engine: every expected number below is worked out by hand in the comments."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from protocol_run import PNG_MAGIC

from sdmad_monai.handlers import AnomalyMapOverlays, DetectionReport

# 4 images in two batches of 2: image score, label, and a 2 x 2 anomaly map whose maximum is MAP_MAX
SCORES = [0.9, 0.2, 0.6, 0.4]
LABELS = [1, 0, 0, 1]
MAP_MAX = [0.3, 0.1, 0.8, 0.5]
FILES = ["a.png", "b.png", "c.png", "d.png"]
# image AUROC of SCORES: positives 0.9, 0.4 vs negatives 0.2, 0.6: pairs 0.9>0.2, 0.9>0.6, 0.4>0.2, 0.4<0.6 -> 3/4
IMAGE_AUROC = 0.75
# of MAP_MAX: positives 0.3, 0.5 vs negatives 0.1, 0.8: 0.3>0.1, 0.3<0.8, 0.5>0.1, 0.5<0.8 -> 2/4
MAP_MAX_AUROC = 0.5


def anomaly_map(maximum: float) -> torch.Tensor:
    return torch.tensor([[maximum / 2, maximum], [0.0, maximum / 4]])


def detection_batches(with_maps: bool = True, with_files: bool = True) -> list[dict]:
    data = []
    for start in (0, 2):
        rows = slice(start, start + 2)
        pred = {"image_score": torch.tensor(SCORES[rows])}
        if with_maps:
            pred["anomaly_map"] = torch.stack([anomaly_map(m) for m in MAP_MAX[rows]])
        batch = {"label": torch.tensor(LABELS[rows], dtype=torch.float32)[:, None], "pred": pred}
        if with_files:
            batch["file"] = FILES[rows]
        data.append(batch)
    return data


def passthrough() -> Engine:
    """An evaluator whose output is ``{"label", "pred"}`` of the batch, as SupervisedEvaluator(decollate=False)."""
    return Engine(lambda engine, batch: {"label": batch["label"], "pred": batch["pred"]})


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


# ---------------------------------------------------------------------------------------------- DetectionReport
def test_detection_report_image_level(tmp_path):
    engine = passthrough()
    report = DetectionReport(tmp_path / "report", pixel_metric=None, info={"dataset": "tiny"})
    report.attach(engine)
    engine.run(detection_batches(), max_epochs=2)  # the second epoch starts from a reset collection
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["num_images"] == 4 and metrics["num_normal"] == 2 and metrics["num_abnormal"] == 2
    assert metrics["image_auroc"] == pytest.approx(IMAGE_AUROC, abs=1e-12)
    assert metrics["image_auroc_map_max"] == pytest.approx(MAP_MAX_AUROC, abs=1e-12)
    assert metrics["run"] == {"dataset": "tiny"}
    assert "pixel_auroc" not in metrics
    assert engine.state.metrics["image_auroc"] == pytest.approx(IMAGE_AUROC, abs=1e-12)
    assert engine.state.metrics["image_auroc_map_max"] == pytest.approx(MAP_MAX_AUROC, abs=1e-12)
    rows = read_rows(tmp_path / "report" / "predictions.csv")
    assert rows[0] == ["file", "label", "image_score", "anomaly_map_max"]
    assert len(rows) == 1 + 4  # one row per image, not doubled by the second epoch
    assert [r[0] for r in rows[1:]] == FILES
    assert [int(r[1]) for r in rows[1:]] == LABELS
    assert [float(r[2]) for r in rows[1:]] == pytest.approx(SCORES, rel=1e-6)
    assert [float(r[3]) for r in rows[1:]] == pytest.approx(MAP_MAX, rel=1e-6)
    assert (tmp_path / "report" / "roc.png").read_bytes()[:8] == PNG_MAGIC
    assert not list((tmp_path / "report").rglob("*.tmp"))


def test_report_handlers_share_the_epoch_lifecycle(tmp_path):
    from sdmad_monai.handlers import ProtocolReport
    from sdmad_monai.handlers.utils import EpochReport

    for handler in (DetectionReport, AnomalyMapOverlays, ProtocolReport):
        assert issubclass(handler, EpochReport)
    engine = passthrough()
    overlays = AnomalyMapOverlays(tmp_path / "overlays", mean=(0.0,) * 3, std=(1.0,) * 3, top_n=1, random_n=0)
    overlays.attach(engine)
    assert engine.has_event_handler(overlays.started, Events.EPOCH_STARTED)
    assert engine.has_event_handler(overlays.collect, Events.ITERATION_COMPLETED)
    assert engine.has_event_handler(overlays.write, Events.EPOCH_COMPLETED)


def test_detection_report_without_maps_or_names(tmp_path):
    engine = passthrough()
    report = DetectionReport(tmp_path, pixel_metric=None)
    report.attach(engine)
    engine.run(detection_batches(with_maps=False, with_files=False), max_epochs=1)
    rows = read_rows(tmp_path / "predictions.csv")
    assert rows[0] == ["file", "label", "image_score"]
    # names default to the running image number, continued across batches
    assert [r[0] for r in rows[1:]] == ["image_00000", "image_00001", "image_00002", "image_00003"]
    assert [float(r[2]) for r in rows[1:]] == pytest.approx(SCORES, rel=1e-6)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "image_auroc_map_max" not in metrics and "image_auroc_map_max" not in engine.state.metrics
    assert metrics["image_auroc"] == pytest.approx(IMAGE_AUROC, abs=1e-12)


def test_detection_report_multilabel_rows_are_abnormal_when_any_is_set(tmp_path):
    engine = Engine(lambda engine, batch: batch)
    report = DetectionReport(tmp_path, pixel_metric=None)
    report.attach(engine)
    label = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    engine.run([{"label": label, "pred": {"image_score": torch.tensor([0.3, 0.2, 0.1])}}], max_epochs=1)
    assert [int(r[1]) for r in read_rows(tmp_path / "predictions.csv")[1:]] == [1, 0, 1]
    # positives 0.3, 0.1 vs the negative 0.2: one pair of two ranked right
    assert engine.state.metrics["image_auroc"] == pytest.approx(0.5)


def test_detection_report_pixel_metrics_from_the_histogram(tmp_path):
    # 4 bins: negatives [3, 1, 0, 0], positives [0, 1, 1, 2] (P = N = 4), saved as PixelAUROC does
    details = torch.tensor([3, 1, 0, 0, 0, 1, 1, 2], dtype=torch.float64)
    engine = passthrough()

    @engine.on(Events.EPOCH_COMPLETED)
    def fake_pixel_metric(engine):  # registered before the report: its values are there when the report writes
        engine.state.metrics["pixel_auroc"] = 0.875
        engine.state.metric_details = {"pixel_auroc": details}

    report = DetectionReport(tmp_path, pixel_metric="pixel_auroc")
    report.attach(engine)
    engine.run(detection_batches(), max_epochs=1)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["pixel_auroc"] == 0.875
    # error bound: sum_b pos_b neg_b / (2 P N) = (1 * 1) / (2 * 4 * 4)
    assert metrics["pixel_auroc_error_bound"] == pytest.approx(1 / 32, abs=1e-12)
    # thresholds from the top bin down: TP 2, 3, 4, 4; FP 0, 0, 1, 4; precision 1, 1, 4/5, 1/2;
    # recall steps 2/4, 1/4, 1/4, 0 -> AP = 1/2 + 1/4 + 1/5
    assert metrics["pixel_ap"] == pytest.approx(0.5 + 0.25 + 0.2, abs=1e-12)
    # Dice 2TP / (2TP + FP + FN): 4/6, 6/7, 8/9, 8/12 -> 8/9
    assert metrics["pixel_best_dice"] == pytest.approx(8 / 9, abs=1e-12)
    assert metrics["num_pixels"] == 8 and metrics["num_anomalous_pixels"] == 4


def test_detection_report_errors(tmp_path):
    engine = passthrough()
    DetectionReport(tmp_path / "missing", pixel_metric="pixel_auroc").attach(engine)
    with pytest.raises(RuntimeError, match="no metric 'pixel_auroc'"):
        engine.run(detection_batches(), max_epochs=1)
    assert not (tmp_path / "missing" / "metrics.json").exists()

    with pytest.raises(RuntimeError, match="collected no image"):
        DetectionReport(tmp_path, pixel_metric=None).results()

    engine = Engine(lambda engine, batch: {"pred": batch["pred"]})  # no label in the output or in the batch
    DetectionReport(tmp_path, pixel_metric=None).attach(engine)
    with pytest.raises(ValueError, match="needs image labels under 'label'"):
        engine.run([{"pred": {"image_score": torch.tensor([0.5])}}], max_epochs=1)

    engine = Engine(lambda engine, batch: torch.zeros(1))  # a decollated / plain output
    DetectionReport(tmp_path, pixel_metric=None).attach(engine)
    with pytest.raises(TypeError, match="decollate=False"):
        engine.run([0], max_epochs=1)


# ---------------------------------------------------------------------------------------------- AnomalyMapOverlays
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
SIDE = 4
OVERLAY_SCORES = [0.1, 0.9, 0.5, 0.7, 0.3]
# normalised image values: v * 0.25 + 0.5 in [0, 1] -> * 255: 0.4 -> 153, -2 -> 0 (clamped), 2 -> 255 (clamped)
IMAGE_VALUES = [0.4, -2.0, 2.0, 0.4, -0.4]
DISPLAY_VALUES = [153, 0, 255, 153, 102]  # -0.4 -> 0.4 -> 102


def overlay_batches(with_files: bool = True, with_masks: bool = True) -> list[dict]:
    maps = torch.arange(5 * SIDE * SIDE, dtype=torch.float32).reshape(5, SIDE, SIDE) / 100
    masks = torch.zeros(5, 1, SIDE, SIDE)
    masks[1, 0, :2, :2] = 1.0  # image 1: the top-left quarter is anomalous
    masks[3, 0, 3, 3] = 0.6  # above 0.5: in the mask
    masks[3, 0, 0, 0] = 0.4  # below 0.5: not
    data = []
    for start, stop in ((0, 3), (3, 5)):
        rows = slice(start, stop)
        batch = {
            "image": torch.stack([torch.full((3, SIDE, SIDE), v) for v in IMAGE_VALUES[rows]]),
            "label": torch.tensor([[0.0], [1.0], [0.0], [1.0], [0.0]][rows]),
            "pred": {"image_score": torch.tensor(OVERLAY_SCORES[rows]), "anomaly_map": maps[rows]},
        }
        if with_masks:
            batch["pixel_label"] = masks[rows]
        if with_files:
            batch["file"] = [f"img{i}" for i in range(start, stop)]
        data.append(batch)
    return data, maps, masks


def overlay_engine() -> Engine:
    return Engine(lambda engine, batch: {k: batch[k] for k in ("image", "label", "pred")})


def test_overlays_keep_the_top_and_a_disjoint_sample(tmp_path):
    data, maps, masks = overlay_batches()
    engine = overlay_engine()  # the masks are read from the batch (not in the output)
    overlays = AnomalyMapOverlays(tmp_path, MEAN, STD, top_n=2, random_n=1, seed=0)
    overlays.attach(engine)
    engine.run(data, max_epochs=2)  # the second epoch starts from a reset selection
    assert overlays.selector.num_seen == 5
    top, sample = overlays.selector.top(), overlays.selector.sample()
    assert [item.order for item in top] == [1, 3]  # scores 0.9 and 0.7, highest first
    assert len(sample) == 1 and sample[0].order in {0, 2, 4}
    for item in top + sample:
        i = item.order
        assert item.name == f"img{i}" and item.score == pytest.approx(OVERLAY_SCORES[i])
        assert item.label == (1 if i in (1, 3) else 0)
        assert item.image.dtype == np.uint8 and item.image.shape == (SIDE, SIDE, 3)
        assert (item.image == DISPLAY_VALUES[i]).all(), (i, item.image[0, 0])
        assert item.anomaly_map.dtype == np.float32
        np.testing.assert_array_equal(item.anomaly_map, maps[i].numpy())
        np.testing.assert_array_equal(item.mask, masks[i, 0].numpy() > 0.5)
    assert top[0].mask.sum() == 4 and top[1].mask.sum() == 1 and top[1].mask[3, 3]
    rows = read_rows(tmp_path / "index.csv")
    assert rows[0] == ["kind", "rank", "name", "score", "label", "png"]
    body = rows[1:]
    assert len(body) == 3  # top_n + random_n PNGs, one row each
    assert [(r[0], int(r[1]), r[2]) for r in body] == [
        ("top", 1, "img1"),
        ("top", 2, "img3"),
        ("random", 1, f"img{sample[0].order}"),
    ]
    assert [float(r[3]) for r in body] == pytest.approx([0.9, 0.7, OVERLAY_SCORES[sample[0].order]], rel=1e-6)
    assert [r[4] for r in body] == ["abnormal", "abnormal", "normal"]
    for row in body:
        assert row[5].startswith(f"{row[0]}/{row[0]}_") and row[5].endswith(".png")
        assert (tmp_path / row[5]).read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == sorted(r[5] for r in body)


def test_overlays_without_masks_or_names(tmp_path):
    data, _, _ = overlay_batches(with_files=False)
    engine = overlay_engine()
    overlays = AnomalyMapOverlays(tmp_path, MEAN, STD, top_n=5, random_n=0, mask_key=None)
    overlays.attach(engine)
    engine.run(data, max_epochs=1)
    top = overlays.selector.top()
    assert [item.order for item in top] == [1, 3, 2, 4, 0]  # every image, by decreasing score
    assert all(item.mask is None for item in top)
    # default names count the images across batches
    assert [item.name for item in top] == [f"image_{i:05d}" for i in (1, 3, 2, 4, 0)]
    assert [r[2] for r in read_rows(tmp_path / "index.csv")[1:]] == [f"image_{i:05d}" for i in (1, 3, 2, 4, 0)]


def test_overlays_need_the_maps(tmp_path):
    data, _, _ = overlay_batches()
    del data[0]["pred"]["anomaly_map"]
    engine = overlay_engine()
    AnomalyMapOverlays(tmp_path, MEAN, STD).attach(engine)
    with pytest.raises(KeyError, match="no 'anomaly_map'"):
        engine.run(data, max_epochs=1)
