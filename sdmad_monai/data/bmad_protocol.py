"""Protocol 1 of the paper (general few-shot anomaly detection on BMAD, Section 4.2, Table 1): data side.

:func:`prepare_bmad_protocol` turns one BMAD dataset folder (layout in :mod:`sdmad_monai.data.bmad`) into

- the test items (``test`` split: ``good`` and ``Ungood`` images, masks where present);
- the k-shot memory bank: ``k_shot`` normal images (default 4, the paper's 4-shot setting) drawn with a seed from the
  ``train`` split (BMAD's ``train/good``), whose patch tokens the detector keeps for the few-shot branch of its
  anomaly maps (``detector.set_memory_bank``);
- whether pixel-level metrics apply (:func:`bmad_pixel_level`).

Which datasets get pixel AUROC (the paper, Section 4.1 "Dataset"): BrainMRI, LiverCT and RESC (their BMAD folders
have ``anomaly_mask``); OCT17, ChestXray and HIS are evaluated at image level only. The choice is made from the folder
name when it is one of these six (case and separators ignored, e.g. ``BrainMRI``, ``brain_mri``, ``Liver-CT``);
any other folder gets pixel metrics exactly when every abnormal test image has a mask. ``pixel_metrics=True/False``
overrides the rule.

The choices are written to ``<work_dir>/bmad_protocol.json`` (memory-bank files, pixel-level decision and why) so a
run can be checked and repeated.

Training for protocol 1 (:func:`prepare_bmad_training`, used by ``configs/train_bmad.json``) follows MVFA's few-shot
protocol (Huang et al., CVPR 2024, ``dataset/medical_few.py`` and ``train_few.py``), which the paper's Section 4.2
builds on: the k-shot support set is ``k_shot`` normal **and** ``k_shot`` abnormal images drawn with a seed from
BMAD's ``valid`` split (abnormal ones with their masks where the dataset has them); the rest of ``valid`` selects the
checkpoint; ``test`` is never touched. The choices are written to ``<work_dir>/bmad_training.json``.

Both return frozen dataclasses that also carry the settings derived from the pixel-level decision, so the bundle
configs only wire them: :class:`BMADTrainingPlan` (``pixel_loss_weight``, ``key_metric``, ``additional_metrics``
for ``configs/train_bmad.json``) and :class:`BMADProtocol` (``additional_metrics``, ``pixel_metric_name``,
``mask_key``, ``memory_bank_files`` for ``configs/evaluate_bmad.json``).

Size: the data side of protocol 1 on BMAD layouts: the training plan and the evaluation protocol (two typed
results derived from the same layout checks), the memory bank items and the 2D transforms they need.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from monai.transforms import Compose

from ..transforms.intensity import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    clip_slice_transforms,
)
from ..transforms.planar import AnomalyMaskd, LoadImage2Dd
from ..utils import atomic_write_json
from .bmad import BMAD_SECTIONS, build_bmad_datalist

__all__ = [
    "BMAD_PIXEL_LEVEL",
    "PIXEL_LABEL_KEY",
    "PIXEL_METRIC_NAME",
    "VAL_IMAGE_METRIC_NAME",
    "VAL_PIXEL_METRIC_NAME",
    "BMADProtocol",
    "BMADProtocolError",
    "BMADTrainingPlan",
    "bmad_pixel_level",
    "bmad_transforms",
    "build_memory_bank",
    "memory_bank_images",
    "prepare_bmad_protocol",
    "prepare_bmad_training",
]

logger = logging.getLogger(__name__)

#: The paper's per-dataset choice: True = image and pixel AUROC, False = image AUROC only. Keys are normalised
#: names (lower case, letters and digits only).
BMAD_PIXEL_LEVEL: dict[str, bool] = {
    "brainmri": True,
    "liverct": True,
    "resc": True,
    "oct17": False,
    "chestxray": False,
    "his": False,
}


#: metric names of the BMAD runs: training's checkpoint-selection metrics (``validate#key_metric`` /
#: ``validate#additional_metrics`` of ``configs/train_bmad.json``) and the evaluation's pixel metric
#: (``engine.state.metrics`` key read by :class:`~sdmad_monai.handlers.DetectionReport`)
VAL_PIXEL_METRIC_NAME = "val_pixel_auroc"
VAL_IMAGE_METRIC_NAME = "val_image_auroc"
PIXEL_METRIC_NAME = "pixel_auroc"
#: the batch key the BMAD configs copy the mask to (``CopyItemsd`` in ``validate#evaluator#postprocessing``) and the
#: pixel metric reads as its label (``detector_output('anomaly_map', label_key='pixel_label')``)
PIXEL_LABEL_KEY = "pixel_label"


class BMADProtocolError(ValueError):
    """A BMAD folder does not fit protocol 1 (missing split, too few normal images, missing masks)."""


@dataclass(frozen=True)
class BMADProtocol:
    """What :func:`prepare_bmad_protocol` decided for one BMAD folder, and the evaluation settings that follow.

    Attributes:
        dataset: the folder name (e.g. ``"BrainMRI"``).
        dataset_dir: the resolved folder.
        pixel_level: whether pixel AUROC is evaluated (:func:`bmad_pixel_level`).
        pixel_level_reason: why.
        test: the evaluated items (without ``mask`` when not ``pixel_level``).
        memory_bank: the ``k_shot`` normal items of the memory bank.
        files: ``{"protocol": path of bmad_protocol.json}``.
    """

    dataset: str
    dataset_dir: str
    pixel_level: bool
    pixel_level_reason: str
    test: list[dict]
    memory_bank: list[dict]
    files: dict[str, str]

    @property
    def memory_bank_files(self) -> list[str]:
        """The ``file`` names of the memory-bank items (recorded in the report)."""
        return [item["file"] for item in self.memory_bank]

    @property
    def pixel_metric_name(self) -> str | None:
        """The pixel metric's name in ``engine.state.metrics`` (:data:`PIXEL_METRIC_NAME`), ``None`` at image level."""
        return PIXEL_METRIC_NAME if self.pixel_level else None

    @property
    def mask_key(self) -> str | None:
        """The batch key of the masks to draw on overlays (:data:`PIXEL_LABEL_KEY`), ``None`` at image level."""
        return PIXEL_LABEL_KEY if self.pixel_level else None

    def additional_metrics(self, pixel_metric: Any) -> dict[str, Any] | None:
        """The evaluator's metrics besides image AUROC: ``{"pixel_auroc": pixel_metric}`` where pixel AUROC is
        evaluated, else ``None`` (the masks are not read, so the metric could not run)."""
        return {PIXEL_METRIC_NAME: pixel_metric} if self.pixel_level else None


