"""One comparison run: zero-shot CLIP, D²4FAD and SIR on the same datasets, seeds and support images, one table.

For each dataset folder (BMAD layout, or a MedIAnomaly layout: :func:`~sdmad_monai.data.build_medianomaly_datalist`)
the images are read with the BMAD preprocessing (:func:`~sdmad_monai.data.bmad_protocol.bmad_transforms`, the
detector's CLIP normalisation and size), and each method is scored on the dataset's ``test`` images:

- ``clip``: the detector's zero-shot image score and anomaly map (adapters off) with the dataset's BMAD prompt bank
  (``sdmad_monai/prompts/bmad.json``; its ``generic`` section for other names);
- ``d24fad``: :class:`~sdmad_monai.baselines.D24FAD`, trained leave one dataset out on the *other* datasets' training
  normals (so it needs at least two datasets), tested with ``shots`` seeded normal supports of the dataset's own
  training split;
- ``sir``: one :class:`~sdmad_monai.baselines.SIR` for all datasets, trained one-shot universal on one seeded
  training normal of each dataset;
- ``sdmad``: SD-MAD 4-shot exactly as the bundle runs it on BMAD: ``configs/train.json`` + ``train_bmad.json``
  (its support set: ``shots`` normal and ``shots`` abnormal images of ``valid/``, checkpoint chosen on the rest of
  ``valid/``), then ``evaluate_bmad.json`` on ``test/`` (image scores from its ``predictions.csv``, pixel metrics
  from its ``metrics.json``), each in ``output_dir/sdmad/<dataset>``. Only on BMAD folders: MedIAnomaly has
  abnormal images only in ``test/``, so the row says so instead. It uses the bundle's architecture (``train.json``:
  ``sdmad-tiny``); ``model_name``, ``pretrained`` and ``image_size`` are passed to it.

Both baselines share the CLIP tower of the detector as their frozen teacher. The support images (``shots`` normals per
dataset, and SIR's one image) are drawn once with ``seed`` from the training split and recorded in ``results.json``;
nothing from ``test`` is used before scoring.

Metrics per dataset x method: image AUROC and AP (scikit-learn); with masks, pixel AUROC, pixel AP and the best Dice
over thresholds (:class:`~sdmad_monai.metrics.PixelAUROCMetric`, maps min-max scaled per method and dataset into
[0, 1] with the range of its *training* normals' maps widened to the test maps' range, so no test statistic
changes a score's rank). Outputs: ``results.json``, ``results.csv``, ``results.md`` and ``roc_<dataset>.png``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .utils import atomic_write_json, atomic_write_text

__all__ = ["COMPARISON_METHODS", "ComparisonData", "MethodResult", "compare_methods", "load_comparison_data"]

logger = logging.getLogger(__name__)

COMPARISON_METHODS = ("clip", "sdmad", "d24fad", "sir")
_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class ComparisonData:
    """One dataset's images, preprocessed. Attributes: name, layout (``bmad`` or a MedIAnomaly layout), train
    ``[N, 3, S, S]`` normals, test ``[M, 3, S, S]``, labels ``[M]`` (1 = abnormal), masks ``[M, S, S]`` or None,
    train_files and test_files (names: the record of the supports; SD-MAD's scores are matched by them)."""

    name: str
    layout: str
    train: torch.Tensor
    test: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    train_files: list[str] = field(default_factory=list)
    test_files: list[str] = field(default_factory=list)


@dataclass
class MethodResult:
    """One table row. ``note`` says why a method did not run (its metrics are then None)."""

    dataset: str
    method: str
    image_auroc: float | None = None
    image_ap: float | None = None
    pixel_auroc: float | None = None
    pixel_ap: float | None = None
    pixel_best_dice: float | None = None
    num_test: int = 0
    num_abnormal: int = 0
    seconds: float = 0.0
    note: str = ""


def load_comparison_data(
    root: str | Path, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> ComparisonData:
    """Read one dataset folder (BMAD, or any MedIAnomaly layout) into :class:`ComparisonData`."""
    from .data import build_bmad_datalist, build_medianomaly_datalist, detect_medianomaly_layout
    from .data.bmad_protocol import bmad_transforms

    root = Path(root)
    if (root / "train" / "good" / "img").is_dir():
        layout, datalist = "bmad", build_bmad_datalist(root)
    else:
        layout = detect_medianomaly_layout(root)
        datalist = build_medianomaly_datalist(root, layout, validation_fraction=0.0)
    test_items = datalist["test"] if "test" in datalist else []
    if not test_items:
        raise ValueError(f"{root}: no test images.")
    with_masks = any("mask" in item for item in test_items)
    transform = bmad_transforms(image_size, mean, std, pixel_level=with_masks)
    plain = bmad_transforms(image_size, mean, std)

    def stack(items, tf, key="image"):
        return torch.stack([torch.as_tensor(tf(dict(item))[key]) for item in items]).float()

    test_data = [transform(dict(item)) for item in test_items]
    masks = torch.stack([torch.as_tensor(d["mask"])[0] for d in test_data]).float() if with_masks else None
    return ComparisonData(
        name=root.name,
        layout=layout,
        train=stack(datalist["training"], plain),
        test=torch.stack([torch.as_tensor(d["image"]) for d in test_data]).float(),
        labels=torch.tensor([int(item["label"][0]) for item in test_items]),
        masks=masks,
        train_files=[item["file"] for item in datalist["training"]],
        test_files=[item["file"] for item in test_items],
    )


def _scaled(train_maps: torch.Tensor, test_maps: torch.Tensor) -> torch.Tensor:
    low = min(float(train_maps.min()), float(test_maps.min()))
    high = max(float(train_maps.max()), float(test_maps.max()))
    return (test_maps - low) / max(high - low, 1e-12)


def _metrics(row: MethodResult, data: ComparisonData, scores: torch.Tensor, maps: torch.Tensor | None,
             train_maps: torch.Tensor | None) -> MethodResult:  # fmt: skip
    from sklearn.metrics import average_precision_score, roc_auc_score

    from .metrics import PixelAUROCMetric

    y = data.labels.numpy()
    s = scores.detach().double().numpy()
    row.num_test, row.num_abnormal = len(y), int(y.sum())
    if 0 < y.sum() < len(y):
        row.image_auroc, row.image_ap = float(roc_auc_score(y, s)), float(average_precision_score(y, s))
    if data.masks is not None and maps is not None and train_maps is not None:
        metric = PixelAUROCMetric(score_range=(0.0, 1.0))
        metric(y_pred=_scaled(train_maps, maps).clamp(0, 1), y=(data.masks > 0.5).float())
        row.pixel_auroc, row.pixel_ap = float(metric.aggregate()), float(metric.average_precision())
        row.pixel_best_dice = float(metric.best_dice()[0])
    return row


def _run_sdmad(dataset_dir: Path, bundle_root: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate SD-MAD on one BMAD folder with the bundle's configs; its test scores in the test order of
    :func:`load_comparison_data` and its ``metrics.json``."""
    from monai.bundle import ConfigWorkflow

    bundle_root.mkdir(parents=True, exist_ok=True)
    common = dict(bundle_root=str(bundle_root), dataset_dir=str(dataset_dir), **overrides)
    configs = [str(_CONFIGS / n) for n in ("train.json", "train_bmad.json")]
    steps = ((configs, "train", "training"), (configs + [str(_CONFIGS / "evaluate_bmad.json")], "infer", "evaluating"))
    for config_file, workflow_type, run_id in steps:
        workflow = ConfigWorkflow(config_file=config_file, meta_file=str(_CONFIGS / "metadata.json"),
                                  workflow_type=workflow_type, run_id=run_id, **common)  # fmt: skip
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    evaluation = bundle_root / "eval_bmad"
    metrics = json.loads((evaluation / "metrics.json").read_text())
    rows = list(csv.DictReader((evaluation / "predictions.csv").open()))
    by_file = {(Path(r["file"]).name, int(float(r["label"]))): float(r["image_score"]) for r in rows}
    return {"metrics": metrics, "by_file": by_file}


def _sdmad_scores(run: dict[str, Any], data: ComparisonData) -> torch.Tensor:
    keys = [(name, int(label)) for name, label in zip(data.test_files, data.labels.tolist())]
    missing = [k for k in keys if k not in run["by_file"]]
    if missing:
        raise RuntimeError(f"SD-MAD's predictions.csv lacks test images {missing[:3]} of {data.name}.")
    return torch.tensor([run["by_file"][k] for k in keys], dtype=torch.float64)


@torch.no_grad()
def _zero_shot(detector: Any, images: torch.Tensor, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The detector's zero-shot (adapters off) image scores and anomaly maps (None without map layers)."""
    scores, maps = [], []
    with detector.adapters_disabled():
        for start in range(0, images.shape[0], batch_size):
            out = detector(images[start : start + batch_size], output="all")
            scores.append(out.image_score)
            if out.anomaly_map is not None:
                maps.append(out.anomaly_map)
    return torch.cat(scores), (torch.cat(maps) if maps else None)


def _draw(n: int, k: int, generator: torch.Generator) -> list[int]:
    return sorted(torch.randperm(n, generator=generator)[: min(k, n)].tolist())


def compare_methods(
    dataset_dirs: Sequence[str | Path],
    output_dir: str | Path,
    methods: Sequence[str] = COMPARISON_METHODS,
    shots: int = 4,
    seed: int = 0,
    model_name: str = "sdmad-tiny",
    pretrained: str | None = "demo",
    image_size: int = 64,
    sdmad_epochs: int = 50,
    d24fad_steps: int = 200,
    sir_steps: int = 200,
    sir_loops: int = 3,
    learning_rate: float = 1e-3,
    progress: bool = True,
) -> list[MethodResult]:
    """Run the comparison (module docstring) and write its table and figures into ``output_dir``.

    Args:
        dataset_dirs: dataset folders (BMAD or MedIAnomaly layouts).
        output_dir: where ``results.json`` / ``.csv`` / ``.md`` and ``roc_<dataset>.png`` go.
        methods: a subset of :data:`COMPARISON_METHODS`.
        shots: normal supports per dataset (D²4FAD) and per training query.
        seed: seed of the support draws and of the baselines' initialisation and training draws.
        model_name: open_clip architecture of the detector and the teacher.
        pretrained: its weights (``"demo"``, a tag or file, ``None`` for random).
        image_size: input size.
        sdmad_epochs: ``max_epochs`` of SD-MAD's training (``train_bmad.json``'s 50).
        d24fad_steps: optimiser steps of each leave-one-out D²4FAD.
        sir_steps: optimiser steps of the universal SIR.
        sir_loops: SIR's refinement loops.
        learning_rate: Adam learning rate of both baselines.
        progress: log one line per dataset x method.

    Returns:
        The rows, dataset by dataset in the order given, methods in the order given.
    """
    from .baselines import D24FAD, SIR, CLIPTeacher, score_images, train_d24fad, train_sir
    from .networks import SignDrivenDetector
    from .networks.backbone import image_blocks
    from .prompts import load_bmad_prompt_bank

    unknown = [m for m in methods if m not in COMPARISON_METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty subset of {COMPARISON_METHODS}, got {list(methods)}.")
    if not dataset_dirs:
        raise ValueError("No dataset folder given.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    def zero_shot_detector(bank: Any, categories: Any, maps: Sequence[int] = ()) -> Any:
        # no adapters: the bare CLIP of any architecture, with the detector's scoring and (MVFA) maps
        return SignDrivenDetector(model_name=model_name, pretrained=pretrained, image_size=image_size,
                                  image_adapter_layers=[], text_adapter=False, prompt_bank=bank,
                                  categories=categories, map_layers=list(maps)).eval()  # fmt: skip

    generic = load_bmad_prompt_bank("generic")
    probe = zero_shot_detector(generic, generic.labels)
    mean, std = probe.image_mean, probe.image_std
    depth = len(image_blocks(probe.backbone))
    # maps from the blocks at the paper's relative depths (its 6, 12, 18, 24 of ViT-L/14's 24)
    map_layers = sorted({max(1, round(depth * q)) for q in (0.25, 0.5, 0.75, 1.0)})
    datasets = [load_comparison_data(d, image_size, mean, std) for d in dataset_dirs]
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ValueError(f"Dataset folder names must differ (they name the rows), got {names}.")
    generator = torch.Generator().manual_seed(int(seed))
    supports = {d.name: _draw(d.train.shape[0], shots, generator) for d in datasets}
    sir_images = {d.name: _draw(d.train.shape[0], 1, generator)[0] for d in datasets}
    rows: list[MethodResult] = []
    curves: dict[str, dict[str, torch.Tensor]] = {d.name: {} for d in datasets}
    teacher: CLIPTeacher | None = None
    sir_model: SIR | None = None
    for method in methods:
        if method in ("d24fad", "sir") and teacher is None:
            teacher = CLIPTeacher(probe.backbone)
        if method == "sir":
            if teacher is None:
                raise RuntimeError("the CLIP teacher is made before SIR is trained")
            torch.manual_seed(seed)
            sir_model = SIR(teacher, image_size, loops=sir_loops)
            started = time.perf_counter()
            train_sir(sir_model, torch.stack([d.train[sir_images[d.name]] for d in datasets]), steps=sir_steps,
                      lr=learning_rate, seed=seed)  # fmt: skip
            sir_seconds = time.perf_counter() - started
        for data in datasets:
            started = time.perf_counter()
            row = MethodResult(data.name, method)
            if method == "sdmad":
                if data.layout != "bmad":
                    row.note = "SD-MAD needs abnormal shots: a MedIAnomaly folder has abnormal images only in test/"
                    rows.append(row)
                    continue
                run = _run_sdmad(Path(dataset_dirs[names.index(data.name)]), output_dir / "sdmad" / data.name,
                                 dict(seed=seed, k_shot=shots, max_epochs=sdmad_epochs, model_name=model_name,
                                      pretrained=pretrained, image_size=image_size))  # fmt: skip
                scores = _sdmad_scores(run, data)
                row = _metrics(row, data, scores, None, None)
                row.pixel_auroc, row.pixel_ap = run["metrics"].get("pixel_auroc"), run["metrics"].get("pixel_ap")
                row.pixel_best_dice = run["metrics"].get("pixel_best_dice")
                row.seconds = time.perf_counter() - started
                curves[data.name][method] = scores
                rows.append(row)
                continue
            if method == "clip":
                bank = load_bmad_prompt_bank(data.name)
                detector = zero_shot_detector(bank, bank.labels, map_layers)
                scores, maps = _zero_shot(detector, data.test)
                train_maps = _zero_shot(detector, data.train)[1] if maps is not None else None
            elif method == "d24fad":
                others = [d.train for d in datasets if d.name != data.name]
                if not others:
                    row.note = "D²4FAD trains leave one dataset out: give at least two datasets"
                    rows.append(row)
                    continue
                if teacher is None:
                    raise RuntimeError("the CLIP teacher is made before D²4FAD is trained")
                torch.manual_seed(seed)
                model = D24FAD(teacher, image_size)
                train_d24fad(model, others, shots=min(shots, min(o.shape[0] for o in others) - 1), steps=d24fad_steps,
                             batch_size=8, lr=learning_rate, seed=seed)  # fmt: skip
                support = data.train[supports[data.name]]
                scores, maps = score_images(model, data.test, support)
                train_maps = score_images(model, data.train, support)[1]
            else:
                if sir_model is None:
                    raise RuntimeError("SIR is trained before it scores")
                scores, maps = score_images(sir_model, data.test)
                train_maps = score_images(sir_model, data.train)[1]
            row = _metrics(row, data, scores, maps, train_maps)
            row.seconds = time.perf_counter() - started + (sir_seconds / len(datasets) if method == "sir" else 0.0)
            curves[data.name][method] = scores
            rows.append(row)
            if progress:
                logger.info("%s / %s: image AUROC %s (%.1f s)", data.name, method,
                            "n/a" if row.image_auroc is None else f"{row.image_auroc:.3f}", row.seconds)  # fmt: skip
    rows.sort(key=lambda r: (names.index(r.dataset), list(methods).index(r.method)))
    settings = dict(methods=list(methods), shots=shots, seed=seed, model_name=model_name, pretrained=pretrained,
                    image_size=image_size, sdmad_epochs=sdmad_epochs, d24fad_steps=d24fad_steps, sir_steps=sir_steps,
                    sir_loops=sir_loops, learning_rate=learning_rate)  # fmt: skip
    record = {
        "settings": settings,
        "datasets": [
            {
                "name": d.name,
                "layout": d.layout,
                "dir": str(p),
                "train": int(d.train.shape[0]),
                "test": int(d.test.shape[0]),
                "masks": d.masks is not None,
                "d24fad_supports": [d.train_files[i] for i in supports[d.name]],
                "sir_image": d.train_files[sir_images[d.name]],
            }
            for d, p in zip(datasets, dataset_dirs)
        ],  # fmt: skip
        "results": [asdict(r) for r in rows],
    }
    atomic_write_json(output_dir / "results.json", record)
    _write_tables(rows, output_dir)
    for data in datasets:
        _roc_figure(data, curves[data.name], output_dir / f"roc_{data.name}.png", demo=pretrained == "demo")
    return rows


_COLUMNS = ("dataset", "method", "image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_best_dice", "num_test",
            "num_abnormal", "seconds", "note")  # fmt: skip


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _write_tables(rows: Sequence[MethodResult], output_dir: Path) -> None:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(_COLUMNS)
    for row in rows:
        writer.writerow([_cell(getattr(row, c)) for c in _COLUMNS])
    atomic_write_text(output_dir / "results.csv", text.getvalue())
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(_cell(getattr(r, c)) or "-" for c in _COLUMNS) + " |" for r in rows]
    atomic_write_text(output_dir / "results.md", "\n".join(lines) + "\n")


def _roc_figure(data: ComparisonData, curves: dict[str, torch.Tensor], path: Path, demo: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    from .utils import atomic_path

    y = data.labels.numpy()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    styles = ["-", "--", ":", "-."]
    for i, (method, scores) in enumerate(curves.items()):
        if not 0 < y.sum() < len(y):
            continue
        fpr, tpr, _ = roc_curve(y, scores.double().numpy())
        ax.plot(fpr, tpr, styles[i % 4], linewidth=2.2 - 0.4 * i,
                label=f"{method} (AUROC {roc_auc_score(y, scores.double().numpy()):.3f})")  # fmt: skip
    ax.plot([0, 1], [0, 1], color="0.7", linewidth=0.8)
    title = f"{data.name}: {int(y.sum())} abnormal / {int(len(y) - y.sum())} normal test images"
    title += "\n(demo backbone)" if demo else ""
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=110, format="png")
    plt.close(fig)
