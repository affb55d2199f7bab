"""Glue the bundle configs call: data preparation and checks that must pass before training starts.

:func:`prepare_splits` turns a fastMRI+-style dataset (or, with no dataset, the generated demo) into three slice
datalists split by *volume*, so no volume contributes to two splits:

- ``training``: the k-shot support set (:func:`sdmad_monai.data.select_k_shot`);
- ``validation``: a seeded fraction of the remaining volumes, used for model selection;
- ``test``: every other remaining volume, never seen during training or model selection.

All three, plus the k-shot file and the full datalist, are written to ``work_dir`` (atomically), and reused on the next
run with the same settings so that a run can be repeated exactly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data import (
    FASTMRI_BRAIN_CATEGORIES,
    build_fastmri_datalist,
    generate_demo_dataset,
    save_k_shot,
    select_k_shot,
)
from .data.demo import DEMO_SUFFIX
from .data.kshot import hold_out_volumes
from .utils import atomic_write_json

__all__ = [
    "DatasetError",
    "PrepareBatchWithMasks",
    "calibrate_checkpoint",
    "check_categories",
    "prepare_splits",
    "report_training",
    "split_items",
]

logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """The dataset given to a workflow is missing, empty or inconsistent."""


def _resolve_dataset(
    dataset_dir: str | Path | None,
    work_dir: Path,
    annotations_csv: str | Path | None,
    file_list_csv: str | Path | None,
    image_suffix: str,
    demo_volumes: int,
    demo_seed: int,
) -> tuple[Path, Path, Path, str]:
    if dataset_dir is None:
        logger.info("No dataset_dir given: using the generated demo dataset in %s", work_dir / "demo")
        demo = generate_demo_dataset(work_dir / "demo", num_volumes=demo_volumes, seed=demo_seed)
        return demo["annotations_csv"], demo["file_list_csv"], demo["images_dir"], DEMO_SUFFIX
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetError(
            f"dataset_dir {root} does not exist or is not a folder. Point it at the folder with the fastMRI brain "
            ".h5 files, or leave it null to train on the generated demo dataset."
        )
    annotations = Path(annotations_csv) if annotations_csv else root / "brain.csv"
    file_list = Path(file_list_csv) if file_list_csv else root / "brain_file_list.csv"
    for path, what in ((annotations, "annotations_csv (fastMRI+ Annotations/brain.csv)"), (file_list, "file_list_csv")):
        if not path.is_file():
            raise DatasetError(f"{what} not found at {path}; set it in the config or copy it into {root}.")
    return annotations, file_list, root, image_suffix


def prepare_splits(
    work_dir: str | Path,
    dataset_dir: str | Path | None = None,
    categories: Sequence[str] = FASTMRI_BRAIN_CATEGORIES,
    slices: Sequence[int] = (0, 5, 10),
    k_shot: int = 1,
    seed: int = 0,
    validation_fraction: float = 0.2,
    annotations_csv: str | Path | None = None,
    file_list_csv: str | Path | None = None,
    image_suffix: str = ".h5",
    study_level: str = "as_annotated",
    missing: str = "error",
    demo_volumes: int = 60,
    require_dataset: bool = False,
    demo_seed: int = 0,
) -> dict[str, Any]:
    """Build (or reuse) the training / validation / test slice datalists.

    Args:
        work_dir: where the datalists (and the demo dataset) are written.
        dataset_dir: folder with the images and, by default, ``brain.csv`` + ``brain_file_list.csv``; ``None``
            generates the demo dataset into ``work_dir/demo``.
        categories: label categories, in output-channel order.
        slices: slice indices per volume (the paper: 0, 5, 10).
        k_shot: positives per category (and normals per category) in the training set: 1 and 4 in the paper.
        seed: seed of the k-shot selection and of the validation split.
        validation_fraction: share of the non-training volumes used for validation.
        annotations_csv: override of ``dataset_dir/brain.csv``.
        file_list_csv: override of ``dataset_dir/brain_file_list.csv``.
        image_suffix: image file suffix (``.h5`` for fastMRI).
        study_level: study-level label handling (see :func:`sdmad_monai.data.build_fastmri_datalist`).
        missing: what to do with listed volumes whose image file is absent (``"error"`` or ``"skip"``).
        demo_volumes: number of demo volumes when ``dataset_dir`` is ``None``.
        demo_seed: seed of the generated demo dataset, kept apart from ``seed`` so that runs over several seeds draw
            different k-shot sets from the same data.
        require_dataset: refuse to fall back on the demo (real-data settings such as ``configs/paper.json``).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...], "categories": [...], "files": {...}}``.

    Raises:
        DatasetError: missing folder or files, an empty datalist, or a split left empty.
    """
    if dataset_dir is None and require_dataset:
        raise DatasetError(
            "This configuration needs real data: pass --dataset_dir with the folder holding the fastMRI brain .h5 "
            "files, brain.csv and brain_file_list.csv (fastMRI+ Annotations)."
        )
    if not 0 <= validation_fraction < 1:
        raise DatasetError(f"validation_fraction must be in [0, 1), got {validation_fraction}.")
    work_dir = Path(work_dir)
    settings = {
        "dataset_dir": None if dataset_dir is None else str(Path(dataset_dir).resolve()),
        "categories": list(categories),
        "slices": [int(s) for s in slices],
        "k_shot": int(k_shot),
        "seed": int(seed),
        "validation_fraction": float(validation_fraction),
        "study_level": study_level,
        "demo_volumes": int(demo_volumes) if dataset_dir is None else None,
        "demo_seed": int(demo_seed) if dataset_dir is None else None,
        "annotations_csv": None if annotations_csv is None else str(Path(annotations_csv).resolve()),
        "file_list_csv": None if file_list_csv is None else str(Path(file_list_csv).resolve()),
        "image_suffix": image_suffix,
        "missing": missing,
    }
    splits_path = work_dir / "splits.json"
    if splits_path.is_file():
        previous = json.loads(splits_path.read_text(encoding="utf-8"))
        if previous.get("settings") == settings and (dataset_dir is not None or (work_dir / "demo").is_dir()):
            logger.info("Reusing the splits in %s (same settings)", splits_path)
            return previous

    annotations, file_list, images, suffix = _resolve_dataset(
        dataset_dir, work_dir, annotations_csv, file_list_csv, image_suffix, demo_volumes, demo_seed
    )
    datalist = build_fastmri_datalist(
        annotations,
        file_list,
        images,
        categories=categories,
        slices=slices,
        study_level=study_level,
        suffix=suffix,
        missing=missing,
        output_json=work_dir / "datalist.json",
    )
    if not datalist.items:
        raise DatasetError(f"The datalist built from {annotations} and {file_list} is empty: no slice to train on.")
    kshot_path = work_dir / f"kshot_{k_shot}shot_seed{seed}.json"
    split = select_k_shot(datalist.items, k_shot, categories, seed=seed)
    save_k_shot(split, kshot_path)
    validation, test = hold_out_volumes(split.remaining, validation_fraction, seed)
    result = {
        "settings": settings,
        "categories": list(categories),
        "training": split.support,
        "validation": validation,
        "test": test,
        "files": {"datalist": str(work_dir / "datalist.json"), "kshot": str(kshot_path), "splits": str(splits_path)},
    }
    for name in ("training", "validation", "test"):
        if not result[name] and not (name == "validation" and validation_fraction == 0):
            raise DatasetError(f"The {name} split is empty ({len(datalist.items)} slices in the datalist).")
    atomic_write_json(splits_path, result)
    logger.info(
        "Splits by volume: %d training, %d validation, %d test slices -> %s",
        len(split.support),
        len(validation),
        len(test),
        splits_path,
    )
    return result


def split_items(splits: dict[str, Any], name: str) -> list[dict]:
    """The datalist of split ``name`` of :func:`prepare_splits`' result, or a :class:`DatasetError` naming the splits.

    Args:
        splits: from :func:`prepare_splits`.
        name: ``"training"``, ``"validation"`` or ``"test"``.
    """
    choices = [k for k in ("training", "validation", "test") if k in splits]
    if name not in choices:
        raise DatasetError(f"eval_split {name!r} is not a split; choose one of {', '.join(choices)}.")
    return splits[name]


def check_categories(splits: dict[str, Any], category_labels: Sequence[str]) -> None:
    """Refuse to train when the datalist's categories are not the detector's (before any training starts).

    Raises:
        DatasetError: naming the categories on each side.
    """
    if list(splits["categories"]) != list(category_labels):
        raise DatasetError(
            f"The datalist's categories {list(splits['categories'])} differ from the detector's prompt-bank "
            f"categories {list(category_labels)}; use the same list (and order) for both."
        )


def calibrate_checkpoint(
    checkpoint: str | Path, detector: Any, dataset: Any, batch_size: int = 32, split: str = "validation"
) -> Any:
    """After training: fit the per-category calibration (:func:`sdmad_monai.calibration.fit_calibration`) of the best
    checkpoint on the validation slices and store it in the checkpoint (rewritten atomically).

    The best epoch's adapters are loaded into ``detector`` first (the trainer's network holds the last epoch's), so
    afterwards ``detector`` is the saved model.

    Args:
        checkpoint: the best-metric checkpoint the trainer wrote.
        detector: the training's :class:`~sdmad_monai.networks.SignDrivenDetector` (or its DDP wrapper).
        dataset: the validation dataset (items with the preprocessed ``image`` and the multi-hot ``label``).
        batch_size: slices per forward pass.
        split: name recorded with the calibration.

    Returns:
        The :class:`~sdmad_monai.calibration.Calibration`.
    """
    import torch
    from monai.data import DataLoader

    from .calibration import calibration_margin, fit_calibration
    from .networks import SignDrivenDetector

    detector = getattr(detector, "module", detector)
    detector.load_state_dict(SignDrivenDetector.read_checkpoint(checkpoint))
    device = next(detector.parameters()).device
    detector.eval()
    margins, labels = [], []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            outputs = detector(torch.as_tensor(batch["image"]).to(device), output="all", maps=False)
            margins.append(calibration_margin(outputs.scores, outputs.anchor_similarity).cpu())
            labels.append(torch.as_tensor(batch["label"]).cpu())
    if not margins:
        raise RuntimeError(f"No {split} slice to calibrate {checkpoint} on.")
    calibration = fit_calibration(torch.cat(margins), torch.cat(labels), detector.category_labels, split=split)
    detector.set_calibration(calibration)
    detector.save(checkpoint)
    for category in calibration.categories:
        if category.calibrated:
            logger.info(
                "Calibration %s: p = sigmoid(%.4g * margin + %.4g) on %d+/%d- %s slices (AUROC %.3f)%s",
                category.label,
                category.slope,
                category.intercept,
                category.positives,
                category.negatives,
                split,
                category.auroc,
                f"; {category.note}" if category.note else "",
            )
        else:
            logger.warning(
                "Calibration %s: none (%s); its findings carry no probability.", category.label, category.note
            )
    return calibration


def report_training(
    checkpoint: str | Path,
    evaluator: Any,
    output_file: str | Path | None = None,
    evaluate_configs: Sequence[str] = ("configs/train.json", "configs/evaluate.json"),
    calibration: Any = None,
) -> dict[str, Any]:
    """After training: record the best validation result and say where the checkpoint and metrics are.

    Args:
        checkpoint: the best-metric checkpoint the trainer wrote.
        evaluator: the validation ``SupervisedEvaluator`` (its ``state`` holds the best key metric).
        output_file: where to write the summary JSON (default: ``training_summary.json`` beside the checkpoint).
        evaluate_configs: the config files of the matching evaluation, named in the closing message.
        calibration: the checkpoint's calibration (:func:`calibrate_checkpoint`), summarised in the JSON.

    Returns:
        The summary dict.

    Raises:
        RuntimeError: no checkpoint was written (validation never ran or never produced a finite metric).
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise RuntimeError(
            f"Training finished but no checkpoint was written to {checkpoint}: validation must run at least once "
            "(max_epochs >= val_interval) and give a finite key metric."
        )
    state = evaluator.state
    summary = {
        "checkpoint": str(checkpoint.resolve()),
        "best_validation_metric": getattr(state, "key_metric_name", None),
        "best_validation_value": float(getattr(state, "best_metric", float("nan"))),
        "best_validation_epoch": int(getattr(state, "best_metric_epoch", -1)),
        "last_validation_metrics": {k: float(v) for k, v in state.metrics.items() if isinstance(v, (int, float))},
        "calibration": None if calibration is None else calibration.summary(),
    }
    output_file = Path(output_file) if output_file else checkpoint.parent / "training_summary.json"
    atomic_write_json(output_file, summary)
    message = (
        f"Training done. Best checkpoint: {summary['checkpoint']} "
        f"({summary['best_validation_metric']} = {summary['best_validation_value']:.4f} at epoch "
        f"{summary['best_validation_epoch']}). Summary: {output_file.resolve()}. Evaluate on the held-out test "
        f'data with: python -m monai.bundle run evaluating --config_file "{list(evaluate_configs)}"'
    )
    logger.info(message)
    print(message, flush=True)
    return summary