@dataclass(frozen=True)
class BMADTrainingPlan(Mapping[str, Any]):
    """What :func:`prepare_bmad_training` drew and decided, and the training settings that follow from it.

    Also a read-only mapping over its fields (``plan["training"]``), because ``configs/train.json`` and
    :func:`~sdmad_monai.workflows.check_categories` read ``splits`` by key, whether it is this plan or the fastMRI+
    splits dict of :func:`~sdmad_monai.workflows.prepare_splits`.

    Attributes:
        training: ``support`` with each item ``support_views`` times.
        validation: the other ``valid`` items (checkpoint selection).
        support: the ``k_shot`` normal then ``k_shot`` abnormal support items.
        categories: the detector's single category (``["abnormal"]``).
        dataset: the folder name (e.g. ``"BrainMRI"``).
        dataset_dir: the resolved folder.
        pixel_level: whether the pixel (segmentation) terms apply (:func:`bmad_pixel_level` on ``valid``).
        pixel_level_reason: why.
        files: ``{"training": path of bmad_training.json}``.
    """

    training: list[dict]
    validation: list[dict]
    support: list[dict]
    categories: list[str]
    dataset: str
    dataset_dir: str
    pixel_level: bool
    pixel_level_reason: str
    files: dict[str, str]

    def __getitem__(self, key: str) -> Any:
        if key not in _TRAINING_PLAN_FIELDS:
            raise KeyError(f"The BMAD training plan has no {key!r} (it has: {', '.join(_TRAINING_PLAN_FIELDS)}).")
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_TRAINING_PLAN_FIELDS)

    def __len__(self) -> int:
        return len(_TRAINING_PLAN_FIELDS)

    def pixel_loss_weight(self, weight: float) -> float:
        """The weight of MVFA's focal + Dice terms: ``weight`` where the pixel terms apply, else ``0.0`` (the items
        carry no mask then)."""
        return float(weight) if self.pixel_level else 0.0

    def key_metric(self, pixel_metric: Any, image_metric: Any) -> dict[str, Any]:
        """The metric that selects the checkpoint: pixel AUROC of the zero-shot maps where the pixel terms apply
        (thousands of pixels rank finely, while image AUROC on a few valid images ties, often at 1.0 after the first
        epoch; MVFA selects on image + pixel AUROC), image AUROC otherwise.

        Returns:
            ``{"val_pixel_auroc": pixel_metric}`` or ``{"val_image_auroc": image_metric}``.
        """
        if self.pixel_level:
            return {VAL_PIXEL_METRIC_NAME: pixel_metric}
        return {VAL_IMAGE_METRIC_NAME: image_metric}

    def additional_metrics(self, image_metric: Any) -> dict[str, Any] | None:
        """The other validation metric, logged only: image AUROC when pixel AUROC selects, else ``None``."""
        return {VAL_IMAGE_METRIC_NAME: image_metric} if self.pixel_level else None


