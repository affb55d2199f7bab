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
from sklearn.metrics import accuracy_score, hamming_loss, roc_auc_score

from sdmad_monai.handlers import ProtocolReport, protocol_metrics
from sdmad_monai.handlers.report_figures import (
    VARIANT_STYLES,
    backbone_note,
    heatmap_rows,
    shared_color_limits,
)
from sdmad_monai.networks.backbone import DEMO_PRETRAINED
from sdmad_monai.transforms.slices import slice_geometry

# the ROC panel of a one-class category has no curve, so matplotlib's legend() has nothing to show

CATEGORIES = ["Craniotomy", "Lesion", "Ventricles"]  # "Ventricles" is never positive: undefined AUROC
VARIANTS = ("clip", "sdmad")
PROMPTS = ["a normal brain", "a craniotomy", "a lesion", "big ventricles"]
PROMPT_CATEGORIES = [-1, 0, 1, 2]
# sign selection's keep masks: with CLIP's prompt features (adapters off) and with the trained ones
KEEP = {"clip": torch.tensor([True, False, True, False]), "sdmad": torch.tensor([False, True, True, True])}
DEMO_DATA = {"dataset_dir": None, "demo_volumes": 24}
REAL_DATA = {"dataset_dir": "/data/fastmri", "demo_volumes": None}
NOTE_TAIL = "figures show the workflow, not clinical performance"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# 8 slices in two batches of 4: labels for category 0 and 1 mixed, category 2 all zero
LABELS = torch.tensor(
    [
        [1, 0, 0],
        [0, 0, 0],
        [1, 1, 0],
        [0, 1, 0],
        [0, 0, 0],
        [1, 0, 0],
        [0, 0, 0],
        [0, 1, 0],
    ],
    dtype=torch.float32,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def make_outputs(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    n, k, p = LABELS.shape[0], LABELS.shape[1], len(PROMPTS)
    scores = torch.rand(n, k, generator=generator)
    predictions = (torch.rand(n, k, generator=generator) > 0.5).float()
    predictions[0] = LABELS[0]  # at least one fully correct row, so subset accuracy is not trivially 0
    return {
        "scores": scores,
        "predictions": predictions,
        "image_score": torch.rand(n, generator=generator),
        "similarities": torch.rand(n, p, generator=generator) * 2 - 1,
    }


OUTPUTS = {variant: make_outputs(seed) for seed, variant in enumerate(VARIANTS)}
FILES = [f"vol{i // 3}" for i in range(LABELS.shape[0])]
SLICES = [(i % 3) * 5 for i in range(LABELS.shape[0])]


def batches(batch_size: int = 4) -> list[dict]:
    data = []
    for start in range(0, LABELS.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        data.append(
            {
                "file": FILES[rows],
                "slice": torch.tensor(SLICES[rows]),
                "label": LABELS[rows],
                "pred": {v: {key: value[rows] for key, value in OUTPUTS[v].items()} for v in VARIANTS},
            }
        )
        # as ProtocolInferer: the scoring mask, and for clip what sign selection keeps for its prompt features
        data[-1]["pred"]["sdmad"]["keep"] = KEEP["sdmad"]
        data[-1]["pred"]["clip"]["keep"] = torch.ones(len(PROMPTS), dtype=torch.bool)
        data[-1]["pred"]["clip"]["sign_selection_keep"] = KEEP["clip"]
    return data


def evaluator(output_fn=None) -> Engine:
    def process(engine, batch):
        if output_fn is not None:
            return output_fn(batch)
        return {"label": batch["label"], "pred": batch["pred"]}

    return Engine(process)


def make_report(tmp_path, **kwargs) -> ProtocolReport:
    kwargs.setdefault("prompt_texts", PROMPTS)
    kwargs.setdefault("prompt_categories", PROMPT_CATEGORIES)
    return ProtocolReport(tmp_path / "report", CATEGORIES, extra_info={"checkpoint": "model.pt"}, **kwargs)


@pytest.fixture(scope="module")
def run_report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("protocol")
    engine = evaluator()
    report = make_report(tmp_path, backbone={"pretrained": DEMO_PRETRAINED}, data_settings=DEMO_DATA)
    report.attach(engine)
    engine.run(batches(), max_epochs=2)  # two epochs: the second must start from a reset collection
    return engine, tmp_path / "report", report


def expected_metrics(variant: str) -> dict:
    y = LABELS.numpy().astype(int)
    out = OUTPUTS[variant]
    per_category = {}
    for index, name in enumerate(CATEGORIES):
        column = y[:, index]
        per_category[name] = (
            roc_auc_score(column, out["scores"][:, index].numpy()) if column.min() != column.max() else math.nan
        )
    defined = [v for v in per_category.values() if not math.isnan(v)]
    predictions = out["predictions"].numpy().astype(int)
    return {
        "image_auroc": roc_auc_score(y.any(axis=1).astype(int), out["image_score"].numpy()),
        "hamming_score": 1.0 - hamming_loss(y, predictions),
        "subset_accuracy": accuracy_score(y, predictions),
        "category_auroc": per_category,
        "mean_category_auroc": float(np.mean(defined)),
        "num_categories_in_mean": len(defined),
    }


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
    assert got["category_auroc"]["Ventricles"] is None  # one class only: undefined (null in the file), excluded from the mean
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
    column = header.index("sdmad:score:Lesion")
    assert [float(row[column]) for row in body] == pytest.approx(OUTPUTS["sdmad"]["scores"][:, 1].tolist(), rel=1e-5)
    column = header.index("label:Craniotomy")
    assert [float(row[column]) for row in body] == LABELS[:, 0].tolist()


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


# ---------------------------------------------------------------------------------------------- figures: heatmap
def expected_heatmap_means(variant: str) -> np.ndarray:
    """Mean similarity per prompt (rows) and image group (columns: categories, then normal), NaN without images."""
    similarities = OUTPUTS[variant]["similarities"].double().numpy()
    labels = LABELS.double().numpy()
    groups = np.concatenate([labels, (labels.sum(axis=1, keepdims=True) == 0)], axis=1)
    counts = groups.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, similarities.T @ groups / counts, np.nan)


def heat_panels(figure) -> list:
    return [axis for axis in figure.axes if axis.images]


def test_heatmap_one_shared_colour_scale(run_report):
    report = run_report[2]
    figure = report.heatmap_figure()
    panels = heat_panels(figure)
    assert len(panels) == 2
    assert panels[0].get_title().startswith("clip") and panels[1].get_title().startswith("sdmad")
    means = [expected_heatmap_means("clip"), expected_heatmap_means("sdmad")]
    assert np.isnan(means[0][:, 2]).all()  # "Ventricles" has no image: no mean, not in the scale
    expected = (np.nanmin(means), np.nanmax(means))
    assert panels[0].images[0].get_clim() == pytest.approx(expected)
    assert panels[1].images[0].get_clim() == pytest.approx(expected)
    assert shared_color_limits(means) == pytest.approx(expected)
    # each panel shows its own means on that scale
    for panel, mean in zip(panels, means):
        shown = np.ma.filled(panel.images[0].get_array().astype(float), np.nan)
        np.testing.assert_allclose(shown, mean, equal_nan=True)
    assert figure.texts[0].get_text().replace("\n", " ").startswith("Mean prompt-image similarity on 8 slices")
    colorbars = [axis for axis in figure.axes if axis.get_ylabel().startswith("mean cosine similarity")]
    assert len(colorbars) == 1  # one colour bar for both panels
    column_names = [t.get_text() for t in panels[0].get_xticklabels()]
    assert column_names == ["dropped by sign selection", "Craniotomy (n=3)", "Lesion (n=3)", "Ventricles (n=0)",
                            "Normal (n=3)"]


def test_heatmap_marks_dropped_prompts(run_report):
    report = run_report[2]
    rows = report.heatmap_rows()
    assert rows.order == [0, 1, 2, 3]
    assert rows.groups == [("Normal", 0, 1), ("Craniotomy", 1, 2), ("Lesion", 2, 3), ("Ventricles", 3, 4)]
    assert rows.dropped == {"clip": [False, True, False, True], "sdmad": [True, False, False, False]}
    assert rows.label_variant == "sdmad" and rows.greyed == [True, False, False, False]
    figure = report.heatmap_figure()
    for panel, variant in zip(heat_panels(figure), ("clip", "sdmad")):
        markers = [line for line in panel.get_lines() if line.get_marker() == "X"]
        assert len(markers) == 1
        assert list(markers[0].get_ydata()) == [row for row, flag in enumerate(rows.dropped[variant]) if flag]
        kept = int(KEEP[variant].sum())
        assert f"sign selection keeps {kept} of 4 prompts" in panel.get_title()
    labels = heat_panels(figure)[0].get_yticklabels()
    assert [label.get_text() for label in labels] == PROMPTS
    assert [label.get_color() for label in labels] == ["0.55", "black", "black", "black"]
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert "prompt dropped by sign selection (Eq. 6) for this panel's prompt features" in legend
    assert "grey italic prompt: dropped in sdmad" in legend
    metrics = json.loads((run_report[1] / "metrics.json").read_text())
    assert metrics["sign_selection"]["clip"] == {"num_prompts": 4, "num_kept": 2,
                                                 "dropped_prompts": ["a craniotomy", "big ventricles"]}
    assert metrics["sign_selection"]["sdmad"]["dropped_prompts"] == ["a normal brain"]


def test_heatmap_rows_grouping_wrapping_and_marks():
    long = "a brain MRI showing a surgical opening of the cranium with altered bone marrow signal at the margins"
    rows = heatmap_rows(
        ["b1", "n1", "a1", long, "n2"],
        [1, -1, 0, 1, -1],
        ["Alpha", "Beta"],
        {"clip": torch.tensor([1, 1, 0, 1, 0]).bool(), "sdmad": [True, False, True, True, True]},
        width=30,
        max_lines=2,
    )
    assert rows.order == [1, 4, 2, 0, 3]  # normal prompts first, then by category, prompt order kept
    assert rows.groups == [("Normal", 0, 2), ("Alpha", 2, 3), ("Beta", 3, 5)]
    assert rows.categories == [-1, -1, 0, 1, 1]
    assert rows.dropped == {"clip": [False, True, True, False, False], "sdmad": [True, False, False, False, False]}
    assert rows.greyed == [True, False, False, False, False]  # the last variant's marks
    assert rows.labels[:4] == ["n1", "n2", "a1", "b1"]
    wrapped = rows.labels[4].split("\n")
    assert len(wrapped) == 2 and all(len(line) <= 30 for line in wrapped)
    assert wrapped[0] == "a brain MRI showing a surgical" and wrapped[1].endswith("\u2026")
    assert heatmap_rows(["x"], [0], ["A"], {"clip": [True]}, label_variant="sdmad").greyed == [False]
    with pytest.raises(ValueError, match="keep mask"):
        heatmap_rows(["x", "y"], [0, 0], ["A"], {"clip": [True]})


# ---------------------------------------------------------------------------------------------- figures: ROC
def test_roc_panels_counts_legends_and_styles(run_report):
    report = run_report[2]
    figure = report.roc_figure()
    panels = [axis for axis in figure.axes if axis.get_title()]
    titles = [axis.get_title() for axis in panels]
    assert titles == [
        "Craniotomy\nn = 3 pos / 5 neg",
        "Lesion\nn = 3 pos / 5 neg",
        "Ventricles\nn = 0 pos / 8 neg",
        "any finding (image score)\nn = 5 pos / 3 neg",
    ]
    for index, name in enumerate(CATEGORIES[:2]):
        legend = [t.get_text() for t in panels[index].get_legend().get_texts()]
        assert legend == [
            f"{v}: AUROC {expected_metrics(v)['category_auroc'][name]:.3f}" for v in VARIANTS
        ]
    assert figure.texts[0].get_text() == "ROC curves on 8 slices, one panel per category"
    image_legend = [t.get_text() for t in panels[3].get_legend().get_texts()]
    assert image_legend == [f"{v}: AUROC {expected_metrics(v)['image_auroc']:.3f}" for v in VARIANTS]
    assert panels[2].get_legend() is None  # one class only: no curve
    lines = {line.get_label().split(":")[0]: line for line in panels[0].get_lines() if "AUROC" in line.get_label()}
    clip, sdmad = lines["clip"], lines["sdmad"]
    assert clip.get_linestyle() != sdmad.get_linestyle()
    assert clip.get_linewidth() > sdmad.get_linewidth()  # the thinner curve ...
    assert sdmad.get_zorder() > clip.get_zorder()  # ... is drawn on top
    assert sdmad.get_marker() == VARIANT_STYLES["sdmad"]["marker"]


def test_roc_curves_that_coincide_stay_visible(tmp_path):
    """Identical scores for every variant: three curves, three styles, thickest at the bottom."""
    same = {key: value for key, value in OUTPUTS["clip"].items()}
    engine = evaluator(lambda batch: {"label": batch["label"], "pred": {v: batch["pred"]["clip"] for v in
                                                                         ("clip", "sdmad_no_ss", "sdmad")}})
    report = make_report(tmp_path, prompt_texts=None)
    engine.add_event_handler(Events.ITERATION_COMPLETED, report.collect)
    engine.run(batches(), max_epochs=1)
    figure = report.roc_figure()
    curves = [line for line in figure.axes[0].get_lines() if "AUROC" in line.get_label()]
    assert len(curves) == 3
    np.testing.assert_array_equal(curves[0].get_xdata(), curves[2].get_xdata())
    assert len({(str(c.get_linestyle()), c.get_linewidth()) for c in curves}) == 3
    by_width = sorted(curves, key=lambda c: -c.get_linewidth())
    assert [c.get_zorder() for c in by_width] == sorted(c.get_zorder() for c in curves)
    auc = roc_auc_score(LABELS[:, 0].numpy(), same["scores"][:, 0].numpy())
    assert {c.get_label() for c in curves} == {f"{v}: AUROC {auc:.3f}" for v in ("clip", "sdmad_no_ss", "sdmad")}


# ---------------------------------------------------------------------------------------------- demo note
def test_backbone_note_rules():
    assert backbone_note({"pretrained": DEMO_PRETRAINED}, DEMO_DATA) == (
        "demo data and demo backbone: figures show the workflow, not clinical performance"
    )
    assert backbone_note({"pretrained": None}, REAL_DATA) == f"random-weight backbone: {NOTE_TAIL}"
    assert backbone_note({"pretrained": None}, DEMO_DATA) == f"demo data and random-weight backbone: {NOTE_TAIL}"
    assert backbone_note({"pretrained": "openai"}, DEMO_DATA) == f"demo data: {NOTE_TAIL}"
    assert backbone_note({"pretrained": "openai"}, REAL_DATA) is None
    assert backbone_note({"pretrained": "/weights/ViT-L-14.pt"}, None) is None
    assert backbone_note(None, None) is None
    assert backbone_note({"model_name": "ViT-L-14"}, None) is None  # no "pretrained" entry: unknown


def figure_texts(figure) -> list[str]:
    return [" ".join(text.get_text().split()) for text in figure.texts]  # the note may be wrapped


@pytest.mark.parametrize(
    "pretrained, data, note",
    [
        (DEMO_PRETRAINED, DEMO_DATA, "demo data and demo backbone: " + NOTE_TAIL),
        (None, REAL_DATA, "random-weight backbone: " + NOTE_TAIL),
        ("openai", REAL_DATA, None),
    ],
)
def test_note_on_figures_only_for_demo_or_random_backbones(tmp_path, pretrained, data, note):
    report = make_report(tmp_path, backbone={"model_name": "m", "pretrained": pretrained}, data_settings=data)
    engine = evaluator()
    engine.add_event_handler(Events.ITERATION_COMPLETED, report.collect)
    engine.run(batches(), max_epochs=1)
    assert report.note == note
    for figure in (report.roc_figure(), report.heatmap_figure()):
        texts = figure_texts(figure)
        if note is None:
            assert not any("clinical performance" in t for t in texts)
        else:
            assert note in texts
    assert report.results().get("note") == note


def test_written_figures_carry_the_note(run_report):
    _, folder, report = run_report
    assert report.note == "demo data and demo backbone: " + NOTE_TAIL
    assert json.loads((folder / "metrics.json").read_text())["note"] == report.note


# ---------------------------------------------------------------------------------------------- overlays
SIDE = 16  # model input side
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# every slice comes from a 40 (R) x 20 (A) x 5 (S) volume with an identity RAS affine: axial slices are 20 rows x
# 40 columns, resized to 16 x 8 -> padded with 4 rows on top (ResizeToSquare)
VOLUME_SHAPE = (40, 20, 5)
BOXES = {0: [[10, 5, 10, 5, "Craniotomy"]], 2: [[0, 0, 40, 20, "Craniotomy"], [20, 10, 5, 5, "Lesion"]],
         3: [[10, 5, 10, 5, "Lesion"]], 5: [[2, 4, 6, 8, "Craniotomy"]], 7: [[10, 5, 10, 5, "Lesion"]]}
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
            images[start:start + count],
            meta={
                "slice_axis": ["axial"] * count,
                "volume_affine": torch.eye(4, dtype=torch.float64)[None].repeat(count, 1, 1),
                "volume_spatial_shape": [torch.full((count,), size) for size in VOLUME_SHAPE],
            },
        )
        batch["boxes"] = [json.dumps(BOXES.get(i, [])) for i in rows]
        batch["box_frame"] = [FRAMES[i] for i in rows]
        batch["pred"]["sdmad"]["anomaly_map"] = maps[start:start + count]
    return data


def test_geometry_of_the_overlay_volume():
    geometry = slice_geometry(np.eye(4), VOLUME_SHAPE, "axial")
    assert (VOLUME_SHAPE[geometry.row_dim], VOLUME_SHAPE[geometry.col_dim]) == (20, 40)


def test_overlays_top_and_random_with_boxes(tmp_path):
    report = make_report(tmp_path, prompt_texts=None, image_mean=MEAN, image_std=STD, overlays_top=2,
                         overlays_random=3, overlay_seed=1)
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
    off = make_report(tmp_path / "off", prompt_texts=None, image_mean=MEAN, image_std=STD, overlays_top=0,
                      overlays_random=0)
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
        tmp_path, detector.category_labels, prompt_texts=detector.prompt_texts,
        prompt_categories=detector.prompt_categories, overlays_top=0, overlays_random=0,
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
