"""MONAI Label glue that does not need MONAI Label: classification results, slice-label files, datastore datalists.

The MONAI Label tasks in ``bundle/monailabel_app/lib`` are thin subclasses of MONAI Label's ``BundleInferTask`` and
``BundleTrainTask``; what they compute lives here so that it is tested without ``monailabel`` installed.

Inference (:func:`segment_volume`) goes through :func:`sdmad_monai.inference.infer_volume`, the one volume-level
path: the per-category scores MONAI Label reports are the study scores of :func:`sdmad_monai.inference.study_findings`
(per category, the highest slice score, Eq. 7), in the detector's category order; the label image it returns, which
3D Slicer and OHIF display over the scan, is the 3D anomaly map thresholded on the slices with a finding, labelled
with the slice's top predicted category (:func:`finding_label_volume`).

A MONAI Label label for this bundle is a JSON file (saved in the datastore with ``PUT /datastore/label``) that lists,
for each labelled slice of the volume, the categories present on it; a slice listed with no category is a normal
slice::

    {"axis": "axial", "slices": {"0": [], "5": ["Craniotomy"], "10": ["Craniotomy", "Enlarged ventricles"]}}

Slice indices are the canonical indices of :mod:`sdmad_monai.transforms.slices` along ``axis``, the same as the bundle
datalists' ``slice`` entries. :func:`datastore_datalist` turns the datastore's labelled images into the bundle's slice
items (``image``, ``file``, ``slice``, multi-hot ``label``) and :func:`split_by_volume` splits them for training and
validation so that no volume is in both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser

from .data.kshot import hold_out_volumes
from .inference import VolumeResult, infer_volume
from .networks.detector import SignDrivenDetector
from .utils import atomic_write_json

__all__ = [
    "LabelAnswer",
    "LabelFileError",
    "datastore_datalist",
    "finding_label_volume",
    "inference_settings",
    "label_values",
    "positive_slice_categories",
    "read_slice_labels",
    "slice_labels_from_items",
    "segment_volume",
    "split_by_volume",
    "study_scores",
    "write_slice_labels",
]


class LabelFileError(ValueError):
    """A MONAI Label label file (or the datastore list holding it) is not what this bundle expects."""


def inference_settings(bundle_config: ConfigParser) -> dict[str, Any]:
    """The slice policy and batching of ``configs/inference.json``, as keyword arguments of ``infer_volume``.

    Args:
        bundle_config: the parsed inference config (``axis``, ``slices``, ``batch_size``).

    Returns:
        ``{"axis": str, "indices": list[int] | None, "batch_size": int}``; ``indices`` ``None`` scores every slice.
    """
    slices = bundle_config.get_parsed_content("slices", default=None)
    return {
        "axis": str(bundle_config.get_parsed_content("axis", default="axial")),
        "indices": None if slices is None else [int(s) for s in slices],
        "batch_size": int(bundle_config.get_parsed_content("batch_size", default=16)),
    }


def study_scores(result: VolumeResult) -> torch.Tensor:
    """The study-level score of each category: ``[K]``, in ``result.category_labels`` order."""
    by_label = {finding.label: finding.score for finding in result.findings}
    return torch.tensor([by_label[label] for label in result.category_labels], dtype=torch.float32)


def finding_label_volume(result: VolumeResult, threshold: float = 0.5) -> np.ndarray:
    """The 3D anomaly map as a label volume on the scan's grid, one label per category where the slice predictions
    allow: on each processed slice positive for at least one category (:func:`positive_slice_categories`: by the
    findings' decision rule, Eq. 8 by default), the voxels whose anomaly map is at least
    ``threshold`` get ``1 + k``, ``k`` the slice's highest-scoring predicted category (the other predicted categories
    of that slice are in the findings, not in the label); 0 elsewhere (slices not processed or without a finding,
    map below the threshold).

    Args:
        result: :func:`~sdmad_monai.inference.infer_volume` with ``anomaly_maps=True``.
        threshold: anomaly-map value (the maps are in [0, 1]) from which a voxel is labelled.

    Returns:
        ``[X, Y, Z]`` uint8, on the scan's voxel grid (its affine is ``result.volume_affine``).

    Raises:
        ValueError: the result has no anomaly maps, or ``threshold`` is outside [0, 1].
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"The anomaly-map threshold must be in [0, 1] (the maps' range), got {threshold}.")
    maps = result.anomaly_volume()
    classes = torch.zeros_like(torch.as_tensor(result.anomaly_maps), dtype=torch.float32)
    for row, positive in enumerate(positive_slice_categories(result)):
        if positive.any():
            scores = result.scores[row].masked_fill(~positive, float("-inf"))
            classes[row] = float(int(scores.argmax()) + 1)
    # the same placement as the map (a constant plane stays constant through the resize back to the slice size)
    class_volume = result.slices_to_volume(classes)
    labelled = (maps >= float(threshold)) & (class_volume > 0.5)
    return np.where(labelled, np.rint(class_volume), 0).astype(np.uint8)


