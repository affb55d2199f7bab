"""Loading the CLIP backbone through open_clip, and finding its transformer blocks.

Three ways to name weights, all through open_clip:

- a built-in architecture with a pretrained tag: ``load_clip("ViT-L-14", pretrained="openai")`` (the paper's);
- a Hugging Face hub id: ``load_clip("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")``;
- local files: ``load_clip("ViT-L-14", pretrained="/path/to/open_clip_pytorch_model.bin")`` or
  ``load_clip("local-dir:/path/to/folder")`` (a folder with ``open_clip_config.json`` and the weights).

``sdmad-tiny`` (``model_configs/sdmad-tiny.json``: 3.2 M parameters, 64 px, ViT with 6 blocks, 3 text blocks) is
registered with open_clip on import, for tests and the offline demo; with ``pretrained=None`` it is randomly
initialised from ``seed``, identically every time. Its image tower average-pools the patch tokens
(``pool_type: avg``): with random weights attention is near-uniform, so a class token carries only a global average,
while averaged patch tokens let the per-token shift adapters pass local signs into the embedding.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

__all__ = [
    "MODEL_CONFIG_DIR",
    "TINY_MODEL_NAME",
    "DEMO_PRETRAINED",
    "WeightsUnavailableError",
    "load_clip",
    "image_blocks",
    "text_blocks",
]

#: An open_clip model (``CLIP`` or ``CustomTextCLIP``): open_clip ships no type information, and ``nn.Module``'s
#: ``__getattr__`` would type every tower attribute as ``Tensor | Module``.
ClipModel = Any

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
TINY_MODEL_NAME = "sdmad-tiny"
#: ``pretrained`` tag of the demo weights: ``sdmad-tiny`` pretrained here on generated image-report pairs
#: (:mod:`sdmad_monai.networks.demo_backbone`); figures made with it say "demo data".
DEMO_PRETRAINED = "demo"

open_clip.add_model_config(MODEL_CONFIG_DIR)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but could not be fetched (no network, or not in the local cache)."""


def _weights_source(model_name: str, pretrained: str | None) -> str | None:
    """``"remote"`` for a pretrained tag or ``hf-hub:`` id, ``"local"`` for files on disk, ``None`` for random init."""
    if model_name.startswith("hf-hub:"):
        return "remote"
    if model_name.startswith("local-dir:"):
        return "local"
    if pretrained is None:
        return None
    return "local" if os.path.isfile(pretrained) else "remote"


def _offline_message(model_name: str, pretrained: str | None, error: BaseException) -> str:
    wanted = model_name if pretrained is None else f"{model_name} with pretrained={pretrained!r}"
    return (
        f"Could not fetch the CLIP weights for {wanted}: {error}\n"
        "This machine cannot reach the model hub (or the weights are not in the local cache). Supply the weights as a "
        "local file instead: download them where there is network (e.g. `open_clip.create_model("
        f"'{model_name}', pretrained='{pretrained or ''}')` fills the Hugging Face cache, or fetch "
        "open_clip_pytorch_model.bin from the model's hub page), copy them here, then pass "
        f"pretrained='/path/to/open_clip_pytorch_model.bin' (with model_name='{model_name}'), or "
        "model_name='local-dir:/path/to/folder' for a folder holding open_clip_config.json and the weights. "
        "Set HF_HUB_OFFLINE=1 to fail at once instead of retrying."
    )


