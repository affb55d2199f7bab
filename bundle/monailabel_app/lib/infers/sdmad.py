"""MONAI Label infer task for the SD-MAD bundle: per-category scores and findings, and a label volume the viewers
show."""

from __future__ import annotations

import logging
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask

from sdmad_monai.label import inference_settings, label_values, segment_volume

logger = logging.getLogger(__name__)

#: Anomaly-map value from which a voxel of a slice with a finding is labelled (request option ``threshold``).
DEFAULT_THRESHOLD = 0.5


class SDMADInferTask(BundleInferTask):
    """MONAI Label's ``BundleInferTask`` on ``configs/inference.json`` + ``models/model.pt``, as a segmentation
    model so that 3D Slicer's MONAI Label module and OHIF list it and show its answer over the scan.

    The bundle is loaded by MONAI Label as usual (``network_def`` builds the architecture, ``models/model.pt`` is
    loaded into it and reloaded when it changes, ``metadata.json``). The inference itself is
    :func:`sdmad_monai.label.segment_volume`, i.e. :func:`sdmad_monai.inference.infer_volume` with the slice policy
    of ``inference.json`` (``axis``, ``slices``, ``batch_size``) and the anomaly maps: no preprocessing is
    re-implemented here.

    The answer: the label image (NIfTI, uint8, on the scan's grid with the scan's affine): on the slices with a
    finding (by the findings' decision rule, Eq. 8 by default), the voxels whose anomaly map is at least
    ``threshold`` (a request option, default 0.5), labelled with the slice's top predicted category (labels ``1..6``
    in category order, 0 background); and the JSON with
    ``prediction`` (``idx``, ``label``, ``score``: the study score per category), ``findings`` (score, binary finding
    and positive slices per category), ``slices`` (per-slice scores), ``label_volume``, ``model`` and ``source``.
    """

    def __init__(self, path: str, conf: dict[str, str], **kwargs: Any) -> None:
        super().__init__(
            path,
            conf,
            type=InferType.SEGMENTATION,
            post_filter=None,
            add_post_restore=False,
            **kwargs,
        )
        if not self.valid:
            return
        # the configured categories are what the scores mean (metadata.json lower-cases them)
        self.labels = label_values(self.network.category_labels)
        self.dimension = 3
        self.settings = inference_settings(self.bundle_config)
        self._config.update({"axis": self.settings["axis"], "threshold": DEFAULT_THRESHOLD})

    def pre_transforms(self, data: dict[str, Any] | None = None) -> list:
        """None: :func:`~sdmad_monai.label.segment_volume` reads and prepares the volume itself with the bundle's
        own preparation (``inference.json``'s ``PrepareVolumed`` runs the same
        :func:`~sdmad_monai.inference.prepare_volume`), at the axis the request asks for."""
        return []

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict:
        network = self._get_network(device, data)
        settings = {**self.settings, "axis": data.get("axis", self.settings["axis"])}
        answer = segment_volume(
            network, data[self.input_key], device=device,
            threshold=float(data.get("threshold", DEFAULT_THRESHOLD)), **settings,
        )  # fmt: skip
        data[self.output_label_key] = answer.label
        data["sdmad"] = answer.details
        return data

    def writer(self, data: dict[str, Any], extension: Any = None, dtype: Any = None) -> tuple[Any, dict]:
        label, result = super().writer(data, extension or ".nii.gz", dtype or "uint8")
        result.update(data["sdmad"])
        return label, result
