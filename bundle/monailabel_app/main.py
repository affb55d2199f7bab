"""MONAI Label sample app serving the SD-MAD bundle (classification infer task and bundle train task).

Start it with ``monailabel start_server --app bundle/monailabel_app --studies <folder> --conf models sdmad`` (see the
README beside this file). ``--conf`` keys:

- ``models``: the name the model is served under (default ``sdmad``): ``POST /infer/<name>``, ``POST /train/<name>``;
- ``bundle``: the bundle folder holding ``configs/`` and ``models/model.pt`` (default: the repository this app is in);
- ``preload``: ``true`` to load the model at start-up; ``skip_trainers``: ``true`` to serve inference only.
"""

import logging
import os

from lib.infers import SDMADInferTask
from lib.trainers import SDMADTrainTask
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

import sdmad_monai

logger = logging.getLogger(__name__)

DEFAULT_BUNDLE = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
)


class SDMADApp(MONAILabelApp):
    """One SD-MAD bundle as a MONAI Label model: per-category scores and findings per volume, and training."""

    def __init__(self, app_dir, studies, conf):
        self.model_name = conf.get("models", "sdmad").strip()
        self.bundle = os.path.abspath(conf.get("bundle", DEFAULT_BUNDLE))
        for required in (
            "configs/inference.json",
            "configs/train.json",
            "configs/metadata.json",
        ):
            if not os.path.isfile(os.path.join(self.bundle, required)):
                raise FileNotFoundError(
                    f"Bundle folder {self.bundle} has no {required}; pass the bundle root with --conf bundle <folder>."
                )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SD-MAD brain MRI multi-anomaly detection",
            description="Sign-driven few-shot multi-anomaly detection (SD-MAD) bundle: one score per category per volume",
            version=sdmad_monai.__version__,
        )

    def init_infers(self):
        task = SDMADInferTask(self.bundle, self.conf)
        if not task.is_valid():
            logger.warning(
                "No infer task: %s/models/model.pt is missing (train first, or copy a checkpoint)",
                self.bundle,
            )
            return {}
        return {self.model_name: task}

    def init_trainers(self):
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        task = SDMADTrainTask(self.bundle, self.conf)
        return {self.model_name: task} if task.is_valid() else {}

    def init_strategies(self):
        return {"random": Random(), "first": First()}
