"""The comparison run (sdmad_monai.compare, configs/compare.json) end to end on two generated datasets: a BMAD-like
folder with masks and a MedIAnomaly data.json folder; tiny random-weight backbone, a few training steps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from sdmad_monai.compare import compare_methods, load_comparison_data
from sdmad_monai.data import generate_bmad_like_dataset, generate_medianomaly_like_dataset

pytestmark = pytest.mark.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    bmad = generate_bmad_like_dataset(root / "BrainMRI", num_train=6, num_normal=4, num_abnormal=4, size=48, seed=1)
    med = generate_medianomaly_like_dataset(root / "RSNA", num_train=6, num_normal=4, num_abnormal=4, size=48, seed=2)
    return bmad, med


def test_loading_both_layouts(datasets):
    bmad, med = (load_comparison_data(d, 64, (0.5,) * 3, (0.25,) * 3) for d in datasets)
    assert (bmad.layout, med.layout) == ("bmad", "data_json")
    assert tuple(bmad.train.shape) == (6, 3, 64, 64) and tuple(bmad.test.shape) == (8, 3, 64, 64)
    assert sorted(bmad.labels.tolist()) == [0] * 4 + [1] * 4 and bmad.masks is not None
    assert bmad.masks.shape == (8, 64, 64)
    abnormal = bmad.labels == 1
    assert float(bmad.masks[~abnormal].sum()) == 0 and all(float(m.sum()) > 0 for m in bmad.masks[abnormal])
    assert med.masks is None and med.labels.tolist() == [0] * 4 + [1] * 4


def test_comparison_writes_one_table(datasets, tmp_path):
    out = tmp_path / "compare"
    rows = compare_methods(datasets, out, shots=2, seed=0, pretrained=None, sdmad_epochs=1, d24fad_steps=3,
                           sir_steps=3, sir_loops=2, progress=False)  # fmt: skip
    expected = [(d, m) for d in ("BrainMRI", "RSNA") for m in ("clip", "sdmad", "d24fad", "sir")]
    assert [(r.dataset, r.method) for r in rows] == expected
    (skipped,) = [r for r in rows if r.image_auroc is None]
    assert (skipped.dataset, skipped.method) == ("RSNA", "sdmad") and "abnormal images only in test/" in skipped.note
    # SD-MAD's row is the bundle's own evaluation of its own training
    bundle_metrics = json.loads((out / "sdmad" / "BrainMRI" / "eval_bmad" / "metrics.json").read_text())
    sdmad = rows[1]
    assert sdmad.image_auroc == pytest.approx(bundle_metrics["image_auroc"], abs=1e-9)
    assert sdmad.pixel_auroc == bundle_metrics["pixel_auroc"] and sdmad.pixel_best_dice is not None
    predictions = list(csv.DictReader((out / "sdmad" / "BrainMRI" / "eval_bmad" / "predictions.csv").open()))
    labels, scores = [int(float(r["label"])) for r in predictions], [float(r["image_score"]) for r in predictions]
    assert sdmad.image_auroc == pytest.approx(roc_auc_score(labels, scores))
    for row in [r for r in rows if r is not skipped]:
        assert 0.0 <= row.image_auroc <= 1.0 and 0.0 <= row.image_ap <= 1.0 and row.num_test == 8
        pixel = (row.pixel_auroc, row.pixel_ap, row.pixel_best_dice)
        assert all(0.0 <= v <= 1.0 for v in pixel) if row.dataset == "BrainMRI" else pixel == (None, None, None)
    record = json.loads((out / "results.json").read_text())
    assert record["settings"]["shots"] == 2 and len(record["results"]) == 8
    for entry in record["datasets"]:  # the supports are training images, recorded by name
        assert len(entry["d24fad_supports"]) == 2 and entry["sir_image"]
        assert all(name.startswith("train") for name in entry["d24fad_supports"] + [entry["sir_image"]])
    with open(out / "results.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == ["dataset", "method", "image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_best_dice",
                      "num_test", "num_abnormal", "seconds", "note"]  # fmt: skip
    table = list(csv.DictReader((out / "results.csv").open()))
    assert [r["method"] for r in table] == ["clip", "sdmad", "d24fad", "sir"] * 2
    assert len(table) == len(rows)  # one row per (dataset, method)
    for line, row in zip(table, rows):  # the table holds the in-memory results (floats written with 3 decimals)
        assert (line["dataset"], line["method"], line["note"]) == (row.dataset, row.method, row.note)
        assert (int(line["num_test"]), int(line["num_abnormal"])) == (row.num_test, row.num_abnormal)
        for key in ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_best_dice", "seconds"):
            value = getattr(row, key)
            if value is None:
                assert line[key] == "", (row.dataset, row.method, key)
            else:
                assert float(line[key]) == pytest.approx(value, abs=5e-4 + 1e-9), (row.dataset, row.method, key)
    assert (out / "results.md").read_text().count("\n") == 2 + 8
    assert (out / "roc_BrainMRI.png").is_file() and (out / "roc_RSNA.png").is_file()
    # same seed, same table (supports, initialisation and training draws are seeded)
    again = compare_methods(datasets, tmp_path / "again", methods=("clip", "d24fad", "sir"), shots=2, seed=0,
                            pretrained=None, d24fad_steps=3, sir_steps=3, sir_loops=2, progress=False)  # fmt: skip
    assert [r.image_auroc for r in again] == [r.image_auroc for r in rows if r.method != "sdmad"]


def test_one_dataset_leaves_d24fad_out_with_a_reason(datasets, tmp_path):
    (clip, d24fad) = compare_methods(datasets[:1], tmp_path, methods=("clip", "d24fad"), pretrained=None,
                                     progress=False)  # fmt: skip
    assert clip.image_auroc is not None
    assert d24fad.image_auroc is None and "at least two datasets" in d24fad.note
    with pytest.raises(ValueError, match="subset of"):
        compare_methods(datasets, tmp_path, methods=("sdmad_v2",))


def test_bundle_config_runs_the_comparison(datasets, tmp_path):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(ROOT / "configs" / "compare.json"), workflow_type="infer", run_id="comparing",
        bundle_root=str(tmp_path), dataset_dirs=[str(d) for d in datasets], pretrained=None, shots=2,
        methods=["clip", "d24fad", "sir"], d24fad_steps=2, sir_steps=2, sir_loops=1,
    )  # fmt: skip
    workflow.initialize()
    workflow.run()
    table = list(csv.DictReader((tmp_path / "compare" / "results.csv").open()))
    assert len(table) == 6