def positive_slice_categories(result: VolumeResult) -> torch.Tensor:
    """``[N, K]`` bool: the categories each processed slice is positive for, by the findings' decision rule (the
    ``positive_slices`` of :func:`~sdmad_monai.inference.study_findings`: Eq. 8 by default, the calibrated threshold
    under an operating point), so the label volume shows what the findings report."""
    rows = {int(index): row for row, index in enumerate(result.slice_indices)}
    positive = torch.zeros(len(result.slice_indices), len(result.category_labels), dtype=torch.bool)
    for k, finding in enumerate(result.findings):
        for index in finding.positive_slices:
            positive[rows[int(index)], k] = True
    return positive


@dataclass
class LabelAnswer:
    """What the MONAI Label infer task answers for one volume.

    Attributes:
        label: ``[X, Y, Z]`` uint8 :func:`finding_label_volume`, a ``MetaTensor`` with the scan's affine.
        details: JSON-ready: :meth:`~sdmad_monai.inference.VolumeResult.to_dict` (``source``, ``axis``, ``model``,
            ``findings``, ``slices``) plus ``prediction`` (``idx``, ``label``, ``score``: the study score per
            category, :func:`study_scores`) and ``label_volume`` (``labels`` value per category, ``threshold``,
            ``labelled_slices``).
    """

    label: Any
    details: dict[str, Any]


def segment_volume(
    detector: SignDrivenDetector,
    image: str | Path | Any,
    axis: str = "axial",
    indices: Sequence[int] | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    threshold: float = 0.5,
) -> LabelAnswer:
    """Per-category study scores, findings and the finding label volume of one volume, for a MONAI Label answer
    that 3D Slicer and OHIF display.

    Args:
        detector: the trained detector (with map layers).
        image: a NIfTI file, a DICOM series folder, a fastMRI ``.h5`` file, or a loaded ``MetaTensor`` volume.
        axis: slicing axis.
        indices: slice indices (``None``: every slice).
        batch_size: slices per forward pass.
        device: where to run.
        threshold: anomaly-map value from which a voxel is labelled (:func:`finding_label_volume`).

    Raises:
        TypeError: ``image`` is neither a path nor a ``MetaTensor``.
        FileNotFoundError: the path does not exist.
    """
    from monai.data import MetaTensor

    if not isinstance(image, (str, Path, MetaTensor)):
        raise TypeError(
            f"SD-MAD inference expects the image as a path (NIfTI file, DICOM series folder, fastMRI .h5) or a "
            f"MetaTensor volume, got {type(image).__name__}."
        )
    if not isinstance(image, MetaTensor) and not Path(image).exists():
        raise FileNotFoundError(f"Image {image} does not exist (expected a NIfTI file, DICOM folder or .h5 file).")
    result = infer_volume(
        detector,
        image,
        axis=axis,
        indices=indices,
        batch_size=batch_size,
        device=device,
        anomaly_maps=True,
        display_images=False,  # the label volume is built from the maps; nothing is drawn
    )
    label = finding_label_volume(result, threshold)
    scores = study_scores(result)
    details = result.to_dict()
    details["prediction"] = [
        {"idx": k, "label": name, "score": float(scores[k])} for k, name in enumerate(result.category_labels)
    ]
    details["label_volume"] = {
        "labels": label_values(result.category_labels),
        "threshold": float(threshold),
        "labelled_slices": [
            int(index)
            for index, positive in zip(result.slice_indices, positive_slice_categories(result))
            if bool(positive.any())
        ],
    }
    return LabelAnswer(
        label=MetaTensor(torch.from_numpy(label), affine=torch.as_tensor(result.volume_affine)), details=details
    )


def label_values(categories: Sequence[str]) -> dict[str, int]:
    """The label value of each category in :func:`finding_label_volume` (0 is background)."""
    return {str(name): k + 1 for k, name in enumerate(categories)}


def write_slice_labels(path: str | Path, slices: Mapping[int, Sequence[str]], axis: str = "axial") -> Path:
    """Write a label file (format in the module docstring) atomically.

    Args:
        path: destination ``.json`` file.
        slices: positive categories per canonical slice index (an empty list: a normal slice).
        axis: the axis the indices count along.

    Returns:
        ``path``.
    """
    content = {
        "axis": axis,
        "slices": {str(int(k)): list(v) for k, v in sorted(slices.items())},
    }
    return atomic_write_json(path, content)


