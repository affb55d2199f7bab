"""SignDrivenDetector: frozen CLIP + shift adapters + prompt bank -> multi-label anomaly scores.

``forward(image [B, 3, H, W]) -> [B, K]`` category scores (Eq. 7), so MONAI's inferers, ``verify_net_in_out`` and
bundle workflows use it as any network. ``forward(image, output="predictions")`` gives Eq. 8's binary predictions and
``output="all"`` a :class:`~sdmad_monai.networks.outputs.DetectorOutput` with every intermediate (features, per-prompt
similarities, kept prompts, anchor, maps), which the losses and the evaluation need.

Size: one class, the detector's public API (construction, adapters, text state, scoring, maps, memory bank,
calibration, state dict). The parts that are concepts of their own live beside it: checkpoint I/O in
:mod:`.checkpoint_io`, text-state caching and where Eq. 6 is applied in :mod:`.text_cache`, typed outputs in
:mod:`.outputs`, the TorchScript export in :mod:`.export`, the map head in :mod:`.anomaly_map`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..calibration import Calibration, OperatingPoint
from ..functional import (
    anchor_predictions_from_similarities,
    category_scores_from_similarities,
    image_anomaly_score,
)
from ..prompts import PromptBank, load_prompt_bank
from .adapter import DEFAULT_ADAPTER_LAMBDA, ShiftAdapter, attach_adapter
from .anomaly_map import DEFAULT_FEW_SHOT_WEIGHT, DEFAULT_MAP_TEMPERATURE, AnomalyMapHead
from .backbone import DEMO_PRETRAINED, TINY_MODEL_NAME, image_blocks, load_clip, text_blocks
from .checkpoint_io import (
    CHECKPOINT_FORMAT,
    DetectorStateError,
    check_checkpoint_fits,
    decode_description,
    encode_description,
    read_detector_state,
    save_state_dict,
    weights_identity,
)
from .checkpointing import BlockCheckpointing, blocks_between_adapters
from .outputs import AnomalyMaps, DetectorOutput
from .text_cache import ScoringCache, TextPath, TextState, TextStateCache, compute_text_state

__all__ = ["SignDrivenDetector", "TextState", "DetectorStateError", "PAPER_IMAGE_ADAPTER_LAYERS", "PRESETS"]

#: The paper's image-encoder adapter layers for ViT-L/14 (1-based block indices).
PAPER_IMAGE_ADAPTER_LAYERS = (6, 8, 18, 24)

#: Named settings: the paper's (ViT-L/14, OpenAI weights, 240 px) and the tiny offline model.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "model_name": "ViT-L-14",
        "pretrained": "openai",
        "image_size": 240,
        "image_adapter_layers": list(PAPER_IMAGE_ADAPTER_LAYERS),
    },
    "tiny": {
        "model_name": TINY_MODEL_NAME,
        "pretrained": None,
        "image_size": 64,
        "image_adapter_layers": [2, 3, 5, 6],
    },
}


class SignDrivenDetector(nn.Module):
    """SD-MAD detector: a frozen open_clip CLIP with shift adapters, scoring images against sign prompts.

    Args:
        prompt_bank: a :class:`~sdmad_monai.prompts.PromptBank`, a built-in bank name (``"fastmri_brain"``), a JSON
            path or dict.
        categories: category labels to use, in output-channel order; ``None`` keeps the bank's order.
        model_name: open_clip architecture or ``hf-hub:``/``local-dir:`` id (see :func:`load_clip`).
        pretrained: pretrained tag or local checkpoint file; ``None`` for a seeded random initialisation.
        image_size: input size in pixels (``None``: the architecture's default).
        image_adapter_layers: 1-based indices of the image blocks that get a shift adapter (the paper's ViT-L/14
            choice by default).
        text_adapter: put a shift adapter on the last text block (the paper does).
        adapter_bottleneck: adapter hidden width (``None``: three quarters of the block width).
        adapter_lambda: ``lambda`` of Eq. 2.
        adapter_activation: ``alpha`` of Eq. 1 (``"leaky_relu"``, ``"relu"``, ``"gelu"``).
        sign_selection: apply Eq. 6 at inference (``False`` is the paper's "no SS" ablation).
        seed: seed of the adapters' and (for ``pretrained=None``) the backbone's initialisation.
        cache_dir: download cache for remote weights.
        map_layers: 1-based image blocks whose (adapted) patch tokens give the anomaly maps of ``output="all"``
            (see :mod:`sdmad_monai.networks.anomaly_map`); ``None``: the image adapter layers; ``[]``: no maps.
        map_temperature: temperature of the zero-shot map's 2-way softmax (MVFA: 0.01).
        map_few_shot_weight: weight of the memory-bank branch once :meth:`set_memory_bank` was called (MVFA: 0.5).
        map_sigma: Gaussian smoothing of the maps at the input size, in pixels (0: none).
        activation_checkpointing: in training mode, recompute the frozen image blocks after the first adapter during
            backward instead of keeping their activations (:mod:`sdmad_monai.networks.checkpointing`): much less
            memory for about a third more compute per step; same loss and gradients. Inference is unchanged.
        operating_point: how study decisions are made: ``None`` (Eq. 8, the paper's) or
            ``{"target_sensitivity": t}`` (calibrated probability >= the threshold reaching ``t`` on the validation
            slices; needs a calibrated checkpoint), see :class:`~sdmad_monai.calibration.OperatingPoint`.
    """

    #: registered buffers and the open_clip model (typed here: ``nn.Module.__getattr__`` says Tensor | Module)
    tokens: torch.Tensor
    prompt_categories: torch.Tensor
    backbone: Any  # open_clip CLIP / CustomTextCLIP: open_clip ships no type information

    def __init__(
        self,
        prompt_bank: PromptBank | str | Mapping[str, Any] = "fastmri_brain",
        categories: Sequence[str] | None = None,
        model_name: str = "ViT-L-14",
        pretrained: str | None = "openai",
        image_size: int | None = 240,
        image_adapter_layers: Sequence[int] = PAPER_IMAGE_ADAPTER_LAYERS,
        text_adapter: bool = True,
        adapter_bottleneck: int | None = None,
        adapter_lambda: float = DEFAULT_ADAPTER_LAMBDA,
        adapter_activation: str = "leaky_relu",
        sign_selection: bool = True,
        seed: int = 0,
        cache_dir: str | None = None,
        map_layers: Sequence[int] | None = None,
        map_temperature: float = DEFAULT_MAP_TEMPERATURE,
        map_few_shot_weight: float = DEFAULT_FEW_SHOT_WEIGHT,
        map_sigma: float = 0.0,
        activation_checkpointing: bool = False,
        operating_point: Any = None,
    ) -> None:
        super().__init__()
        self.prompt_bank = load_prompt_bank(prompt_bank, categories)
        self.config: dict[str, Any] = {
            "model_name": model_name,
            "pretrained": pretrained,
            "image_size": image_size,
            "seed": int(seed),
            "image_adapter_layers": [int(i) for i in image_adapter_layers],
            "text_adapter": bool(text_adapter),
            "adapter_bottleneck": adapter_bottleneck,
            "adapter_lambda": float(adapter_lambda),
            "adapter_activation": adapter_activation,
            "activation_checkpointing": bool(activation_checkpointing),
        }
        self.sign_selection = bool(sign_selection)
        #: per-category probabilities fitted on validation after training (:mod:`sdmad_monai.calibration`), stored in
        #: checkpoints; ``None`` until :meth:`set_calibration`
        self.calibration: Calibration | None = None
        #: how study decisions are made (runtime switch): Eq. 8 (default) or a validation target sensitivity
        self.operating_point = OperatingPoint.from_config(operating_point)
        #: sha256 of the demo backbone file this detector runs on (``pretrained="demo"``), recorded in checkpoints so
        #: that adapters are never paired with another build of the demo weights
        self.backbone_weights_sha256: str | None = None
        if pretrained == DEMO_PRETRAINED:
            from .demo_backbone import read_demo_manifest

            self.backbone_weights_sha256 = str(read_demo_manifest()["sha256"])
        self.adapters_enabled = True

        backbone, tokenizer = load_clip(model_name, pretrained, image_size, seed=seed, cache_dir=cache_dir)
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
        self.backbone = backbone
        preprocess = open_clip.get_model_preprocess_cfg(backbone)
        size = preprocess.get("size", image_size)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.image_mean = tuple(float(v) for v in preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.image_std = tuple(float(v) for v in preprocess.get("std", open_clip.OPENAI_DATASET_STD))

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.image_adapters = self._build_image_adapters(image_blocks(backbone))
            last_text_block = text_blocks(backbone)[-1]
            self.text_adapter = (
                self._new_adapter(self._block_width(last_text_block, backbone, "text")) if text_adapter else None
            )
        for index, adapter in self.image_adapters.items():
            attach_adapter(image_blocks(backbone)[int(index) - 1], cast(ShiftAdapter, adapter), self._adapters_on)
        if self.text_adapter is not None:
            attach_adapter(last_text_block, self.text_adapter, self._adapters_on)
        self._text_path = TextPath(backbone, last_text_block)
        self._checkpointing = None
        if activation_checkpointing:
            blocks = image_blocks(backbone)
            between = blocks_between_adapters(len(blocks), self.config["image_adapter_layers"])
            self._checkpointing = BlockCheckpointing([blocks[i - 1] for i in between])
            self._checkpointing.set_active(self.training)
        # after attach_adapter: the map hooks run after the adapter hooks and so see the adapted tokens
        self._init_anomaly_maps(map_layers, map_temperature, map_few_shot_weight, map_sigma)

        texts, prompt_categories = self.prompt_bank.flatten()
        self._check_context_length(tokenizer, texts)
        self.prompt_texts = texts
        self.register_buffer("tokens", tokenizer(texts), persistent=False)
        self.register_buffer("prompt_categories", torch.tensor(prompt_categories, dtype=torch.long), persistent=False)
        self._text_cache = TextStateCache()
        self._scoring_cache = ScoringCache(self._text_cache.size)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> SignDrivenDetector:
        """Build from :data:`PRESETS` (``"paper"`` or ``"tiny"``) with keyword overrides."""
        if preset not in PRESETS:
            raise ValueError(f"Unknown detector preset {preset!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[preset], **overrides})

    def _new_adapter(self, width: int) -> ShiftAdapter:
        return ShiftAdapter(
            width, self.config["adapter_bottleneck"], self.config["adapter_lambda"], self.config["adapter_activation"]
        )

    @staticmethod
    def _block_width(block: nn.Module, model: nn.Module, tower: str) -> int:
        for module in block.modules():
            if isinstance(module, nn.LayerNorm):
                return int(module.normalized_shape[0])
        raise ValueError(f"Cannot infer the width of the {tower} blocks of {type(model).__name__}.")

    def _build_image_adapters(self, blocks: nn.ModuleList | nn.Sequential) -> nn.ModuleDict:
        layers = self.config["image_adapter_layers"]
        depth = len(blocks)
        bad = [i for i in layers if not 1 <= i <= depth]
        if bad or len(set(layers)) != len(layers):
            raise ValueError(
                f"Image adapter layers {layers} do not fit {self.config['model_name']}: its image encoder has {depth} "
                f"blocks, so indices must be distinct and within 1..{depth} (1-based); offending: "
                f"{bad or 'duplicates'}. The paper's {list(PAPER_IMAGE_ADAPTER_LAYERS)} is for 24-block ViT-L/14."
            )
        width = self._block_width(blocks[0], self.backbone, "image")
        return nn.ModuleDict({str(i): self._new_adapter(width) for i in layers})

    @staticmethod
    def _check_context_length(tokenizer: Any, texts: Sequence[str]) -> None:
        encode = getattr(tokenizer, "encode", None)
        context_length = getattr(tokenizer, "context_length", None)
        if encode is None or context_length is None:
            return
        for text in texts:
            length = len(encode(text)) + 2  # start and end tokens
            if length > context_length:
                raise ValueError(
                    f"Prompt {text!r} has {length} tokens but the text encoder reads {context_length}; it would be "
                    "truncated. Shorten it in the prompt bank."
                )

    # ------------------------------------------------------------------ switches
    def _adapters_on(self) -> bool:
        return self.adapters_enabled

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[SignDrivenDetector]:
        """Temporarily run the bare CLIP backbone: the paper's zero-shot CLIP baseline."""
        previous = self.adapters_enabled
        self.adapters_enabled = False
        try:
            yield self
        finally:
            self.adapters_enabled = previous

    def train(self, mode: bool = True) -> SignDrivenDetector:
        """Set training mode; the backbone always stays in eval mode.

        Switching to eval mode also computes the prompt features now, so that inference (and a TorchScript trace,
        which then records them as constants) starts from the cache.
        """
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout or batch-statistics updates, ever
        if self._checkpointing is not None:
            self._checkpointing.set_active(mode)
        if not mode and not torch.jit.is_tracing():
            with torch.no_grad():
                self.text_state()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The adapter parameters: the only ones the optimiser should see."""
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def category_labels(self) -> list[str]:
        return self.prompt_bank.labels

    @property
    def num_categories(self) -> int:
        return self.prompt_bank.num_categories

    # ------------------------------------------------------------------ encoders
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image features ``[B, D]`` (unnormalised) of CLIP-normalised images ``[B, 3, H, W]``."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"Expected images [B, 3, H, W], got shape {tuple(image.shape)}.")
        return self.backbone.encode_image(image)

    def _text_cache_key(self) -> tuple:
        adapters = [] if self.text_adapter is None else list(self.text_adapter.parameters())
        return (
            self.adapters_enabled,
            self.sign_selection,
            self.tokens.device,
            tuple((p.data_ptr(), p._version) for p in adapters),
        )

    def text_state(self) -> TextState:
        """Prompt features, categories, anchor and kept prompts.

        While the text adapter is being trained (training mode, gradient enabled) the adapted last text block runs on
        every call, on the cached output of the frozen blocks before it. Otherwise the result is cached until the
        text adapter's weights change (an optimiser step or ``load_state_dict`` bumps their version counters).
        """
        grad_needed = (
            self.training
            and torch.is_grad_enabled()
            and self.adapters_enabled
            and self.text_adapter is not None
            and any(p.requires_grad for p in self.text_adapter.parameters())
        )
        if grad_needed:
            # a training step: sign selection is an inference step (the losses use every prompt), so a category
            # that falls back here is not reported; validation and inference compute (and report) their own state
            return self._compute_text_state(warn=False)
        return self._text_cache.get(self._text_cache_key(), self._compute_text_state_without_grad)

    def _compute_text_state_without_grad(self) -> TextState:
        with torch.no_grad():
            return self._compute_text_state()

    def _compute_text_state(self, warn: bool = True) -> TextState:
        return compute_text_state(
            self._text_path.encode(self.tokens),
            self.prompt_categories,
            self.category_labels,
            sign_selection=self.sign_selection,
            warn=warn,
        )

    # ------------------------------------------------------------------ forward
    def forward(self, image: torch.Tensor, output: str = "scores", maps: bool = True) -> torch.Tensor | DetectorOutput:
        """Score CLIP-normalised images ``[B, 3, H, W]``.

        Args:
            image: input batch.
            output: ``"scores"`` -> ``[B, K]`` Eq. 7 scores; ``"predictions"`` -> ``[B, K]`` Eq. 8 0/1 predictions;
                ``"all"`` -> the :class:`~sdmad_monai.networks.outputs.DetectorOutput` of :meth:`score` (the inputs of
                the losses and of evaluation), with the anomaly maps of :meth:`score_with_maps` when the detector has
                them.
            maps: with ``output="all"``, ``False`` skips the anomaly-map work (callers that do not use the maps:
                training without the pixel loss, inference without map outputs); the other entries are the same.
        """
        if output == "all" and maps:
            features, captured = self.encode_image_with_tokens(image)
            return self.score_with_maps(features, captured, image.shape[-2:], self.text_state())
        return self.score(self.encode_image(image), self.text_state(), output)

    def score(
        self, image_features: torch.Tensor, text: TextState, output: str = "all"
    ) -> torch.Tensor | DetectorOutput:
        """Scores of image features ``[B, D]`` against a text state (Eq. 7, Eq. 8).

        Args:
            image_features: from :meth:`encode_image`.
            text: from :meth:`text_state`, possibly with another ``keep`` (e.g. all prompts for "no SS").
            output: ``"scores"`` (``[B, K]`` Eq. 7), ``"predictions"`` (``[B, K]`` Eq. 8) or ``"all"``: a
                :class:`~sdmad_monai.networks.outputs.DetectorOutput` without maps.
        """
        if output not in ("scores", "predictions", "all"):
            raise ValueError(f"output must be 'scores', 'predictions' or 'all', got {output!r}.")
        # normalised prompt features and category masks: once per text state, not per batch
        k = self.num_categories
        prompts = self._scoring_cache.get(text.features, text.prompt_categories, text.keep, text.anchor, k)
        normalised = F.normalize(image_features, dim=-1)
        similarities = normalised @ prompts.unit_features.T  # [B, P]
        if output == "scores":
            return category_scores_from_similarities(similarities, prompts.membership)
        predictions = anchor_predictions_from_similarities(
            similarities, prompts.membership, normalised @ prompts.unit_anchor
        ).to(image_features.dtype)
        if output == "predictions":
            return predictions
        scores = category_scores_from_similarities(similarities, prompts.membership)
        anchor_similarity = normalised @ text.anchor
        return DetectorOutput(
            scores=scores,
            predictions=predictions,
            image_score=image_anomaly_score(scores, anchor_similarity),
            similarities=similarities,
            anchor_similarity=anchor_similarity,
            image_features=image_features,
            text_features=text.features,
            prompt_categories=text.prompt_categories,
            anchor_feature=text.anchor,
            keep=text.keep,
        )

    # ------------------------------------------------------------------ anomaly maps (pixel-level protocol)
    def _init_anomaly_maps(
        self, layers: Sequence[int] | None, temperature: float, few_shot_weight: float, sigma: float
    ) -> None:
        """Build the :class:`~sdmad_monai.networks.anomaly_map.AnomalyMapHead` and record its settings in the config
        (so checkpoints rebuild it; they are not architecture keys: a checkpoint loads onto other map settings)."""
        layers = list(self.config["image_adapter_layers"]) if layers is None else [int(i) for i in layers]
        self.anomaly_head = (
            AnomalyMapHead(self.backbone, layers, temperature, few_shot_weight, sigma) if layers else None
        )
        self.config.update(
            map_layers=layers,
            map_temperature=float(temperature),
            map_few_shot_weight=float(few_shot_weight),
            map_sigma=float(sigma),
        )

    def _require_maps(self) -> AnomalyMapHead:
        if self.anomaly_head is None:
            raise RuntimeError("This detector was built with map_layers=[]: anomaly maps are off.")
        return self.anomaly_head

    def encode_image_with_tokens(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """:meth:`encode_image` plus the map layers' (adapted) block outputs of the same pass, by layer (``{}`` when
        maps are off): the inputs of :meth:`score_with_maps` and of the memory bank."""
        if self.anomaly_head is None:
            return self.encode_image(image), {}
        with self.anomaly_head.capturing() as captured:
            features = self.encode_image(image)
        return features, captured

    def score_with_maps(
        self,
        image_features: torch.Tensor,
        captured: Mapping[int, torch.Tensor],
        image_size: Sequence[int],
        text: TextState,
    ) -> DetectorOutput:
        """:meth:`score` ``"all"`` plus, when maps are on, the anomaly maps of the same encoder pass (the outputs of
        :meth:`encode_image_with_tokens`); what ``forward(image, output="all")`` returns."""
        result = cast(DetectorOutput, self.score(image_features, text, "all"))
        if self.anomaly_head is None:
            return result
        return result.with_maps(self.maps_from_tokens(captured, image_size, text))

    def maps_from_tokens(
        self, captured: Mapping[int, torch.Tensor], image_size: Sequence[int], text: TextState
    ) -> AnomalyMaps:
        """Anomaly maps (see :meth:`AnomalyMapHead.maps`) from tokens captured by :meth:`encode_image_with_tokens`."""
        return self._require_maps().maps(
            captured, image_size, text.features, text.prompt_categories, text.keep, text.anchor, self.adapters_enabled
        )

    def anomaly_maps(self, image: torch.Tensor) -> torch.Tensor:
        """Anomaly maps ``[B, H, W]`` of CLIP-normalised images ``[B, 3, H, W]`` at the input size (higher = more
        anomalous): the ``"anomaly_map"`` entry of ``forward(image, output="all")`` without the scores."""
        self._require_maps()
        _, captured = self.encode_image_with_tokens(image)
        return self.maps_from_tokens(captured, image.shape[-2:], self.text_state()).anomaly_map

    @torch.no_grad()
    def set_memory_bank(self, normal_images: torch.Tensor, batch_size: int = 16) -> int:
        """Store the patch tokens of few-shot normal images for the few-shot map branch (MVFA).

        Build it after training (the tokens depend on the adapters) and with the adapters in the state the maps will
        be computed in; it is saved in the state dict, so checkpoints written afterwards carry it.

        Args:
            normal_images: ``[N, 3, H, W]`` CLIP-normalised normal images (e.g. the k-shot normal slices).
            batch_size: images per encoder pass.

        Returns:
            The number of patches stored per map layer.
        """
        head = self._require_maps()
        if normal_images.ndim != 4 or normal_images.shape[1] != 3 or normal_images.shape[0] == 0:
            raise ValueError(f"normal_images must be a non-empty [N, 3, H, W] batch, got {tuple(normal_images.shape)}.")
        device = next(self.parameters()).device
        per_layer: list[list[torch.Tensor]] = [[] for _ in head.layers]
        for start in range(0, normal_images.shape[0], batch_size):
            chunk = normal_images[start : start + batch_size].to(device)
            _, captured = self.encode_image_with_tokens(chunk)
            for i, features in enumerate(head.patch_features(captured, chunk.shape[-2:])):
                per_layer[i].append(features.reshape(-1, features.shape[-1]))
        head.set_memory_bank([torch.cat(f) for f in per_layer], adapted=self.adapters_enabled)
        return int(head.memory_bank.shape[1])

    def clear_memory_bank(self) -> None:
        """Forget the memory bank: maps use the zero-shot branch only."""
        self._require_maps().clear_memory_bank()

    # ------------------------------------------------------------------ calibration
    def set_calibration(self, calibration: Calibration | None) -> None:
        """Attach (or remove) the per-category calibration; it is saved with the checkpoint.

        Raises:
            ValueError: its categories are not the detector's (in order).
        """
        if calibration is not None and calibration.labels != self.category_labels:
            raise ValueError(
                f"Calibration categories {calibration.labels} differ from the detector's {self.category_labels}."
            )
        self.calibration = calibration

    def decision_rules(self) -> list[dict[str, Any]]:
        """Per category, how the study decision is made under :attr:`operating_point`
        (:meth:`~sdmad_monai.calibration.CategoryCalibration.threshold`). Computed once per calibration and
        operating point (a threshold sorts the stored validation margins), not per volume."""
        cached = getattr(self, "_decision_rules", None)  # (calibration, operating point, rules)
        if cached is None or cached[0] is not self.calibration or cached[1] != self.operating_point:
            if self.calibration is None:
                rule = {"rule": "eq8"}
                if self.operating_point.target_sensitivity is not None:
                    rule["note"] = "the checkpoint has no calibration (trained before it existed): Eq. 8 decides"
                rules = [dict(rule) for _ in self.category_labels]
            else:
                rules = [c.threshold(self.operating_point) for c in self.calibration.categories]
            cached = self._decision_rules = (self.calibration, self.operating_point, rules)
        return [dict(rule) for rule in cached[2]]

    # ------------------------------------------------------------------ TorchScript export
    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script(detector)`` compiles (MONAI's ``ckpt_export`` scripts ``network_def``): the
        detector's Python side (cached text states, adapter hooks, sign selection, checkpoint checks) is not
        TorchScript, so the scripted module is :class:`ExportedScores`, the score path ``image [B, 3, S, S] ->
        Eq. 7 scores [B, K]`` (``forward``'s default) traced at the current adapters and prompts in eval mode: the
        prompt features are constants of the export, and its outputs equal ``detector(image)`` (tested)."""
        from .export import ExportedScores

        return ExportedScores(self)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        """Adapters and the detector's description only; the frozen backbone is rebuilt from its spec on load."""
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in [k for k in state if k.startswith(prefix + "backbone.")]:
            del state[key]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load adapters (and check the recorded prompt bank and backbone); backbone keys are neither needed nor used.

        Raises:
            DetectorStateError: the checkpoint was made for another prompt bank, backbone or adapter layout.
        """
        if strict and "_extra_state" not in state_dict:
            raise DetectorStateError(
                "This state dict has no '_extra_state' entry: it was not written by SignDrivenDetector (keys: "
                f"{sorted(state_dict)[:6]}...)."
            )
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
        unexpected = [k for k in result.unexpected_keys if not k.startswith("backbone.")]
        if strict and (missing or unexpected):
            raise DetectorStateError(
                f"Checkpoint does not match this detector's adapters: missing {missing}, unexpected {unexpected}."
            )
        self._text_cache.clear()
        return result

    def get_extra_state(self) -> torch.Tensor:
        """The detector's description as a uint8 tensor of UTF-8 JSON (a tensor, so that every state-dict consumer,
        e.g. MONAI's ``copy_model_state`` in ``ckpt_export``, and ``torch.load(weights_only=True)`` handle it)."""
        return encode_description(self.description())

    def description(self) -> dict[str, Any]:
        """What a checkpoint records besides the adapter weights: format, version, config and prompt bank."""
        return {
            "format": CHECKPOINT_FORMAT,
            "sdmad_monai_version": __version__,
            "config": {**self.config, "pretrained": weights_identity(self.config["pretrained"])},
            "prompt_bank": self.prompt_bank.to_dict(),
            "prompt_bank_fingerprint": self.prompt_bank.fingerprint(),
            "backbone_weights_sha256": self.backbone_weights_sha256,
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
        }

    def set_extra_state(self, state: Any) -> None:
        """Check a checkpoint's description against this detector (:func:`~.checkpoint_io.check_checkpoint_fits`)
        and take its seed and calibration."""
        state = check_checkpoint_fits(decode_description(state), self.description())
        self.config["seed"] = int(state["config"].get("seed", self.config["seed"]))
        calibration = state.get("calibration")
        self.calibration = None if calibration is None else Calibration.from_dict(calibration)

    def save(self, path: str | Path) -> Path:
        """Write adapters + prompt bank + backbone spec + version to ``path`` atomically (megabytes, no backbone)."""
        return save_state_dict(self.state_dict(), path)

    @staticmethod
    def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """The detector state dict in ``path`` (:func:`~.checkpoint_io.read_detector_state`): a :meth:`save` file or
        a MONAI checkpoint holding one, loaded with ``weights_only=True``."""
        return read_detector_state(path, map_location)

    @classmethod
    def load(
        cls,
        path: str | Path,
        map_location: str | torch.device = "cpu",
        pretrained: str | None = None,
        **overrides: Any,
    ) -> SignDrivenDetector:
        """Rebuild a detector from a checkpoint: the recorded backbone, prompt bank and adapters.

        Args:
            path: checkpoint file.
            map_location: where to load tensors.
            pretrained: where the backbone weights are now, when the checkpoint names a local file that moved, or to
                point a tag at a local copy; must be the same weights the checkpoint was trained on.
            overrides: runtime switches such as ``sign_selection`` or ``cache_dir``.
        """
        state = cls.read_checkpoint(path, map_location)
        extra = decode_description(state["_extra_state"])
        config = dict(extra["config"])
        if pretrained is not None:
            config["pretrained"] = pretrained
        detector = cls(prompt_bank=extra["prompt_bank"], **config, **overrides)
        if pretrained is not None:
            # the recorded identity of the weights is what must match, not the path they are read from now
            detector.config["pretrained"] = extra["config"]["pretrained"]
        detector.load_state_dict(state)
        return detector.to(map_location)