_TRAINING_PLAN_FIELDS = tuple(f.name for f in fields(BMADTrainingPlan))


def _normalised(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def bmad_pixel_level(
    dataset_name: str, test_items: Sequence[dict], pixel_metrics: bool | str = "auto", split: str = "test"
) -> tuple[bool, str]:
    """Decide whether pixel AUROC is evaluated (module docstring), and say why.

    Args:
        dataset_name: the dataset folder name (e.g. ``"BrainMRI"``).
        test_items: the test datalist items (``label`` ``[0.]``/``[1.]``, optional ``mask``).
        pixel_metrics: ``"auto"`` (the paper's choice / masks present), ``True`` or ``False``.
        split: BMAD split folder the items come from (``"test"``, ``"valid"``), named in the reason and errors.

    Returns:
        ``(pixel_level, reason)``.

    Raises:
        BMADProtocolError: pixel metrics are required (by the paper's choice or ``True``) but an abnormal test image
            has no mask, or there is no abnormal test image.
    """
    if pixel_metrics not in ("auto", True, False):
        raise BMADProtocolError(f"pixel_metrics must be 'auto', true or false, got {pixel_metrics!r}.")
    abnormal = [item for item in test_items if float(item["label"][0]) > 0]
    without_mask = [item.get("file", item["image"]) for item in abnormal if "mask" not in item]
    known = BMAD_PIXEL_LEVEL.get(_normalised(dataset_name))
    if pixel_metrics is False:
        return False, "pixel metrics switched off (pixel_metrics=false)"
    if pixel_metrics == "auto" and known is False:
        return False, f"{dataset_name}: image-level only in the paper (OCT17, ChestXray, HIS)"
    if pixel_metrics == "auto" and known is None:
        if abnormal and not without_mask:
            return True, f"{dataset_name}: not one of the paper's datasets; every abnormal {split} image has a mask"
        return False, (
            f"{dataset_name}: not one of the paper's datasets and "
            + (
                f"{len(without_mask)} abnormal {split} image(s) have no mask"
                if abnormal
                else f"no abnormal {split} image"
            )
        )
    why = "pixel_metrics=true" if pixel_metrics is True else f"{dataset_name}: image and pixel level in the paper"
    if not abnormal:
        raise BMADProtocolError(f"Pixel AUROC needs abnormal {split} images ({why}), but {split}/Ungood holds none.")
    if without_mask:
        raise BMADProtocolError(
            f"Pixel AUROC needs a mask for every abnormal {split} image ({why}), but {len(without_mask)} have none, "
            f"e.g. {without_mask[:3]}: put each mask under {split}/Ungood/anomaly_mask/ with the image's file name, or "
            "set pixel_metrics to false."
        )
    return True, why


def prepare_bmad_protocol(
    dataset_dir: str | Path,
    work_dir: str | Path,
    k_shot: int = 4,
    seed: int = 0,
    pixel_metrics: bool | str = "auto",
    memory_split: str = "training",
    eval_split: str = "test",
) -> BMADProtocol:
    """Test items, k-shot memory bank and pixel-level decision for one BMAD dataset (module docstring).

    Args:
        dataset_dir: BMAD dataset folder (``train/good/img``, ``test/{good,Ungood}/...``).
        work_dir: where ``bmad_protocol.json`` is written.
        k_shot: number of normal images in the memory bank (4 in the paper's protocol 1).
        seed: seed of the memory-bank draw.
        pixel_metrics: ``"auto"``, ``True`` or ``False`` (:func:`bmad_pixel_level`).
        memory_split: datalist section the normal images are drawn from (``"training"`` = BMAD ``train``).
        eval_split: datalist section that is evaluated (``"test"``; ``"validation"`` for BMAD ``valid``).

    Returns:
        :class:`BMADProtocol` (``dataset``, ``dataset_dir``, ``pixel_level``, ``pixel_level_reason``, ``test``,
        ``memory_bank``, ``files``).

    Raises:
        BMADProtocolError: unknown or empty split, fewer than ``k_shot`` normal images.
    """
    root = Path(dataset_dir).resolve() if dataset_dir is not None else None
    if root is None:
        raise BMADProtocolError(
            "protocol 1 needs a BMAD dataset folder: pass --dataset_dir /path/to/BrainMRI (or LiverCT, RESC, OCT17, "
            "ChestXray, HIS) with train/good/img and test/{good,Ungood}/img."
        )
    if isinstance(k_shot, bool) or int(k_shot) != k_shot or int(k_shot) < 1:
        raise BMADProtocolError(f"k_shot must be a positive integer, got {k_shot!r}.")
    sections = set(BMAD_SECTIONS.values())
    for name, value in (("memory_split", memory_split), ("eval_split", eval_split)):
        if value not in sections:
            raise BMADProtocolError(f"{name} must be one of {sorted(sections)}, got {value!r}.")
    datalist = build_bmad_datalist(root)
    test = datalist.get(eval_split, [])
    if not test:
        folder = {v: k for k, v in BMAD_SECTIONS.items()}[eval_split]
        raise BMADProtocolError(f"{root / folder} holds no image: nothing to evaluate.")
    normals = [item for item in datalist.get(memory_split, []) if float(item["label"][0]) == 0]
    if len(normals) < k_shot:
        raise BMADProtocolError(
            f"The {k_shot}-shot memory bank needs {k_shot} normal images in the {memory_split} split of {root}, "
            f"found {len(normals)}."
        )
    memory = random.Random(seed).sample(normals, int(k_shot))
    pixel_level, reason = bmad_pixel_level(root.name, test, pixel_metrics)
    if not pixel_level:  # masks are not read then; dropping the key keeps every item's keys the same for batching
        test = [{k: v for k, v in item.items() if k != "mask"} for item in test]
    labels = [float(item["label"][0]) for item in test]
    record = {
        "dataset": root.name,
        "dataset_dir": str(root),
        "k_shot": int(k_shot),
        "seed": int(seed),
        "memory_split": memory_split,
        "eval_split": eval_split,
        "pixel_level": pixel_level,
        "pixel_level_reason": reason,
        "num_test_images": len(test),
        "num_test_abnormal": int(sum(labels)),
        "memory_bank": [item["image"] for item in memory],
    }
    path = atomic_write_json(Path(work_dir) / "bmad_protocol.json", record)
    logger.info(
        "BMAD %s: %d test images (%d abnormal), %d-shot memory bank from %s, pixel AUROC %s (%s) -> %s",
        root.name,
        len(test),
        record["num_test_abnormal"],
        k_shot,
        memory_split,
        "on" if pixel_level else "off",
        reason,
        path,
    )
    return BMADProtocol(
        dataset=root.name,
        dataset_dir=str(root),
        pixel_level=pixel_level,
        pixel_level_reason=reason,
        test=test,
        memory_bank=memory,
        files={"protocol": str(path)},
    )


def prepare_bmad_training(
    dataset_dir: str | Path | None,
    work_dir: str | Path,
    categories: Sequence[str] = ("abnormal",),
    k_shot: int = 4,
    seed: int = 0,
    pixel_metrics: bool | str = "auto",
    support_views: int = 1,
) -> BMADTrainingPlan:
    """Few-shot training and checkpoint-selection datalists for protocol 1 on one BMAD folder (MVFA's protocol).

    As in MVFA (``dataset/medical_few.py``): ``k_shot`` normal images of ``valid/good`` and ``k_shot`` abnormal
    images of ``valid/Ungood`` (with their ``anomaly_mask`` where the dataset has masks) form the support set, drawn
    with ``random.Random(seed)``: normal first, then abnormal, so the normal draw is exactly the memory bank that
    ``prepare_bmad_protocol(..., memory_split="validation", seed=seed)`` picks. The other ``valid`` images are the
    validation set that selects the checkpoint (MVFA selects on ``test``; this never reads ``test``).

    Whether the segmentation terms apply is :func:`bmad_pixel_level` on the ``valid`` items (the paper's per-dataset
    choice: BrainMRI, LiverCT, RESC yes; OCT17, ChestXray, HIS no; other folders: masks decide). Without it the items
    carry no ``mask`` key, so the pixel term cannot apply and batches collate.

    Args:
        dataset_dir: BMAD dataset folder (``train/good/img``, ``valid/{good,Ungood}/...``, ``test/...``).
        work_dir: where ``bmad_training.json`` (the draw and the decisions) is written.
        categories: the detector's category labels; BMAD is single-category, so exactly one (``["abnormal"]``).
        k_shot: normal and abnormal support images each (4: the paper's 4-shot setting).
        seed: seed of the draw.
        pixel_metrics: ``"auto"``, ``True`` or ``False`` (:func:`bmad_pixel_level`).
        support_views: copies of each support item per epoch, each with its own random augmentation draw (MVFA
            trains on 11 fixed augmented views of each image: the original, 4 rotations, 4 shifts and 2 flips).

    Returns:
        :class:`BMADTrainingPlan` (``training``, ``validation``, ``support``, ``categories``, ``dataset``,
        ``dataset_dir``, ``pixel_level``, ``pixel_level_reason``, ``files``); ``training`` is ``support`` with each
        item ``support_views`` times.
        Items are :func:`~sdmad_monai.data.build_bmad_datalist` items (``label`` ``[0.]``/``[1.]``).

    Raises:
        BMADProtocolError: no folder, no ``valid`` split, too few normal or abnormal ``valid`` images to leave one
            of each for validation, more than one category, bad ``k_shot``/``support_views``, or missing masks where
            pixel-level training is required.
    """
    if dataset_dir is None:
        raise BMADProtocolError(
            "BMAD training needs a dataset folder: pass --dataset_dir /path/to/BrainMRI (or LiverCT, RESC, OCT17, "
            "ChestXray, HIS) with valid/{good,Ungood}/img (the few-shot support set) and test/."
        )
    root = Path(dataset_dir).resolve()
    for name, value in (("k_shot", k_shot), ("support_views", support_views)):
        if isinstance(value, bool) or int(value) != value or int(value) < 1:
            raise BMADProtocolError(f"{name} must be a positive integer, got {value!r}.")
    categories = [str(c) for c in categories]
    if len(categories) != 1:
        raise BMADProtocolError(
            f"BMAD is normal vs abnormal: the detector needs exactly one category, got {categories}; set categories "
            "to ['abnormal'] and use a single-category prompt bank (sdmad_monai.prompts.load_bmad_prompt_bank)."
        )
    valid = build_bmad_datalist(root).get("validation", [])
    if not valid:
        raise BMADProtocolError(
            f"{root / 'valid'} is missing or empty: the few-shot support set (MVFA's protocol) is drawn from BMAD's "
            "valid split, with valid/good/img and valid/Ungood/img (+ anomaly_mask)."
        )
    normals = [item for item in valid if float(item["label"][0]) == 0]
    abnormals = [item for item in valid if float(item["label"][0]) > 0]
    k = int(k_shot)
    for kind, items in (("normal (valid/good)", normals), ("abnormal (valid/Ungood)", abnormals)):
        if len(items) < k + 1:
            raise BMADProtocolError(
                f"{root / 'valid'}: the {k}-shot support set takes {k} {kind} images and checkpoint selection needs "
                f"at least one more, but there are {len(items)}."
            )
    pixel_level, reason = bmad_pixel_level(root.name, valid, pixel_metrics, split="valid")
    rng = random.Random(seed)
    support = rng.sample(normals, k) + rng.sample(abnormals, k)
    chosen = {item["image"] for item in support}
    validation = [item for item in valid if item["image"] not in chosen]
    if not pixel_level:  # masks are not read then; dropping the key keeps every item's keys the same for batching
        support = [{key: v for key, v in item.items() if key != "mask"} for item in support]
        validation = [{key: v for key, v in item.items() if key != "mask"} for item in validation]
    record = {
        "dataset": root.name,
        "dataset_dir": str(root),
        "protocol": "MVFA few-shot: k normal + k abnormal support images from valid; the rest of valid selects the "
        "checkpoint; test is not read",
        "categories": categories,
        "k_shot": k,
        "seed": int(seed),
        "support_views": int(support_views),
        "pixel_level": pixel_level,
        "pixel_level_reason": reason,
        "support": [{"image": item["image"], "label": item["label"], "mask": item.get("mask")} for item in support],
        "num_validation_images": len(validation),
        "num_validation_abnormal": sum(1 for item in validation if float(item["label"][0]) > 0),
    }
    path = atomic_write_json(Path(work_dir) / "bmad_training.json", record)
    logger.info(
        "BMAD %s training: %d-shot support (%d normal + %d abnormal from valid, x%d views), %d validation images "
        "(%d abnormal), pixel losses %s (%s) -> %s",
        root.name,
        k,
        k,
        k,
        int(support_views),
        len(validation),
        record["num_validation_abnormal"],
        "on" if pixel_level else "off",
        reason,
        path,
    )
    return BMADTrainingPlan(
        training=[dict(item) for item in support for _ in range(int(support_views))],
        validation=validation,
        support=support,
        categories=categories,
        dataset=root.name,
        dataset_dir=str(root),
        pixel_level=pixel_level,
        pixel_level_reason=reason,
        files={"training": str(path)},
    )


def bmad_transforms(
    image_size: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    pixel_level: bool = False,
    mask_output_key: str = "mask",
    augmentation: Callable | None = None,
) -> Compose:
    """Preprocessing of BMAD items: 2D load, mask (when ``pixel_level``), the one CLIP slice chain, float labels.

    Args:
        image_size: detector input side.
        mean: CLIP mean.
        std: CLIP std.
        pixel_level: also load (or zero-fill) the anomaly mask into ``mask_output_key`` as ``[1, S, S]``.
        mask_output_key: key of the resized mask.
        augmentation: training only: a dictionary transform applied after resizing, before CLIP normalisation
            (``clip_slice_transforms(..., augmentation=...)``); give it the image and mask keys, e.g.
            ``RandFewShotAugmentd(["image", "mask"], allow_missing_keys=True)``, so both get the same random draw.

    Returns:
        ``Compose`` of the dictionary transforms; ``image`` becomes ``[3, S, S]``.
    """
    from monai.transforms import EnsureTyped

    steps: list[Any] = [LoadImage2Dd("image")]
    if pixel_level:
        steps.append(AnomalyMaskd("mask", "image", image_size, output_key=mask_output_key))
    steps += [
        clip_slice_transforms("image", image_size, mean, std, augmentation=augmentation),
        EnsureTyped(keys="label", dtype=torch.float32),
    ]
    return Compose(steps)


def memory_bank_images(items: Sequence[dict], transform: Compose) -> torch.Tensor:
    """Load and preprocess the memory-bank items into ``[N, 3, S, S]``."""
    if not items:
        raise BMADProtocolError("The memory bank is empty: at least one normal image is needed.")
    return torch.stack([torch.as_tensor(transform(dict(item))["image"]) for item in items]).float()


def build_memory_bank(detector: torch.nn.Module, items: Sequence[dict], transform: Compose) -> torch.nn.Module:
    """Give the detector its few-shot normal patch tokens: ``detector.set_memory_bank(images [N, 3, S, S])``.

    Args:
        detector: a detector with ``set_memory_bank`` (the anomaly-map branch of
            :class:`~sdmad_monai.networks.SignDrivenDetector`).
        items: the memory-bank items from :func:`prepare_bmad_protocol`.
        transform: :func:`bmad_transforms` (without augmentation).

    Returns:
        The detector (for chaining in configs).

    Raises:
        TypeError: the detector has no memory bank.
    """
    inner = getattr(detector, "module", detector)
    set_memory_bank = getattr(inner, "set_memory_bank", None)
    if not callable(set_memory_bank):
        raise TypeError(
            f"{type(inner).__name__} has no set_memory_bank(): the few-shot anomaly-map branch is not available in "
            "this version of the detector."
        )
    parameter = next(iter(inner.parameters()), None)
    images = memory_bank_images(items, transform)
    if parameter is not None:
        images = images.to(parameter.device)
    inner.eval()
    with torch.no_grad():
        set_memory_bank(images)
    logger.info("Memory bank: %d normal image(s) %s", len(items), [Path(i["image"]).name for i in items])
    return detector
