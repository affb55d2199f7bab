"""The figures of the evaluation reports: for :class:`~sdmad_monai.handlers.report.ProtocolReport` the ROC panels per
category and the prompt-image similarity heatmap (paper Fig. 4), with the note they carry when the backbone or the
data cannot show clinical performance; for :class:`~sdmad_monai.handlers.DetectionReport` the image-level ROC
(:func:`image_roc_figure`). Both ROC figures draw their curves with :func:`plot_roc_curves`. Pure functions of the
collected numbers that return matplotlib figures; :func:`save_figure` is the one that writes.

Size: the report figures (ROC panels, the Fig. 4 heatmap, the detection ROC), one function each, with the
drawing helpers they share.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..metrics import binary_auroc
from ..utils import atomic_path

__all__ = [
    "HeatmapRows",
    "VARIANT_STYLES",
    "backbone_note",
    "heatmap_figure",
    "heatmap_rows",
    "image_roc_figure",
    "plot_roc_curves",
    "roc_figure",
    "save_figure",
    "shared_color_limits",
]

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
    flat = [np.asarray(m, dtype=np.float64).reshape(-1) for m in matrices]
    values = np.concatenate(flat) if matrices else np.zeros(0)
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
            0.5,
            1 - note_top / height,
            note,
            ha="center",
            va="top",
            fontsize=10,
            color="#8b1a1a",
            fontweight="bold",
            bbox=_NOTE_BOX,
            multialignment="center",
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
    names = (
        [f"{name} (n={int(n)})" for name, n in zip(column_names, column_counts)]
        if column_counts is not None
        else list(column_names)
    )
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

    def box(left: float, below: float, w: float, h: float) -> tuple[float, float, float, float]:
        return (left / width, below / height, w / width, h / height)

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.82")
    grid_h = num_rows * row_h
    panels = []
    for number, variant in enumerate(variants):
        left = label_w + number * (panel_w + gap)
        axis = figure.add_axes(box(left, bottom, panel_w, grid_h))
        panels.append(axis)
        matrix = np.ma.masked_invalid(np.asarray(means[variant], dtype=np.float64))
        axis.imshow(
            matrix,
            aspect="auto",
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
            extent=(-0.5, num_columns - 0.5, num_rows - 0.5, -0.5),
        )
        axis.set_xlim(-1.6, num_columns - 0.5)
        axis.set_ylim(num_rows - 0.5, -0.5)
        axis.axvline(-0.5, color="black", linewidth=0.8)
        for _name, first, _end in rows.groups[1:]:
            axis.axhline(first - 0.5, color="white", linewidth=1.6)
        # outline each category's own prompts in its column (the normal prompts in the last column)
        for _name, first, end in rows.groups:
            category = rows.categories[first]
            if category is None:
                continue
            column = num_columns - 1 if category < 0 else category
            if column < num_columns:
                axis.add_patch(
                    patches.Rectangle(
                        (column - 0.5, first - 0.5),
                        1,
                        end - first,
                        fill=False,
                        edgecolor="#ff2d2d",
                        linewidth=1.6,
                        zorder=4,
                    )
                )
        dropped = rows.dropped.get(variant)
        if dropped is not None:
            ys = [row for row, flag in enumerate(dropped) if flag]
            axis.plot(
                [-1.05] * len(ys),
                ys,
                linestyle="none",
                marker="X",
                markersize=6.5,
                color="#c0392b",
                markeredgecolor="white",
                markeredgewidth=0.4,
                clip_on=False,
            )
        axis.set_xticks([-1.05] + list(range(num_columns)))
        axis.set_xticklabels(
            ["dropped by sign selection" if dropped is not None else "(no selection data)"] + names,
            rotation=45,
            ha="right",
            rotation_mode="anchor",
            fontsize=7,
        )
        axis.get_xticklabels()[0].set_color("#c0392b")
        axis.tick_params(axis="x", length=2)
        panel_title = _PANEL_TITLES.get(variant, variant)
        if dropped is not None:
            kept = len(dropped) - sum(dropped)
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
        group_axis.text(
            0.1, (first + end - 1) / 2, _wrap(name, 15, 3), va="center", ha="left", fontsize=7.5, fontweight="bold"
        )
    bar_axis = figure.add_axes(box(width - bar_room - bar_w, bottom, bar_w, grid_h))
    figure.colorbar(panels[0].images[0], cax=bar_axis)
    if grid_h >= 3.0:
        bar_axis.set_ylabel("mean cosine similarity (prompt, image)\none scale for all panels", fontsize=8)
    else:  # a short bar: a short label
        bar_axis.set_ylabel("mean cosine similarity", fontsize=7)
    bar_axis.tick_params(labelsize=7)
    _add_header(figure, title, note, note_top)
    handles = [
        Line2D(
            [],
            [],
            linestyle="none",
            marker="X",
            markersize=7,
            color="#c0392b",
            markeredgecolor="white",
            label="prompt dropped by sign selection (Eq. 6) for this panel's prompt features",
        ),
        patches.Patch(
            facecolor="none",
            edgecolor="#ff2d2d",
            linewidth=1.6,
            label="each category's own prompts, in its column (normal prompts: Normal column)",
        ),
    ]
    if rows.label_variant is not None and any(rows.greyed):
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="$abc$",
                markersize=12,
                color="0.55",
                label=f"grey italic prompt: dropped in {rows.label_variant}",
            )
        )
    if any(np.isnan(np.asarray(means[v], dtype=np.float64)).all(axis=0).any() for v in variants):
        handles.append(patches.Patch(facecolor="0.82", edgecolor="0.6", label="no image of this category (n=0)"))
    figure.legend(
        handles=handles,
        loc="lower center",
        ncol=legend_columns,
        fontsize=7.5,
        frameon=False,
        bbox_to_anchor=(0.5, 0.02 / height),
    )
    return figure


def plot_roc_curves(
    axis: Any,
    positive: np.ndarray,
    curves: Sequence[tuple[str, Any, Mapping[str, Any]]],
    label: str = "{name}: AUROC {auc:.3f}",
) -> None:
    """Draw one ROC curve per entry of ``curves`` on a matplotlib axis, in order, each with its AUROC in its label.

    The curve is :func:`sklearn.metrics.roc_curve` of the scores as float64; the AUROC is :func:`binary_auroc` of
    ``torch.as_tensor(scores)``, so it is the number the report's metrics give for the same scores (a list of
    floats is read as float32, as the report's own metrics read it). A style with a ``marker`` gets a ``markevery``
    that puts about 15 markers on the curve.

    Args:
        axis: the matplotlib ``Axes``.
        positive: ``[N]`` labels, true for the positive class (both classes present).
        curves: ``(name, scores [N], line style)`` per curve: the style is passed to ``axis.plot`` (``color``,
            ``linestyle``, ``zorder``...; empty for matplotlib's defaults).
        label: legend entry, formatted with ``name`` and ``auc``.
    """
    from sklearn.metrics import roc_curve

    positive = np.asarray(positive, dtype=bool)
    for name, scores, line_style in curves:
        fpr, tpr, _ = roc_curve(positive, np.asarray(scores, dtype=np.float64))
        auc = float(binary_auroc(torch.as_tensor(scores), torch.from_numpy(positive)))
        style = dict(line_style)
        if "marker" in style:
            style["markevery"] = max(1, len(fpr) // 15)
        axis.plot(fpr, tpr, label=label.format(name=name, auc=auc), **style)


def image_roc_figure(labels: Sequence[int] | np.ndarray, curves: Sequence[tuple[str, Any]]) -> Any:
    """One panel of image-level ROC curves (normal vs abnormal), one curve per image score.

    Args:
        labels: ``[N]`` 0/1 image labels (1 abnormal).
        curves: ``(name, scores [N])`` per image score, e.g. the detector's image score and the anomaly-map maximum.

    Returns:
        the matplotlib ``Figure`` (not saved); with one class only it has no curve and says so in its title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels)
    figure, axis = plt.subplots(figsize=(4.6, 4.2))
    axis.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    if labels.min() != labels.max():
        plot_roc_curves(
            axis, labels.astype(bool), [(name, scores, {}) for name, scores in curves], "{name} ({auc:.3f})"
        )
        axis.legend(fontsize=8, loc="lower right")
        axis.set_title("image-level ROC", fontsize=10)
    else:
        axis.set_title("image-level ROC: one class only, undefined", fontsize=10)
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    figure.tight_layout()
    return figure


