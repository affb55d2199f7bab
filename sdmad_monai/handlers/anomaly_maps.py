"""Handlers for protocol 1 (image + pixel level, Table 1): the report files and the PNG overlays.

Both attach to a ``SupervisedEvaluator`` created with ``decollate=False`` whose inferer returns the detector's
``output="all"`` dict (:class:`~sdmad_monai.inferers.DetectorInferer`), so that ``engine.state.output`` is
``{"image": [B, 3, S, S], "label": [B, 1], "pred": {"image_score": [B], "anomaly_map": [B, S, S], ...}}`` (plus the
resized anomaly masks under ``mask_key`` when the evaluator's postprocessing copies them there). They keep a few
numbers per image (report) or at most ``top_n + random_n`` images (overlays), never the whole evaluation set.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine

from ..metrics import binary_auroc, histogram_auroc_error_bound, histogram_average_precision, histogram_best_dice
from ..utils import atomic_write_json, atomic_write_text
from ..visualize import OverlayItem, OverlaySelector, display_image, write_overlays
from .report_figures import image_roc_figure, save_figure
from .utils import EpochReport

__all__ = ["AnomalyMapOverlays", "DetectionReport"]

logger = logging.getLogger(__name__)


def _batch_output(engine: Engine, who: str) -> tuple[dict, dict]:
    output, batch = engine.state.output, engine.state.batch
    if not isinstance(output, dict) or not isinstance(output.get("pred"), Mapping):
        raise TypeError(
            f"{who} needs the evaluator's batch output {{'pred': DetectorOutput}}: use DetectorInferer(output="
            "'all') and create the evaluator with decollate=False."
        )
    return output, batch if isinstance(batch, dict) else {}


def _names(batch: dict, key: str, count: int, offset: int) -> list[str]:
    values = batch.get(key)
    if values is None:
        return [f"image_{offset + i:05d}" for i in range(count)]
    values = values.tolist() if isinstance(values, torch.Tensor) else list(values)
    return [str(v) for v in values]


def _labels(output: dict, batch: dict, key: str, count: int) -> list[int | None]:
    value = output.get(key, batch.get(key))
    if value is None:
        return [None] * count
    value = torch.as_tensor(value).detach().cpu().reshape(count, -1)
    return [int(bool(row.any())) for row in value]


class DetectionReport(EpochReport):
    """Protocol 1 report: image AUROC, pixel AUROC (when evaluated) and per-image scores, written as files.

    At the end of the run it writes into ``output_dir``:

    - ``metrics.json``: ``image_auroc`` (normal vs abnormal, on the detector's ``image_score``), ``pixel_auroc`` and
      its binning ``pixel_auroc_error_bound``, ``pixel_ap`` and ``pixel_best_dice`` (MedIAnomaly's) when the evaluator
      has the :class:`~sdmad_monai.handlers.PixelAUROC` metric ``pixel_metric`` (saved with ``save_details=True``),
      ``image_auroc_map_max`` (the image AUROC of the maximum of each anomaly map, MVFA's image score from maps, for
      comparison), counts and ``info``;
    - ``predictions.csv``: one row per image: name, label, image score, anomaly-map maximum;
    - ``roc.png``: image-level ROC curves of both image scores.

    The headline values also go to ``engine.state.metrics`` (``image_auroc``, ``image_auroc_map_max``).

    Args:
        output_dir: report folder.
        pixel_metric: name of the evaluator's pixel AUROC metric, or ``None`` (image-level only dataset).
        info: written under ``"run"`` (dataset, checkpoint, pixel-level decision...).
        score_key: detector output ranked for the image AUROC.
        map_key: detector output holding the anomaly maps (optional in the output).
        label_key: output/batch key of the ``[B, 1]`` (or ``[B, K]``) labels.
        name_key: batch key naming each image (e.g. ``"file"``).
    """

    def __init__(
        self,
        output_dir: str | Path,
        pixel_metric: str | None = "pixel_auroc",
        info: dict[str, Any] | None = None,
        score_key: str = "image_score",
        map_key: str = "anomaly_map",
        label_key: str = "label",
        name_key: str = "file",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.pixel_metric = pixel_metric
        self.info = dict(info or {})
        self.score_key, self.map_key, self.label_key, self.name_key = score_key, map_key, label_key, name_key
        self.reset()

    def reset(self) -> None:
        self._names: list[str] = []
        self._labels: list[int] = []
        self._scores: list[float] = []
        self._map_max: list[float] = []

    def collect(self, engine: Engine) -> None:
        output, batch = _batch_output(engine, type(self).__name__)
        pred = output["pred"]
        scores = torch.as_tensor(pred[self.score_key]).detach().cpu().reshape(-1).to(torch.float64)
        count = scores.shape[0]
        labels = _labels(output, batch, self.label_key, count)
        if any(label is None for label in labels):
            raise ValueError(f"DetectionReport needs image labels under {self.label_key!r} in the batch.")
        self._names += _names(batch, self.name_key, count, len(self._names))
        self._labels += [int(label) for label in labels if label is not None]  # all not None: checked above
        self._scores += scores.tolist()
        if self.map_key in pred:
            self._map_max += pred[self.map_key].detach().reshape(count, -1).amax(dim=1).cpu().tolist()

    def results(self, engine: Engine | None = None) -> dict[str, Any]:
        """The metrics dict for what was collected so far."""
        if not self._scores:
            raise RuntimeError("DetectionReport collected no image: the evaluation data loader was empty.")
        labels = torch.tensor(self._labels, dtype=torch.bool)
        result: dict[str, Any] = {
            "num_images": len(self._scores),
            "num_normal": int((~labels).sum()),
            "num_abnormal": int(labels.sum()),
            "image_score": f"detector output {self.score_key!r} (sdmad_monai.functional.image_anomaly_score)",
            "image_auroc": float(binary_auroc(torch.tensor(self._scores), labels)),
        }
        if len(self._map_max) == len(self._scores):
            result["image_auroc_map_max"] = float(binary_auroc(torch.tensor(self._map_max), labels))
        if self.pixel_metric is not None:
            state = engine.state if engine is not None else None
            value = getattr(state, "metrics", {}).get(self.pixel_metric) if state is not None else None
            if value is None:
                raise RuntimeError(
                    f"DetectionReport: the evaluator has no metric {self.pixel_metric!r}; add the PixelAUROC handler "
                    "under that name or set pixel_metric to null."
                )
            result["pixel_auroc"] = float(value)
            details = getattr(state, "metric_details", {}).get(self.pixel_metric)
            if details is not None:
                counts = torch.as_tensor(details).reshape(-1, 2, torch.as_tensor(details).shape[-1] // 2).sum(0)
                result["pixel_auroc_error_bound"] = float(histogram_auroc_error_bound(counts))
                result["pixel_ap"] = float(histogram_average_precision(counts))
                result["pixel_best_dice"] = float(histogram_best_dice(counts)[0])
                result["num_pixels"] = int(counts.sum())
                result["num_anomalous_pixels"] = int(counts[1].sum())
        result["run"] = self.info
        return result

    def write(self, engine: Engine | None = None) -> dict[str, Any]:
        """Write ``metrics.json``, ``predictions.csv`` and ``roc.png``; returns the metrics dict."""
        results = self.results(engine)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.output_dir / "metrics.json", results)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        has_map = len(self._map_max) == len(self._scores)
        writer.writerow(["file", "label", "image_score"] + (["anomaly_map_max"] if has_map else []))
        for row in range(len(self._scores)):
            writer.writerow(
                [self._names[row], self._labels[row], f"{self._scores[row]:.6g}"]
                + ([f"{self._map_max[row]:.6g}"] if has_map else [])
            )
        atomic_write_text(self.output_dir / "predictions.csv", buffer.getvalue())
        curves = [("image score", self._scores)] + ([("anomaly-map max", self._map_max)] if has_map else [])
        save_figure(image_roc_figure(self._labels, curves), self.output_dir / "roc.png")
        if engine is not None:
            for key in ("image_auroc", "image_auroc_map_max"):
                if key in results:
                    engine.state.metrics[key] = results[key]
        pixel = results.get("pixel_auroc")
        logger.info(
            "Protocol 1 on %d images (%d abnormal): image AUROC %.4f%s -> %s",
            results["num_images"],
            results["num_abnormal"],
            results["image_auroc"],
            "" if pixel is None else f", pixel AUROC {pixel:.4f}",
            self.output_dir,
        )
        return results


class AnomalyMapOverlays(EpochReport):
    """PNG overlays (image, anomaly-map heat overlay, mask contour) of the top-scoring and a random sample of images.

    See :mod:`sdmad_monai.visualize` for the figure, the selection and the file names; PNGs go to
    ``output_dir/top/``, ``output_dir/random/``, listed in ``output_dir/index.csv``.

    Args:
        output_dir: overlay folder.
        mean: CLIP mean of the detector's preprocessing (to show the image as it was seen).
        std: CLIP std.
        top_n: highest-scoring images to draw.
        random_n: seeded random sample size.
        seed: seed of the sample.
        value_range: ``(vmin, vmax)`` of the shared colour scale (``None``: range of the drawn maps).
        score_key: detector output used for ranking.
        map_key: detector output holding the ``[B, S, S]`` maps.
        mask_key: output/batch key of ``[B, 1, S, S]`` masks (``None`` or absent: no contour).
        label_key: output/batch key of the labels (absent: not shown).
        name_key: batch key naming each image.
    """

    def __init__(
        self,
        output_dir: str | Path,
        mean: Sequence[float],
        std: Sequence[float],
        top_n: int = 10,
        random_n: int = 10,
        seed: int = 0,
        value_range: Sequence[float] | None = None,
        score_key: str = "image_score",
        map_key: str = "anomaly_map",
        mask_key: str | None = "pixel_label",
        label_key: str = "label",
        name_key: str = "file",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.mean, self.std = tuple(mean), tuple(std)
        self.selector = OverlaySelector(top_n, random_n, seed)
        self.value_range = None if value_range is None else (float(value_range[0]), float(value_range[1]))
        self.score_key, self.map_key, self.mask_key = score_key, map_key, mask_key
        self.label_key, self.name_key = label_key, name_key

    def reset(self) -> None:
        self.selector.reset()

    def collect(self, engine: Engine) -> None:
        output, batch = _batch_output(engine, type(self).__name__)
        pred = output["pred"]
        if self.map_key not in pred:
            raise KeyError(
                f"AnomalyMapOverlays: the detector output has no {self.map_key!r}; build the detector with anomaly "
                "maps on (map_layers not empty)."
            )
        maps = pred[self.map_key].detach()
        scores = torch.as_tensor(pred[self.score_key]).detach().cpu().reshape(-1).tolist()
        images = output["image"]
        count = len(scores)
        masks = None
        if self.mask_key is not None:
            masks = output.get(self.mask_key, batch.get(self.mask_key))
        labels = _labels(output, batch, self.label_key, count)
        names = _names(batch, self.name_key, count, self.selector.num_seen)
        for i in range(count):

            def build(i: int = i) -> OverlayItem:
                mask = None if masks is None else torch.as_tensor(masks[i]).detach().cpu().squeeze(0).numpy() > 0.5
                return OverlayItem(
                    score=float(scores[i]),
                    name=names[i],
                    image=display_image(images[i], self.mean, self.std),
                    anomaly_map=maps[i].cpu().to(torch.float32).numpy(),
                    mask=mask,
                    label=labels[i],
                )

            self.selector.offer(scores[i], build)

    def write(self, engine: Engine | None = None) -> list[dict[str, Any]]:
        rows = write_overlays(self.selector, self.output_dir, self.value_range, score_name=self.score_key)
        logger.info("Wrote %d overlay PNG(s) to %s", len(rows), self.output_dir)
        return rows
