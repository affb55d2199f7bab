"""ProtocolReport: the paper's three evaluation protocols for several model variants, written as files.

Attached to a ``SupervisedEvaluator`` whose inferer is :class:`~sdmad_monai.inferers.ProtocolInferer` (and
``decollate=False``), it keeps only per-slice numbers (scores, predictions, labels: a few floats per slice, so memory
stays small on thousands of slices) and at the end of the run writes into ``output_dir``:

- ``metrics.json``: per variant, image AUROC (normal vs abnormal, on the image score ``max_c s_c - cos(img,
  anchor)``), Hamming score and subset accuracy of the Eq. 8 predictions, per-category AUROC of the Eq. 7 scores and
  their mean (undefined categories excluded) -- the columns of the paper's Tables 2-3;
- ``predictions.csv``: one row per slice: file, slice, labels, and per variant scores, predictions and image score;
- ``roc.png``: ROC curves of every variant, one panel per category plus one for the image score (any finding);
  each panel says how many positive and negative slices it rests on, the legend gives each variant's AUROC, and
  the variants differ in line style and width (thick solid, dashed, thin dotted with markers, drawn thickest first)
  so that coinciding curves stay visible;
- ``similarity_heatmap.png``: mean prompt-image cosine similarity per prompt (rows, grouped by category) and image
  category (columns, with their slice counts), for the zero-shot (``clip``) and the trained (``sdmad``) model on one
  shared colour scale, like the paper's Figure 4; the prompts that sign selection (Eq. 6) drops for each panel's
  prompt features are marked, and each category's own prompts are outlined in its column;
- ``overlays/top/*.png``, ``overlays/random/*.png``, ``overlays/index.csv``: anomaly-map overlays of the slices with
  the highest ``sdmad`` image score and of a seeded random sample of the other slices, with the annotated boxes of
  the datalist items (:mod:`sdmad_monai.visualize`), when the ``sdmad`` variant computes anomaly maps.

When the detector's backbone is the demo one or has random weights (or the data are the generated demo data), both
figures carry a visible note that they show the workflow, not clinical performance (:func:`backbone_note`).

The metrics come from the evaluator's MONAI metric handlers (:func:`protocol_metric_handlers`, the evaluator's
``additional_metrics`` in ``configs/evaluate.json``; the protocols are named in :mod:`sdmad_monai.protocols`); a
report attached to an engine without them computes the same functions itself (``metrics_computed_by`` in
``metrics.json`` says which). The headline numbers are also left in ``engine.state.metrics`` as
``"<variant>/<metric>"``.

Size: ProtocolReport (collect, gather under torch.distributed, write four kinds of output) and the protocol
metric functions and handlers it reads.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine

from ..metrics import binary_auroc, compute_auroc, compute_hamming_score, compute_subset_accuracy
from ..utils import atomic_write_json, atomic_write_text, distributed_run
from ..visualize import OverlayItem, OverlaySelector, box_to_input_frame, display_image, write_overlays
from .report_figures import HeatmapRows, backbone_note, heatmap_figure, heatmap_rows, roc_figure, save_figure
from .utils import EpochReport

__all__ = ["ProtocolReport", "all_negative_baseline", "protocol_metric_handlers", "protocol_metrics"]

logger = logging.getLogger(__name__)


def protocol_metrics(
    scores: torch.Tensor,
    predictions: torch.Tensor,
    image_scores: torch.Tensor,
    labels: torch.Tensor,
    category_names: Sequence[str],
) -> dict[str, Any]:
    """The three protocols for one variant.

    Args:
        scores: ``[N, K]`` Eq. 7 scores.
        predictions: ``[N, K]`` Eq. 8 predictions.
        image_scores: ``[N]`` normal-vs-abnormal scores.
        labels: ``[N, K]`` multi-hot labels.
        category_names: ``K`` names (keys of ``category_auroc``).

    Returns:
        Dict of floats; undefined AUROCs are ``NaN`` (written as ``null`` in ``metrics.json``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined categories are reported as NaN (null in the file)
        per_category = compute_auroc(scores, labels, average="none", category_names=category_names)
    defined = per_category[~torch.isnan(per_category)]
    return {
        "image_auroc": float(binary_auroc(image_scores, labels.any(dim=1))),
        "hamming_score": float(compute_hamming_score(predictions, labels).double().mean()),
        "subset_accuracy": float(compute_subset_accuracy(predictions, labels).double().mean()),
        "category_auroc": {name: float(value) for name, value in zip(category_names, per_category)},
        "mean_category_auroc": float(defined.mean()) if defined.numel() else math.nan,
        "num_categories_in_mean": int(defined.numel()),
    }


#: The per-variant metrics ProtocolReport takes from the evaluator's metric handlers (protocols 1-3,
#: :mod:`sdmad_monai.protocols`), as ``engine.state.metrics["<variant>/<name>"]``.
HANDLER_METRICS = ("image_auroc", "hamming_score", "subset_accuracy", "category_auroc")


def protocol_metric_handlers(
    variants: Sequence[str], category_names: Sequence[str], key: bool = False
) -> dict[str, Any]:
    """The MONAI metric handlers that compute protocols 1-3 for each evaluation variant, named
    ``"<variant>/<metric>"`` (``configs/evaluate.json``). MONAI registers an evaluator's ``additional_metrics`` only
    with a ``key_val_metric``, so ``key=True`` gives the first one (the first variant's image AUROC) for that and
    ``key=False`` the others.

    Each reads its variant's :class:`~sdmad_monai.networks.outputs.DetectorOutput` field through
    :func:`~sdmad_monai.handlers.detector_output`: ``image_score`` (protocol 1, image AUROC), ``predictions``
    (protocol 2, Hamming score and subset accuracy of Eq. 8), ``scores`` (protocol 3, the ``[K]`` per-category AUROC
    of Eq. 7). :class:`ProtocolReport` writes these values; it computes them itself only when the engine has none.

    Args:
        variants: the :class:`~sdmad_monai.inferers.ProtocolInferer` variants.
        category_names: the ``K`` category labels (name the undefined categories in warnings).
        key: the key metric alone, or all the others.
    """
    from .auroc import CategoryAUROC, ImageAUROC
    from .multilabel_accuracy import HammingScore, SubsetAccuracy
    from .utils import detector_output

    handlers: dict[str, Any] = {}
    for variant in variants:
        handlers[f"{variant}/image_auroc"] = ImageAUROC(
            output_transform=detector_output("image_score", variant=variant)
        )
        handlers[f"{variant}/hamming_score"] = HammingScore(
            output_transform=detector_output("predictions", variant=variant), save_details=False
        )
        handlers[f"{variant}/subset_accuracy"] = SubsetAccuracy(
            output_transform=detector_output("predictions", variant=variant), save_details=False
        )
        handlers[f"{variant}/category_auroc"] = CategoryAUROC(
            average="none",
            output_transform=detector_output("scores", variant=variant),
            category_names=list(category_names),
        )
    first = next(iter(handlers))
    return {first: handlers[first]} if key else {name: h for name, h in handlers.items() if name != first}


def _metrics_from_handlers(
    engine_metrics: Mapping[str, Any], variant: str, category_names: Sequence[str]
) -> dict[str, Any] | None:
    """A variant's protocol metrics as the evaluator's handlers computed them, or ``None`` when it has none."""
    if not all(f"{variant}/{name}" in engine_metrics for name in HANDLER_METRICS):
        return None
    per_category = torch.as_tensor(engine_metrics[f"{variant}/category_auroc"], dtype=torch.float64).reshape(-1)
    defined = per_category[~torch.isnan(per_category)]
    return {
        "image_auroc": float(engine_metrics[f"{variant}/image_auroc"]),
        "hamming_score": float(engine_metrics[f"{variant}/hamming_score"]),
        "subset_accuracy": float(engine_metrics[f"{variant}/subset_accuracy"]),
        "category_auroc": {name: float(value) for name, value in zip(category_names, per_category.tolist())},
        "mean_category_auroc": float(defined.mean()) if defined.numel() else math.nan,
        "num_categories_in_mean": int(defined.numel()),
    }


#: Line styles of the ROC curves per variant: drawn thickest first, so a thinner curve lies on top of a coinciding one.
def all_negative_baseline(labels: torch.Tensor) -> dict[str, Any]:
    """What Eq. 8's metrics give for a predictor that reports no finding on any slice.

    Its Hamming score is the share of negative labels and its subset accuracy the share of normal slices: a model's
    Eq. 8 predictions say something only where they beat these.

    Args:
        labels: ``[N, K]`` multi-hot labels.
    """
    none = torch.zeros_like(labels)
    return {
        "hamming_score": float(compute_hamming_score(none, labels).mean()),
        "subset_accuracy": float(compute_subset_accuracy(none, labels).mean()),
        "predicts": "no finding on any slice",
    }


class ProtocolReport(EpochReport):
    """Collect per-slice results of :class:`~sdmad_monai.inferers.ProtocolInferer` and write the report files.

    Args:
        output_dir: folder for ``metrics.json``, ``predictions.csv``, ``roc.png``, ``similarity_heatmap.png`` and
            ``overlays/``.
        category_names: category labels in channel order (column names).
        display_names: short names for figures; defaults to ``category_names``.
        prompt_texts: the detector's prompts (rows of the heatmap); ``None`` skips the heatmap.
        prompt_categories: category index of each prompt (``-1`` normal), to group the heatmap rows.
        label_key: batch key of the ``[B, K]`` labels.
        meta_keys: batch keys copied to the CSV (e.g. ``file``, ``slice``) when present.
        extra_info: written under ``"run"`` in ``metrics.json`` (checkpoint path, datalist...).
        backbone: the detector's ``config``, to tell demo or random-weight backbones (:func:`backbone_note`).
        data_settings: the splits' ``"settings"`` (:func:`sdmad_monai.workflows.prepare_splits`), to tell demo data.
        image_mean: CLIP mean of the preprocessing, to show the slices as the detector saw them in the overlays.
        image_std: CLIP std of the preprocessing.
        overlays_top: overlays of the slices with the highest ``overlay_variant`` image score (0: none).
        overlays_random: overlays of a seeded random sample of the other slices (0: none).
        overlay_seed: seed of that sample.
        overlay_variant: the variant whose anomaly maps and image scores the overlays show (it needs the detector's
            ``anomaly_map`` output; without it no overlay is written).
        image_key: output/batch key of the ``[B, 3, S, S]`` model inputs.
        boxes_key: batch key of the items' boxes (:func:`sdmad_monai.data.fastmri.decode_boxes`), drawn on overlays.
        box_frame_key: batch key saying how the boxes relate to the slices (``"display"`` or ``"flipped_rows"``).
    """

    def __init__(
        self,
        output_dir: str | Path,
        category_names: Sequence[str],
        display_names: Sequence[str] | None = None,
        prompt_texts: Sequence[str] | None = None,
        prompt_categories: Sequence[int] | torch.Tensor | None = None,
        label_key: str = "label",
        meta_keys: Sequence[str] = ("file", "slice"),
        extra_info: dict[str, Any] | None = None,
        backbone: Mapping[str, Any] | None = None,
        data_settings: Mapping[str, Any] | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        overlays_top: int = 4,
        overlays_random: int = 4,
        overlay_seed: int = 0,
        overlay_variant: str = "sdmad",
        image_key: str = "image",
        boxes_key: str = "boxes",
        box_frame_key: str = "box_frame",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.category_names = list(category_names)
        self.display_names = list(display_names) if display_names is not None else self.category_names
        self.prompt_texts = list(prompt_texts) if prompt_texts is not None else None
        self.prompt_categories = [int(c) for c in prompt_categories] if prompt_categories is not None else None
        self.label_key = label_key
        self.meta_keys = tuple(meta_keys)
        self.extra_info = dict(extra_info or {})
        self.note = backbone_note(backbone, data_settings)
        #: per variant, who computed its metrics in the last :meth:`results`: the metric handlers or this report
        self.metric_source: dict[str, str] = {}
        if (image_mean is None) != (image_std is None):
            raise ValueError("Give both image_mean and image_std, or neither.")
        self.image_mean = None if image_mean is None else tuple(float(v) for v in image_mean)
        self.image_std = None if image_std is None else tuple(float(v) for v in image_std)
        self.overlay_variant = overlay_variant
        self.image_key, self.boxes_key, self.box_frame_key = image_key, boxes_key, box_frame_key
        self._selector = (
            OverlaySelector(overlays_top, overlays_random, overlay_seed) if overlays_top or overlays_random else None
        )
        self.reset()

    def reset(self) -> None:
        self._labels: list[torch.Tensor] = []
        self._meta: dict[str, list] = {key: [] for key in self.meta_keys}
        self._variant: dict[str, dict[str, list[torch.Tensor]]] = {}
        self._similarity_sum: dict[str, torch.Tensor] = {}
        self._similarity_count = torch.zeros(len(self.category_names) + 1, dtype=torch.float64)
        self._keep: dict[str, torch.Tensor] = {}
        self._overlay_skipped: str | None = None
        self._box_size_unknown = 0
        self._indices: list[int] | None = None  # dataset index of each collected row, under torch.distributed
        if self._selector is not None:
            self._selector.reset()

    def started(self, engine: Engine) -> None:
        """Reset, and under torch.distributed read which dataset rows this process gets from its sampler."""
        self.reset()
        if distributed_run():
            sampler = getattr(engine.state.dataloader, "sampler", None)
            if not isinstance(sampler, torch.utils.data.DistributedSampler):
                raise TypeError(
                    "ProtocolReport under torch.distributed needs the evaluation DataLoader to use a "
                    "DistributedSampler (configs/multi_gpu_evaluate.json sets validate#dataloader#sampler)."
                )
            self._indices = [int(i) for i in iter(sampler)]

    def _index(self, row: int) -> int:
        """The dataset index of collected row ``row`` (the row itself in one process)."""
        return row if self._indices is None else self._indices[row]

    # ------------------------------------------------------------------ collecting
    def collect(self, engine: Engine) -> None:
        output, batch = engine.state.output, engine.state.batch
        if not isinstance(output, dict) or not isinstance(output.get("pred"), dict):
            raise TypeError(
                "ProtocolReport needs the evaluator's output {'pred': {variant: outputs}} of ProtocolInferer with "
                "decollate=False."
            )
        batch = batch if isinstance(batch, dict) else {}
        labels = torch.as_tensor(output.get("label", batch.get(self.label_key))).detach().cpu().to(torch.float64)
        offset = sum(chunk.shape[0] for chunk in self._labels)
        self._labels.append(labels)
        for key in self.meta_keys:  # a key missing from a batch leaves empty cells, keeping the rows aligned
            values = batch.get(key, [""] * labels.shape[0])
            self._meta[key].extend(values.tolist() if isinstance(values, torch.Tensor) else list(values))
        # one column per category plus a "normal" column (images with no label)
        groups = torch.cat([labels, (~labels.bool().any(dim=1, keepdim=True)).to(labels.dtype)], dim=1)
        self._similarity_count += groups.sum(dim=0)
        for variant, result in output["pred"].items():
            store = self._variant.setdefault(variant, {"scores": [], "predictions": [], "image_score": []})
            for key in store:
                store[key].append(result[key].detach().cpu().to(torch.float64))
            similarities = result["similarities"].detach().cpu().to(torch.float64)  # [B, P]
            total = similarities.T @ groups  # [P, K + 1]
            self._similarity_sum[variant] = self._similarity_sum.get(variant, 0) + total
            if variant not in self._keep:  # the text state's mask: the same tensor every batch
                keep = result.get("sign_selection_keep", result.get("keep"))
                if keep is not None:
                    self._keep[variant] = torch.as_tensor(keep).detach().cpu().bool()
        if self._selector is not None:
            self._offer_overlays(output, batch, labels, offset)

    def _offer_overlays(self, output: dict, batch: dict, labels: torch.Tensor, offset: int) -> None:
        result = output["pred"].get(self.overlay_variant)
        images = output.get(self.image_key, batch.get(self.image_key))
        if result is None or "anomaly_map" not in result or images is None or self.image_mean is None:
            self._overlay_skipped = (
                f"variant {self.overlay_variant!r} not evaluated"
                if result is None
                else "the detector computes no anomaly maps (map_layers=[])"
                if "anomaly_map" not in result
                else f"no {self.image_key!r} in the batch"
                if images is None
                else "image_mean/image_std not given"
            )
            return
        mean, std, selector = self.image_mean, self.image_std, self._selector
        if std is None or selector is None:  # __init__ sets image_std with image_mean; the caller checks the selector
            raise RuntimeError("overlays need image_std and the overlay selector.")
        count = labels.shape[0]
        scores = result["image_score"].detach().cpu().reshape(-1).tolist()
        maps = result["anomaly_map"]
        predictions = result["predictions"].detach().cpu()
        names = self._slice_names(batch, count, offset)
        boxes = batch.get(self.boxes_key)
        frames = batch.get(self.box_frame_key)
        source = batch.get(self.image_key, images)
        sizes: list[tuple[int, int] | None] | None = None  # read from the metadata only when a kept slice has boxes
        for i in range(count):

            def build(i: int = i) -> OverlayItem:
                nonlocal sizes
                drawn = None
                item_boxes = _item_boxes(boxes, i)
                if item_boxes:
                    if sizes is None:
                        sizes = _original_slice_sizes(source, count)
                    size = sizes[i]
                    if size is None:
                        self._box_size_unknown += 1
                    else:
                        flipped = _item_value(frames, i) == "flipped_rows"
                        side = int(torch.as_tensor(images[i]).shape[-1])
                        drawn = [box_to_input_frame(b, size, side, flipped) for b in item_boxes]
                return OverlayItem(
                    score=float(scores[i]),
                    name=names[i],
                    image=display_image(images[i], mean, std),
                    anomaly_map=maps[i].detach().cpu().to(torch.float32).numpy(),
                    label=int(bool(labels[i].any())),
                    boxes=drawn,
                    caption=self._caption(labels[i], predictions[i]),
                )

            selector.offer(scores[i], build, index=self._index(offset + i))

    def _slice_names(self, batch: dict, count: int, offset: int) -> list[str]:
        files = batch.get("file")
        slices = batch.get("slice")
        names = []
        for i in range(count):
            file = _item_value(files, i)
            index = _item_value(slices, i)
            if file is None:
                names.append(f"slice_{self._index(offset + i):05d}")
            else:
                names.append(f"{file} slice {index}" if index is not None else str(file))
        return names

    def _caption(self, label: torch.Tensor, prediction: torch.Tensor) -> str:
        def listing(row: torch.Tensor) -> str:
            chosen = [name for name, value in zip(self.display_names, row.tolist()) if value > 0.5]
            return ", ".join(chosen) if chosen else "none"

        return f"labels: {listing(label)} | {self.overlay_variant} predicts: {listing(prediction)}"

    # ------------------------------------------------------------------ writing
    def results(self, engine_metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Metrics per variant for what was collected so far.

        Args:
            engine_metrics: the evaluator's ``engine.state.metrics``: a variant whose protocol metrics the metric
                handlers computed (:func:`protocol_metric_handlers`) is reported with their values; otherwise
                (a report attached without them) they are computed here from the collected rows.
        """
        if not self._labels:
            raise RuntimeError("ProtocolReport collected no slice: the evaluation data loader was empty.")
        labels = torch.cat(self._labels)
        variants = {}
        self.metric_source = {}
        for variant, store in self._variant.items():
            from_handlers = _metrics_from_handlers(engine_metrics or {}, variant, self.category_names)
            self.metric_source[variant] = "metric handlers" if from_handlers is not None else "ProtocolReport"
            if from_handlers is not None:
                variants[variant] = from_handlers
                continue
            variants[variant] = protocol_metrics(
                torch.cat(store["scores"]),
                torch.cat(store["predictions"]),
                torch.cat(store["image_score"]),
                labels,
                self.category_names,
            )
        positives = labels.sum(dim=0).tolist()
        results = {
            "num_slices": int(labels.shape[0]),
            "num_normal_slices": int((~labels.bool().any(dim=1)).sum()),
            "positives_per_category": dict(zip(self.category_names, [int(p) for p in positives])),
            "categories": self.category_names,
            "image_score": "max_c s_c - cos(image, anchor) (sdmad_monai.functional.image_anomaly_score)",
            "variants": variants,
            "metrics_computed_by": dict(self.metric_source),
            "baselines": {"all_negative": all_negative_baseline(labels)},
            "run": self.extra_info,
        }
        if self.prompt_texts is not None and self._keep:
            results["sign_selection"] = {
                variant: {
                    "num_prompts": int(keep.numel()),
                    "num_kept": int(keep.sum()),
                    "dropped_prompts": [t for t, k in zip(self.prompt_texts, keep.tolist()) if not k],
                }
                for variant, keep in self._keep.items()
                if keep.numel() == len(self.prompt_texts)
            }
        if self.note:
            results["note"] = self.note
        return results

    def _gather(self) -> bool:
        """Under torch.distributed: bring every process's collected rows to process 0, in dataset order, as one
        process would have collected them (metrics are then computed once, on all slices, never averaged per
        process). Returns whether this process writes the report."""
        if not distributed_run():
            return True
        import torch.distributed as dist

        variants = {v: {k: torch.cat(chunks) for k, chunks in store.items()} for v, store in self._variant.items()}
        mine = {
            "indices": list(self._indices or []), "labels": torch.cat(self._labels) if self._labels else None,
            "meta": self._meta, "variants": variants, "similarity_sum": self._similarity_sum,
            "similarity_count": self._similarity_count, "keep": self._keep, "skipped": self._overlay_skipped,
            "box_size_unknown": self._box_size_unknown, "selector": self._selector,
        }  # fmt: skip
        shares: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(shares, mine)
        if dist.get_rank() != 0:
            return False
        others = [share["selector"] for share in shares[1:]]  # process 0's own selector is self._selector
        shares = [share for share in shares if share["labels"] is not None]
        order = torch.as_tensor([i for share in shares for i in share["indices"]]).argsort().tolist()

        def ordered(values: list) -> list:
            return [values[i] for i in order]

        self._labels = [torch.cat([share["labels"] for share in shares])[order]]
        self._meta = {k: ordered([v for share in shares for v in share["meta"][k]]) for k in self._meta}
        self._variant = {
            v: {k: [torch.cat([share["variants"][v][k] for share in shares])[order]] for k in store}
            for v, store in shares[0]["variants"].items()
        }
        self._similarity_sum = {
            v: sum(share["similarity_sum"][v] for share in shares) for v in shares[0]["similarity_sum"]
        }
        self._keep = next((share["keep"] for share in shares if share["keep"]), {})
        self._similarity_count = sum(share["similarity_count"] for share in shares)
        self._overlay_skipped = next((share["skipped"] for share in shares if share["skipped"]), None)
        self._box_size_unknown = sum(share["box_size_unknown"] for share in shares)
        self._indices = None
        if self._selector is not None:
            self._selector.merge(others)
        return True

    def write(self, engine: Engine | None = None) -> dict[str, Any] | None:
        """Write all report files; returns the metrics dict (``None`` on the processes of a distributed evaluation
        that do not write it)."""
        if not self._gather():
            return None
        results = self.results(engine.state.metrics if engine is not None else None)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.output_dir / "metrics.json", results)
        self._write_csv()
        save_figure(self.roc_figure(), self.output_dir / "roc.png")
        if self.prompt_texts is not None:
            save_figure(self.heatmap_figure(), self.output_dir / "similarity_heatmap.png")
        self._write_overlays()
        if engine is not None:
            for variant, values in results["variants"].items():
                for key in ("image_auroc", "hamming_score", "subset_accuracy", "mean_category_auroc"):
                    engine.state.metrics[f"{variant}/{key}"] = values[key]
                engine.state.metrics.pop(f"{variant}/category_auroc", None)  # the [K] tensor: in metrics.json
        lines = [f"{'variant':<14}{'img AUROC':>10}{'Hamming':>9}{'subset':>8}{'cat AUROC':>10}"]
        for variant, values in results["variants"].items():
            lines.append(
                f"{variant:<14}{values['image_auroc']:>10.3f}{values['hamming_score']:>9.3f}"
                f"{values['subset_accuracy']:>8.3f}{values['mean_category_auroc']:>10.3f}"
            )
        logger.info(
            "Evaluation on %d slices, written to %s:\n%s", results["num_slices"], self.output_dir, "\n".join(lines)
        )
        if self.note:
            logger.warning("Note: %s.", self.note)
        return results

    def _write_overlays(self) -> None:
        if self._selector is None:
            return
        if self._overlay_skipped is not None or self._selector.num_seen == 0:
            logger.warning("No overlay PNGs: %s.", self._overlay_skipped or "no slice offered")
            return
        rows = write_overlays(
            self._selector, self.output_dir / "overlays", score_name=f"{self.overlay_variant} image score"
        )
        if self._box_size_unknown:
            logger.warning(
                "Boxes of %d overlay slice(s) not drawn: the slice's original size is not in the image metadata.",
                self._box_size_unknown,
            )
        logger.info("Wrote %d overlay PNG(s) to %s", len(rows), self.output_dir / "overlays")

    def _write_csv(self) -> None:
        labels = torch.cat(self._labels)
        present = [k for k in self.meta_keys if any(v != "" for v in self._meta[k])]
        header = present + [f"label:{n}" for n in self.category_names]
        columns: list[torch.Tensor] = [labels]
        for variant, store in self._variant.items():
            header += [f"{variant}:score:{n}" for n in self.category_names]
            header += [f"{variant}:prediction:{n}" for n in self.category_names]
            header.append(f"{variant}:image_score")
            columns += [
                torch.cat(store["scores"]),
                torch.cat(store["predictions"]),
                torch.cat(store["image_score"])[:, None],
            ]
        numbers = torch.cat(columns, dim=1).tolist()
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        meta_columns = [self._meta[k] for k in present]
        for index, row in enumerate(numbers):
            writer.writerow([column[index] for column in meta_columns] + [f"{v:.6g}" for v in row])
        atomic_write_text(self.output_dir / "predictions.csv", buffer.getvalue())

    def roc_figure(self) -> Any:
        """The ``roc.png`` figure of what was collected (not saved; see :func:`roc_figure`)."""
        labels = torch.cat(self._labels).numpy()
        scores = {v: torch.cat(store["scores"]).numpy() for v, store in self._variant.items()}
        image_scores = {v: torch.cat(store["image_score"]).numpy() for v, store in self._variant.items()}
        return roc_figure(labels, scores, self.display_names, image_scores, self.note)

    def heatmap_variants(self) -> list[str]:
        """The heatmap panels: ``clip`` and ``sdmad`` (the paper's Figure 4 a, b) when evaluated, else all variants."""
        return [v for v in ("clip", "sdmad") if v in self._similarity_sum] or list(self._similarity_sum)

    def heatmap_rows(self) -> HeatmapRows:
        """Rows of the heatmap with the sign-selection marks of each panel (:func:`heatmap_rows`)."""
        if self.prompt_texts is None:
            raise RuntimeError("ProtocolReport has no prompt_texts: there is no heatmap.")
        variants = self.heatmap_variants()
        keep = {v: self._keep[v] for v in variants if v in self._keep}
        return heatmap_rows(self.prompt_texts, self.prompt_categories, self.display_names, keep)

    def heatmap_figure(self) -> Any:
        """The ``similarity_heatmap.png`` figure of what was collected (not saved; see :func:`heatmap_figure`)."""
        rows = self.heatmap_rows()
        counts = self._similarity_count
        means = {}
        for variant in self.heatmap_variants():
            mean = (self._similarity_sum[variant] / counts.clamp(min=1)).numpy()
            mean[:, counts.numpy() == 0] = np.nan  # a column without images has no mean
            means[variant] = mean[rows.order]
        return heatmap_figure(
            means,
            rows,
            self.display_names + ["Normal"],
            counts.round().to(torch.int64).tolist(),
            self.note,
            int(sum(chunk.shape[0] for chunk in self._labels)),
        )


def _item_value(values: Any, index: int) -> Any:
    """Entry ``index`` of a collated batch field (list, tuple or tensor), ``None`` when absent."""
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        return values.reshape(-1)[index].item() if values.numel() > index else None
    if isinstance(values, (list, tuple)):
        return values[index] if len(values) > index else None
    return values


def _item_boxes(boxes: Any, index: int) -> list:
    from ..data.fastmri import decode_boxes

    value = _item_value(boxes, index)
    try:
        return decode_boxes(value)
    except (ValueError, TypeError):
        logger.warning("Ignoring unreadable boxes %r.", value)
        return []


def _original_slice_sizes(image: Any, count: int) -> list[tuple[int, int] | None]:
    """``(H, W)`` of each slice before ``ResizeToSquare``, from the collated ``ExtractSlices`` metadata (the volume's
    shape and affine and the slicing axis); ``None`` where they are missing."""
    from ..transforms.slices import slice_geometry

    meta = getattr(image, "meta", None)
    if not meta:
        return [None] * count
    try:
        axes = meta["slice_axis"]
        axes = [axes] * count if isinstance(axes, str) else list(axes)
        affines = torch.as_tensor(meta["volume_affine"]).to(torch.float64)
        affines = affines.reshape(-1, 4, 4).expand(count, 4, 4) if affines.ndim == 2 else affines
        shape = meta["volume_spatial_shape"]
        shapes = torch.stack([torch.as_tensor(v).reshape(-1) for v in shape], dim=1).expand(count, 3)
    except (KeyError, TypeError, ValueError, RuntimeError):
        return [None] * count
    sizes: list[tuple[int, int] | None] = []
    for i in range(count):
        try:
            spatial = [int(v) for v in shapes[i].tolist()]
            geometry = slice_geometry(affines[i].numpy(), spatial, str(axes[i]))
            sizes.append((spatial[geometry.row_dim], spatial[geometry.col_dim]))
        except (IndexError, ValueError, TypeError):
            sizes.append(None)
    return sizes
