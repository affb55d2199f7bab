"""Patch-level anomaly maps from the adapted image encoder (the pixel-level protocol of the paper's Table 1).

The paper (Section 4.2) gets pixel-level scores by combining SD-MAD with MVFA (Huang et al., "Adapting
Visual-Language Models for Generalizable Anomaly Detection in Medical Images", CVPR 2024). :class:`AnomalyMapHead`
builds MVFA's maps from the detector's own backbone pass:

1. **Patch tokens, same pass.** Forward hooks on the map layers' transformer blocks keep each block's output while
   :meth:`AnomalyMapHead.capturing` is active. They are registered after the shift adapters' hooks (which rewrite the
   block output, Eq. 2), so they see the *adapted* tokens; the scores and the maps come from one ``encode_image``.
   The hooks are callable objects holding the head, so ``copy.deepcopy`` of the detector keeps them pointing at the
   copy.
2. **Token layout.** open_clip >= 2.23 runs its vision transformer batch-first (``transformer.batch_first``); older
   releases run it sequence-first (``[L, B, W]``). The layout is read from the tower, and every captured tensor is
   checked to hold ``prefix + h * w`` tokens for the input's patch grid.
3. **Joint space.** Each patch token is brought into the image-text space the way open_clip brings the pooled token
   there: ``ln_post`` then ``@ proj`` for open_clip's ``VisionTransformer`` (whether it pools the class token, as
   ViT-L/14 does, or averages the patch tokens, as ``sdmad-tiny`` does: there the image feature is exactly the mean
   of the last block's projected patch tokens); ``trunk.norm`` / ``fc_norm`` then the heads for timm towers
   (e.g. BiomedCLIP). MVFA instead compares the 768-wide bottleneck activations of its own adapters with the text;
   SD-MAD's shift adapter returns to the block width (Eq. 1-2) and Eq. 3-5 train the joint space, so the tokens are
   projected, as APRIL-GAN and AnomalyCLIP do for intermediate layers.
4. **Zero-shot branch** (:func:`~sdmad_monai.functional.zero_shot_patch_logits`): 2-way softmax, with temperature,
   between the anchor and the best-matching kept sign prompt, per patch and layer.
5. **Few-shot branch** (:func:`~sdmad_monai.functional.nearest_normal_patch_distance`): distance to the nearest patch
   of the few-shot normal images (the memory bank), per layer.
6. **Combination**: logits upsampled bilinearly to the input size, then sigmoid; layers averaged per branch;
   branches mixed ``(1 - w) * zero + w * few`` (w = 0.5, MVFA's weights); optional Gaussian smoothing.

The memory bank is a buffer of this module, so it is saved and loaded with the detector's state dict (it is small:
4 shots x 289 patches x 4 layers x 768 floats = 3.6 MB for ViT-L/14 at 240 px).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..functional import (
    combine_anomaly_maps,
    few_shot_anomaly_map,
    nearest_normal_patch_distance,
    smooth_anomaly_map,
    zero_shot_anomaly_map,
    zero_shot_patch_logits,
)
from .backbone import image_blocks
from .outputs import AnomalyMaps

__all__ = ["DEFAULT_FEW_SHOT_WEIGHT", "DEFAULT_MAP_TEMPERATURE", "AnomalyMapHead", "MemoryBankError"]

#: Temperature of the zero-shot 2-way softmax: MVFA's (CLIP's) logit scale 100.
DEFAULT_MAP_TEMPERATURE = 0.01
#: Weight of the few-shot branch when a memory bank is set: MVFA's 0.5 / 0.5.
DEFAULT_FEW_SHOT_WEIGHT = 0.5

_BANK_KEYS = ("memory_bank", "memory_bank_layers", "memory_bank_adapted")


class MemoryBankError(RuntimeError):
    """The memory bank does not fit the detector (other layers, other adapter state) or is used wrongly."""


class CaptureHook:
    """Forward hook that hands a block's output (already adapted) to its owner's ``_captured`` dict, under ``layer``,
    while the owner is capturing (``_captured`` is not ``None``).

    An object, not a closure: ``copy.deepcopy`` of a module copies its hooks, and a copied object points to the
    copied owner, where a closure would keep writing into the original's store.
    """

    def __init__(self, owner: nn.Module, layer: int) -> None:
        self.owner: Any = owner  # any module with a ``_captured: dict[int, Tensor] | None`` attribute
        self.layer = layer

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        store = self.owner._captured
        if store is not None:
            store[self.layer] = output[0] if isinstance(output, tuple) else output


def _tower_kind(visual: nn.Module) -> str:
    if hasattr(visual, "trunk"):
        return "timm"
    if hasattr(visual, "ln_post") and hasattr(visual, "proj"):
        if getattr(visual, "attn_pool", None) is not None:
            raise ValueError(
                "Anomaly maps are not supported for open_clip towers with attentional pooling (CoCa): their patch "
                "tokens are not projected into the joint space. Build the detector with map_layers=[]."
            )
        return "open_clip"
    raise ValueError(
        f"Anomaly maps support open_clip VisionTransformer and timm towers, not {type(visual).__name__}; build the "
        "detector with map_layers=[] to turn maps off."
    )


class AnomalyMapHead(nn.Module):
    """Zero-shot and few-shot patch-level anomaly maps from the detector's image-encoder pass.

    Args:
        backbone: the open_clip model (its ``visual`` tower is read, never trained).
        layers: 1-based indices of the image blocks whose outputs give maps (the detector's image adapter layers by
            default; MVFA uses the four adapted layers of ViT-L/14).
        temperature: ``T`` of the zero-shot 2-way softmax (:data:`DEFAULT_MAP_TEMPERATURE`).
        few_shot_weight: weight of the memory-bank branch when a bank is set (:data:`DEFAULT_FEW_SHOT_WEIGHT`).
        sigma: standard deviation in pixels of the Gaussian smoothing of the maps at the input size (0: none).

    Raises:
        ValueError: layers outside the encoder, or a tower without a patch-to-joint-space projection.
    """

    #: registered buffers (typed here: ``nn.Module.__getattr__`` says Tensor | Module)
    memory_bank: torch.Tensor
    memory_bank_layers: torch.Tensor
    memory_bank_adapted: torch.Tensor

    def __init__(
        self,
        backbone: nn.Module,
        layers: Sequence[int],
        temperature: float = DEFAULT_MAP_TEMPERATURE,
        few_shot_weight: float = DEFAULT_FEW_SHOT_WEIGHT,
        sigma: float = 0.0,
    ) -> None:
        super().__init__()
        blocks = image_blocks(backbone)
        layers = [int(i) for i in layers]
        bad = [i for i in layers if not 1 <= i <= len(blocks)]
        if not layers or bad or len(set(layers)) != len(layers):
            raise ValueError(
                f"Map layers {layers} do not fit this image encoder: it has {len(blocks)} blocks, so give distinct "
                f"1-based indices within 1..{len(blocks)} (offending: {bad or 'duplicates or none'})."
            )
        if temperature <= 0:
            raise ValueError(f"Map temperature must be > 0, got {temperature}.")
        if not 0.0 <= few_shot_weight <= 1.0:
            raise ValueError(f"Map few-shot weight must be in [0, 1], got {few_shot_weight}.")
        if sigma < 0:
            raise ValueError(f"Map smoothing sigma must be >= 0 pixels, got {sigma}.")
        visual: Any = backbone.visual  # open_clip / timm tower: untyped
        self._kind = _tower_kind(visual)
        # a plain reference (not a submodule): the tower's weights stay the backbone's, out of this state dict
        self.__dict__["_visual"] = visual
        transformer = getattr(visual, "transformer", None)
        self._batch_first = True if self._kind == "timm" else bool(getattr(transformer, "batch_first", False))
        self.layers = layers
        self.temperature = float(temperature)
        self.few_shot_weight = float(few_shot_weight)
        self.sigma = float(sigma)
        self._captured: dict[int, torch.Tensor] | None = None
        self._handles = [blocks[i - 1].register_forward_hook(CaptureHook(self, i)) for i in layers]
        self.register_buffer("memory_bank", torch.zeros(len(layers), 0, 0))
        self.register_buffer("memory_bank_layers", torch.tensor(layers, dtype=torch.long))
        self.register_buffer("memory_bank_adapted", torch.tensor(True))

    # ------------------------------------------------------------------ capture
    @contextlib.contextmanager
    def capturing(self) -> Iterator[dict[int, torch.Tensor]]:
        """Keep the map layers' block outputs of the image-encoder passes run inside this context."""
        self._captured = {}
        try:
            yield self._captured
        finally:
            self._captured = None

    def _patch_size(self) -> tuple[int, int]:
        visual: Any = self._visual
        size = visual.trunk.patch_embed.patch_size if self._kind == "timm" else visual.patch_size
        return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))

    def patch_grid(self, image_size: Sequence[int]) -> tuple[int, int]:
        """The ``(h, w)`` patch grid of an ``(H, W)`` input."""
        ph, pw = self._patch_size()
        return int(image_size[0]) // ph, int(image_size[1]) // pw

    def project_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Bring batch-first tokens ``[B, L, W]`` into the joint image-text space ``[B, L, D]``, token by token, the
        way the tower brings its pooled token there (``ln_post @ proj``; timm: norms then heads)."""
        visual: Any = self._visual
        if self._kind == "open_clip":
            x = visual.ln_post(tokens)
            return x if visual.proj is None else x @ visual.proj
        trunk = visual.trunk
        x = trunk.norm(tokens) if hasattr(trunk, "norm") else tokens
        if hasattr(trunk, "fc_norm"):
            x = trunk.fc_norm(x)
        if hasattr(trunk, "head"):
            x = trunk.head(x)
        head = getattr(visual, "head", None)
        if head is not None:
            if any(name == "pool" for name, _ in head.named_children()):
                raise ValueError("Anomaly maps are not supported for timm towers with attention pooling heads.")
            x = head(x)
        return x

    def patch_features(self, captured: Mapping[int, torch.Tensor], image_size: Sequence[int]) -> list[torch.Tensor]:
        """Patch tokens of each map layer in the joint space, ``[B, N, D]`` with ``N = h * w`` in row-major order.

        Raises:
            RuntimeError: a map layer did not run, or its output does not hold the input's patch grid.
        """
        grid = self.patch_grid(image_size)
        cells = grid[0] * grid[1]
        features = []
        for layer in self.layers:
            tokens = captured.get(layer)
            if tokens is None:
                raise RuntimeError(f"Image block {layer} did not run during encode_image; no tokens for its map.")
            if tokens.ndim != 3:
                raise RuntimeError(f"Image block {layer} returned shape {tuple(tokens.shape)}; expected 3 dims.")
            if not self._batch_first:
                tokens = tokens.transpose(0, 1)  # [L, B, W] -> [B, L, W]
            prefix = tokens.shape[1] - cells
            if prefix < 0 or prefix > 8:
                raise RuntimeError(
                    f"Image block {layer} gave {tokens.shape[1]} tokens per image, which does not fit the "
                    f"{grid[0]} x {grid[1]} patch grid of a {tuple(image_size)} input "
                    f"(batch_first={self._batch_first})."
                )
            features.append(self.project_tokens(tokens[:, prefix:]))
        return features

    # ------------------------------------------------------------------ memory bank
    @property
    def has_memory_bank(self) -> bool:
        return self.memory_bank.numel() > 0

    def set_memory_bank(self, features: Sequence[torch.Tensor], adapted: bool) -> None:
        """Store the normal patch tokens: one ``[N_i, D]`` tensor per map layer (same ``N`` for every layer).

        Args:
            features: per map layer, the projected patch tokens of the few-shot normal images.
            adapted: whether the shift adapters were on when they were computed.
        """
        if len(features) != len(self.layers):
            raise MemoryBankError(f"Expected one tensor per map layer ({len(self.layers)}), got {len(features)}.")
        bank = torch.stack([f.detach() for f in features]).to(self.memory_bank.device)
        if bank.ndim != 3 or bank.shape[1] == 0:
            raise MemoryBankError(f"Memory bank must be [layers, N, D] with N > 0, got {tuple(bank.shape)}.")
        self.memory_bank = bank.contiguous()
        self.memory_bank_layers = torch.tensor(self.layers, dtype=torch.long, device=bank.device)
        self.memory_bank_adapted = torch.tensor(bool(adapted), device=bank.device)

    def clear_memory_bank(self) -> None:
        """Forget the memory bank: only the zero-shot branch is used."""
        device = self.memory_bank.device
        self.memory_bank = torch.zeros(len(self.layers), 0, 0, device=device)
        self.memory_bank_layers = torch.tensor(self.layers, dtype=torch.long, device=device)
        self.memory_bank_adapted = torch.tensor(True, device=device)

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Adopt the checkpoint's bank whatever its size (a checkpoint without maps: no bank)."""
        present = {name: state_dict[prefix + name] for name in _BANK_KEYS if prefix + name in state_dict}
        if not present:
            self.clear_memory_bank()
            return
        if len(present) != len(_BANK_KEYS):
            error_msgs.append(f"The memory bank entries are incomplete: {sorted(present)} of {list(_BANK_KEYS)}.")
            return
        bank, layers = present["memory_bank"], present["memory_bank_layers"]
        if bank.numel() == 0:
            self.clear_memory_bank()
            return
        if layers.tolist() != self.layers or bank.ndim != 3 or bank.shape[0] != len(self.layers):
            error_msgs.append(
                f"The checkpoint's memory bank was built for map layers {layers.tolist()} (shape {tuple(bank.shape)}) "
                f"but this detector maps layers {self.layers}; build it with the checkpoint's map_layers or clear "
                "the bank."
            )
            return
        device = self.memory_bank.device
        self.memory_bank = bank.detach().clone().to(device)
        self.memory_bank_layers = layers.detach().clone().to(device)
        self.memory_bank_adapted = present["memory_bank_adapted"].detach().clone().to(device).bool()

    # ------------------------------------------------------------------ maps
    def maps(
        self,
        captured: Mapping[int, torch.Tensor],
        image_size: Sequence[int],
        text_features: torch.Tensor,
        prompt_categories: torch.Tensor,
        keep: torch.Tensor,
        anchor_feature: torch.Tensor,
        adapters_enabled: bool,
    ) -> AnomalyMaps:
        """Anomaly maps of one batch from its captured tokens.

        Args:
            captured: from :meth:`capturing`, after ``encode_image``.
            image_size: ``(H, W)`` of the input.
            text_features: ``[P, D]`` prompt features; prompt_categories ``[P]``; keep ``[P]``; anchor_feature
                ``[D]`` (the detector's text state).
            adapters_enabled: whether the adapters were on for this pass (must match the memory bank's).

        Returns:
            :class:`~sdmad_monai.networks.outputs.AnomalyMaps`: ``anomaly_map`` ``[B, H, W]`` (combined; higher = more
            anomalous), ``anomaly_map_zero_shot`` ``[B, H, W]``, ``anomaly_map_few_shot`` ``[B, H, W]`` (only with a
            memory bank) and ``patch_logits`` ``[B, L, h, w]`` (zero-shot logits per map layer on the patch grid, for
            the segmentation losses).

        Raises:
            MemoryBankError: the bank was built with the adapters in the other state.
        """
        size = (int(image_size[0]), int(image_size[1]))
        grid = self.patch_grid(size)
        features = self.patch_features(captured, size)
        batch = features[0].shape[0]
        logits = torch.stack(
            [
                zero_shot_patch_logits(f, text_features, prompt_categories, keep, anchor_feature, self.temperature)
                for f in features
            ],
            dim=1,
        ).reshape(batch, len(self.layers), *grid)
        zero = smooth_anomaly_map(zero_shot_anomaly_map(logits, size), self.sigma)
        few = None
        if self.has_memory_bank:
            if bool(self.memory_bank_adapted) != bool(adapters_enabled):
                state = "on" if bool(self.memory_bank_adapted) else "off"
                raise MemoryBankError(
                    f"The memory bank was built with the shift adapters {state} but this pass has them "
                    f"{'on' if adapters_enabled else 'off'}; rebuild it in the same state (set_memory_bank inside "
                    "adapters_disabled() for the CLIP baseline) or clear it."
                )
            distances = torch.stack(
                [nearest_normal_patch_distance(f, self.memory_bank[i].to(f.dtype)) for i, f in enumerate(features)],
                dim=1,
            ).reshape(batch, len(self.layers), *grid)
            few = smooth_anomaly_map(few_shot_anomaly_map(distances, size), self.sigma)
        return AnomalyMaps(
            anomaly_map=combine_anomaly_maps(zero, few, self.few_shot_weight),
            anomaly_map_zero_shot=zero,
            patch_logits=logits,
            anomaly_map_few_shot=few,
        )

    def extra_repr(self) -> str:
        return (
            f"layers={self.layers}, temperature={self.temperature}, few_shot_weight={self.few_shot_weight}, "
            f"sigma={self.sigma}, memory_bank={tuple(self.memory_bank.shape)}"
        )
