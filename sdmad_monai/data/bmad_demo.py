"""Small generated BMAD-like (and MedIAnomaly-like) datasets with anomaly masks, for tests and the offline demos.

Layout and file types are BMAD's (``train/good/img``, ``valid`` and ``test`` with ``good/img``, ``Ungood/img`` and
``Ungood/anomaly_mask``; 8-bit grayscale PNGs, masks 0/255 with the image's file name). Each image is a smooth
elliptical "organ" with seeded texture noise on a dark background; an abnormal image has one bright, roughly round
lesion inside the organ, and its mask is exactly the lesion's pixels. Deterministic for a seed.

:func:`generate_medianomaly_like_dataset` writes the same images in MedIAnomaly's ``data.json`` layout (``images/``
+ ``data.json``; no masks, as RSNA, VinDr-CXR, Brain Tumor and LAG have none).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..utils import atomic_write_bytes

__all__ = ["generate_bmad_like_dataset", "generate_medianomaly_like_dataset"]


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _organ(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = size / 2 + rng.uniform(-2, 2), size / 2 + rng.uniform(-2, 2)
    ry, rx = size * rng.uniform(0.36, 0.42), size * rng.uniform(0.30, 0.36)
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    noise = rng.normal(0.0, 1.0, (size, size))
    kernel = np.ones(5) / 5.0  # separable box blur: smooth texture
    noise = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, noise)
    noise = np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="same"), 0, noise)
    image = np.where(inside, 0.45 + 0.08 * noise, 0.03)
    return image, inside


def _lesion(rng: np.random.Generator, inside: np.ndarray, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    candidates = np.argwhere(inside)
    radius = size * rng.uniform(0.08, 0.13)
    for _ in range(100):
        cy, cx = candidates[rng.integers(len(candidates))]
        lesion = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        if (lesion & ~inside).sum() == 0:
            return lesion
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)


def _abnormal(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    image, inside = _organ(rng, size)
    lesion = _lesion(rng, inside, size)
    return np.where(lesion, 0.9 + 0.03 * rng.normal(size=image.shape), image), lesion


def generate_medianomaly_like_dataset(
    root: str | Path, num_train: int = 8, num_normal: int = 4, num_abnormal: int = 4, size: int = 64, seed: int = 0
) -> Path:
    """Write a MedIAnomaly ``data.json`` dataset (``images/*.png``, ``data.json``) under ``root``; images as in
    :func:`generate_bmad_like_dataset`. Returns ``root``."""
    import json

    root = Path(root)
    rng = np.random.default_rng(seed)
    names: dict[str, dict[str, list[str]]] = {"train": {"0": []}, "test": {"0": [], "1": []}}
    for split, label, count in (("train", "0", num_train), ("test", "0", num_normal), ("test", "1", num_abnormal)):
        for index in range(count):
            image = _abnormal(rng, size)[0] if label == "1" else _organ(rng, size)[0]
            name = f"{split}_{label}_{index:04d}.png"
            atomic_write_bytes(root / "images" / name, _png(_to_uint8(image)))
            names[split][label].append(name)
    atomic_write_bytes(root / "data.json", json.dumps(names, indent=1).encode("utf-8"))
    return root


def generate_bmad_like_dataset(
    root: str | Path,
    num_train: int = 8,
    num_normal: int = 4,
    num_abnormal: int = 4,
    size: int = 64,
    seed: int = 0,
    splits: tuple[str, ...] = ("valid", "test"),
) -> Path:
    """Write a BMAD-like dataset with masks (module docstring) under ``root``.

    Args:
        root: dataset folder (its name plays the BMAD dataset name, e.g. ``.../BrainMRI``).
        num_train: normal images in ``train/good/img``.
        num_normal: normal images per evaluation split.
        num_abnormal: abnormal images (with masks) per evaluation split.
        size: image side in pixels.
        seed: random seed.
        splits: evaluation splits to write (``"valid"``, ``"test"``).

    Returns:
        ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)

    def write(path: Path, array: np.ndarray) -> None:
        atomic_write_bytes(path, _png(array))

    for index in range(num_train):
        image, _ = _organ(rng, size)
        write(root / "train" / "good" / "img" / f"train_{index:04d}.png", _to_uint8(image))
    for split in splits:
        for index in range(num_normal):
            image, _ = _organ(rng, size)
            write(root / split / "good" / "img" / f"{split}_normal_{index:04d}.png", _to_uint8(image))
        for index in range(num_abnormal):
            image, lesion = _abnormal(rng, size)
            name = f"{split}_lesion_{index:04d}.png"
            write(root / split / "Ungood" / "img" / name, _to_uint8(image))
            write(root / split / "Ungood" / "anomaly_mask" / name, (lesion * 255).astype(np.uint8))
    return root
