"""The evaluation figures (sdmad_monai.handlers.report_figures) of a hand-made ProtocolReport run: the similarity
heatmap (one colour scale, grouped rows, prompts dropped by sign selection marked), the ROC panels (counts, legends,
curves that coincide kept visible) and the demo note."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Events
from protocol_run import (
    CATEGORIES,
    DEMO_DATA,
    KEEP,
    LABELS,
    NOTE_TAIL,
    OUTPUTS,
    PROMPTS,
    REAL_DATA,
    VARIANTS,
    batches,
    evaluator,
    expected_metrics,
    make_report,
)
from sklearn.metrics import roc_auc_score

from sdmad_monai.handlers.report_figures import (
    VARIANT_STYLES,
    backbone_note,
    heatmap_rows,
    image_roc_figure,
    plot_roc_curves,
    save_figure,
    shared_color_limits,
)
from sdmad_monai.networks.backbone import DEMO_PRETRAINED


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
    assert column_names == [
        "dropped by sign selection",
        "Craniotomy (n=3)",
        "Lesion (n=3)",
        "Ventricles (n=0)",
        "Normal (n=3)",
    ]


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
    assert metrics["sign_selection"]["clip"] == {
        "num_prompts": 4,
        "num_kept": 2,
        "dropped_prompts": ["a craniotomy", "big ventricles"],
    }
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
        assert legend == [f"{v}: AUROC {expected_metrics(v)['category_auroc'][name]:.3f}" for v in VARIANTS]
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
    engine = evaluator(
        lambda batch: {
            "label": batch["label"],
            "pred": {v: batch["pred"]["clip"] for v in ("clip", "sdmad_no_ss", "sdmad")},
        }
    )
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


def test_plot_roc_curves_labels_styles_and_markers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positive = np.array([True, False, False, True])
    scores = np.array([0.9, 0.2, 0.6, 0.4])
    figure, axis = plt.subplots()
    plot_roc_curves(axis, positive, [("a", scores, {"color": "red", "zorder": 7}), ("b", -scores, {"marker": "o"})])
    first, second = axis.get_lines()
    assert first.get_label() == "a: AUROC 0.750" and first.get_color() == "red" and first.get_zorder() == 7
    assert second.get_label() == "b: AUROC 0.250" and second.get_markevery() == 1
    plt.close(figure)


def test_image_roc_figure_one_panel_and_one_class(tmp_path):
    figure = image_roc_figure([1, 0, 0, 1], [("image score", [0.9, 0.2, 0.6, 0.4]), ("map max", [0.3, 0.1, 0.8, 0.5])])
    (axis,) = figure.axes
    assert axis.get_title() == "image-level ROC"
    assert [line.get_label() for line in axis.get_lines()[1:]] == ["image score (0.750)", "map max (0.500)"]
    path = save_figure(figure, tmp_path / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob("*.tmp"))
    one_class = image_roc_figure([0, 0], [("image score", [0.1, 0.2])])
    assert one_class.axes[0].get_title() == "image-level ROC: one class only, undefined"
    assert len(one_class.axes[0].get_lines()) == 1  # the diagonal only


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
