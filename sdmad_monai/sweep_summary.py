"""The summary of a sweep over seeds (:mod:`sdmad_monai.sweep`): per variant and metric the mean, sample standard
deviation, count and per-seed values, written as ``summary.json``, ``summary.csv``, ``summary.md`` and
``summary.png``. Pure functions of the seeds' ``metrics.json`` contents.

Over the seeds whose evaluation is complete: per variant and metric, and per variant and category AUROC, ``mean``,
``std`` (sample standard deviation, ``ddof=1``; ``null`` when ``n < 2``), ``n`` (seeds with a defined value: a NaN,
e.g. the AUROC of a category with a single class in a seed's test data, is left out of the mean and not counted) and
``per_seed`` values (``null`` for NaN). JSON files never hold a bare ``NaN``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .utils import atomic_path, atomic_write_json, atomic_write_text

__all__ = [
    "HEADLINE_METRICS",
    "aggregate",
    "metrics_complete",
    "plot_summary",
    "summary_csv",
    "summary_markdown",
    "write_summary",
]

#: the columns of the paper's Tables 2-3, in this order; other numeric metrics of ``metrics.json`` follow them
HEADLINE_METRICS = ("image_auroc", "hamming_score", "subset_accuracy", "mean_category_auroc")
METRIC_LABELS = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "hamming_score": "Hamming score",
    "subset_accuracy": "Subset accuracy",
    "mean_category_auroc": "Mean category AUROC",
}


def metrics_complete(path: Path) -> dict[str, Any] | None:
    """The metrics of an evaluation's ``metrics.json`` if it is complete (readable, with at least one variant holding
    a numeric metric), else ``None``."""
    try:
        metrics = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    variants = _variants(metrics)
    if not variants or not all(_scalar_metrics(values) for values in variants.values()):
        return None
    return metrics


def _variants(metrics: Any) -> dict[str, dict[str, Any]]:
    """``metrics["variants"]`` (ProtocolReport), plus its ``baselines`` as ``baseline_<name>``; a flat
    ``metrics.json`` (e.g. the BMAD protocol) is one variant, ``model``."""
    if not isinstance(metrics, dict):
        return {}
    if isinstance(metrics.get("variants"), dict):
        variants = {str(k): v for k, v in metrics["variants"].items() if isinstance(v, dict)}
        baselines = metrics.get("baselines")
        if isinstance(baselines, dict):
            variants.update({f"baseline_{k}": v for k, v in baselines.items() if isinstance(v, dict)})
        return variants
    return {"model": metrics} if _scalar_metrics(metrics) else {}


def _number(value: Any) -> float | None:
    """A finite float, or ``None`` for NaN / null / not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _scalar_metrics(values: Mapping[str, Any]) -> list[str]:
    """The metric names of one variant: numbers (NaN included), not counts (``num_*``)."""
    return [
        key
        for key, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not key.startswith("num_")
    ]


def _statistics(per_seed: dict[int, float | None]) -> dict[str, Any]:
    import numpy as np

    defined = np.asarray([v for v in per_seed.values() if v is not None], dtype=np.float64)
    n = int(defined.size)
    return {
        "mean": float(np.mean(defined)) if n else None,
        "std": float(np.std(defined, ddof=1)) if n > 1 else None,
        "n": n,
        "per_seed": {str(seed): value for seed, value in per_seed.items()},
    }


def aggregate(metrics_by_seed: Mapping[int, Any]) -> dict[str, Any]:
    """Mean, sample std (``ddof=1``), count and per-seed values of each variant's metrics and category AUROCs.

    Args:
        metrics_by_seed: ``{seed: contents of eval/metrics.json}``; ``None`` entries (no complete evaluation) are left
            out.

    Returns:
        ``{"seeds", "variants": {variant: {"metrics": {metric: stats}, "category_auroc": {category: stats}}},
        "metrics", "categories", "notes", "std", "n"}`` where ``stats`` is ``{"mean", "std", "n", "per_seed"}``;
        NaN values are ``None`` in ``per_seed`` and not counted in ``n``; ``mean`` is ``None`` when ``n == 0``,
        ``std`` when ``n < 2``. ``notes``: the reports' caveats (``metrics.json`` ``note``, e.g. demo data), once
        each.
    """
    seeds = [int(seed) for seed, metrics in metrics_by_seed.items() if metrics is not None]
    variants: list[str] = []
    metric_names: list[str] = []
    categories: list[str] = []
    per_variant = {}
    for seed in seeds:
        metrics = metrics_by_seed[seed]
        per_variant[seed] = _variants(metrics)
        for name in metrics.get("categories") or []:
            if name not in categories:
                categories.append(name)
        for variant, values in per_variant[seed].items():
            if variant not in variants:
                variants.append(variant)
            for key in _scalar_metrics(values):
                if key not in metric_names:
                    metric_names.append(key)
            for name in values.get("category_auroc") or {}:
                if name not in categories:
                    categories.append(name)
    notes = []  # the report's caveat (e.g. demo data / demo backbone), once each
    for seed in seeds:
        note = metrics_by_seed[seed].get("note")
        if isinstance(note, str) and note and note not in notes:
            notes.append(note)
    metric_names = [m for m in HEADLINE_METRICS if m in metric_names] + [
        m for m in metric_names if m not in HEADLINE_METRICS
    ]
    result: dict[str, Any] = {}
    for variant in variants:
        entries = {seed: per_variant[seed].get(variant) or {} for seed in seeds}
        categories_of = {seed: entries[seed].get("category_auroc") or {} for seed in seeds}
        result[variant] = {
            "metrics": {
                key: _statistics({seed: _number(entries[seed].get(key)) for seed in seeds}) for key in metric_names
            },
            "category_auroc": {
                name: _statistics({seed: _number(categories_of[seed].get(name)) for seed in seeds})
                for name in categories
            }
            if any(categories_of.values())
            else {},
        }
    return {
        "std": "sample standard deviation over the seeds (ddof=1); null when n < 2",
        "n": "number of seeds with a defined value: NaN (e.g. the AUROC of a category with a single class in a seed's "
        "test data) is left out of the mean and std and shown as null in per_seed",
        "seeds": seeds,
        "metrics": metric_names,
        "categories": categories,
        "notes": notes,
        "variants": result,
    }


