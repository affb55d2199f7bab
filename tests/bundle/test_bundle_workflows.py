"""The MONAI bundle in configs/: train, evaluate and inference workflows on the tiny model and a small demo dataset,
MONAI's own checks (properties, verify_net_in_out, ckpt_export) and bad input stopping before training."""

import csv
import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_net_in_out

from sdmad_monai.inference import VolumesFailedError
from sdmad_monai.networks import SignDrivenDetector
from sdmad_monai.prompts import PromptBankError
from sdmad_monai.workflows import DatasetError

pytestmark = pytest.mark.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
SMALL = {"demo_volumes": 24, "k_shot": 1, "max_epochs": 2, "val_interval": 1, "validation_fraction": 0.3}


def causes(error):
    """The error and the ones it was raised from (the bundle wraps errors in ConfigExpression failures)."""
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def workflow(config_files, root, workflow_type=None, run_id="run", **override):
    files = [str(CONFIGS / name) for name in config_files]
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type=workflow_type,
        run_id=run_id,
        bundle_root=str(root),
        **{**SMALL, **override},
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    train = workflow(["train.json"], root, workflow_type="train")
    train.initialize()
    missing = train.check_properties()
    assert not missing, f"train.json lacks MONAI train properties: {missing}"
    train.run()
    train.finalize()
    return root


def test_training_writes_checkpoint_summary_and_logs(trained):
    checkpoint = trained / "models" / "model.pt"
    assert checkpoint.is_file() and checkpoint.stat().st_size < 2_000_000  # adapters + description only
    summary = json.loads((trained / "models" / "training_summary.json").read_text())
    assert summary["best_validation_metric"] == "val_mean_category_auroc"
    assert not (trained / "models" / "resume.pt").exists(), "a completed run must not leave a resume file"
    assert list((trained / "runs").glob("events.out.tfevents.*")), "TensorBoard logs expected"
    splits = json.loads((trained / ".sdmad_cache" / "splits.json").read_text())
    files = {name: {item["file"] for item in splits[name]} for name in ("training", "validation", "test")}
    assert not files["training"] & files["test"] and not files["validation"] & files["test"]
    detector = SignDrivenDetector.load(checkpoint)
    assert detector.category_labels == splits["categories"]
    # calibrated on the validation slices after training, stored in the checkpoint, summarised in the summary
    assert detector.calibration is not None and detector.calibration.num_slices == len(splits["validation"])
    assert summary["calibration"] == detector.calibration.summary()
    for category, name in zip(detector.calibration.categories, splits["categories"]):
        positives = sum(item["label"][splits["categories"].index(name)] > 0.5 for item in splits["validation"])
        assert (category.label, category.positives) == (name, positives)


def test_evaluate_writes_the_three_protocols(trained):
    evaluate = workflow(["train.json", "evaluate.json"], trained, workflow_type="infer", run_id="evaluating")
    evaluate.initialize()
    missing = evaluate.check_properties()
    assert missing == [], f"evaluate.json lacks MONAI infer properties: {missing}"
    evaluate.run()
    evaluate.finalize()
    out = trained / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["variants"]) == {"clip", "sdmad_no_ss", "sdmad"}
    for values in metrics["variants"].values():
        assert {"image_auroc", "hamming_score", "subset_accuracy", "category_auroc", "mean_category_auroc"} <= set(
            values
        )
        assert 0.0 <= values["hamming_score"] <= 1.0
    # the workflow loaded the trained adapters (DetectorCheckpointLoader): the trained variants differ from clip
    assert metrics["variants"]["sdmad_no_ss"] != metrics["variants"]["clip"]
    # computed by the evaluator's MONAI metric handlers (protocol_metric_handlers), not recomputed by the report,
    # and equal to the report's own functions on predictions.csv's rows
    assert metrics["metrics_computed_by"] == {v: "metric handlers" for v in ("clip", "sdmad_no_ss", "sdmad")}
    splits = json.loads((trained / ".sdmad_cache" / "splits.json").read_text())
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(splits["test"]) == metrics["num_slices"]
    assert {"file", "slice", "sdmad:score:Craniotomy", "clip:prediction:Craniotomy"} <= set(rows[0])
    from sdmad_monai.handlers import protocol_metrics

    names = metrics["categories"]
    labels = torch.tensor([[float(r[f"label:{n}"]) for n in names] for r in rows])
    for variant, values in metrics["variants"].items():
        recomputed = protocol_metrics(
            torch.tensor([[float(r[f"{variant}:score:{n}"]) for n in names] for r in rows]),
            torch.tensor([[float(r[f"{variant}:prediction:{n}"]) for n in names] for r in rows]),
            torch.tensor([float(r[f"{variant}:image_score"]) for r in rows]),
            labels,
            names,
        )
        for key in ("image_auroc", "hamming_score", "subset_accuracy", "mean_category_auroc"):
            assert values[key] == pytest.approx(recomputed[key], abs=1e-4, nan_ok=True), (variant, key)
    for name in ("roc.png", "similarity_heatmap.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    detector = SignDrivenDetector.load(trained / "models" / "model.pt")
    test_item = splits["test"][0]
    row = next(r for r in rows if r["file"] == test_item["file"] and int(r["slice"]) == int(test_item["slice"]))
    from sdmad_monai.inference import infer_volume

    direct = infer_volume(detector, test_item["image"], indices=[int(test_item["slice"])])
    assert float(row["sdmad:score:Craniotomy"]) == pytest.approx(float(direct.scores[0, 0]), abs=1e-5)


def test_evaluate_refuses_a_checkpoint_of_another_layout(trained):
    evaluate = workflow(
        ["train.json", "evaluate.json"],
        trained,
        run_id="evaluating",
        image_adapter_layers=[5, 6],
        eval_dir=str(trained / "eval_other"),
    )
    evaluate.initialize()
    with pytest.raises(Exception) as info:
        evaluate.run()
    chain = [str(e) for e in causes(info.value)]
    assert any("image_adapter_layers: checkpoint [2, 3, 5, 6] vs detector [5, 6]" in text for text in chain), chain
    assert not (trained / "eval_other" / "metrics.json").exists()


def inference(root, output_dir, workflow_type="infer", **override):
    return ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type=workflow_type,
        bundle_root=str(root),
        output_dir=str(output_dir),
        **override,
    )


