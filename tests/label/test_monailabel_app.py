"""The bundle in MONAI Label 0.8.5, in-process: the sample app (loaded as ``monailabel start_server`` loads it), its
infer task answering infer_volume's per-category scores with a label volume on the scan's grid, and its train task
running configs/train.json.

Run in the MONAI Label environment (``.ci/test_monailabel.sh``); skipped where monailabel is not installed, unless
``SDMAD_REQUIRE_LABEL=1``, where a missing monailabel is an error.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

if os.environ.get("SDMAD_REQUIRE_LABEL") == "1":
    import monailabel  # noqa: F401  (must be importable: no skip)
else:
    pytest.importorskip("monailabel")

from monai.bundle import ConfigParser
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.utils.others.class_utils import get_class_of_subclass_from_file

from sdmad_monai.data import build_fastmri_datalist, generate_demo_dataset
from sdmad_monai.data.demo import DEMO_SUFFIX
from sdmad_monai.inference import infer_volume
from sdmad_monai.label import (
    LabelFileError,
    slice_labels_from_items,
    write_slice_labels,
)
from sdmad_monai.networks import SignDrivenDetector

pytestmark = pytest.mark.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "bundle" / "monailabel_app"
TRAIN = json.loads((ROOT / "configs" / "train.json").read_text())
CATEGORIES = TRAIN["categories"]
SLICES = TRAIN["slices"]


def make_bundle(folder: Path) -> Path:
    """A copy of the repository's bundle with a demo checkpoint built by its own ``network_def`` (no training)."""
    shutil.copytree(ROOT / "configs", folder / "configs")
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "train.json"))
    parser["bundle_root"] = str(folder)
    parser.get_parsed_content("network_def").save(folder / "models" / "model.pt")
    return folder


