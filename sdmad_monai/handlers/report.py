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

The headline numbers also go to ``engine.state.metrics`` as ``"<variant>/<metric>"``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import textwrap
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from ..metrics import binary_auroc, compute_auroc, compute_hamming_score, compute_subset_accuracy
from ..utils import atomic_path, atomic_write_json, atomic_write_text
from ..visualize import OverlayItem, OverlaySelector, box_to_input_frame, display_image, write_overlays

__all__ = [
    "HeatmapRows",
    "ProtocolReport",
    "VARIANT_STYLES",
    "all_negative_baseline",
    "backbone_note",
    "heatmap_figure",
    "heatmap_rows",
    "protocol_metrics",
    "roc_figure",
    "shared_color_limits",
]

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
        "hamming_score": float(compute_hamming_score(predictions, labels).mean()),
        "subset_accuracy": float(compute_subset_accuracy(predictions, labels).mean()),
        "category_auroc": {name: float(value) for name, value in zip(category_names, per_category)},
        "mean_category_auroc": float(defined.mean()) if defined.numel() else math.nan,
        "num_categories_in_mean": int(defined.numel()),
    }


#: Line styles of the ROC curves per variant: drawn thickest first, so a thinner curve lies on top of a coinciding one.
VARIANT_STYLES: dict[str, dict[str, Any]] = {
    "clip": {"color": "#1f77b4", "linestyle": "-", "linewidth": 3.6, "alpha": 0.75},
    "sdmad_no_ss": {"color": "#ff7f0e", "linestyle": "--", "linewidth": 2.2},
    "sdmad": {"color": "#b2182b", "linestyle": ":", "linewidth": 1.6, "marker": "o", "markersize": 3.0},
}
_FALLBACK_STYLES = [
    {"color": "#2ca02c", "linestyle": "-.", "linewidth": 1.2, "marker": "s", "markersize": 2.5},
    {"color": "#9467bd", "linestyle": (0, (5, 1)), "linewidth": 1.0, "marker": "^", "markersize": 2.5},
]
_PANEL_TITLES = {
    "clip": "clip: zero-shot CLIP (adapters off)",
    "sdmad_no_ss": "sdmad_no_ss: trained, no sign selection",
    "sdmad": "sdmad: trained SD-MAD",
}
_NOTE_TAIL = "figures show the workflow, not clinical performance"
_NOTE_BOX = {"boxstyle": "round,pad=0.35", "facecolor": "#fff3cd", "edgecolor": "#c0392b", "linewidth": 1.2}
_DROP_MARK = "\u00d7"  # multiplication sign: in every matplotlib font


def backbone_note(backbone: Mapping[str, Any] | None, data_settings: Mapping[str, Any] | None = None) -> str | None:
    """The caveat the figures carry when they cannot show clinical performance, or ``None``.

    Args:
        backbone: the detector's ``config`` (``SignDrivenDetector.config``); its ``"pretrained"`` entry is
            :data:`sdmad_monai.networks.backbone.DEMO_PRETRAINED` for the demo backbone and ``None`` for random
            weights. ``None`` (or no ``"pretrained"`` key): backbone unknown, no backbone caveat.
        data_settings: the ``"settings"`` of :func:`sdmad_monai.workflows.prepare_splits`; generated demo data
            have no ``dataset_dir`` and a ``demo_volumes`` count. ``None``: data unknown, no data caveat.

    Returns:
        e.g. ``"demo data and demo backbone: figures show the workflow, not clinical performance"``,
        ``"random-weight backbone: ..."``, or ``None`` for a real backbone on real data.
    """
    from ..networks.backbone import DEMO_PRETRAINED

    parts = []
    if data_settings is not None and data_settings.get("dataset_dir") is None and data_settings.get("demo_volumes"):
        parts.append("demo data")
    if backbone is not None and "pretrained" in backbone:
        pretrained = backbone["pretrained"]
        if pretrained is None:
            parts.append("random-weight backbone")
        elif pretrained == DEMO_PRETRAINED:
            parts.append("demo backbone")
    return f"{' and '.join(parts)}: {_NOTE_TAIL}" if parts else None


