"""The bundle in MONAI Label 0.8.5, in-process: the sample app (loaded as ``monailabel start_server`` loads it), its
infer task answering infer_volume's per-category scores, and its train task running configs/train.json.

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


def load_app(bundle: Path, studies: Path):
    """The app class found in main.py the way MONAI Label's server finds it, then instantiated."""
    app_class = get_class_of_subclass_from_file(
        "main", str(APP / "main.py"), "MONAILabelApp"
    )
    return app_class(
        app_dir=str(APP),
        studies=str(studies),
        conf={"models": "sdmad", "bundle": str(bundle)},
    )


def make_studies(folder: Path, demo, labelled: bool) -> Path:
    folder.mkdir()
    for image in demo:
        shutil.copy(image, folder / Path(image).name)
    if labelled:
        datastore = LocalDatastore(
            str(folder), extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT
        )
        for image, slices in demo.items():
            label = write_slice_labels(
                folder.parent
                / "incoming"
                / (Path(image).name[: -len(DEMO_SUFFIX)] + ".json"),
                slices,
            )
            datastore.save_label(
                Path(image).name[: -len(DEMO_SUFFIX)], str(label), "final", {}
            )
    return folder


@pytest.fixture(scope="module")
def app(tmp_path_factory, demo, monailabel_settings):
    root = tmp_path_factory.mktemp("label")
    bundle = make_bundle(root / "bundle")
    return load_app(bundle, make_studies(root / "studies", demo, labelled=True)), bundle


def assert_scores_are_infer_volumes(params, checkpoint: Path, image: Path):
    reference = infer_volume(
        SignDrivenDetector.load(checkpoint), image, axis="axial", indices=SLICES
    )
    assert [p["label"] for p in params["prediction"]] == CATEGORIES
    assert [p["idx"] for p in params["prediction"]] == list(range(len(CATEGORIES)))
    assert [p["score"] for p in params["prediction"]] == pytest.approx(
        [f["score"] for f in reference.findings], abs=1e-6
    )
    without_score = lambda findings: [
        {k: v for k, v in f.items() if k != "score"} for f in findings
    ]
    assert without_score(params["findings"]) == without_score(reference.findings)
    assert [s["slice"] for s in params["slices"]] == SLICES
    return reference


def test_app_serves_a_classifier_with_the_six_categories(app):
    instance, _ = app
    info = instance.info()
    model = info["models"]["sdmad"]
    assert model["type"] == "classification"
    assert model["labels"] == {name: k for k, name in enumerate(CATEGORIES)}
    assert "sdmad" in info["trainers"]


def test_infer_on_a_datastore_image_returns_infer_volumes_scores(app, demo):
    instance, bundle = app
    image = Path(min(demo))
    image_id = image.name[: -len(DEMO_SUFFIX)]
    result = instance.infer({"model": "sdmad", "image": image_id, "device": "cpu"})
    assert result["label"] is None  # a classification answer has no label image
    params = result["params"]
    assert params["label_names"] == {name: k for k, name in enumerate(CATEGORIES)}
    assert params["source"].endswith(image.name)
    assert_scores_are_infer_volumes(params, bundle / "models" / "model.pt", image)


def test_infer_task_class_on_a_file_outside_the_datastore(app, demo):
    from lib.infers import (
        SDMADInferTask,  # the app's lib, imported when main.py was loaded
    )

    _, bundle = app
    image = Path(sorted(demo)[1])
    label, params = SDMADInferTask(str(bundle), {})(
        {"image": str(image), "device": "cpu"}
    )
    assert label is None
    assert_scores_are_infer_volumes(params, bundle / "models" / "model.pt", image)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SDMADInferTask(str(bundle), {})(
            {"image": str(image) + ".missing.nii.gz", "device": "cpu"}
        )


def test_train_on_the_datastore_then_infer_uses_the_new_checkpoint(
    tmp_path, demo, monailabel_settings
):
    bundle = make_bundle(tmp_path / "bundle")
    instance = load_app(bundle, make_studies(tmp_path / "studies", demo, labelled=True))
    checkpoint = bundle / "models" / "model.pt"
    before = checkpoint.read_bytes()
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
    assert (
        Path(summary["checkpoint"]) == checkpoint.resolve()
        and checkpoint.read_bytes() != before
    )
    # no demo data was generated: the datastore was the training data
    assert not (bundle / ".sdmad_cache" / "demo").exists()
    image = Path(sorted(demo)[2])
    result = instance.infer(
        {"model": "sdmad", "image": image.name[: -len(DEMO_SUFFIX)], "device": "cpu"}
    )
    assert_scores_are_infer_volumes(result["params"], checkpoint, image)


def test_train_on_the_bundles_demo_data(tmp_path, demo, monailabel_settings):
    bundle = make_bundle(tmp_path / "bundle")
    instance = load_app(
        bundle, make_studies(tmp_path / "studies", demo, labelled=False)
    )
    summary = instance.train(
        {
            "model": "sdmad", "device": "cpu", "dataset": "demo", "demo_volumes": 24, "k_shot": 1,
            "validation_fraction": 0.3, "max_epochs": 1, "val_interval": 1, "pretrained": True,
        }
    )  # fmt: skip
    assert summary["best_validation_epoch"] == 1
    splits = json.loads((bundle / ".sdmad_cache" / "splits.json").read_text())
    assert (
        splits["settings"]["demo_volumes"] == 24 and splits["settings"]["k_shot"] == 1
    )
    SignDrivenDetector.load(bundle / "models" / "model.pt")


def test_train_refuses_bad_datastore_labels_before_training(
    tmp_path, demo, monailabel_settings
):
    bundle = make_bundle(tmp_path / "bundle")
    checkpoint = (bundle / "models" / "model.pt").read_bytes()
    instance = load_app(bundle, make_studies(tmp_path / "empty", demo, labelled=False))
    with pytest.raises(LabelFileError, match="no labelled image"):
        instance.train({"model": "sdmad", "device": "cpu", "max_epochs": 1})
    studies = make_studies(tmp_path / "studies", demo, labelled=True)
    bad = next((studies / "labels" / "final").glob("*.json"))
    bad.write_text(json.dumps({"slices": {"0": ["Tumour"]}}))
    instance = load_app(bundle, studies)
    with pytest.raises(LabelFileError, match=r"unknown categories \['Tumour'\]"):
        instance.train({"model": "sdmad", "device": "cpu", "max_epochs": 1})
    with pytest.raises(ValueError, match="dataset must be one of"):
        instance.train({"model": "sdmad", "device": "cpu", "dataset": "pacs"})
    assert (bundle / "models" / "model.pt").read_bytes() == checkpoint
