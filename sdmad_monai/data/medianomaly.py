"""MedIAnomaly benchmark folders (caiyu6666/MedIAnomaly) -> MONAI datalists, in the items of
:func:`~sdmad_monai.data.build_bmad_datalist` (``image``, ``label`` ``[0.]``/``[1.]``, ``mask`` when there is one,
``split``, ``file``), so every method of the project reads them the same way.

Layouts (``layout="auto"`` recognises them from the files):

- ``data_json`` (RSNA, VinDr-CXR, Brain Tumor, LAG): ``root/images/*`` and ``root/data.json`` =
  ``{"train": {"0": [names]}, "test": {"0": [normal names], "1": [abnormal names]}}``, names relative to ``images/``;
- ``isic2018`` (ISIC 2018 Task 3): the official ``ISIC2018_Task3_{Training,Test}_Input/`` folders and
  ``ISIC2018_Task3_{Training,Test}_GroundTruth/*.csv`` (one-hot ``image, MEL, NV, ...``); normal = ``NV == 1``,
  abnormal = any other class; training uses the training set's NV images only;
- ``camelyon16``: ``root/train/good/*``, ``root/test/good/*``, ``root/test/Ungood/*``;
- ``brats2021``: ``root/train/*`` (flat, normal), ``root/test/normal/*``, ``root/test/tumor/*`` and
  ``root/test/annotation/*``, the mask of a tumor image being the file whose name has ``flair`` replaced by ``seg``
  (values 0/255; > 0 is tumor).

**Validation**: MedIAnomaly has none. :func:`build_medianomaly_datalist` holds out a seeded ``validation_fraction``
of the *training normals* as ``validation`` (label 0) and never looks at ``test``: a checkpoint can be selected on
held-out normal images only (e.g. their reconstruction loss, or the score distribution of normals), since no
abnormal image exists outside the test set.

Every problem (a missing folder, a name in ``data.json`` without its file, a tumor without its mask, a CSV row
without a class) is one line naming the file and what was expected.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path
from typing import Any

from sdmad_monai.utils import atomic_write_json

__all__ = ["MEDIANOMALY_LAYOUTS", "build_medianomaly_datalist", "detect_medianomaly_layout"]

MEDIANOMALY_LAYOUTS = ("data_json", "isic2018", "camelyon16", "brats2021")
_ISIC_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".npy")


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found.")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(_IMAGE_SUFFIXES))
    if not images:
        raise ValueError(f"{folder} holds no image file.")
    return images


def _item(path: Path, label: int, split: str, mask: Path | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"image": str(path), "label": [float(label)], "split": split, "file": path.name}
    if mask is not None:
        item["mask"] = str(mask)
    return item


def detect_medianomaly_layout(root: str | os.PathLike) -> str:
    """Which of :data:`MEDIANOMALY_LAYOUTS` ``root`` holds.

    Raises:
        ValueError: none of them (the message lists what each layout needs).
    """
    root = Path(root)
    if (root / "data.json").is_file():
        return "data_json"
    if (root / "ISIC2018_Task3_Training_Input").is_dir():
        return "isic2018"
    if (root / "test" / "Ungood").is_dir():
        return "camelyon16"
    if (root / "test" / "tumor").is_dir():
        return "brats2021"
    raise ValueError(
        f"{root} is not a MedIAnomaly dataset folder: expected data.json + images/ (RSNA, VinDr-CXR, Brain Tumor, "
        "LAG), ISIC2018_Task3_Training_Input/ (ISIC 2018), test/Ungood/ (Camelyon16) or test/tumor/ (BraTS2021)."
    )


def _data_json(root: Path) -> tuple[list[dict], list[dict]]:
    path = root / "data.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        train, test = document["train"], document["test"]
        names = {("train", 0): train["0"], ("test", 0): test["0"], ("test", 1): test["1"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: expected {{'train': {{'0': [...]}}, 'test': {{'0': [...], '1': [...]}}}} ({error!r})."
        ) from None
    out: dict[str, list[dict]] = {"train": [], "test": []}
    for (split, label), files in names.items():
        for name in files:
            image = root / "images" / str(name)
            if not image.is_file():
                raise FileNotFoundError(f"{path} lists {name!r} under {split}/{label}, but {image} does not exist.")
            out[split].append(_item(image, label, split))
    return out["train"], out["test"]


def _isic_labels(csv_path: Path) -> dict[str, int]:
    """image id -> 0 (NV) / 1 (any other class)."""
    labels: dict[str, int] = {}
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"image", *_ISIC_CLASSES} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f"{csv_path}: missing column(s) {sorted(missing)}; expected image,{','.join(_ISIC_CLASSES)}."
            )
        for number, row in enumerate(reader, start=2):
            hot = [c for c in _ISIC_CLASSES if float(row[c]) >= 0.5]
            if len(hot) != 1:
                raise ValueError(f"{csv_path} line {number}: image {row['image']} has classes {hot}; expected one.")
            labels[row["image"]] = 0 if hot == ["NV"] else 1
    return labels


def _isic(root: Path) -> tuple[list[dict], list[dict]]:
    sections = {}
    for part, split in (("Training", "train"), ("Test", "test")):
        truth = root / f"ISIC2018_Task3_{part}_GroundTruth"
        csvs = sorted(truth.glob("*.csv")) if truth.is_dir() else []
        if len(csvs) != 1:
            raise FileNotFoundError(f"{truth}: expected exactly one ground-truth CSV, found {len(csvs)}.")
        folder = root / f"ISIC2018_Task3_{part}_Input"
        images = {p.stem: p for p in _images(folder)}
        items = []
        for image_id, label in _isic_labels(csvs[0]).items():
            if image_id not in images:
                raise FileNotFoundError(f"{csvs[0]} lists {image_id}, which has no image in {folder}.")
            if split == "train" and label:
                continue  # MedIAnomaly trains on the NV images only
            items.append(_item(images[image_id], label, split))
        sections[split] = items
    return sections["train"], sections["test"]


def _camelyon(root: Path) -> tuple[list[dict], list[dict]]:
    train = [_item(p, 0, "train") for p in _images(root / "train" / "good")]
    test = [_item(p, 0, "test") for p in _images(root / "test" / "good")]
    test += [_item(p, 1, "test") for p in _images(root / "test" / "Ungood")]
    return train, test


def _brats(root: Path) -> tuple[list[dict], list[dict]]:
    train = [_item(p, 0, "train") for p in _images(root / "train")]
    test = [_item(p, 0, "test") for p in _images(root / "test" / "normal")]
    annotation = root / "test" / "annotation"
    for image in _images(root / "test" / "tumor"):
        if "flair" not in image.name:
            raise ValueError(f"{image}: a BraTS tumor image name must contain 'flair' (its mask replaces it by 'seg').")
        mask = annotation / image.name.replace("flair", "seg")
        if not mask.is_file():
            raise FileNotFoundError(f"{image} has no mask: {mask} does not exist.")
        test.append(_item(image, 1, "test", mask))
    return train, test


_READERS = {"data_json": _data_json, "isic2018": _isic, "camelyon16": _camelyon, "brats2021": _brats}


def build_medianomaly_datalist(
    root: str | os.PathLike,
    layout: str = "auto",
    validation_fraction: float = 0.1,
    seed: int = 0,
    output_json: str | os.PathLike | None = None,
) -> dict[str, list[dict]]:
    """``{"training", "validation", "test"}`` datalists of a MedIAnomaly dataset folder.

    Args:
        root: the dataset folder.
        layout: one of :data:`MEDIANOMALY_LAYOUTS`, or ``"auto"`` (:func:`detect_medianomaly_layout`).
        validation_fraction: share of the training normals held out as ``validation`` (seeded; at least one image
            when above 0, at least one left for training); 0 gives an empty validation list.
        seed: seed of the hold-out.
        output_json: optional JSON, written atomically with paths relative to its folder.

    Returns:
        the sections; ``test`` keeps the benchmark's order (normals first where the layout lists them so).
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"MedIAnomaly dataset folder not found: {root}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}.")
    layout = detect_medianomaly_layout(root) if layout == "auto" else layout
    if layout not in _READERS:
        raise ValueError(f"layout must be 'auto' or one of {MEDIANOMALY_LAYOUTS}, got {layout!r}.")
    train, test = _READERS[layout](root)
    if not train:
        raise ValueError(f"{root} ({layout}): no normal training image.")
    held = 0
    if validation_fraction > 0 and len(train) > 1:
        held = min(len(train) - 1, max(1, round(validation_fraction * len(train))))
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:held])
    validation = [dict(train[i], split="validation") for i in sorted(chosen)]
    out = {"training": [t for i, t in enumerate(train) if i not in chosen], "validation": validation, "test": test}
    if output_json is not None:
        base = Path(output_json).resolve().parent
        atomic_write_json(output_json, {
            "description": f"MedIAnomaly datalist ({layout}; validation: {held} held-out training normals, "
            f"seed {seed})",
            **{s: [{k: (os.path.relpath(v, base) if k in ("image", "mask") else v) for k, v in it.items()}
                   for it in items] for s, items in out.items()},
        })  # fmt: skip
    return out
