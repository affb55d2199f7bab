"""MONAI Label sample app serving the SD-MAD bundle (segmentation-type infer task and bundle train task).

Start it with ``monailabel start_server --app bundle/monailabel_app --studies <folder> --conf models sdmad`` (see the
README beside this file). ``--conf`` keys, as in MONAI Label's own sample apps:

- ``models``: which of the app's models to load, comma-separated, or ``all``; this app has one, ``sdmad``
  (``POST /infer/sdmad``, ``POST /train/sdmad``). Missing or unknown names stop the server with the list;
- ``bundle``: the bundle the app's model is made from (its ``configs/`` and, the first time, ``models/model.pt``);
  default: the repository this app is in;
- ``preload``: ``true`` to load the model at start-up; ``skip_trainers``: ``true`` to serve inference only.

The model lives in the app's model folder, ``<app>/model/sdmad/`` (``configs/`` refreshed from ``bundle`` at every
start, ``models/model.pt``, the training's work files), as MONAI Label apps keep their models: training through
MONAI Label writes there and never overwrites the command line's ``models/model.pt``.
"""

import logging
import os
import shutil

from lib.infers import SDMADInferTask
from lib.trainers import SDMADTrainTask
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

import sdmad_monai

logger = logging.getLogger(__name__)

DEFAULT_BUNDLE = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
#: The app's models (``--conf models``).
MODELS = ("sdmad",)
BUNDLE_FILES = ("configs/inference.json", "configs/train.json", "configs/metadata.json")


def selected_models(conf):
    """The models ``--conf models`` asks for (``all`` or comma-separated names of :data:`MODELS`).

    Raises:
        ValueError: none asked for, or names the app does not have.
    """
    names = [m.strip() for m in conf.get("models", "").split(",") if m.strip()]
    if not names:
        raise ValueError(f"Pass the models to serve with --conf models <names>|all; this app has: {', '.join(MODELS)}.")
    if "all" in names:
        return list(MODELS)
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise ValueError(f"Unknown model(s) {unknown} in --conf models; this app has: {', '.join(MODELS)} (or all).")
    return names


def prepare_model_folder(source, folder):
    """``folder`` (the app's model folder) with ``source``'s configs, and its checkpoint the first time.

    Raises:
        FileNotFoundError: ``source`` is not a bundle root.
    """
    for required in BUNDLE_FILES:
        if not os.path.isfile(os.path.join(source, required)):
            raise FileNotFoundError(
                f"Bundle folder {source} has no {required}; pass the bundle root with --conf bundle <folder>."
            )
    os.makedirs(os.path.join(folder, "models"), exist_ok=True)
    staged = os.path.join(folder, "configs.new")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(os.path.join(source, "configs"), staged)
    shutil.rmtree(os.path.join(folder, "configs"), ignore_errors=True)
    os.replace(staged, os.path.join(folder, "configs"))
    checkpoint, theirs = os.path.join(folder, "models", "model.pt"), os.path.join(source, "models", "model.pt")
    if not os.path.exists(checkpoint) and os.path.isfile(theirs):
        shutil.copyfile(theirs, checkpoint + ".tmp")
        os.replace(checkpoint + ".tmp", checkpoint)
        logger.info("Model %s: starting from %s", folder, theirs)
    return folder


class SDMADApp(MONAILabelApp):
    """One SD-MAD bundle as a MONAI Label model: per-category scores, findings and a label volume per volume, and
    training."""

    def __init__(self, app_dir, studies, conf):
        self.models = selected_models(conf)
        self.source_bundle = os.path.abspath(conf.get("bundle", DEFAULT_BUNDLE))
        self.model_dir = os.path.join(app_dir, "model")
        self.bundles = {
            name: prepare_model_folder(self.source_bundle, os.path.join(self.model_dir, name)) for name in self.models
        }
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SD-MAD brain MRI multi-anomaly detection",
            description="Sign-driven few-shot multi-anomaly detection (SD-MAD) bundle: per-category scores and a "
            "finding label volume per volume",
            version=sdmad_monai.__version__,
        )

    def init_infers(self):
        infers = {}
        for name, bundle in self.bundles.items():
            task = SDMADInferTask(bundle, self.conf)
            if task.is_valid():
                infers[name] = task
            else:
                logger.warning(
                    "No infer task %s: %s/models/model.pt is missing (train first, or copy a checkpoint)", name, bundle
                )
        return infers

    def init_trainers(self):
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        trainers = {}
        for name, bundle in self.bundles.items():
            task = SDMADTrainTask(bundle, self.conf)
            if task.is_valid():
                trainers[name] = task
        return trainers

    def init_strategies(self):
        return {"random": Random(), "first": First()}
