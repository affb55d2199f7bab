"""PNG overlays of anomaly maps: what a reader opens to see *where* the detector found something.

One PNG per slice, two panels side by side:

- left: the slice as the detector saw it (CLIP normalisation undone), with the anomaly-mask contour (green) when a
  mask is known;
- right: the same slice with the anomaly map as a heat overlay (``inferno``; opacity grows with the map value, so
  low values leave the anatomy visible), the mask contour again, and a colour bar. All overlays of one run share
  one colour scale (``value_range``), so colours compare across files.

The title names the file, slice, label (when known) and image score. Which slices get a PNG is chosen by
:class:`OverlaySelector`: the ``top_n`` highest-scoring and a seeded random sample of ``random_n`` (reservoir
sampling, so it is streamed: only the kept slices' arrays are held, never the whole evaluation set). Files are named
``top_<rank>_<score>_<name>.png`` and ``random_<n>_<name>.png`` and listed with their scores in ``index.csv``.
"""

from __future__ import annotations

import csv
import heapq
import io
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .utils import atomic_path, atomic_write_text

__all__ = ["OverlayItem", "OverlaySelector", "display_image", "overlay_file_name", "save_overlay", "write_overlays"]


def display_image(image: Any, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo CLIP normalisation: ``[3, H, W]`` (or ``[1, H, W]``/``[H, W]``) -> ``[H, W, 3]`` uint8."""
    x = torch.as_tensor(image).detach().cpu().to(torch.float32)
    if x.ndim == 2:
        x = x[None]
    if x.shape[0] == len(mean):
        x = x * torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1) + torch.as_tensor(mean).view(-1, 1, 1)
    if x.shape[0] == 1:
        x = x.repeat(3, 1, 1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def overlay_file_name(kind: str, number: int, name: str, score: float | None = None, width: int = 3) -> str:
    """``top_001_0.8731_<name>.png`` / ``random_001_<name>.png`` with ``name`` made file-safe."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "slice"
    safe = re.sub(r"\.(png|jpe?g|bmp|tiff?|npy|nii(\.gz)?|h5)$", "", safe, flags=re.IGNORECASE)
    score_part = f"_{score:.4f}" if score is not None and np.isfinite(score) else ""
    return f"{kind}_{number:0{width}d}{score_part}_{safe[:80]}.png"


def save_overlay(
    path: str | Path,
    image: np.ndarray,
    anomaly_map: Any,
    mask: Any | None = None,
    title: str = "",
    value_range: tuple[float, float] | None = None,
) -> Path:
    """Write one two-panel overlay PNG (module docstring) atomically.

    Args:
        path: output ``.png``.
        image: ``[H, W, 3]`` uint8 (:func:`display_image`).
        anomaly_map: ``[H, W]`` map, higher = more anomalous.
        mask: optional ``[H, W]`` (or ``[1, H, W]``) binary anomaly mask.
        title: figure title.
        value_range: ``(vmin, vmax)`` of the colour scale; the map's own range when ``None``.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    amap = torch.as_tensor(anomaly_map).detach().cpu().to(torch.float32).squeeze().numpy()
    if amap.shape != image.shape[:2]:
        raise ValueError(f"anomaly map {amap.shape} and image {image.shape[:2]} must have the same size.")
    vmin, vmax = value_range if value_range is not None else (float(amap.min()), float(amap.max()))
    if not vmax > vmin:
        vmax = vmin + 1e-6
    norm = colors.Normalize(vmin=vmin, vmax=vmax, clip=True)
    scaled = norm(amap)
    heat = matplotlib.colormaps["inferno"](scaled)
    heat[..., 3] = 0.15 + 0.7 * scaled  # opacity grows with the value: the anatomy stays readable where maps are low
    figure, axes = plt.subplots(1, 2, figsize=(8.4, 4.4))
    for axis in axes:
        axis.imshow(image, interpolation="nearest")
        axis.set_xticks([])
        axis.set_yticks([])
    axes[1].imshow(heat, interpolation="bilinear")
    if mask is not None:
        binary = torch.as_tensor(mask).detach().cpu().squeeze().numpy() > 0.5
        if binary.any():
            for axis in axes:
                axis.contour(binary.astype(np.float32), levels=[0.5], colors=["#39ff14"], linewidths=1.2)
        axes[0].set_title("image + mask contour" if binary.any() else "image (mask: empty)", fontsize=9)
    else:
        axes[0].set_title("image", fontsize=9)
    axes[1].set_title("anomaly map", fontsize=9)
    mappable = cm.ScalarMappable(norm=norm, cmap="inferno")
    figure.colorbar(mappable, ax=axes[1], fraction=0.046, pad=0.03, label="anomaly score")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    return Path(path)


@dataclass
class OverlayItem:
    """One slice kept for an overlay.

    Attributes:
        score: ranking score (e.g. the image anomaly score).
        name: file and slice, used in the file name and title.
        image: ``[H, W, 3]`` uint8.
        anomaly_map: ``[H, W]`` float32.
        mask: ``[H, W]`` bool or ``None``.
        label: 0/1 image label or ``None`` when unknown.
    """

    score: float
    name: str
    image: np.ndarray
    anomaly_map: np.ndarray
    mask: np.ndarray | None = None
    label: int | None = None
    order: int = field(default=0)


class OverlaySelector:
    """Streamed choice of the ``top_n`` highest-scoring slices and a seeded random sample of ``random_n`` slices.

    :meth:`offer` builds a slice's arrays (through the callable it is given) only when the slice is kept, so memory
    holds at most ``top_n + random_n`` slices whatever the number offered. The random sample is reservoir sampling
    (Algorithm R) with ``random.Random(seed)``: the same slices for the same order of offers. A slice can be in both.

    Args:
        top_n: number of highest-scoring slices.
        random_n: size of the random sample.
        seed: seed of the sample.
    """

    def __init__(self, top_n: int = 10, random_n: int = 10, seed: int = 0) -> None:
        if top_n < 0 or random_n < 0:
            raise ValueError(f"top_n and random_n must be >= 0, got {top_n} and {random_n}.")
        self.top_n, self.random_n, self.seed = int(top_n), int(random_n), int(seed)
        self.reset()

    def reset(self) -> None:
        self._top: list[tuple[float, int, OverlayItem]] = []
        self._sample: list[OverlayItem] = []
        self._seen = 0
        self._rng = random.Random(self.seed)

    def offer(self, score: float, build: Callable[[], OverlayItem]) -> None:
        """Consider one slice with ranking ``score``; ``build()`` makes its :class:`OverlayItem` if it is kept."""
        index = self._seen
        self._seen += 1
        item: OverlayItem | None = None
        score = float(score)
        if self.top_n and (len(self._top) < self.top_n or score > self._top[0][0]):
            item = build()
            item.order = index
            entry = (score, -index, item)  # earlier slices win ties
            if len(self._top) < self.top_n:
                heapq.heappush(self._top, entry)
            else:
                heapq.heapreplace(self._top, entry)
        if self.random_n:
            slot = index if index < self.random_n else self._rng.randint(0, index)
            if slot < self.random_n:
                if item is None:
                    item = build()
                    item.order = index
                if slot == len(self._sample):
                    self._sample.append(item)
                else:
                    self._sample[slot] = item

    @property
    def num_seen(self) -> int:
        return self._seen

    def top(self) -> list[OverlayItem]:
        """Kept top slices, highest score first."""
        return [entry[2] for entry in sorted(self._top, key=lambda e: (-e[0], -e[1]))]

    def sample(self) -> list[OverlayItem]:
        """Kept random slices, in the order they were offered."""
        return sorted(self._sample, key=lambda item: item.order)


def write_overlays(
    selector: OverlaySelector,
    output_dir: str | Path,
    value_range: tuple[float, float] | None = None,
    score_name: str = "score",
) -> list[dict[str, Any]]:
    """Write the selector's overlays to ``output_dir/top/``, ``output_dir/random/`` and ``output_dir/index.csv``.

    Args:
        selector: a filled :class:`OverlaySelector`.
        output_dir: overlay folder.
        value_range: shared colour scale; defaults to the range over all kept maps.
        score_name: what the ranking score is, shown in titles and the index.

    Returns:
        One row per PNG: ``kind``, ``rank``, ``name``, ``score``, ``label``, ``png`` (path relative to ``output_dir``).
    """
    output_dir = Path(output_dir)
    groups = {"top": selector.top(), "random": selector.sample()}
    kept = [item for items in groups.values() for item in items]
    if not kept:
        return []
    if value_range is None:
        value_range = (
            min(float(np.min(item.anomaly_map)) for item in kept),
            max(float(np.max(item.anomaly_map)) for item in kept),
        )
    width = max(3, len(str(max(selector.top_n, selector.random_n))))
    for kind in groups:  # overlays of an earlier run in this folder would mix with these: remove them
        for stale in (output_dir / kind).glob(f"{kind}_*.png"):
            stale.unlink()
    rows: list[dict[str, Any]] = []
    for kind, items in groups.items():
        for rank, item in enumerate(items, start=1):
            file_name = overlay_file_name(kind, rank, item.name, item.score if kind == "top" else None, width)
            label = "" if item.label is None else ("abnormal" if item.label else "normal")
            title = f"{item.name} | {score_name} {item.score:.4f}" + (f" | label: {label}" if label else "")
            save_overlay(output_dir / kind / file_name, item.image, item.anomaly_map, item.mask, title, value_range)
            rows.append(
                {"kind": kind, "rank": rank, "name": item.name, "score": item.score, "label": label,
                 "png": f"{kind}/{file_name}"}
            )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["kind", "rank", "name", "score", "label", "png"])
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "score": f"{row['score']:.6g}"})
    atomic_write_text(output_dir / "index.csv", buffer.getvalue())
    return rows
