"""ProtocolReport / protocol_metrics on a hand-made evaluation run by a real ignite Engine, checked against sklearn."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from PIL import Image
from protocol_run import (
    CATEGORIES,
    FILES,
    LABELS,
    OUTPUTS,
    PNG_MAGIC,
    SLICES,
    VARIANTS,
    batches,
    evaluator,
    expected_metrics,
    make_report,
)

from sdmad_monai.handlers import ProtocolReport, protocol_metrics
from sdmad_monai.transforms.slices import slice_geometry


@pytest.mark.parametrize("variant", VARIANTS)
def test_metrics_json_matches_sklearn(run_report, variant):
    _, folder, _ = run_report
    results = json.loads((folder / "metrics.json").read_text())
    assert results["num_slices"] == LABELS.shape[0]  # not doubled by the second epoch
    assert results["num_normal_slices"] == 3
    assert results["positives_per_category"] == {"Craniotomy": 3, "Lesion": 3, "Ventricles": 0}
    assert results["categories"] == CATEGORIES
    assert results["run"] == {"checkpoint": "model.pt"}
    assert set(results["variants"]) == set(VARIANTS)
    got, expected = results["variants"][variant], expected_metrics(variant)
    for key in ("image_auroc", "hamming_score", "subset_accuracy", "mean_category_auroc"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key  # Hamming/subset are float32 means
    assert 0 < got["subset_accuracy"] < 1
    assert got["num_categories_in_mean"] == expected["num_categories_in_mean"] == 2
    assert set(got["category_auroc"]) == set(CATEGORIES)
    for name in CATEGORIES[:2]:
        assert got["category_auroc"][name] == pytest.approx(expected["category_auroc"][name], abs=1e-9)
    assert (
        got["category_auroc"]["Ventricles"] is None
    )  # one class only: undefined (null in the file), excluded from the mean
    assert got["mean_category_auroc"] == pytest.approx(
        (got["category_auroc"]["Craniotomy"] + got["category_auroc"]["Lesion"]) / 2
    )


def test_engine_metrics(run_report):
    engine, folder, _ = run_report
    results = json.loads((folder / "metrics.json").read_text())
    for variant in VARIANTS:
        for key in ("image_auroc", "hamming_score", "subset_accuracy", "mean_category_auroc"):
            assert engine.state.metrics[f"{variant}/{key}"] == pytest.approx(results["variants"][variant][key])
        assert engine.state.metrics[f"{variant}/mean_category_auroc"] == pytest.approx(
            expected_metrics(variant)["mean_category_auroc"]
        )


def test_predictions_csv(run_report):
    _, folder, _ = run_report
    with open(folder / "predictions.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    expected_header = ["file", "slice"] + [f"label:{n}" for n in CATEGORIES]
    for variant in VARIANTS:
        expected_header += [f"{variant}:score:{n}" for n in CATEGORIES]
        expected_header += [f"{variant}:prediction:{n}" for n in CATEGORIES]
        expected_header.append(f"{variant}:image_score")
    assert header == expected_header
    assert len(body) == LABELS.shape[0]
    assert [row[0] for row in body] == FILES
    assert [int(row[1]) for row in body] == SLICES
    # every value column is the in-memory output it names, row by row (scores written with 6 significant digits)
    for k, name in enumerate(CATEGORIES):
        column = header.index(f"label:{name}")
        assert [float(row[column]) for row in body] == LABELS[:, k].tolist(), name
    for variant in VARIANTS:
        out = OUTPUTS[variant]
        for k, name in enumerate(CATEGORIES):
            column = header.index(f"{variant}:score:{name}")
            got = [float(row[column]) for row in body]
            assert got == pytest.approx(out["scores"][:, k].tolist(), rel=1e-5, abs=1e-7), (variant, name)
            column = header.index(f"{variant}:prediction:{name}")
            assert [float(row[column]) for row in body] == out["predictions"][:, k].tolist(), (variant, name)
        column = header.index(f"{variant}:image_score")
        got = [float(row[column]) for row in body]
        assert got == pytest.approx(out["image_score"].tolist(), rel=1e-5, abs=1e-7), variant


def test_figures_are_png_and_no_temporary_files(run_report):
    _, folder, _ = run_report
    for name in ("roc.png", "similarity_heatmap.png"):
        data = (folder / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > 1000
    # no "image"/"anomaly_map" in these batches: no overlay folder
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["metrics.json", "predictions.csv", "roc.png", "similarity_heatmap.png"]
    )
    assert not list(folder.rglob("*.tmp"))


def test_no_heatmap_without_prompt_texts(tmp_path):
    engine = evaluator()
    report = make_report(tmp_path, prompt_texts=None, prompt_categories=None)
    report.attach(engine)
    engine.run(batches(batch_size=3), max_epochs=1)  # uneven batches: 3 + 3 + 2
    folder = tmp_path / "report"
    assert (folder / "roc.png").read_bytes()[:8] == PNG_MAGIC
    assert not (folder / "similarity_heatmap.png").exists()
    results = json.loads((folder / "metrics.json").read_text())
    assert results["variants"]["clip"]["image_auroc"] == pytest.approx(expected_metrics("clip")["image_auroc"])


def test_protocol_metrics_direct():
    out = OUTPUTS["clip"]
    metrics = protocol_metrics(out["scores"], out["predictions"], out["image_score"], LABELS, CATEGORIES)
    expected = expected_metrics("clip")
    assert metrics["image_auroc"] == pytest.approx(expected["image_auroc"])
    assert metrics["num_categories_in_mean"] == 2
    # hand-made: perfect separation on every category
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    perfect = protocol_metrics(labels * 0.9, labels, labels.sum(dim=1), labels, ["a", "b"])
    assert perfect == {
        "image_auroc": 1.0,
        "hamming_score": 1.0,
        "subset_accuracy": 1.0,
        "category_auroc": {"a": 1.0, "b": 1.0},
        "mean_category_auroc": 1.0,
        "num_categories_in_mean": 2,
    }
    # no category defined: mean is NaN, none counted
    normal = torch.zeros(3, 2)
    empty = protocol_metrics(torch.rand(3, 2), normal, torch.rand(3), normal, ["a", "b"])
    assert math.isnan(empty["mean_category_auroc"]) and empty["num_categories_in_mean"] == 0
    assert math.isnan(empty["image_auroc"])
    assert empty["hamming_score"] == 1.0 and empty["subset_accuracy"] == 1.0


@pytest.mark.parametrize(
    "output_fn",
    [
        lambda batch: batch["pred"]["sdmad"]["scores"],  # a plain tensor
        lambda batch: [{"pred": batch["pred"], "label": batch["label"]}],  # decollated output
        lambda batch: {"label": batch["label"], "pred": batch["pred"]["sdmad"]["scores"]},  # not a variant dict
    ],
)
def test_output_not_protocol_inferer_dict(tmp_path, output_fn):
    engine = evaluator(output_fn)
    make_report(tmp_path).attach(engine)
    with pytest.raises(TypeError, match="ProtocolInferer"):
        engine.run(batches(), max_epochs=1)
    assert not (tmp_path / "report" / "metrics.json").exists()


def test_no_slice_collected(tmp_path):
    report = make_report(tmp_path)
    with pytest.raises(RuntimeError, match="collected no slice"):
        report.write()
    with pytest.raises(RuntimeError, match="collected no slice"):
        report.results()
    assert not (tmp_path / "report" / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------- overlays
SIDE = 16  # model input side
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# every slice comes from a 40 (R) x 20 (A) x 5 (S) volume with an identity RAS affine: axial slices are 20 rows x
# 40 columns, resized to 16 x 8 -> padded with 4 rows on top (ResizeToSquare)
VOLUME_SHAPE = (40, 20, 5)
BOXES = {
    0: [[10, 5, 10, 5, "Craniotomy"]],
    2: [[0, 0, 40, 20, "Craniotomy"], [20, 10, 5, 5, "Lesion"]],
    3: [[10, 5, 10, 5, "Lesion"]],
    5: [[2, 4, 6, 8, "Craniotomy"]],
    7: [[10, 5, 10, 5, "Lesion"]],
}
FRAMES = ["display", "display", "display", "flipped_rows", "display", "flipped_rows", "display", "flipped_rows"]
# hand-computed: scale 16 / 40 = 0.4, top padding (16 - 8) // 2 = 4, flipped rows: y -> 20 - y - height first
EXPECTED_BOXES = {
    0: [(4.0, 6.0, 4.0, 2.0, "Craniotomy")],
    2: [(0.0, 4.0, 16.0, 8.0, "Craniotomy"), (8.0, 8.0, 2.0, 2.0, "Lesion")],
    3: [(4.0, 8.0, 4.0, 2.0, "Lesion")],
    5: [(0.8, 7.2, 2.4, 3.2, "Craniotomy")],
    7: [(4.0, 8.0, 4.0, 2.0, "Lesion")],
}


def overlay_batches(batch_size: int = 4) -> list[dict]:
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(LABELS.shape[0], 3, SIDE, SIDE, generator=generator)
    maps = torch.rand(LABELS.shape[0], SIDE, SIDE, generator=generator)
    data = batches(batch_size)
    for start, batch in zip(range(0, LABELS.shape[0], batch_size), data):
        rows = range(start, min(start + batch_size, LABELS.shape[0]))
        count = len(rows)
        batch["image"] = MetaTensor(
            images[start : start + count],
            meta={
                "slice_axis": ["axial"] * count,
                "volume_affine": torch.eye(4, dtype=torch.float64)[None].repeat(count, 1, 1),
                "volume_spatial_shape": [torch.full((count,), size) for size in VOLUME_SHAPE],
            },
        )
        batch["boxes"] = [json.dumps(BOXES.get(i, [])) for i in rows]
        batch["box_frame"] = [FRAMES[i] for i in rows]
        batch["pred"]["sdmad"]["anomaly_map"] = maps[start : start + count]
    return data


def test_geometry_of_the_overlay_volume():
    geometry = slice_geometry(np.eye(4), VOLUME_SHAPE, "axial")
    assert (VOLUME_SHAPE[geometry.row_dim], VOLUME_SHAPE[geometry.col_dim]) == (20, 40)


def test_overlays_top_and_random_with_boxes(tmp_path):
    report = make_report(
        tmp_path, prompt_texts=None, image_mean=MEAN, image_std=STD, overlays_top=2, overlays_random=3, overlay_seed=1
    )
    engine = Engine(lambda engine, batch: {"label": batch["label"], "pred": batch["pred"], "image": batch["image"]})
    report.attach(engine)
    engine.run(overlay_batches(), max_epochs=1)
    folder = tmp_path / "report" / "overlays"
    top, random_pngs = sorted((folder / "top").glob("*.png")), sorted((folder / "random").glob("*.png"))
    assert len(top) == 2 and len(random_pngs) == 3
    with open(folder / "index.csv", newline="") as handle:
        index = list(csv.DictReader(handle))
    names = [f"{file} slice {s}" for file, s in zip(FILES, SLICES)]
    scores = OUTPUTS["sdmad"]["image_score"]
    ranked = torch.argsort(scores, descending=True).tolist()
    assert [row["name"] for row in index if row["kind"] == "top"] == [names[i] for i in ranked[:2]]
    sampled = [row["name"] for row in index if row["kind"] == "random"]
    assert len(set(sampled)) == 3 and not set(sampled) & {names[i] for i in ranked[:2]}
    assert set(sampled) <= {names[i] for i in ranked[2:]}
    # the kept items: boxes mapped onto the 16 x 16 input, display images undone from CLIP normalisation
    kept = report._selector.top() + report._selector.sample()
    for item in kept:
        assert item.name == names[item.order]
        expected = EXPECTED_BOXES.get(item.order)
        if expected is None:
            assert item.boxes is None
        else:
            assert len(item.boxes) == len(expected)
            for got, want in zip(item.boxes, expected):
                assert got[:4] == pytest.approx(want[:4]) and got[4] == want[4]
        assert item.image.shape == (SIDE, SIDE, 3) and item.anomaly_map.shape == (SIDE, SIDE)
        assert item.label == int(LABELS[item.order].any())
        assert item.caption.startswith("labels: ")
    labelled = {i: ", ".join(n for n, v in zip(CATEGORIES, LABELS[i].tolist()) if v) or "none" for i in range(8)}
    assert {item.caption.split(" | ")[0] for item in kept} == {f"labels: {labelled[item.order]}" for item in kept}
    # a PNG of a slice with boxes shows them (the box colour is nowhere else in the figure)
    with_boxes = [item for item in kept if item.boxes]
    assert with_boxes
    row = next(r for r in index if r["name"] == with_boxes[0].name)
    pixels = np.asarray(Image.open(folder / row["png"]).convert("RGB")).astype(int)
    assert ((pixels[..., 0] < 110) & (pixels[..., 1] > 140) & (pixels[..., 2] > 160)).sum() > 100


def test_no_overlays_without_maps_or_when_turned_off(tmp_path):
    engine = Engine(lambda engine, batch: {"label": batch["label"], "pred": batch["pred"], "image": batch["image"]})
    data = overlay_batches()
    for batch in data:
        del batch["pred"]["sdmad"]["anomaly_map"]
    report = make_report(tmp_path, prompt_texts=None, image_mean=MEAN, image_std=STD)
    report.attach(engine)
    engine.run(data, max_epochs=1)
    assert not (tmp_path / "report" / "overlays").exists()
    off = make_report(
        tmp_path / "off", prompt_texts=None, image_mean=MEAN, image_std=STD, overlays_top=0, overlays_random=0
    )
    engine = Engine(lambda engine, batch: {"label": batch["label"], "pred": batch["pred"], "image": batch["image"]})
    off.attach(engine)
    engine.run(overlay_batches(), max_epochs=1)
    assert (tmp_path / "off" / "report" / "metrics.json").is_file()
    assert not (tmp_path / "off" / "report" / "overlays").exists()


# ---------------------------------------------------------------------------------------------- with the detector
@pytest.mark.filterwarnings("ignore:Sign selection kept no prompt")  # random weights
def test_keep_masks_come_from_the_detector_text_states(tmp_path):
    from sdmad_monai.inferers import ProtocolInferer
    from sdmad_monai.networks import SignDrivenDetector

    detector = SignDrivenDetector.from_preset("tiny").eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in detector.text_adapter.parameters():  # make the adapted prompt features differ from CLIP's
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
        trained_keep = detector.text_state().keep.clone()
        with detector.adapters_disabled():
            clip_keep = detector.text_state().keep.clone()
        outputs = ProtocolInferer()(torch.randn(2, 3, 64, 64, generator=generator), detector)
    assert not torch.equal(trained_keep, clip_keep)  # the two panels really have different marks
    assert torch.equal(outputs["clip"]["sign_selection_keep"], clip_keep)
    assert torch.equal(outputs["sdmad_no_ss"]["sign_selection_keep"], trained_keep)
    assert torch.equal(outputs["sdmad"]["keep"], trained_keep) and "sign_selection_keep" not in outputs["sdmad"]
    assert outputs["clip"]["keep"].all() and outputs["sdmad_no_ss"]["keep"].all()
    report = ProtocolReport(
        tmp_path,
        detector.category_labels,
        prompt_texts=detector.prompt_texts,
        prompt_categories=detector.prompt_categories,
        overlays_top=0,
        overlays_random=0,
    )
    labels = torch.tensor([[1.0] + [0.0] * (detector.num_categories - 1), [0.0] * detector.num_categories])
    engine = Engine(lambda engine, batch: {"label": labels, "pred": outputs})
    engine.add_event_handler(Events.ITERATION_COMPLETED, report.collect)
    engine.run([{}], max_epochs=1)
    rows = report.heatmap_rows()
    assert rows.dropped["clip"] == (~clip_keep[rows.order]).tolist()
    assert rows.dropped["sdmad"] == (~trained_keep[rows.order]).tolist()


def test_all_negative_baseline_is_the_share_of_negative_labels_and_of_normal_slices():
    from sdmad_monai.handlers.report import all_negative_baseline

    labels = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    baseline = all_negative_baseline(labels)
    assert baseline["hamming_score"] == pytest.approx(9 / 12)  # 9 of the 12 labels are negative
    assert baseline["subset_accuracy"] == pytest.approx(2 / 4)  # 2 of the 4 slices are normal