def _fmt(value: float | None) -> str:
    return "nan" if value is None else repr(float(value))


def summary_csv(summary: Mapping[str, Any]) -> str:
    """One row per variant and metric (category AUROCs as ``category_auroc/<category>``): ``mean``, ``std``
    (ddof=1), ``n``, ``seeds`` and ``values`` (``;``-separated, in the order of ``seeds``; ``nan`` where undefined)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["variant", "metric", "mean", "std", "n", "seeds", "values"])
    for variant, entry in summary["variants"].items():
        rows = list(entry["metrics"].items()) + [
            (f"category_auroc/{name}", stats) for name, stats in entry["category_auroc"].items()
        ]
        for metric, stats in rows:
            writer.writerow(
                [
                    variant,
                    metric,
                    _fmt(stats["mean"]),
                    _fmt(stats["std"]),
                    stats["n"],
                    ";".join(stats["per_seed"]),
                    ";".join(_fmt(v) for v in stats["per_seed"].values()),
                ]
            )
    return buffer.getvalue()


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def _mean_std(stats: Mapping[str, Any], total: int, digits: int = 3) -> str:
    if stats["mean"] is None:
        return "n/a"
    text = f"{stats['mean']:.{digits}f}"
    if stats["std"] is not None:
        text += f" ± {stats['std']:.{digits}f}"
    if stats["n"] < total:
        text += f" (n={stats['n']})"
    return text


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """A Markdown table, variant x metric, ``mean ± std``, with a line saying what the numbers are."""
    seeds = summary["seeds"]
    if not seeds:
        return "No seed finished its evaluation: nothing to summarise.\n"
    metrics = summary["metrics"]
    lines = [
        "| Variant | " + " | ".join(_label(m) for m in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for variant, entry in summary["variants"].items():
        cells = [_mean_std(entry["metrics"][m], len(seeds)) for m in metrics]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines.append("")
    note = (
        f"Mean ± sample standard deviation (ddof=1) over {len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
        f"({', '.join(map(str, seeds))})"
    )
    overrides = (summary.get("settings") or {}).get("overrides")
    if overrides:
        note += "; " + ", ".join(f"{k}={v}" for k, v in overrides.items())
    note += ". (n=...): seeds where the metric is defined."
    lines.append(note)
    lines += [f"Note: {text}." if not text.endswith(".") else f"Note: {text}" for text in summary.get("notes") or []]
    return "\n".join(lines) + "\n"


def _short(name: str, width: int = 16) -> str:
    name = name.split(": ", 1)[-1] if name.lower().startswith("global label: ") else name
    return "\n".join(textwrap.wrap(name, width)) or name


def _bars(axis: Any, groups: list[str], entries: dict[str, dict[str, Any]], variants: list[str], total: int) -> None:
    """Grouped bars (mean) with error bars (std) per group (x) and variant (colour), and one point per seed in a strip
    on the right half of each bar."""
    import numpy as np

    width = 0.8 / max(1, len(variants))
    for v, variant in enumerate(variants):
        offsets = np.arange(len(groups)) + (v - (len(variants) - 1) / 2) * width
        stats = [entries[variant].get(group) or {"mean": None, "std": None, "n": 0, "per_seed": {}} for group in groups]
        colour = f"C{v % 10}"
        axis.bar(
            offsets,
            [s["mean"] if s["mean"] is not None else 0.0 for s in stats],
            width * 0.92,
            color=colour,
            alpha=0.75,
            label=variant,
            zorder=2,
        )
        spread = [(x, s) for x, s in zip(offsets, stats) if s["std"] is not None]
        if spread:
            axis.errorbar(
                [x for x, _ in spread],
                [s["mean"] for _, s in spread],
                yerr=[s["std"] for _, s in spread],
                fmt="none",
                ecolor="0.15",
                elinewidth=1.2,
                capsize=3,
                zorder=3,
            )
        for x, s in zip(offsets, stats):
            if s["mean"] is None:
                axis.text(x, 0.01, "n/a", ha="center", va="bottom", fontsize=8, color="0.3")
                continue
            values = [value for value in s["per_seed"].values() if value is not None]
            strip = x + width * (np.linspace(0.12, 0.38, len(values)) if len(values) > 1 else np.array([0.25]))
            axis.scatter(strip, values, s=14, facecolor="white", edgecolor="black", linewidth=0.8, zorder=4)
            if s["n"] < total:
                top = max([s["mean"] + (s["std"] or 0.0)] + values)
                axis.text(x, min(top + 0.02, 1.06), f"n={s['n']}", ha="center", va="bottom", fontsize=7)
    axis.set_xticks(np.arange(len(groups)))
    axis.set_ylim(0, 1.1)
    axis.set_yticks(np.linspace(0, 1, 6))
    axis.grid(axis="y", color="0.88", zorder=0)
    axis.set_axisbelow(True)
    for side in ("top", "right"):
        axis.spines[side].set_visible(False)


def plot_summary(summary: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """``summary.png``: mean ± std per metric and variant (bars, error bars, a point per seed), and below, per-category
    AUROC likewise. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(summary["variants"])
    metrics = list(summary["metrics"])
    categories = [
        c for c in summary["categories"] if any(summary["variants"][v]["category_auroc"].get(c) for v in variants)
    ]
    total = len(summary["seeds"])
    panels = 2 if categories else 1
    width = max(9.0, 1.45 * max(len(metrics), len(categories)) + 2.5)
    figure, axes = plt.subplots(panels, 1, figsize=(width, 4.4 * panels + 0.9), squeeze=False)
    top = axes[0][0]
    _bars(top, metrics, {v: summary["variants"][v]["metrics"] for v in variants}, variants, total)
    top.set_xticklabels([_label(m) for m in metrics], fontsize=10)
    top.set_ylabel("score")
    top.set_title("Metrics per variant: bar = mean, error bar = sample std (ddof=1), points = seeds", fontsize=11)
    top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=9, title="variant")
    if categories:
        bottom = axes[1][0]
        _bars(bottom, categories, {v: summary["variants"][v]["category_auroc"] for v in variants}, variants, total)
        bottom.axhline(0.5, color="0.45", linestyle="--", linewidth=1, zorder=1)
        bottom.set_xticklabels([_short(c) for c in categories], fontsize=9)
        bottom.set_ylabel("AUROC")
        bottom.set_title(
            "Per-category AUROC: bar = mean, error bar = sample std, points = seeds, dashed = chance", fontsize=11
        )
    partial = any(
        stats["n"] < total
        for v in variants
        for table in (summary["variants"][v]["metrics"], summary["variants"][v]["category_auroc"])
        for stats in table.values()
    )
    if partial:
        axes[-1][0].set_xlabel(
            "n=k: only k seeds define the value (an AUROC needs both classes in the seed's test data); n/a: none",
            fontsize=9,
            color="0.3",
            labelpad=8,
        )
    overrides = (summary.get("settings") or {}).get("overrides") or {}
    subtitle = f"{total} seed{'s' if total != 1 else ''} ({', '.join(map(str, summary['seeds']))})"
    if overrides:
        subtitle += " · " + ", ".join(f"{k}={v}" for k, v in overrides.items())
    title = "SD-MAD over seeds\n" + "\n".join(textwrap.wrap(subtitle, 110))
    notes = summary.get("notes") or []
    figure.suptitle(title, fontsize=12)
    if notes:  # the evaluation's caveat, where everyone sees it
        top.text(
            0.5,
            1.1,
            "\n".join(textwrap.fill(f"Note: {text}", 110) for text in notes),
            transform=top.transAxes,
            ha="center",
            va="bottom",
            fontsize=10,
            color="firebrick",
        )
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    plt.close(figure)
    return Path(path)


def write_summary(output_dir: str | os.PathLike, summary: Mapping[str, Any]) -> dict[str, Path]:
    """Write ``summary.json`` (valid JSON: null for NaN), ``summary.csv``, ``summary.md`` and, when a seed finished,
    ``summary.png`` into ``output_dir``, each atomically. Returns their paths by kind (``json``, ``csv``, ``md``,
    ``png``)."""
    folder = Path(output_dir)
    files = {
        "json": atomic_write_json(folder / "summary.json", summary),
        "csv": atomic_write_text(folder / "summary.csv", summary_csv(summary)),
        "md": atomic_write_text(folder / "summary.md", summary_markdown(summary)),
    }
    if summary["seeds"]:
        files["png"] = plot_summary(summary, folder / "summary.png")
    else:
        (folder / "summary.png").unlink(missing_ok=True)  # no stale figure beside a summary of no seed
    return files
