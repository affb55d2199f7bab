"""BMAD (brain MRI benchmark of MedAD) folder layout -> MONAI datalist with binary labels.

Layout::

    root/train/good/img/*
    root/valid/good/img/*        root/valid/Ungood/img/*   root/valid/Ungood/anomaly_mask/*
    root/test/good/img/*         root/test/Ungood/img/*    root/test/Ungood/anomaly_mask/*

A mask is the file with the same name under ``anomaly_mask`` next to ``img``; the item gets a ``"mask"`` key only
when that file exists. ``label`` is ``[0.0]`` for ``good`` and ``[1.0]`` for ``Ungood``.
"""

from __future__ import annotations

import os
from pathlib import Path

from sdmad_monai.utils import atomic_write_json

__all__ = ["BMAD_SECTIONS", "build_bmad_datalist"]

#: BMAD split folder -> datalist section.
BMAD_SECTIONS = {"train": "training", "valid": "validation", "test": "test"}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".npy")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(_IMAGE_SUFFIXES))


def build_bmad_datalist(root: str | os.PathLike, output_json: str | os.PathLike | None = None) -> dict[str, list[dict]]:
    """Build ``{"training": [...], "validation": [...], "test": [...]}`` from a BMAD folder.

    ``train`` must hold only ``good``; ``valid`` and ``test`` hold ``good`` and/or ``Ungood``. Items are
    ``{"image": path, "label": [0.] | [1.], "mask": path (if present), "split": "train"|"valid"|"test",
    "file": name}`` with absolute paths (relative to the JSON's folder when written).

    Args:
        root: dataset root.
        output_json: optional JSON path, written atomically (``load_decathlon_datalist`` compatible).

    Returns:
        the sections.

    Raises:
        FileNotFoundError: missing root or ``train/good/img``.
        ValueError: an empty image folder or an unexpected class folder.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"BMAD root not found: {root}")
    out: dict[str, list[dict]] = {}
    for split, section in BMAD_SECTIONS.items():
        split_dir = root / split
        if not split_dir.is_dir():
            if split == "train":
                raise FileNotFoundError(f"{split_dir} not found; expected the BMAD layout train/good/img/*.")
            continue
        classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        unexpected = [c for c in classes if c not in ("good", "Ungood")]
        if unexpected:
            raise ValueError(f"{split_dir}: unexpected class folder(s) {unexpected}; expected 'good' and 'Ungood'.")
        if split == "train" and classes != ["good"]:
            raise ValueError(f"{split_dir} must contain only 'good' (normal training images), found {classes}.")
        items = []
        for cls in classes:
            img_dir = split_dir / cls / "img"
            if not img_dir.is_dir():
                raise FileNotFoundError(f"{img_dir} not found; expected {split}/{cls}/img/*.")
            images = _images(img_dir)
            if not images:
                raise ValueError(f"{img_dir} holds no image file.")
            for img in images:
                item = {"image": str(img), "label": [1.0 if cls == "Ungood" else 0.0], "split": split, "file": img.name}
                mask = split_dir / cls / "anomaly_mask" / img.name
                if mask.is_file():
                    item["mask"] = str(mask)
                items.append(item)
        out[section] = items
    if output_json is not None:
        base = Path(output_json).resolve().parent
        doc = {
            "description": "BMAD datalist (sdmad_monai.data.build_bmad_datalist)",
            **{
                s: [
                    {k: (os.path.relpath(v, base) if k in ("image", "mask") else v) for k, v in it.items()}
                    for it in items
                ]
                for s, items in out.items()
            },
        }
        atomic_write_json(output_json, doc)
    return out