def _wrap(text: str, width: int, max_lines: int) -> str:
    """``text`` on at most ``max_lines`` lines of ``width`` characters, shortened with an ellipsis when longer."""
    lines = textwrap.wrap(" ".join(str(text).split()), width) or [""]
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        if len(last) >= width - 1:
            last = last.rsplit(" ", 1)[0]
        lines = lines[: max_lines - 1] + [last.rstrip(" .,;:") + "\u2026"]
    return "\n".join(lines)


@dataclass
class HeatmapRows:
    """Rows of the similarity heatmap, top to bottom (see :func:`heatmap_rows`).

    Attributes:
        order: prompt index of each row.
        labels: the row's prompt text, wrapped and shortened to fit.
        categories: category index of each row (``-1`` normal, ``None`` unknown).
        groups: ``(name, first_row, end_row)`` per category group, in row order.
        dropped: per variant, ``True`` for the rows that sign selection drops for that variant's prompt features.
        greyed: rows whose label is greyed: dropped for ``label_variant``.
        label_variant: the variant the label greying refers to (``None``: no greying).
    """

    order: list[int]
    labels: list[str]
    categories: list[int | None]
    groups: list[tuple[str, int, int]]
    dropped: dict[str, list[bool]]
    greyed: list[bool]
    label_variant: str | None


def heatmap_rows(
    prompt_texts: Sequence[str],
    prompt_categories: Sequence[int] | None,
    group_names: Sequence[str],
    keep: Mapping[str, Any] | None = None,
    label_variant: str | None = None,
    width: int = 50,
    max_lines: int = 2,
) -> HeatmapRows:
    """Order, labels, groups and sign-selection marks of the heatmap rows.

    Rows are grouped by category (normal prompts first, then the categories in channel order, each group in prompt
    order). A prompt is *dropped* for a variant when that variant's keep mask (Eq. 6 with its fallback) is
    ``False``.

    Args:
        prompt_texts: the ``P`` prompts.
        prompt_categories: category index per prompt (``-1`` normal); ``None``: one unnamed group in prompt order.
        group_names: names of the ``K`` categories (display names).
        keep: per variant, the ``[P]`` bool keep mask of sign selection; variants missing get no marks.
        label_variant: variant whose dropped prompts get a greyed label; default: the last variant of ``keep``.
        width: characters per label line.
        max_lines: lines per label; longer prompts are shortened with an ellipsis.

    Returns:
        :class:`HeatmapRows`.
    """
    count = len(prompt_texts)
    if prompt_categories is None:
        categories: list[int | None] = [None] * count
        order = list(range(count))
    else:
        categories = [int(c) for c in prompt_categories]
        if len(categories) != count:
            raise ValueError(f"{count} prompts but {len(categories)} prompt categories.")
        order = sorted(range(count), key=lambda i: (categories[i], i))  # -1 (normal) first
    groups: list[tuple[str, int, int]] = []
    for row, index in enumerate(order):
        category = categories[index]
        name = "" if category is None else ("Normal" if category < 0 else str(group_names[category]))
        if groups and groups[-1][0] == name and row == groups[-1][2]:
            groups[-1] = (name, groups[-1][1], row + 1)
        else:
            groups.append((name, row, row + 1))
    dropped: dict[str, list[bool]] = {}
    for variant, mask in (keep or {}).items():
        if mask is None:
            continue
        values = [bool(v) for v in torch.as_tensor(mask).reshape(-1).tolist()]
        if len(values) != count:
            raise ValueError(f"keep mask of {variant!r} has {len(values)} entries for {count} prompts.")
        dropped[variant] = [not values[index] for index in order]
    if label_variant is None and dropped:
        label_variant = list(dropped)[-1]
    greyed = list(dropped[label_variant]) if label_variant in dropped else [False] * count
    labels = [_wrap(prompt_texts[index], width, max_lines) for index in order]
    return HeatmapRows(order, labels, [categories[i] for i in order], groups, dropped, greyed, label_variant)