def run(workflow):
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()


def test_inference_architecture_is_train_json_s():
    train, infer = (json.loads((CONFIGS / name).read_text()) for name in ("train.json", "inference.json"))
    assert set(infer["network_def"]) == set(train["network_def"]) - {"activation_checkpointing"}
    for key, value in infer["network_def"].items():
        if key != "_target_":
            name = value.lstrip("@")
            assert infer[name] == train[name], f"inference.json {name} {infer[name]!r} != train.json {train[name]!r}"


def test_inference_on_volumes(trained, tmp_path, assert_same_outputs):
    images = sorted((trained / ".sdmad_cache" / "demo" / "images").glob("*.nii.gz"))[:3]
    infer = inference(trained, tmp_path / "inference", input_files=[str(p) for p in images])
    infer.initialize()
    missing = infer.check_properties()
    assert missing == [], f"inference.json lacks MONAI infer properties: {missing}"
    infer.run()
    infer.finalize()
    findings = json.loads((tmp_path / "inference" / "findings.json").read_text())
    assert [v["source"] for v in findings["volumes"]] == [str(p) for p in images]
    for volume in findings["volumes"]:
        assert [s["slice"] for s in volume["slices"]] == [0, 5, 10]
        assert len(volume["findings"]) == 6
    assert (tmp_path / "inference" / "slices.csv").read_text().count("\n") == 1 + 3 * 3
    # the evaluator run writes exactly what infer_volumes writes, and so does reading ahead in a worker
    from sdmad_monai.inference import infer_volumes

    detector = SignDrivenDetector.load(trained / "models" / "model.pt")
    infer_volumes(
        detector,
        images,
        tmp_path / "direct",
        indices=[0, 5, 10],
        anomaly_maps=True,
        overlays_top=10,
        overlays_random=10,
        seed=0,
        overlay_scope="run",
    )
    run(inference(trained, tmp_path / "workers", input_files=[str(p) for p in images], num_workers=1))
    expected = [p.name for p in (tmp_path / "direct").rglob("*")]
    assert any(name.endswith(".png") for name in expected) and any(name.endswith(".nii.gz") for name in expected)
    assert_same_outputs(tmp_path / "inference", tmp_path / "direct")
    assert_same_outputs(tmp_path / "workers", tmp_path / "direct")