@pytest.fixture(scope="module")
def monailabel_settings():
    saved = settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD, settings.MONAI_LABEL_SESSIONS
    settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD, settings.MONAI_LABEL_SESSIONS = (
        False,
        False,
    )
    yield
    settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD, settings.MONAI_LABEL_SESSIONS = saved


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Eight demo volumes and their slice labels (from the demo's fastMRI+-style annotations)."""
    root = generate_demo_dataset(tmp_path_factory.mktemp("demo"), num_volumes=8, seed=0)
    items = build_fastmri_datalist(
        root["annotations_csv"], root["file_list_csv"], root["images_dir"], categories=CATEGORIES, slices=SLICES,
        suffix=DEMO_SUFFIX,
    ).items  # fmt: skip
    return slice_labels_from_items(items, CATEGORIES)


def load_app(bundle: Path, studies: Path, app_dir: Path | None = None, models: str = "sdmad"):
    """The app class found in main.py the way MONAI Label's server finds it, then instantiated on a copy of the app
    folder (the app keeps its model in ``<app>/model/``)."""
    app_dir = app_dir or studies.parent / "app"
    if not app_dir.exists():
        shutil.copytree(APP, app_dir, ignore=shutil.ignore_patterns("logs", "model", "__pycache__"))
    app_class = get_class_of_subclass_from_file("main", str(app_dir / "main.py"), "MONAILabelApp")
    return app_class(
        app_dir=str(app_dir),
        studies=str(studies),
        conf={"models": models, "bundle": str(bundle)},
    )


def app_model(instance) -> Path:
    return Path(instance.app_dir) / "model" / "sdmad"


def make_studies(folder: Path, demo, labelled: bool) -> Path:
    folder.mkdir()
    for image in demo:
        shutil.copy(image, folder / Path(image).name)
    if labelled:
        datastore = LocalDatastore(str(folder), extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT)
        for image, slices in demo.items():
            label = write_slice_labels(
                folder.parent / "incoming" / (Path(image).name[: -len(DEMO_SUFFIX)] + ".json"),
                slices,
            )
            datastore.save_label(Path(image).name[: -len(DEMO_SUFFIX)], str(label), "final", {})
    return folder


@pytest.fixture(scope="module")
def app(tmp_path_factory, demo, monailabel_settings):
    root = tmp_path_factory.mktemp("label")
    bundle = make_bundle(root / "bundle")
    instance = load_app(bundle, make_studies(root / "studies", demo, labelled=True))
    return instance, app_model(instance)


def assert_scores_are_infer_volumes(params, checkpoint: Path, image: Path):
    reference = infer_volume(SignDrivenDetector.load(checkpoint), image, axis="axial", indices=SLICES)
    assert [p["label"] for p in params["prediction"]] == CATEGORIES
    assert [p["idx"] for p in params["prediction"]] == list(range(len(CATEGORIES)))
    assert [p["score"] for p in params["prediction"]] == pytest.approx(
        [f["score"] for f in reference.findings], abs=1e-6
    )

    def without_score(findings):
        return [{k: v for k, v in f.items() if k != "score"} for f in findings]

    assert without_score(params["findings"]) == without_score(reference.findings)
    assert [s["slice"] for s in params["slices"]] == SLICES
    return reference


def assert_label_is_on_the_scans_grid(label_file, params, image: Path):
    """The label image loads as a label volume with the scan's shape and affine, its labels the categories'."""
    import nibabel as nib
    import numpy as np

    label, scan = nib.load(str(label_file)), nib.load(str(image))
    assert label.shape == scan.shape
    assert np.allclose(label.affine, scan.affine, atol=1e-4)
    values = set(np.unique(np.asarray(label.dataobj)).tolist())
    assert values <= {0} | set(params["label_volume"]["labels"].values())
    assert params["label_volume"]["labels"] == {name: k + 1 for k, name in enumerate(CATEGORIES)}
    return np.asarray(label.dataobj)


def test_app_serves_a_segmentation_model_the_viewers_list(app):
    instance, _ = app
    info = instance.info()
    model = info["models"]["sdmad"]
    assert model["type"] == "segmentation"  # 3D Slicer's and OHIF's MONAI Label panels list segmentation models
    assert model["labels"] == {name: k + 1 for k, name in enumerate(CATEGORIES)}
    assert model["config"]["threshold"] == 0.5
    assert "sdmad" in info["trainers"]


def test_infer_on_a_datastore_image_returns_infer_volumes_scores(app, demo):
    instance, bundle = app
    image = Path(min(demo))
    image_id = image.name[: -len(DEMO_SUFFIX)]
    result = instance.infer({"model": "sdmad", "image": image_id, "device": "cpu"})
    params = result["params"]
    assert params["source"].endswith(image.name)
    reference = assert_scores_are_infer_volumes(params, bundle / "models" / "model.pt", image)
    label = assert_label_is_on_the_scans_grid(result["label"], params, image)
    assert bool(label.any()) == bool(reference.predictions.any())
    # threshold 1 keeps only saturated voxels: never more than at the default
    strict = instance.infer({"model": "sdmad", "image": image_id, "device": "cpu", "threshold": 1.0})
    assert (assert_label_is_on_the_scans_grid(strict["label"], strict["params"], image) > 0).sum() <= (label > 0).sum()


def test_infer_task_class_on_a_file_outside_the_datastore(app, demo):
    from lib.infers import (
        SDMADInferTask,  # the app's lib, imported when main.py was loaded
    )

    _, bundle = app
    image = Path(sorted(demo)[1])
    label, params = SDMADInferTask(str(bundle), {})({"image": str(image), "device": "cpu"})
    assert_scores_are_infer_volumes(params, bundle / "models" / "model.pt", image)
    assert_label_is_on_the_scans_grid(label, params, image)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SDMADInferTask(str(bundle), {})({"image": str(image) + ".missing.nii.gz", "device": "cpu"})


def test_train_on_the_datastore_then_infer_uses_the_new_checkpoint(tmp_path, demo, monailabel_settings):
    bundle = make_bundle(tmp_path / "bundle")
    cli_checkpoint = (bundle / "models" / "model.pt").read_bytes()
    instance = load_app(bundle, make_studies(tmp_path / "studies", demo, labelled=True))
    checkpoint = app_model(instance) / "models" / "model.pt"
    before = checkpoint.read_bytes()
    assert before == cli_checkpoint  # the app's model starts from the bundle's checkpoint
    summary = instance.train(
        {
            "model": "sdmad",
            "device": "cpu",
            "max_epochs": 1,
            "val_interval": 1,
            "val_split": 0.25,
            "pretrained": False,
        }
    )
    assert summary["best_validation_metric"] == "val_mean_category_auroc"
    assert Path(summary["checkpoint"]) == checkpoint.resolve() and checkpoint.read_bytes() != before
    # the command line's checkpoint is not MONAI Label's: training through MONAI Label leaves it alone
    assert (bundle / "models" / "model.pt").read_bytes() == cli_checkpoint
    # no demo data was generated: the datastore was the training data
    assert not (app_model(instance) / ".sdmad_cache" / "demo").exists()
    # a restart keeps the trained model (configs are refreshed from the bundle, the checkpoint is the app's)
    restarted = load_app(bundle, tmp_path / "studies", app_dir=Path(instance.app_dir))
    assert (app_model(restarted) / "models" / "model.pt").read_bytes() == checkpoint.read_bytes()
    image = Path(sorted(demo)[2])
    result = instance.infer({"model": "sdmad", "image": image.name[: -len(DEMO_SUFFIX)], "device": "cpu"})
    assert_scores_are_infer_volumes(result["params"], checkpoint, image)


def test_train_on_the_bundles_demo_data(tmp_path, demo, monailabel_settings):
    bundle = make_bundle(tmp_path / "bundle")
    instance = load_app(bundle, make_studies(tmp_path / "studies", demo, labelled=False))
    summary = instance.train(
        {
            "model": "sdmad", "device": "cpu", "dataset": "demo", "demo_volumes": 24, "k_shot": 1,
            "validation_fraction": 0.3, "max_epochs": 1, "val_interval": 1, "pretrained": True,
        }
    )  # fmt: skip
    assert summary["best_validation_epoch"] == 1
    splits = json.loads((app_model(instance) / ".sdmad_cache" / "splits.json").read_text())
    assert splits["settings"]["demo_volumes"] == 24 and splits["settings"]["k_shot"] == 1
    SignDrivenDetector.load(app_model(instance) / "models" / "model.pt")


def test_train_refuses_bad_datastore_labels_before_training(tmp_path, demo, monailabel_settings):
    bundle = make_bundle(tmp_path / "bundle")
    checkpoint = (bundle / "models" / "model.pt").read_bytes()
    instance = load_app(bundle, make_studies(tmp_path / "empty", demo, labelled=False), app_dir=tmp_path / "app")
    with pytest.raises(LabelFileError, match="no labelled image"):
        instance.train({"model": "sdmad", "device": "cpu", "max_epochs": 1})
    studies = make_studies(tmp_path / "studies", demo, labelled=True)
    bad = next((studies / "labels" / "final").glob("*.json"))
    bad.write_text(json.dumps({"slices": {"0": ["Tumour"]}}))
    instance = load_app(bundle, studies, app_dir=tmp_path / "app")
    with pytest.raises(LabelFileError, match=r"unknown categories \['Tumour'\]"):
        instance.train({"model": "sdmad", "device": "cpu", "max_epochs": 1})
    with pytest.raises(ValueError, match="dataset must be one of"):
        instance.train({"model": "sdmad", "device": "cpu", "dataset": "pacs"})
    assert (app_model(instance) / "models" / "model.pt").read_bytes() == checkpoint


def test_conf_models_follows_monai_label(tmp_path, demo, monailabel_settings):
    bundle = make_bundle(tmp_path / "bundle")
    studies = make_studies(tmp_path / "studies", demo, labelled=False)
    assert list(load_app(bundle, studies, models="all").info()["models"]) == ["sdmad"]
    for models, message in [("", "Pass the models to serve"), ("spleen,sdmad", r"Unknown model\(s\) \['spleen'\]")]:
        with pytest.raises(ValueError, match=message):
            load_app(bundle, studies, models=models)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_monailabel_start_server_answers_over_rest(tmp_path, demo):
    """Once, for real: ``monailabel start_server`` on the app, ``GET /info/`` and ``POST /infer/sdmad`` as 3D Slicer's
    MONAI Label module calls them; the server (127.0.0.1 only) is stopped by its process group."""
    import signal
    import subprocess
    import sys
    import time

    import nibabel as nib
    import requests

    bundle = make_bundle(tmp_path / "bundle")
    studies = make_studies(tmp_path / "studies", demo, labelled=False)
    app_dir = tmp_path / "app"
    shutil.copytree(APP, app_dir, ignore=shutil.ignore_patterns("logs", "model", "__pycache__"))
    port = free_port()
    command = [
        sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app_dir), "--studies", str(studies),
        "--conf", "models", "sdmad", "--conf", "bundle", str(bundle), "--conf", "skip_trainers", "true",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, f"the server exited with {server.returncode}:\n{log_path.read_text()[-3000:]}"
            try:
                info = requests.get(f"{url}/info/", timeout=5)
                if info.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"no answer from the server:\n{log_path.read_text()[-3000:]}"
            time.sleep(1)
        assert info.json()["models"]["sdmad"]["type"] == "segmentation"
        image = Path(min(demo))
        image_id = image.name[: -len(DEMO_SUFFIX)]
        form = {"params": json.dumps({"device": "cpu"})}
        answer = requests.post(f"{url}/infer/sdmad?image={image_id}&output=json", data=form, timeout=120)
        assert answer.status_code == 200, answer.text
        params = answer.json()
        assert_scores_are_infer_volumes(params, app_dir / "model" / "sdmad" / "models" / "model.pt", image)
        label = requests.post(f"{url}/infer/sdmad?image={image_id}&output=image", data=form, timeout=120)
        assert label.status_code == 200, label.text
        label_file = tmp_path / "label.nii.gz"
        label_file.write_bytes(label.content)
        assert nib.load(str(label_file)).shape == nib.load(str(image)).shape
        assert_label_is_on_the_scans_grid(label_file, params, image)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
