"""MONAI Label train task for the SD-MAD bundle: ``configs/train.json`` on the datastore's labels or the demo data."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleTrainTask

from sdmad_monai.label import datastore_datalist, split_by_volume

logger = logging.getLogger(__name__)

#: Where the training data come from: the MONAI Label datastore's labelled volumes, or the bundle's generated demo.
DATASETS = ("datastore", "demo")
#: ``configs/train.json`` settings a train request may set (shown in MONAI Label's train options).
BUNDLE_OPTIONS = (
    "val_interval",
    "learning_rate",
    "batch_size",
    "seed",
    "k_shot",
    "demo_volumes",
    "validation_fraction",
)


class SDMADTrainTask(BundleTrainTask):
    """MONAI Label's ``BundleTrainTask`` running ``configs/train.json`` (single process) as the bundle runs it.

    ``dataset="datastore"`` (the default) trains on every labelled slice of the datastore's volumes (label files as
    in :mod:`sdmad_monai.label`), split by volume with the request's ``val_split``; the bundle's ``splits`` is
    replaced by that split, so its ``initialize`` checks (prompt bank, categories) run on it. ``dataset="demo"``
    leaves the data to the bundle (its generated demo set, k-shot selection included). ``path`` is the app's model
    folder (``<app>/model/sdmad``, see ``main.py``): the best checkpoint is written to its ``models/model.pt``, which
    the infer task reloads; the answer is its ``models/training_summary.json``.
    """

    def __init__(self, path: str, conf: dict[str, str], **kwargs: Any) -> None:
        super().__init__(path, conf, **kwargs)
        self._request: dict[str, Any] = {}
        if not self.valid:
            return
        self.categories = [str(c) for c in self.bundle_config.get_parsed_content("categories")]
        self.axis = str(self.bundle_config.get_parsed_content("axis"))

    def config(self) -> dict[str, Any]:
        options = super().config()
        options["dataset"] = list(DATASETS)
        options["max_epochs"] = self.bundle_config.get_parsed_content("max_epochs")
        options.update({key: self.bundle_config.get_parsed_content(key) for key in BUNDLE_OPTIONS})
        return options

    def _dataset(self) -> str:
        dataset = self._request.get("dataset", DATASETS[0])
        dataset = dataset[0] if isinstance(dataset, list) else dataset
        if dataset not in DATASETS:
            raise ValueError(f"Train request: dataset must be one of {list(DATASETS)}, got {dataset!r}.")
        return dataset

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        self._request = {
            "max_epochs": self.bundle_config.get_parsed_content("max_epochs"),
            **request,
        }
        self._dataset()  # refuse a bad value before anything runs
        super().__call__(self._request, datastore)
        summary = os.path.join(self.bundle_path, "models", "training_summary.json")
        with open(summary, encoding="utf-8") as handle:
            return json.load(handle)

    def _load_checkpoint(self, model_pytorch: str, pretrained: bool, train_handlers: list) -> None:
        # MONAI Label 0.8.5 calls os.path.exists(None) when pretrained is false
        if pretrained:
            super()._load_checkpoint(model_pytorch, pretrained, train_handlers)

    def _fetch_datalist(self, request: dict[str, Any], datastore: Datastore) -> list[dict[str, Any]]:
        if self._dataset() == "demo":
            return []
        return datastore_datalist(datastore.datalist(), self.categories, self.axis)

    def _partition_datalist(self, datalist: list, request: dict[str, Any], shuffle: bool = False) -> tuple:
        if self._dataset() == "demo":
            return [], None
        seed = int(request.get("seed", self.bundle_config.get_parsed_content("seed")))
        return split_by_volume(datalist, float(request.get("val_split", 0.2)), seed=seed)

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        overrides.update({key: self._request[key] for key in BUNDLE_OPTIONS if key in self._request})
        training = overrides.pop(self.const.key_train_dataset_data())
        validation = overrides.pop(self.const.key_validate_dataset_data(), None)
        if self._dataset() == "datastore":
            # the bundle's own datalist: the train/validate datasets and the category check all read it
            overrides["splits"] = {
                "categories": self.categories,
                "training": training,
                "validation": validation,
                "test": [],
                "files": {},
            }
            logger.info(
                "Training on the datastore: %d training, %d validation slices",
                len(training),
                len(validation),
            )
        else:
            logger.info(
                "Training on the bundle's demo data (%s)",
                self.bundle_config.get_parsed_content("work_dir"),
            )
        return overrides