class _RandomInitNotice(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" warning when random weights are what
    the caller asked for (``pretrained=None``; the demo backbone is built that way, then given its weights)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()


def load_clip(
    model_name: str = TINY_MODEL_NAME,
    pretrained: str | None = None,
    image_size: int | None = None,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
) -> tuple[ClipModel, Callable[..., torch.Tensor]]:
    """Create an open_clip model and its tokenizer.

    Args:
        model_name: an open_clip architecture name (``"ViT-L-14"``, ``"sdmad-tiny"``), an ``hf-hub:org/repo`` id or
            ``local-dir:/path``.
        pretrained: a pretrained tag of that architecture (``"openai"``), a local checkpoint file, ``None`` for
            random initialisation (ignored by open_clip for ``hf-hub:`` and ``local-dir:`` names), or ``"demo"``
            (:data:`DEMO_PRETRAINED`) for ``sdmad-tiny`` pretrained on generated image-report pairs (shipped).
        image_size: input size in pixels; open_clip's ``force_image_size`` rebuilds the position embedding for it and
            resizes pretrained ones (240 is the paper's size for ViT-L/14).
        seed: seed of the random initialisation; the same seed gives the same weights on every call (the global RNG
            is left untouched).
        device: device to create the model on.
        precision: open_clip precision string (``"fp32"``, ``"bf16"``, ``"fp16"``, ``"amp"``...).
        cache_dir: download cache for remote weights.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode.

    Raises:
        WeightsUnavailableError: remote weights were asked for and could not be fetched; the message says which and
            how to pass a local file instead.
    """
    if pretrained == DEMO_PRETRAINED:
        return _load_demo_clip(model_name, image_size, device, precision)
    source = _weights_source(model_name, pretrained)
    kwargs: dict[str, Any] = dict(
        pretrained=pretrained,
        precision=precision,
        device=device,
        force_image_size=image_size,
        cache_dir=cache_dir,
        require_pretrained=source is not None,
    )
    quiet = _RandomInitNotice() if pretrained is None else None  # random weights were asked for: no warning
    if quiet is not None:
        logging.getLogger().addFilter(quiet)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = open_clip.create_model(model_name, **kwargs)
            tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
        except RuntimeError as error:
            # open_clip wraps hub/download failures in RuntimeError; an unknown tag is reported by open_clip itself.
            text = str(error)
            fetching = source == "remote" and (
                "Failed to download" in text
                or "Failed initial config/weights load from HF Hub" in text
                or "Required pretrained weights" in text
                or "Could not load config from hf-hub" in text
            )
            if fetching:
                raise WeightsUnavailableError(_offline_message(model_name, pretrained, error)) from error
            raise
        finally:
            if quiet is not None:
                logging.getLogger().removeFilter(quiet)
    model.eval()
    return model, tokenizer


def _load_demo_clip(
    model_name: str, image_size: int | None, device: str | torch.device, precision: str
) -> tuple[ClipModel, Callable[..., torch.Tensor]]:
    """``sdmad-tiny`` with the shipped demo weights (:mod:`sdmad_monai.networks.demo_backbone`).

    At another ``image_size`` the position embedding is resized as open_clip does for any pretrained weights.
    """
    from open_clip.model import resize_pos_embed

    from .demo_backbone import apply_demo_weights, read_demo_manifest

    if model_name != TINY_MODEL_NAME:
        raise ValueError(
            f"pretrained={DEMO_PRETRAINED!r} names the demo weights of {TINY_MODEL_NAME!r}; "
            f"got model_name={model_name!r}."
        )
    if precision != "fp32":
        raise ValueError(f"the demo weights are used in fp32 only, got precision={precision!r}.")
    seed = int(read_demo_manifest()["recipe"]["init_seed"])
    model, tokenizer = load_clip(TINY_MODEL_NAME, None, None, seed=seed, device="cpu")
    apply_demo_weights(model)
    if image_size is not None and image_size != model.visual.image_size[0]:
        state = model.state_dict()
        model, _ = load_clip(TINY_MODEL_NAME, None, image_size, seed=seed, device="cpu")
        resize_pos_embed(state, model)
        model.load_state_dict(state)
    return model.to(device).eval(), tokenizer


def _resolve(model: nn.Module, path: str) -> Any:
    module: Any = model
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


#: Where the block lists live in the tower types open_clip builds.
_IMAGE_BLOCK_PATHS = ("visual.transformer.resblocks", "visual.trunk.blocks")
_TEXT_BLOCK_PATHS = ("transformer.resblocks", "text.transformer.resblocks", "text.transformer.encoder.layer")


def _blocks(model: nn.Module, paths: tuple[str, ...], tower: str) -> nn.ModuleList | nn.Sequential:
    for path in paths:
        blocks = _resolve(model, path)
        if isinstance(blocks, (nn.ModuleList, nn.Sequential)) and len(blocks) > 0:
            return blocks
    raise ValueError(
        f"Cannot find the transformer blocks of the {tower} encoder of {type(model).__name__} (looked at {paths}). "
        "Shift adapters support open_clip ViT towers, timm ViT towers and Hugging Face text towers."
    )


def image_blocks(model: nn.Module) -> nn.ModuleList | nn.Sequential:
    """The image encoder's transformer blocks, in order."""
    return _blocks(model, _IMAGE_BLOCK_PATHS, "image")


def text_blocks(model: nn.Module) -> nn.ModuleList | nn.Sequential:
    """The text encoder's transformer blocks, in order."""
    return _blocks(model, _TEXT_BLOCK_PATHS, "text")