def shared_color_limits(matrices: Sequence[Any]) -> tuple[float, float]:
    """One ``(vmin, vmax)`` for several heatmap panels: the range of all their finite values.

    Args:
        matrices: arrays (``NaN`` for cells without data).

    Returns:
        the limits; ``(0, 1)`` when no value is finite, widened by ``1e-6`` when all values are equal.
    """
    values = np.concatenate([np.asarray(m, dtype=np.float64).reshape(-1) for m in matrices]) if matrices else []
    values = np.asarray(values)[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    return (low, high) if high > low else (low - 1e-6, high + 1e-6)


def _header(width: float, title: str, note: str | None) -> tuple[str, str | None, float, float]:
    """Title (11 pt) and note (10 pt bold) wrapped to a figure ``width`` inches wide, the note's top and the height of
    the whole header, in inches from the top of the figure."""
    title_lines = textwrap.wrap(title, max(30, int(width * 72 / (11 * 0.55))))
    note_lines = textwrap.wrap(note, max(30, int(width * 72 / (10 * 0.66)))) if note else []
    note_top = 0.15 + 0.22 * len(title_lines) + 0.12
    header = note_top + (0.2 * len(note_lines) + 0.25 if note_lines else 0.0) + 0.1
    return "\n".join(title_lines), "\n".join(note_lines) or None, note_top, header


def _add_header(figure: Any, title: str, note: str | None, note_top: float) -> None:
    """Title and note as plain texts (not ``suptitle``: ``tight_layout`` would reserve room for it again)."""
    height = figure.get_figheight()
    figure.text(0.5, 1 - 0.15 / height, title, ha="center", va="top", fontsize=11)
    if note:
        figure.text(
            0.5, 1 - note_top / height, note, ha="center", va="top", fontsize=10, color="#8b1a1a",
            fontweight="bold", bbox=_NOTE_BOX, multialignment="center",
        )


def heatmap_figure(
    means: Mapping[str, Any],
    rows: HeatmapRows,
    column_names: Sequence[str],
    column_counts: Sequence[int] | None = None,
    note: str | None = None,
    num_slices: int | None = None,
) -> Any:
    """The paper's Figure 4: mean prompt-image similarity, one panel per variant, one shared colour scale.

    Args:
        means: per variant (panel, left to right), the ``[P, C]`` mean similarities in prompt order (``NaN`` for a
            column without images).
        rows: from :func:`heatmap_rows`.
        column_names: the ``C`` column (image category) names.
        column_counts: slices per column, shown in the column names.
        note: caveat shown under the title (:func:`backbone_note`).
        num_slices: number of evaluated slices, for the title.

    Returns:
        the matplotlib ``Figure`` (not saved). Its axes: one heatmap per panel (``axis.images[0]``; all with the same
        ``get_clim()``), the group-label axis, the colour bar.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import patches
    from matplotlib.lines import Line2D

    variants = list(means)
    num_rows, num_columns = len(rows.order), len(column_names)
    vmin, vmax = shared_color_limits([means[v] for v in variants])
    names = [
        f"{name} (n={int(n)})" for name, n in zip(column_names, column_counts)
    ] if column_counts is not None else list(column_names)
    longest = max([len(n) for n in names] + [8])
    label_chars = max([max(len(line) for line in label.split("\n")) for label in rows.labels] + [10])
    lines_per_row = max([label.count("\n") + 1 for label in rows.labels] + [1])
    # sizes in inches
    row_h = 0.15 + 0.11 * lines_per_row
    cell_w = 0.42
    label_w = 0.36 + label_chars * 7 * 0.52 / 72
    panel_w = cell_w * (num_columns + 1.1)  # + the marker column
    gap = 0.3
    group_w = 1.35 if any(g[0] for g in rows.groups) else 0.2
    bar_w, bar_room = 0.16, 0.85
    width = label_w + len(variants) * panel_w + (len(variants) - 1) * gap + group_w + bar_w + bar_room
    count_text = f" on {num_slices} slices" if num_slices is not None else ""
    title, note, note_top, header = _header(
        width,
        f"Mean prompt-image similarity{count_text} (paper Fig. 4): rows = prompts by category, columns = image "
        "categories",
        note,
    )
    top = header + 0.42  # + the panel titles
    legend_columns = 2 if width >= 11 else 1
    legend_h = 0.19 * math.ceil(4 / legend_columns) + 0.1
    bottom = 0.3 + longest * 0.037 + legend_h + 0.1
    height = top + num_rows * row_h + bottom
    figure = plt.figure(figsize=(width, height))

    def box(left: float, below: float, w: float, h: float) -> list[float]:
        return [left / width, below / height, w / width, h / height]

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.82")
    grid_h = num_rows * row_h
    panels = []
    for number, variant in enumerate(variants):
        left = label_w + number * (panel_w + gap)
        axis = figure.add_axes(box(left, bottom, panel_w, grid_h))
        panels.append(axis)
        matrix = np.ma.masked_invalid(np.asarray(means[variant], dtype=np.float64))
        image = axis.imshow(
            matrix, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest",
            extent=(-0.5, num_columns - 0.5, num_rows - 0.5, -0.5),
        )
        axis.set_xlim(-1.6, num_columns - 0.5)
        axis.set_ylim(num_rows - 0.5, -0.5)
        axis.axvline(-0.5, color="black", linewidth=0.8)
        for name, first, end in rows.groups[1:]:
            axis.axhline(first - 0.5, color="white", linewidth=1.6)
        # outline each category's own prompts in its column (the normal prompts in the last column)
        for row_index, (name, first, end) in enumerate(rows.groups):
            category = rows.categories[first]
            if category is None:
                continue
            column = num_columns - 1 if category < 0 else category
            if column < num_columns:
                axis.add_patch(
                    patches.Rectangle(
                        (column - 0.5, first - 0.5), 1, end - first, fill=False, edgecolor="#ff2d2d", linewidth=1.6,
                        zorder=4,
                    )
                )
        dropped = rows.dropped.get(variant)
        if dropped is not None:
            ys = [row for row, flag in enumerate(dropped) if flag]
            axis.plot([-1.05] * len(ys), ys, linestyle="none", marker="X", markersize=6.5, color="#c0392b",
                      markeredgecolor="white", markeredgewidth=0.4, clip_on=False)
        axis.set_xticks([-1.05] + list(range(num_columns)))
        axis.set_xticklabels(["dropped by sign selection" if dropped is not None else "(no selection data)"] + names,
                             rotation=45, ha="right", rotation_mode="anchor", fontsize=7)
        axis.get_xticklabels()[0].set_color("#c0392b")
        axis.tick_params(axis="x", length=2)
        kept = None if dropped is None else len(dropped) - sum(dropped)
        panel_title = _PANEL_TITLES.get(variant, variant)
        if kept is not None:
            panel_title += f"\nsign selection keeps {kept} of {len(dropped)} prompts"
        axis.set_title(panel_title, fontsize=9)
        axis.set_yticks(range(num_rows))
        if number == 0:
            axis.set_yticklabels(rows.labels, fontsize=7, linespacing=0.95)
            for label, grey in zip(axis.get_yticklabels(), rows.greyed):
                if grey:
                    label.set_color("0.55")
                    label.set_fontstyle("italic")
        else:
            axis.set_yticklabels([])
        axis.tick_params(axis="y", length=0, pad=3)
    # group labels right of the last panel
    group_left = label_w + len(variants) * panel_w + (len(variants) - 1) * gap + 0.08
    group_axis = figure.add_axes(box(group_left, bottom, group_w - 0.1, grid_h))
    group_axis.set_xlim(0, 1)
    group_axis.set_ylim(num_rows - 0.5, -0.5)
    group_axis.axis("off")
    for name, first, end in rows.groups:
        if not name:
            continue
        group_axis.plot([0.04, 0.04], [first - 0.35, end - 0.65], color="black", linewidth=1.2)
        group_axis.text(0.1, (first + end - 1) / 2, _wrap(name, 15, 3), va="center", ha="left", fontsize=7.5,
                        fontweight="bold")
    bar_axis = figure.add_axes(box(width - bar_room - bar_w, bottom, bar_w, grid_h))
    figure.colorbar(panels[0].images[0], cax=bar_axis)
    if grid_h >= 3.0:
        bar_axis.set_ylabel("mean cosine similarity (prompt, image)\none scale for all panels", fontsize=8)
    else:  # a short bar: a short label
        bar_axis.set_ylabel("mean cosine similarity", fontsize=7)
    bar_axis.tick_params(labelsize=7)
    _add_header(figure, title, note, note_top)
    handles = [
        Line2D([], [], linestyle="none", marker="X", markersize=7, color="#c0392b", markeredgecolor="white",
               label="prompt dropped by sign selection (Eq. 6) for this panel's prompt features"),
        patches.Patch(facecolor="none", edgecolor="#ff2d2d", linewidth=1.6,
                      label="each category's own prompts, in its column (normal prompts: Normal column)"),
    ]
    if rows.label_variant is not None and any(rows.greyed):
        handles.append(Line2D([], [], linestyle="none", marker="$abc$", markersize=12, color="0.55",
                              label=f"grey italic prompt: dropped in {rows.label_variant}"))
    if any(np.isnan(np.asarray(means[v], dtype=np.float64)).all(axis=0).any() for v in variants):
        handles.append(patches.Patch(facecolor="0.82", edgecolor="0.6", label="no image of this category (n=0)"))
    figure.legend(handles=handles, loc="lower center", ncol=legend_columns, fontsize=7.5, frameon=False,
                  bbox_to_anchor=(0.5, 0.02 / height))
    return figure


def _roc_style(variant: str, index: int) -> dict[str, Any]:
    return dict(VARIANT_STYLES.get(variant) or _FALLBACK_STYLES[index % len(_FALLBACK_STYLES)])


def roc_figure(
    labels: np.ndarray,
    scores: Mapping[str, np.ndarray],
    names: Sequence[str],
    image_scores: Mapping[str, np.ndarray] | None = None,
    note: str | None = None,
) -> Any:
    """ROC curves of every variant, one panel per category (plus one for the image score).

    Every panel's title says ``n = <positives> pos / <negatives> neg``; the legend gives each variant's AUROC.
    Curves are drawn thickest first with :data:`VARIANT_STYLES`, so coinciding curves stay visible.

    Args:
        labels: ``[N, K]`` multi-hot labels.
        scores: per variant, ``[N, K]`` category scores.
        names: the ``K`` category display names.
        image_scores: per variant, ``[N]`` normal-vs-abnormal scores: adds an "any finding" panel.
        note: caveat shown under the title (:func:`backbone_note`).

    Returns:
        the matplotlib ``Figure`` (not saved).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels)
    panels = [(str(name), labels[:, k], {v: np.asarray(s)[:, k] for v, s in scores.items()}) for k, name in
              enumerate(names)]
    if image_scores:
        panels.append(("any finding (image score)", labels.any(axis=1).astype(np.float64),
                       {v: np.asarray(s).reshape(-1) for v, s in image_scores.items()}))
    count = len(panels)
    columns = min(3, count)
    rows = math.ceil(count / columns)
    title, note, note_top, top = _header(
        4.0 * columns, f"ROC curves on {labels.shape[0]} slices, one panel per category", note
    )
    height = 4.6 * rows + top
    figure, axes = plt.subplots(rows, columns, figsize=(4.0 * columns, height), squeeze=False)
    order = sorted(enumerate(scores), key=lambda e: -_roc_style(e[1], e[0])["linewidth"])
    for index, (name, y, panel_scores) in enumerate(panels):
        axis = axes[index // columns][index % columns]
        axis.plot([0, 1], [0, 1], color="0.75", linestyle="--", linewidth=0.8, zorder=1)
        positives = int((y > 0.5).sum())
        negatives = int(y.shape[0] - positives)
        defined = positives > 0 and negatives > 0
        if defined:
            for draw, (number, variant) in enumerate(order):
                values = panel_scores[variant]
                fpr, tpr, _ = roc_curve(y > 0.5, values)
                auc = float(binary_auroc(torch.from_numpy(values.astype(np.float64)), torch.from_numpy(y > 0.5)))
                style = _roc_style(variant, number)
                if "marker" in style:
                    style["markevery"] = max(1, len(fpr) // 15)
                axis.plot(fpr, tpr, label=f"{variant}: AUROC {auc:.3f}", zorder=2 + draw, **style)
            handles, legend_labels = axis.get_legend_handles_labels()
            # legend in the variants' own order, not the drawing order
            rank = {variant: i for i, variant in enumerate(scores)}
            paired = sorted(zip(handles, legend_labels), key=lambda hl: rank.get(hl[1].split(":")[0], 0))
            # below the panel: a legend inside would hide the curves that run along the axes
            axis.legend([h for h, _ in paired], [l for _, l in paired], fontsize=7.5, loc="upper center",
                        bbox_to_anchor=(0.5, -0.16), handlelength=3.2, frameon=False)
        else:
            axis.text(0.5, 0.5, "one class only:\nno ROC curve", ha="center", va="center", fontsize=9, color="0.35",
                      transform=axis.transAxes)
        axis.set_title(f"{_wrap(name, 40, 2)}\nn = {positives} pos / {negatives} neg", fontsize=9)
        axis.set_xlim(-0.02, 1.02)
        axis.set_ylim(-0.02, 1.02)
        axis.set_xlabel("false positive rate", fontsize=8)
        axis.set_ylabel("true positive rate", fontsize=8)
        axis.tick_params(labelsize=7)
    for index in range(count, rows * columns):
        axes[index // columns][index % columns].axis("off")
    _add_header(figure, title, note, note_top)
    figure.tight_layout(rect=(0, 0, 1, 1 - top / height))
    return figure


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


class ProtocolReport:
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
        self.prompt_categories = (
            [int(c) for c in prompt_categories] if prompt_categories is not None else None
        )
        self.label_key = label_key
        self.meta_keys = tuple(meta_keys)
        self.extra_info = dict(extra_info or {})
        self.note = backbone_note(backbone, data_settings)
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
        if self._selector is not None:
            self._selector.reset()

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
                f"variant {self.overlay_variant!r} not evaluated" if result is None
                else "the detector computes no anomaly maps (map_layers=[])" if "anomaly_map" not in result
                else f"no {self.image_key!r} in the batch" if images is None
                else "image_mean/image_std not given"
            )
            return
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
                    image=display_image(images[i], self.image_mean, self.image_std),
                    anomaly_map=maps[i].detach().cpu().to(torch.float32).numpy(),
                    label=int(bool(labels[i].any())),
                    boxes=drawn,
                    caption=self._caption(labels[i], predictions[i]),
                )

            self._selector.offer(scores[i], build)

    def _slice_names(self, batch: dict, count: int, offset: int) -> list[str]:
        files = batch.get("file")
        slices = batch.get("slice")
        names = []
        for i in range(count):
            file = _item_value(files, i)
            index = _item_value(slices, i)
            if file is None:
                names.append(f"slice_{offset + i:05d}")
            else:
                names.append(f"{file} slice {index}" if index is not None else str(file))
        return names

    def _caption(self, label: torch.Tensor, prediction: torch.Tensor) -> str:
        def listing(row: torch.Tensor) -> str:
            chosen = [name for name, value in zip(self.display_names, row.tolist()) if value > 0.5]
            return ", ".join(chosen) if chosen else "none"

        return f"labels: {listing(label)} | {self.overlay_variant} predicts: {listing(prediction)}"

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
        results = {
            "num_slices": int(labels.shape[0]),
            "num_normal_slices": int((~labels.bool().any(dim=1)).sum()),
            "positives_per_category": dict(zip(self.category_names, [int(p) for p in positives])),
            "categories": self.category_names,
            "image_score": "max_c s_c - cos(image, anchor) (sdmad_monai.functional.image_anomaly_score)",
            "variants": variants,
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

    def write(self, engine: Engine | None = None) -> dict[str, Any]:
        """Write all report files; returns the metrics dict."""
        results = self.results()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.output_dir / "metrics.json", results)
        self._write_csv()
        self._save_figure(self.roc_figure(), "roc.png")
        if self.prompt_texts is not None:
            self._save_figure(self.heatmap_figure(), "similarity_heatmap.png")
        self._write_overlays()
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
            columns += [torch.cat(store["scores"]), torch.cat(store["predictions"]), torch.cat(store["image_score"])[:, None]]
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

    def _save_figure(self, figure: Any, name: str) -> None:
        import matplotlib.pyplot as plt

        with atomic_path(self.output_dir / name) as temporary:
            figure.savefig(temporary, format="png", dpi=110)
        plt.close(figure)


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
