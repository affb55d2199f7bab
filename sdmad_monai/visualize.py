"""PNG overlays of anomaly maps: what a reader opens to see *where* the detector found something.

One PNG per slice, two panels side by side:

- left: the slice as the detector saw it (CLIP normalisation undone), with the anomaly-mask contour (green) when a
  mask is known and the annotated boxes (cyan, with their label) when the datalist item has them;
- right: the same slice with the anomaly map as a heat overlay (``inferno``; opacity grows with the map value, so
  low values leave the anatomy visible), the mask contour and the boxes again, and a colour bar. All overlays of one
  run share one colour scale (``value_range``), so colours compare across files.

The title names the file, slice, label (when known) and image score. Which slices get a PNG is chosen by
:class:`OverlaySelector`: the ``top_n`` highest-scoring and a seeded random sample of ``random_n`` of the *other*
slices (reservoir sampling, so it is streamed: only the kept slices' arrays are held, never the whole evaluation
set). Files are named ``top_<rank>_<score>_<name>.png`` and ``random_<n>_<name>.png`` and listed with their scores
in ``index.csv``.

Boxes are given in the pixel frame of the drawn image (the model input); :func:`box_to_input_frame` maps a box from
the original slice (the display orientation of :class:`~sdmad_monai.transforms.ExtractSlices`) through the
aspect-preserving resize and centred padding of :class:`~sdmad_monai.transforms.intensity.ResizeToSquare`.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import heapq
import io
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from .transforms.intensity import square_resize_geometry
from .utils import atomic_path, atomic_write_text

__all__ = [
    "BOX_COLOUR",
    "Box",
    "OverlayItem",
    "OverlaySelector",
    "box_to_input_frame",
    "display_image",
    "overlay_file_name",
    "save_overlay",
    "write_overlays",
]

#: A box in an image's pixel frame: ``(x, y, width, height, label)``; ``x`` is the column and ``y`` the row of the
#: top-left corner, in pixel-edge coordinates (pixel ``i`` spans ``[i, i + 1)``), so ``(3, 4, 2, 2, "a")`` covers
#: columns 3-4 and rows 4-5.
Box = tuple[float, float, float, float, str]

#: Colour of the annotated boxes on overlays (cyan: absent from the grey slices and the ``inferno`` heat map).
BOX_COLOUR = "#00e5ff"


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


def box_to_input_frame(
    box: Sequence[Any],
    original_size: Sequence[int],
    input_size: int | Sequence[int],
    flipped_rows: bool = False,
) -> Box:
    """Map a box of an original slice onto the model input made by ``ResizeToSquare``.

    ``ResizeToSquare(size)`` scales the slice by ``size / max(H, W)`` (sides rounded) and pads it centred; the same
    arithmetic is applied to the box edges here.

    Args:
        box: ``(x, y, width, height[, label])`` in pixels of the original ``H x W`` slice.
        original_size: ``(H, W)`` of the original slice.
        input_size: side of the square model input (or its ``(S, S)`` shape).
        flipped_rows: the box was drawn on the up/down-flipped slice (fastMRI+ annotations of ``.h5`` files): its
            rows are counted from the bottom, so row ``y`` becomes ``H - y - height`` first.

    Returns:
        ``(x, y, width, height, label)`` in pixel-edge coordinates of the model input (floats; ``label`` is ``""``
        when the box had none).
    """
    height, width = (int(v) for v in original_size)
    size = int(input_size) if isinstance(input_size, (int, np.integer)) else int(max(input_size))
    if height < 1 or width < 1 or size < 1:
        raise ValueError(f"sizes must be positive, got original {tuple(original_size)} and input {input_size}.")
    x, y, w, h = (float(v) for v in box[:4])
    label = str(box[4]) if len(box) > 4 else ""
    if flipped_rows:
        y = height - y - h
    new_h, new_w, top, left = square_resize_geometry(height, width, size)  # ResizeToSquare's arithmetic
    sy, sx = new_h / height, new_w / width
    return (left + x * sx, top + y * sy, w * sx, h * sy, label)


#: Pixels per side of each panel of an overlay (slices are enlarged by a whole factor up to about this size).
PANEL_PIXELS = 320
_MASK_COLOUR = (57, 255, 20)
_TEXT = (20, 20, 20)


@functools.lru_cache(maxsize=4)
def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _inferno_lut() -> np.ndarray:
    """``[256, 3]`` uint8 colours of matplotlib's ``inferno`` (looked up once)."""
    global _INFERNO
    if _INFERNO is None:
        import matplotlib

        _INFERNO = (matplotlib.colormaps["inferno"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    return _INFERNO


_INFERNO: np.ndarray | None = None


def _contour(binary: np.ndarray) -> np.ndarray:
    """Boundary pixels of a binary mask (the mask minus its 4-neighbour erosion)."""
    padded = np.pad(binary, 1)
    eroded = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return binary & ~eroded


def save_overlay(
    path: str | Path,
    image: np.ndarray,
    anomaly_map: Any,
    mask: Any | None = None,
    title: str = "",
    value_range: tuple[float, float] | None = None,
    boxes: Sequence[Box] | None = None,
) -> Path:
    """Write one two-panel overlay PNG (module docstring) atomically.

    Drawn with array operations and Pillow (about 30x faster than a matplotlib figure, which dominated inference with
    overlays; ``benchmarks/bench_overlays.py``): each slice is enlarged by a whole factor to about
    :data:`PANEL_PIXELS`, the heat map is interpolated bilinearly before colouring.

    Args:
        path: output ``.png``.
        image: ``[H, W, 3]`` uint8 (:func:`display_image`).
        anomaly_map: ``[H, W]`` map, higher = more anomalous.
        mask: optional ``[H, W]`` (or ``[1, H, W]``) binary anomaly mask.
        title: figure title (wrapped to the figure width).
        value_range: ``(vmin, vmax)`` of the colour scale; the map's own range when ``None``.
        boxes: annotated boxes in the pixel frame of ``image`` (:data:`Box`, e.g. from :func:`box_to_input_frame`),
            drawn on both panels, labelled on the left one.

    Returns:
        ``path``.
    """
    from PIL import Image, ImageDraw

    amap = torch.as_tensor(anomaly_map).detach().cpu().to(torch.float32).squeeze().numpy()
    if amap.shape != image.shape[:2]:
        raise ValueError(f"anomaly map {amap.shape} and image {image.shape[:2]} must have the same size.")
    height, width = amap.shape
    vmin, vmax = value_range if value_range is not None else (float(amap.min()), float(amap.max()))
    if not vmax > vmin:
        vmax = vmin + 1e-6
    scale = max(1, PANEL_PIXELS // max(height, width))
    size = (width * scale, height * scale)
    base = np.asarray(
        Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.Resampling.NEAREST), dtype=np.float32
    )
    smooth = np.asarray(Image.fromarray(amap.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))
    scaled = np.clip((smooth - vmin) / (vmax - vmin), 0.0, 1.0)
    colour = _inferno_lut()[(scaled * 255).round().astype(np.int64)].astype(np.float32)
    alpha = (0.15 + 0.7 * scaled)[..., None]  # opacity grows with the value: the anatomy stays readable where low
    panels = [base, base * (1.0 - alpha) + colour * alpha]
    if mask is not None:
        binary = torch.as_tensor(mask).detach().cpu().squeeze().numpy() > 0.5
        left_title = "image + mask contour" if binary.any() else "image (mask: empty)"
        if binary.any():
            big = np.asarray(Image.fromarray(binary).resize(size, Image.Resampling.NEAREST))
            edge = _contour(big)
            for panel in panels:
                panel[edge] = _MASK_COLOUR
    else:
        left_title = "image"
    if boxes:
        left_title += f" + {len(boxes)} annotated box{'es' if len(boxes) > 1 else ''}"

    font, small = _font(14), _font(12)
    lines = [wrapped for line in title.split("\n") for wrapped in (textwrap.wrap(line, 100) or [""])]
    margin, gap, bar_w, label_w = 12, 14, 16, 64
    title_h = 20 * len(lines) + 8
    top = margin + title_h + 20
    canvas_w = margin + size[0] + gap + size[0] + 10 + bar_w + label_w
    canvas = Image.new("RGB", (canvas_w, top + size[1] + margin + 12), "white")
    draw = ImageDraw.Draw(canvas)
    for number, line in enumerate(lines):
        draw.text((canvas_w / 2, margin + 20 * number), line, fill=_TEXT, font=font, anchor="ma")
    lefts = [margin, margin + size[0] + gap]
    for left, panel, name in zip(lefts, panels, (left_title, "anomaly map")):
        canvas.paste(Image.fromarray(panel.round().clip(0, 255).astype(np.uint8)), (left, top))
        draw.text((left + size[0] / 2, top - 18), name, fill=_TEXT, font=small, anchor="ma")
    for index, left in enumerate(lefts):
        for x, y, w, h, label in boxes or ():
            x0, y0 = left + x * scale, top + y * scale
            draw.rectangle([x0, y0, x0 + w * scale - 1, y0 + h * scale - 1], outline=BOX_COLOUR, width=2)
            if index == 0 and label:
                corner = (x0, max(top, y0 - 15))
                bounds = draw.textbbox(corner, label[:28], font=small)
                draw.rectangle([bounds[0] - 2, bounds[1] - 1, bounds[2] + 2, bounds[3] + 1], fill=BOX_COLOUR)
                draw.text(corner, label[:28], fill=(0, 0, 0), font=small)
    # colour bar with its scale
    bar_left = lefts[1] + size[0] + 10
    ramp = _inferno_lut()[np.linspace(255, 0, size[1]).round().astype(np.int64)]
    canvas.paste(Image.fromarray(np.repeat(ramp[:, None, :], bar_w, axis=1)), (bar_left, top))
    draw.rectangle([bar_left, top, bar_left + bar_w - 1, top + size[1] - 1], outline=_TEXT)
    for fraction in (0.0, 0.5, 1.0):
        y = top + (1.0 - fraction) * (size[1] - 1)
        value = vmin + fraction * (vmax - vmin)
        value = 0.0 if abs(value) < 1e-3 * max(abs(vmin), abs(vmax)) else value  # no "4.3e-07" for a zero
        draw.line([bar_left + bar_w, y, bar_left + bar_w + 4, y], fill=_TEXT)
        draw.text((bar_left + bar_w + 6, y), f"{value:.3g}", fill=_TEXT, font=small, anchor="lm")
    draw.text((bar_left + bar_w / 2, top + size[1] + 2), "anomaly score", fill=_TEXT, font=small, anchor="ma")
    with atomic_path(path) as temporary:
        canvas.save(temporary, format="PNG", compress_level=1)  # encoding dominated at the default level 6
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
        boxes: annotated boxes in the pixel frame of ``image`` (:data:`Box`) or ``None``.
        caption: extra title line (e.g. the labelled and predicted categories).
        order: position in the stream of offers (set by :class:`OverlaySelector`).
    """

    score: float
    name: str
    image: np.ndarray
    anomaly_map: np.ndarray
    mask: np.ndarray | None = None
    label: int | None = None
    boxes: list[Box] | None = None
    caption: str = ""
    order: int = field(default=0)


def _sample_key(seed: int, index: int) -> float:
    """A seeded uniform number in [0, 1) for slice ``index``: the same for the same (seed, index) in any order of
    offers and in any process."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode("ascii"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class OverlaySelector:
    """Streamed choice of the ``top_n`` highest-scoring slices and a seeded random sample of ``random_n`` other slices.

    The two groups are disjoint: the random sample is drawn from the slices that are not in the final top group, so
    ``top`` and ``random`` PNGs never show the same slice. :meth:`offer` builds a slice's arrays (through the callable
    it is given) only when the slice is kept, so memory holds at most ``2 * top_n + random_n`` slices whatever the
    number offered. The random sample is a bottom-k sample: every slice gets a seeded uniform key from its index
    (:func:`_sample_key`), the ``random_n + top_n`` smallest keys are kept, and the sample is the ``random_n``
    smallest among those not in the top group, i.e. a uniform sample of the non-top slices. It depends only on the
    seed and the slices' indices, not on the order they are offered in, so selectors that saw parts of the data (the
    processes of a distributed evaluation) :meth:`merge` into exactly the selector that saw it all.

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
        self._top: list[tuple[float, int, OverlayItem]] = []  # min-heap of (score, -index)
        self._keyed: list[tuple[float, int, OverlayItem]] = []  # max-heap of keys as (-key, index)
        self._seen = 0

    @property
    def _reservoir_size(self) -> int:
        return self.random_n + self.top_n if self.random_n else 0

    def offer(self, score: float, build: Callable[[], OverlayItem], index: int | None = None) -> None:
        """Consider one slice with ranking ``score``; ``build()`` makes its :class:`OverlayItem` if it is kept.

        Args:
            score: ranking score.
            build: makes the item's arrays.
            index: the slice's position in the whole data (default: the number of slices offered before it).
        """
        index = self._seen if index is None else int(index)
        self._seen += 1
        self._consider(float(score), index, build)

    def _consider(self, score: float, index: int, item: OverlayItem | Callable[[], OverlayItem]) -> None:
        built: OverlayItem | None = item if isinstance(item, OverlayItem) else None

        def get() -> OverlayItem:
            nonlocal built
            if built is None:  # then ``item`` is the builder, by the line above
                built = cast(Callable[[], OverlayItem], item)()
                built.order = index
            return built

        if self.top_n and (len(self._top) < self.top_n or (score, -index) > self._top[0][:2]):
            entry = (score, -index, get())  # earlier slices win ties
            if len(self._top) < self.top_n:
                heapq.heappush(self._top, entry)
            else:
                heapq.heapreplace(self._top, entry)
        size = self._reservoir_size
        if size:
            key = _sample_key(self.seed, index)
            if len(self._keyed) < size or (-key, index) > self._keyed[0][:2]:
                entry = (-key, index, get())
                if len(self._keyed) < size:
                    heapq.heappush(self._keyed, entry)
                else:
                    heapq.heapreplace(self._keyed, entry)

    def merge(self, others: Sequence[OverlaySelector]) -> None:
        """Take in what selectors of the same settings kept from other slices (indices unique across all)."""
        for other in others:
            if (other.top_n, other.random_n, other.seed) != (self.top_n, self.random_n, self.seed):
                raise ValueError("OverlaySelector.merge needs selectors with the same top_n, random_n and seed.")
            items = {item.order: item for _, _, item in other._top + other._keyed}
            for item in items.values():
                self._consider(item.score, item.order, item)
            self._seen += other._seen

    @property
    def num_seen(self) -> int:
        return self._seen

    def top(self) -> list[OverlayItem]:
        """Kept top slices, highest score first."""
        return [entry[2] for entry in sorted(self._top, key=lambda e: (-e[0], -e[1]))]

    def sample(self) -> list[OverlayItem]:
        """The random slices (none of them in :meth:`top`), in the order of their indices."""
        in_top = {entry[2].order for entry in self._top}
        candidates = sorted((e for e in self._keyed if e[2].order not in in_top), key=lambda e: -e[0])
        return sorted((e[2] for e in candidates[: self.random_n]), key=lambda item: item.order)


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
            if item.caption:
                title += f"\n{item.caption}"
            save_overlay(
                output_dir / kind / file_name, item.image, item.anomaly_map, item.mask, title, value_range, item.boxes
            )
            rows.append(
                {
                    "kind": kind,
                    "rank": rank,
                    "name": item.name,
                    "score": item.score,
                    "label": label,
                    "png": f"{kind}/{file_name}",
                }
            )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["kind", "rank", "name", "score", "label", "png"])
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "score": f"{row['score']:.6g}"})
    atomic_write_text(output_dir / "index.csv", buffer.getvalue())
    return rows
