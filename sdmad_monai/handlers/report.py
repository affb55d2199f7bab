"""ProtocolReport: the paper's three evaluation protocols for several model variants, written as files.

Attached to a ``SupervisedEvaluator`` whose inferer is :class:`~sdmad_monai.inferers.ProtocolInferer` (and
``decollate=False``), it keeps only per-slice numbers (scores, predictions, labels: a few floats per slice, so memory
stays small on thousands of slices) and at the end of the run writes into ``output_dir``:

- ``metrics.json``: per variant, image AUROC (normal vs abnormal, on the image score ``max_c s_c - cos(img,
  anchor)``), Hamming score and subset accuracy of the Eq. 8 predictions, per-category AUROC of the Eq. 7 scores and
  their mean (undefined categories excluded) -- the columns of the paper's Tables 2-3;
- ``predictions.csv``: one row per slice: file, slice, labels, and per variant scores, predictions and image score;
- ``roc.png``: per-category ROC curves of every variant;
- ``similarity_heatmap.png``: mean prompt-image cosine similarity per prompt (rows) and image category (columns),
  for the zero-shot and the trained model, like the paper's Figure 4.

The headline numbers also go to ``engine.state.metrics`` as ``"<variant>/<metric>"``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from ..metrics import binary_auroc, compute_auroc, compute_hamming_score, compute_subset_accuracy
from ..utils import atomic_path, atomic_write_json, atomic_write_text

__all__ = ["ProtocolReport", "protocol_metrics"]

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
        JSON-ready dict; undefined AUROCs are ``NaN``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined categories are reported as NaN in the file itself
        per_category = compute_auroc(scores, labels, average="none", category_names=category_names)
    defined = per_category[~torch.isnan(per_category)]
    return {
        "image_auroc": float(binary_auroc(image_scores, labels.any(dim=1))),
        "hamming_score": float(compute_hamming_score(predictions, labels).mean()),
        "subset_accuracy": float(compute_subset_accuracy(predictions, labels).mean()),
        "category_auroc": {name: float(value) for name, value in zip(category_names, per_category)},
        "mean_category_auroc": float(defined.mean()) if defined.numel() else math.nan,
        "num_categories_in_mean": int(defined.numel()),
    }


class ProtocolReport:
    """Collect per-slice results of :class:`~sdmad_monai.inferers.ProtocolInferer` and write the report files.

    Args:
        output_dir: folder for ``metrics.json``, ``predictions.csv``, ``roc.png``, ``similarity_heatmap.png``.
        category_names: category labels in channel order (column names).
        display_names: short names for figures; defaults to ``category_names``.
        prompt_texts: the detector's prompts (rows of the heatmap); ``None`` skips the heatmap.
        prompt_categories: category index of each prompt (``-1`` normal), to annotate heatmap rows.
        label_key: batch key of the ``[B, K]`` labels.
        meta_keys: batch keys copied to the CSV (e.g. ``file``, ``slice``) when present.
        extra_info: written under ``"run"`` in ``metrics.json`` (checkpoint path, datalist...).
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
    ) -> None:
        self.output_dir = Path(output_dir)
        self.category_names = list(category_names)
        self.display_names = list(display_names) if display_names is not None else self.category_names
        self.prompt_texts = list(prompt_texts) if prompt_texts is not None else None
        self.prompt_categories = (
            [int(c) for c in prompt_categories] if prompt_categories is not None else None
        )
        self.label_key = label_key
        self.meta_keys = tuple(meta_keys)
        self.extra_info = dict(extra_info or {})
        self.reset()

    def reset(self) -> None:
        self._labels: list[torch.Tensor] = []
        self._meta: dict[str, list] = {key: [] for key in self.meta_keys}
        self._variant: dict[str, dict[str, list[torch.Tensor]]] = {}
        self._similarity_sum: dict[str, torch.Tensor] = {}
        self._similarity_count = torch.zeros(len(self.category_names) + 1, dtype=torch.float64)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    # ------------------------------------------------------------------ collecting
    def collect(self, engine: Engine) -> None:
        output, batch = engine.state.output, engine.state.batch
        if not isinstance(output, dict) or not isinstance(output.get("pred"), dict):
            raise TypeError(
                "ProtocolReport needs the evaluator's output {'pred': {variant: outputs}} of ProtocolInferer with "
                "decollate=False."
            )
        labels = torch.as_tensor(output.get("label", batch.get(self.label_key))).detach().cpu().to(torch.float64)
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

    # ------------------------------------------------------------------ writing
    def results(self) -> dict[str, Any]:
        """Metrics per variant for what was collected so far."""
        if not self._labels:
            raise RuntimeError("ProtocolReport collected no slice: the evaluation data loader was empty.")
        labels = torch.cat(self._labels)
        variants = {}
        for variant, store in self._variant.items():
            variants[variant] = protocol_metrics(
                torch.cat(store["scores"]),
                torch.cat(store["predictions"]),
                torch.cat(store["image_score"]),
                labels,
                self.category_names,
            )
        positives = labels.sum(dim=0).tolist()
        return {
            "num_slices": int(labels.shape[0]),
            "num_normal_slices": int((~labels.bool().any(dim=1)).sum()),
            "positives_per_category": dict(zip(self.category_names, [int(p) for p in positives])),
            "categories": self.category_names,
            "image_score": "max_c s_c - cos(image, anchor) (sdmad_monai.functional.image_anomaly_score)",
            "variants": variants,
            "run": self.extra_info,
        }

    def write(self, engine: Engine | None = None) -> dict[str, Any]:
        """Write all report files; returns the metrics dict."""
        results = self.results()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.output_dir / "metrics.json", results)
        self._write_csv()
        self._plot_roc()
        if self.prompt_texts is not None:
            self._plot_heatmap()
        if engine is not None:
            for variant, values in results["variants"].items():
                for key in ("image_auroc", "hamming_score", "subset_accuracy", "mean_category_auroc"):
                    engine.state.metrics[f"{variant}/{key}"] = values[key]
        lines = [f"{'variant':<14}{'img AUROC':>10}{'Hamming':>9}{'subset':>8}{'cat AUROC':>10}"]
        for variant, values in results["variants"].items():
            lines.append(
                f"{variant:<14}{values['image_auroc']:>10.3f}{values['hamming_score']:>9.3f}"
                f"{values['subset_accuracy']:>8.3f}{values['mean_category_auroc']:>10.3f}"
            )
        logger.info("Evaluation on %d slices, written to %s:\n%s", results["num_slices"], self.output_dir, "\n".join(lines))
        return results

    def _write_csv(self) -> None:
        labels = torch.cat(self._labels)
        present = [k for k in self.meta_keys if any(v != "" for v in self._meta[k])]
        header = present + [f"label:{n}" for n in self.category_names]
        columns: list[torch.Tensor] = [labels]
        for variant, store in self._variant.items():
            header += [f"{variant}:score:{n}" for n in self.category_names]
            header += [f"{variant}:prediction:{n}" for n in self.category_names]
            header.append(f"{variant}:image_score")
            columns += [torch.cat(store["scores"]), torch.cat(store["predictions"]), torch.cat(store["image_score"])[:, None]]
        numbers = torch.cat(columns, dim=1).tolist()
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        meta_columns = [self._meta[k] for k in present]
        for index, row in enumerate(numbers):
            writer.writerow([column[index] for column in meta_columns] + [f"{v:.6g}" for v in row])
        atomic_write_text(self.output_dir / "predictions.csv", buffer.getvalue())

    def _plot_roc(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from sklearn.metrics import roc_curve

        labels = torch.cat(self._labels).numpy()
        count = len(self.category_names)
        columns = min(3, count)
        rows = math.ceil(count / columns)
        figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.6 * rows), squeeze=False)
        for index, name in enumerate(self.display_names):
            axis = axes[index // columns][index % columns]
            axis.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
            y = labels[:, index]
            for variant, store in self._variant.items():
                if y.min() == y.max():
                    continue
                scores = torch.cat(store["scores"])[:, index].numpy()
                fpr, tpr, _ = roc_curve(y, scores)
                auc = float(binary_auroc(torch.from_numpy(scores), torch.from_numpy(y).bool()))
                axis.plot(fpr, tpr, label=f"{variant} ({auc:.2f})")
            axis.set_title(name if y.min() != y.max() else f"{name}\n(one class only: no ROC)", fontsize=9)
            axis.set_xlabel("false positive rate")
            axis.set_ylabel("true positive rate")
            if y.min() != y.max():
                axis.legend(fontsize=7, loc="lower right")
        for index in range(count, rows * columns):
            axes[index // columns][index % columns].axis("off")
        figure.tight_layout()
        self._save_figure(figure, "roc.png")

    def _plot_heatmap(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        counts = self._similarity_count.clamp(min=1)
        variants = [v for v in ("clip", "sdmad") if v in self._similarity_sum] or list(self._similarity_sum)
        rows = len(self.prompt_texts)
        figure, axes = plt.subplots(1, len(variants), figsize=(5 + 4 * len(variants), 0.28 * rows + 2), squeeze=False)
        names = ["No finding" if c < 0 else self.display_names[c] for c in (self.prompt_categories or [])]
        row_labels = [
            f"[{names[i]}] {text[:48]}" if names else text[:60] for i, text in enumerate(self.prompt_texts)
        ]
        for axis, variant in zip(axes[0], variants):
            mean = (self._similarity_sum[variant] / counts).numpy()
            image = axis.imshow(mean, aspect="auto", cmap="viridis")
            axis.set_title(f"{variant}: mean prompt-image similarity")
            axis.set_xticks(np.arange(len(self.display_names) + 1))
            axis.set_xticklabels(self.display_names + ["Normal"], rotation=45, ha="right", fontsize=7)
            axis.set_yticks(np.arange(rows))
            axis.set_yticklabels(row_labels if axis is axes[0][0] else [], fontsize=6)
            figure.colorbar(image, ax=axis, fraction=0.04)
        figure.tight_layout()
        self._save_figure(figure, "similarity_heatmap.png")

    def _save_figure(self, figure: Any, name: str) -> None:
        import matplotlib.pyplot as plt

        with atomic_path(self.output_dir / name) as temporary:
            figure.savefig(temporary, format="png", dpi=110)
        plt.close(figure)
