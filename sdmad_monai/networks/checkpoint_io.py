"""Detector checkpoints: what a checkpoint records, how it is read, and whether it fits a detector.

A checkpoint holds the adapter weights and, as the state dict's ``_extra_state``, the detector's *description*
(format ``sdmad-detector/1``, package version, config, prompt bank and its fingerprint, the demo weights' sha256, the
calibration) as a uint8 tensor of UTF-8 JSON: a tensor, so that every state-dict consumer (MONAI's
``copy_model_state`` in ``ckpt_export``, ``torch.load(weights_only=True)``) handles it. The frozen backbone is not
stored; it is rebuilt from the recorded config. :class:`~sdmad_monai.networks.detector.SignDrivenDetector`'s
``save`` / ``read_checkpoint`` / ``load`` / ``set_extra_state`` are thin calls into this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..prompts import PromptBank
from ..utils import atomic_path

__all__ = [
    "CHECKPOINT_FORMAT",
    "ARCHITECTURE_KEYS",
    "DetectorStateError",
    "check_checkpoint_fits",
    "decode_description",
    "encode_description",
    "read_detector_state",
    "save_state_dict",
    "weights_identity",
]

CHECKPOINT_FORMAT = "sdmad-detector/1"

#: Settings that change what the adapters compute; a checkpoint only loads onto a detector with the same ones.
ARCHITECTURE_KEYS = (
    "model_name",
    "pretrained",
    "image_size",
    "seed",
    "image_adapter_layers",
    "text_adapter",
    "adapter_bottleneck",
    "adapter_lambda",
    "adapter_activation",
)


class DetectorStateError(RuntimeError):
    """A checkpoint does not fit this detector (other prompt bank, backbone or adapter settings)."""


def encode_description(description: Mapping[str, Any]) -> torch.Tensor:
    """A detector description as the uint8 tensor of its sorted UTF-8 JSON (the state dict's ``_extra_state``)."""
    return torch.tensor(list(json.dumps(description, sort_keys=True).encode("utf-8")), dtype=torch.uint8)


def decode_description(state: Any) -> Any:
    """The inverse of :func:`encode_description`; anything that is not such a tensor is returned unchanged.

    Raises:
        DetectorStateError: the tensor is not UTF-8 JSON.
    """
    if isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.ndim == 1:
        try:
            return json.loads(bytes(state.tolist()).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DetectorStateError(f"The checkpoint's detector description is corrupt: {error}.") from error
    return state


def weights_identity(pretrained: str | None) -> str | None:
    """How a checkpoint records the backbone weights: the tag, or a local file's name (paths move between sites)."""
    if pretrained is None:
        return None
    return Path(pretrained).name if os.path.sep in pretrained or os.path.isfile(pretrained) else pretrained


def check_checkpoint_fits(theirs: Any, mine: Mapping[str, Any]) -> Mapping[str, Any]:
    """Check a checkpoint's decoded description against a detector's own and return it.

    Args:
        theirs: the checkpoint's ``_extra_state``, decoded (:func:`decode_description`).
        mine: the detector's description (``SignDrivenDetector.description()``).

    Raises:
        DetectorStateError: not a detector checkpoint, or made for another prompt bank, demo-weights build, backbone
            or adapter layout; the message names the difference and what to do.
    """
    if not isinstance(theirs, Mapping) or theirs.get("format") != CHECKPOINT_FORMAT:
        raise DetectorStateError(f"Not an SD-MAD detector checkpoint (format {CHECKPOINT_FORMAT} expected).")
    if theirs["prompt_bank_fingerprint"] != mine["prompt_bank_fingerprint"]:
        their_bank = PromptBank.from_dict(theirs["prompt_bank"])
        my_bank = PromptBank.from_dict(mine["prompt_bank"])
        raise DetectorStateError(
            f"Checkpoint was trained with prompt bank {their_bank.name!r} (categories {their_bank.labels}) but this "
            f"detector uses {my_bank.name!r} (categories {my_bank.labels}) with different prompts "
            "or order. Evaluate or infer with the config files it was trained with (e.g. with "
            "configs/train_bmad.json for a BMAD checkpoint), or rebuild it with SignDrivenDetector.load."
        )
    theirs_sha, mine_sha = theirs.get("backbone_weights_sha256"), mine["backbone_weights_sha256"]
    if mine_sha is not None and theirs_sha != mine_sha:
        built = f"demo weights {theirs_sha[:12]}" if theirs_sha else "an earlier build of the demo weights"
        raise DetectorStateError(
            f"Checkpoint was trained on {built}, but this installation ships demo weights {mine_sha[:12]}; its "
            "adapters do not fit them. Retrain: python -m monai.bundle run training --config_file "
            "configs/train.json."
        )
    # the seed initialises the adapters (replaced by the checkpoint's) and, only for pretrained=None, the
    # backbone: with pretrained weights a checkpoint of any seed (e.g. a sweep's) fits, and records its own
    keys = (
        ARCHITECTURE_KEYS
        if mine["config"]["pretrained"] is None
        else tuple(k for k in ARCHITECTURE_KEYS if k != "seed")
    )
    differing = {
        key: (theirs["config"].get(key), mine["config"][key])
        for key in keys
        if theirs["config"].get(key) != mine["config"][key]
    }
    if differing:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs detector {b!r}" for k, (a, b) in differing.items())
        raise DetectorStateError(
            f"Checkpoint was trained on another backbone or adapter layout ({detail}); evaluate or infer with the "
            "config files and overrides it was trained with (e.g. with configs/paper.json), or rebuild it with "
            "SignDrivenDetector.load."
        )
    return theirs


def save_state_dict(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write a detector state dict to ``path`` atomically (a temporary file renamed into place); saved as given,
    so the ``OrderedDict``'s ``_metadata`` that ``load_state_dict`` reads is kept."""
    with atomic_path(path) as temporary:
        torch.save(state, temporary)
    return Path(path)


def read_detector_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The detector state dict in ``path``: a ``SignDrivenDetector.save`` file or a MONAI checkpoint holding one.

    MONAI's ``CheckpointSaver`` writes ``{<name>: state_dict, "optimizer": ...}`` (``"model"`` in the bundle's
    configs); the entry carrying ``_extra_state`` is taken. Loaded with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``.
        DetectorStateError: the file is empty, unreadable, holds no detector state, or holds non-finite weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    if path.stat().st_size == 0:
        raise DetectorStateError(f"Cannot read checkpoint {path}: the file is empty (0 bytes).")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise DetectorStateError(f"Cannot read checkpoint {path}: {reason}") from error
    candidates = [data] + (list(data.values()) if isinstance(data, Mapping) else [])
    for state in candidates:
        if isinstance(state, Mapping) and "_extra_state" in state:
            broken = [
                k
                for k, v in state.items()
                if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
            ]
            if broken:
                raise DetectorStateError(
                    f"Checkpoint {path} holds non-finite weights (NaN or infinity) in {', '.join(broken[:4])}"
                    f"{' ...' if len(broken) > 4 else ''}: the training diverged or the file is damaged; it "
                    "would score every image NaN. Retrain, or use another checkpoint."
                )
            return dict(state)
    raise DetectorStateError(
        f"Checkpoint {path} holds no SD-MAD detector state (no '_extra_state' entry); it was not written by "
        "SignDrivenDetector.save or a bundle trainer."
    )