class PrepareBatchWithMasks:
    """The trainer's ``prepare_batch`` for pixel-level training: ``(image, {"label", "mask", "mask_valid"})``.

    With ``masks=False`` it is MONAI's ``default_prepare_batch`` (the image-level training of ``configs/train.json``,
    whose loss takes the ``[B, K]`` label tensor). With ``masks=True`` the batch must hold ``mask`` ``[B, 1, S, S]``
    (e.g. from :class:`sdmad_monai.transforms.planar.AnomalyMaskd`, which gives normal images an empty mask), and the
    target becomes the mapping :class:`sdmad_monai.losses.SDMADLoss` takes when its ``pixel_loss_weight`` is above 0.
    ``mask_valid`` ``[B]`` is 1 for a normal image (its empty mask is right) or an image whose mask marks something,
    and 0 for an abnormal image with an empty mask -- a lesion nobody outlined -- which the segmentation terms skip.

    Args:
        masks: pass the masks on (pixel-level training) or not.
        mask_key: key of the masks in the batch.
    """

    def __init__(self, masks: bool = True, mask_key: str = "mask") -> None:
        self.masks = bool(masks)
        self.mask_key = mask_key

    def __call__(self, batchdata: Any, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> Any:
        from monai.engines import default_prepare_batch

        if not self.masks:
            return default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if not isinstance(batchdata, dict) or self.mask_key not in batchdata:
            keys = sorted(batchdata) if isinstance(batchdata, dict) else type(batchdata).__name__
            raise KeyError(
                f"Pixel-level training needs a {self.mask_key!r} entry in every batch, got {keys}: add the mask "
                "transform (sdmad_monai.transforms.planar.AnomalyMaskd) to the training preprocessing and put "
                "'mask' paths in the datalist items that have one."
            )

        def move(value: Any) -> Any:
            return value.to(device=device, non_blocking=non_blocking, **kwargs)

        label = move(batchdata["label"])
        mask = move(batchdata[self.mask_key]).float()
        marked = mask.flatten(1).amax(dim=1) > 0.5
        normal = label.flatten(1).amax(dim=1) <= 0
        valid = (marked | normal).to(mask.dtype)
        return move(batchdata["image"]), {"label": label, "mask": mask, "mask_valid": valid}