def save_figure(figure: Any, path: str | Path) -> Path:
    """Write a report figure as PNG (110 dpi) atomically and close it.

    Args:
        figure: a matplotlib ``Figure``.
        path: the ``.png`` file.

    Returns:
        the path.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)
    return path


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

    labels = np.asarray(labels)
    panels = [
        (str(name), labels[:, k], {v: np.asarray(s)[:, k] for v, s in scores.items()}) for k, name in enumerate(names)
    ]
    if image_scores:
        panels.append(
            (
                "any finding (image score)",
                np.asarray(labels.any(axis=1), dtype=np.float64),  # numpy's stubs type any(axis=1) as maybe a scalar
                {v: np.asarray(s).reshape(-1) for v, s in image_scores.items()},
            )
        )
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
            curves = [
                (variant, panel_scores[variant], {**_roc_style(variant, number), "zorder": 2 + draw})
                for draw, (number, variant) in enumerate(order)
            ]
            plot_roc_curves(axis, y > 0.5, curves)
            handles, legend_labels = axis.get_legend_handles_labels()
            # legend in the variants' own order, not the drawing order
            rank = {variant: i for i, variant in enumerate(scores)}
            paired = sorted(zip(handles, legend_labels), key=lambda hl: rank.get(hl[1].split(":")[0], 0))
            # below the panel: a legend inside would hide the curves that run along the axes
            axis.legend(
                [h for h, _ in paired],
                [label for _, label in paired],
                fontsize=7.5,
                loc="upper center",
                bbox_to_anchor=(0.5, -0.16),
                handlelength=3.2,
                frameon=False,
            )
        else:
            axis.text(
                0.5,
                0.5,
                "one class only:\nno ROC curve",
                ha="center",
                va="center",
                fontsize=9,
                color="0.35",
                transform=axis.transAxes,
            )
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
