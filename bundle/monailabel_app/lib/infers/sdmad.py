"""MONAI Label infer task for the SD-MAD bundle: a multi-label classifier over a whole volume."""

from __future__ import annotations

import logging
from typing import Any

from monai.data import MetaTensor
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask

from sdmad_monai.label import classify_volume, inference_settings

logger = logging.getLogger(__name__)


class SDMADInferTask(BundleInferTask):
    """MONAI Label's ``BundleInferTask`` on ``configs/inference.json`` + ``models/model.pt``, as a classifier.

    The bundle is loaded by MONAI Label as usual (``network_def``, ``metadata.json``, the ``model_filename``
    choice, reloading when the checkpoint changes). The inference itself is
    :func:`sdmad_monai.label.classify_volume`, i.e. :func:`sdmad_monai.inference.infer_volume` with the slice policy
    of ``inference.json`` (``axis``, ``slices``, ``batch_size``): no preprocessing is re-implemented here.

    The answer is MONAI Label's classification result, ``{"prediction": [{"idx", "label", "score"}, ...]}`` with one
    study score per category, plus ``findings`` (score, binary finding and positive slices per category),
    ``slices`` (per-slice scores), ``model`` and ``source``.
    """

    def __init__(self, path: str, conf: dict[str, str], **kwargs: Any) -> None:
        super().__init__(
            path,
            conf,
            type=InferType.CLASSIFICATION,
            post_filter=None,
            add_post_restore=False,
            **kwargs,
        )
        if not self.valid:
            return
        # the checkpoint's categories are what the scores mean (metadata.json lower-cases them)
        self.labels = {label: k for k, label in enumerate(self.network.category_labels)}
        self.dimension = 3  # one answer per volume (metadata.json describes the network's 2D slice input)
        self.settings = inference_settings(self.bundle_config)
        self._config.update({"axis": self.settings["axis"]})

    def pre_transforms(self, data: dict[str, Any] | None = None) -> list:
        """None: :func:`~sdmad_monai.label.classify_volume` reads and prepares the volume itself with the bundle's
        own preparation (``inference.json``'s ``PrepareVolumed`` runs the same
        :func:`~sdmad_monai.inference.prepare_volume`), at the axis the request asks for."""
        return []

    def run_inferer(
        self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda"
    ) -> dict:
        network = self._get_network(device, data)
        settings = {**self.settings, "axis": data.get("axis", self.settings["axis"])}
        scores, details = classify_volume(
            network, data[self.input_key], device=device, **settings
        )
        data[self.output_label_key] = MetaTensor(scores)
        data["sdmad"] = details
        return data

    def writer(
        self, data: dict[str, Any], extension: Any = None, dtype: Any = None
    ) -> tuple[Any, dict]:
        label, result = super().writer(data, extension, dtype)
        result.update(data["sdmad"])
        return label, result