def test_inference_probabilities_reproduce_from_the_stored_calibration(trained, tmp_path):
    from sdmad_monai.calibration import calibration_margin
    from sdmad_monai.inference import prepare_volume

    image = sorted((trained / ".sdmad_cache" / "demo" / "images").glob("*.nii.gz"))[0]
    run(inference(trained, tmp_path / "op", input_files=[str(image)], anomaly_maps=False,
                  operating_point={"target_sensitivity": 0.9}))  # fmt: skip
    (volume,) = json.loads((tmp_path / "op" / "findings.json").read_text())["volumes"]
    detector = SignDrivenDetector.load(trained / "models" / "model.pt").eval()
    prepared = prepare_volume(image, detector.image_size, detector.image_mean, detector.image_std, indices=[0, 5, 10])
    with torch.no_grad():
        outputs = detector(prepared.images, output="all", maps=False)
    margins = calibration_margin(outputs["scores"], outputs["anchor_similarity"]).double()
    for k, (finding, category) in enumerate(zip(volume["findings"], detector.calibration.categories)):
        if not category.calibrated:
            assert finding["probability"] is None and finding["decision"]["rule"] == "eq8"
            continue
        expected = torch.sigmoid(category.slope * margins[:, k] + category.intercept)  # by hand from the stored a, b
        slices = [s["probabilities"][finding["label"]] for s in volume["slices"]]
        assert slices == pytest.approx(expected.tolist(), abs=1e-9)
        assert finding["probability"] == pytest.approx(max(slices), abs=1e-9)
        order = torch.argsort(margins[:, k])
        assert all(a <= b for a, b in zip(expected[order][:-1], expected[order][1:]))  # monotone in the score
        threshold = finding["decision"]["threshold"]
        assert finding["finding"] == int(max(slices) >= threshold)


def test_inference_lists_a_bad_volume_and_keeps_the_others(trained, tmp_path):
    import nibabel as nib
    import numpy as np

    good = sorted((trained / ".sdmad_cache" / "demo" / "images").glob("*.nii.gz"))[:2]
    blank = tmp_path / "blank.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 16), dtype=np.float32), np.eye(4)), blank)
    inputs = [str(good[0]), str(blank), str(good[1])]
    with pytest.raises(Exception) as info:
        run(inference(trained, tmp_path / "out", input_files=inputs, anomaly_maps=False))
    failure = next(e for e in causes(info.value) if isinstance(e, VolumesFailedError))
    assert str(failure).startswith("1 of 3 volume(s) could not be processed")
    findings = json.loads((tmp_path / "out" / "findings.json").read_text())
    assert [v["source"] for v in findings["volumes"]] == [str(good[0]), str(good[1])]
    assert [f["source"] for f in findings["failed"]] == [str(blank)]
    assert "cannot be assessed" in findings["failed"][0]["error"]
    assert not (tmp_path / "out" / "maps").exists()


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_verify_net_in_out_as_the_zoo_runs_it(tmp_path, config):
    # no override: metadata describes the default config's 3x64x64 input and 6 category scores
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / config),
        device="cpu",
        bundle_root=str(tmp_path),
    )


def test_ckpt_export_as_the_zoo_runs_it_gives_the_same_scores(trained, tmp_path):
    # the model zoo's verify_export_torchscript: inference.json, scripting (no use_trace), the checkpoint as written
    exported = tmp_path / "verify_model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(exported),
        ckpt_file=str(trained / "models" / "model.pt"),
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        bundle_root=str(trained),
    )
    scripted = torch.jit.load(str(exported))
    detector = SignDrivenDetector.load(trained / "models" / "model.pt").eval()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = detector(images)
        assert not torch.allclose(expected, SignDrivenDetector.from_preset("tiny", pretrained="demo")(images))
        assert torch.allclose(scripted(images), expected, atol=1e-5)
        assert torch.allclose(scripted(images[:1]), expected[:1], atol=1e-5)  # any batch size


@pytest.mark.parametrize(
    "override, error, message",
    [
        ({"dataset_dir": "/nonexistent/fastmri"}, DatasetError, "/nonexistent/fastmri"),
        ({"categories": ["Craniotomy", "Mass"]}, PromptBankError, "'Mass'"),
    ],
)
def test_bad_input_stops_before_training(tmp_path, override, error, message):
    train = workflow(["train.json"], tmp_path, **override)
    with pytest.raises(Exception) as info:
        train.initialize()
        train.run()
    chain = causes(info.value)
    assert any(isinstance(e, error) and message in str(e) for e in chain), chain
    assert not (tmp_path / "models" / "model.pt").exists()


def test_paper_override_requires_real_data(tmp_path):
    train = workflow(["train.json", "paper.json"], tmp_path)
    with pytest.raises(Exception) as info:
        train.initialize()
        train.run()
    assert "needs real data" in repr(info.value) or "needs real data" in str(info.value.__cause__)


def test_loss_is_the_papers_unless_the_ranking_term_is_asked_for(tmp_path):
    paper = workflow(["train.json"], tmp_path).parser.get_parsed_content("loss")
    assert paper.ranking_loss_weight == 0.0 and paper.pixel_loss_weight == 0.0
    ranking = workflow(["train.json"], tmp_path, ranking_loss_weight=5.0).parser.get_parsed_content("loss")
    assert ranking.ranking_loss_weight == 5.0 and ranking.ranking_margin == 0.2