def read_slice_labels(path: str | Path, categories: Sequence[str], axis: str = "axial") -> dict[int, list[float]]:
    """Read a label file into multi-hot vectors.

    Args:
        path: the label file.
        categories: ``K`` categories, in output-channel order.
        axis: the axis the bundle slices along; the file's must be the same.

    Returns:
        ``{slice index: [K] multi-hot}``, sorted by slice.

    Raises:
        LabelFileError: unreadable JSON, another axis, no slice, a bad slice index or an unknown category.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LabelFileError(f"Label file {path} is not readable JSON ({error}); expected {_EXAMPLE}.") from error
    if not isinstance(content, dict) or not isinstance(content.get("slices"), dict) or not content["slices"]:
        raise LabelFileError(f"Label file {path} has no 'slices' mapping with at least one slice; expected {_EXAMPLE}.")
    if content.get("axis", "axial") != axis:
        raise LabelFileError(
            f"Label file {path} counts slices along {content.get('axis')!r}; the bundle uses {axis!r}."
        )
    index = {name: k for k, name in enumerate(categories)}
    labels: dict[int, list[float]] = {}
    for key, names in content["slices"].items():
        if not str(key).isdigit():
            raise LabelFileError(f"Label file {path}: slice {key!r} is not a non-negative integer index.")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise LabelFileError(f"Label file {path}: slice {key} must list category names, got {names!r}.")
        unknown = [n for n in names if n not in index]
        if unknown:
            raise LabelFileError(
                f"Label file {path}: slice {key} names unknown categories {unknown}; known: {list(categories)}."
            )
        vector = [0.0] * len(categories)
        for name in names:
            vector[index[name]] = 1.0
        labels[int(key)] = vector
    return dict(sorted(labels.items()))


_EXAMPLE = '{"axis": "axial", "slices": {"0": [], "5": ["Craniotomy"]}}'


def slice_labels_from_items(
    items: Sequence[Mapping[str, Any]], categories: Sequence[str]
) -> dict[str, dict[int, list[str]]]:
    """Group bundle datalist items (``image``, ``slice``, multi-hot ``label``) into label-file content per image.

    Args:
        items: slice items, e.g. from :func:`sdmad_monai.data.build_fastmri_datalist` or ``prepare_splits``.
        categories: ``K`` categories of the multi-hot labels.

    Returns:
        ``{image path: {slice index: [positive category names]}}``, for :func:`write_slice_labels`.

    Raises:
        LabelFileError: a label vector whose length is not ``K``.
    """
    grouped: dict[str, dict[int, list[str]]] = {}
    for item in items:
        label = [float(v) for v in item["label"]]
        if len(label) != len(categories):
            raise LabelFileError(
                f"Item {item['image']} slice {item['slice']}: {len(label)} labels for {len(categories)} categories."
            )
        grouped.setdefault(str(item["image"]), {})[int(item["slice"])] = [
            name for name, value in zip(categories, label) if value > 0
        ]
    return grouped


def datastore_datalist(
    records: Sequence[Mapping[str, Any]], categories: Sequence[str], axis: str = "axial"
) -> list[dict[str, Any]]:
    """The bundle's slice items for MONAI Label datastore records ``{"image": path, "label": label file}``.

    Args:
        records: ``datastore.datalist()`` (images that have a final label).
        categories: ``K`` categories, in output-channel order.
        axis: the bundle's slicing axis.

    Returns:
        One item per labelled slice: ``image``, ``file`` (image name without extension), ``slice``, ``label``.

    Raises:
        LabelFileError: no labelled image, or a bad label file (:func:`read_slice_labels`).
    """
    if not records:
        raise LabelFileError(
            "The MONAI Label datastore has no labelled image: save a label file for at least two volumes (PUT "
            f"/datastore/label, content like {_EXAMPLE}) or train on the bundle's demo data (dataset='demo')."
        )
    items = []
    for record in records:
        image = str(record["image"])
        name = Path(image).name
        for suffix in (".nii.gz", ".nii", ".h5", ".hdf5"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        for index, label in read_slice_labels(record["label"], categories, axis).items():
            items.append({"image": image, "file": name, "slice": index, "label": label})
    return items


def split_by_volume(
    items: Sequence[Mapping[str, Any]], validation_fraction: float, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split slice items into training and validation by volume (no volume in both).

    Args:
        items: slice items with a ``file`` entry naming their volume.
        validation_fraction: share of the volumes for validation, in ``(0, 1)``; at least one volume goes to each
            side.
        seed: seed of the shuffle of the volumes.

    Returns:
        ``(training, validation)`` items.

    Raises:
        LabelFileError: fewer than two volumes, or a fraction outside ``(0, 1)``.
    """
    if not 0 < validation_fraction < 1:
        raise LabelFileError(
            f"val_split must be in (0, 1) to split the datastore's volumes, got {validation_fraction}."
        )
    volumes = {item["file"] for item in items}
    if len(volumes) < 2:
        raise LabelFileError(
            f"Training needs labelled slices of at least two volumes (one for validation); the datastore has "
            f"{sorted(volumes)}."
        )
    validation, training = hold_out_volumes(items, validation_fraction, seed)
    return [dict(item) for item in training], [dict(item) for item in validation]
