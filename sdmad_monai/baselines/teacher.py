"""Frozen teachers: multi-scale feature maps for the feature-reconstruction baselines.

- :class:`CLIPTeacher` (default): block outputs of the open_clip image tower SD-MAD loads (the user's weights, the
  demo's included), its patch tokens reshaped to the patch grid. A ViT keeps one resolution, so its "scales" are
  depths: by default the blocks at 1/4, 2/4 and 3/4 of the tower, and the last block as the deepest feature (the
  decoder's input).
- :class:`WideResNetTeacher`: torchvision ``wide_resnet50_2`` layers 1-3 (strides 4, 8, 16) and layer 4 as the
  deepest feature, the sources' teacher (D²4FAD, RD4AD), from a local weights file: nothing is downloaded.

Both return :class:`TeacherFeatures` and never train (``requires_grad`` off, always in eval mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..networks.anomaly_map import CaptureHook
from ..networks.backbone import WeightsUnavailableError, image_blocks, load_clip

__all__ = ["CLIPTeacher", "TeacherFeatures", "WideResNetTeacher", "default_clip_layers"]


class TeacherFeatures(NamedTuple):
    """Attributes:
    scales: per scale ``[B, C_s, h_s, w_s]``, shallow to deep (what the student / decoder reconstructs).
    deepest: ``[B, C_d, h_d, w_d]``, the decoder's input.
    """

    scales: list[torch.Tensor]
    deepest: torch.Tensor


class _FrozenTeacher(nn.Module):
    def _freeze(self) -> None:
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> _FrozenTeacher:  # a teacher stays in eval mode
        return self

    def shapes(self, image_size: int) -> tuple[list[tuple[int, int, int]], tuple[int, int, int]]:
        """``([(C_s, h_s, w_s)] per scale, (C_d, h_d, w_d))`` for square inputs of ``image_size`` pixels."""
        device = next(self.parameters()).device
        with torch.no_grad():
            features = self(torch.zeros(1, 3, image_size, image_size, device=device))
        return [tuple(f.shape[1:]) for f in features.scales], tuple(features.deepest.shape[1:])


def default_clip_layers(num_blocks: int) -> list[int]:
    """1-based blocks at 1/4, 2/4 and 3/4 of a tower of ``num_blocks`` (unique, below the last block)."""
    layers = sorted({max(1, min(num_blocks - 1, round(num_blocks * q))) for q in (0.25, 0.5, 0.75)})
    if num_blocks < 2:
        raise ValueError(f"A CLIP teacher needs at least 2 image blocks, the tower has {num_blocks}.")
    return layers


class CLIPTeacher(_FrozenTeacher):
    """Block outputs of an open_clip ViT image tower as feature maps.

    Args:
        model: an open_clip CLIP model (its ``visual`` tower: ``VisionTransformer``).
        layers: 1-based blocks giving the scales, shallow to deep (default :func:`default_clip_layers`); the last
            block is always the deepest feature.
    """

    def __init__(self, model: nn.Module, layers: Sequence[int] | None = None) -> None:
        super().__init__()
        visual = getattr(model, "visual", None)
        if visual is None or not hasattr(visual, "conv1"):
            raise ValueError("CLIPTeacher needs an open_clip model with a ViT image tower (visual.conv1).")
        self.visual = visual
        blocks = image_blocks(model)
        self.layers = list(layers) if layers is not None else default_clip_layers(len(blocks))
        if (
            not self.layers
            or sorted(set(self.layers)) != self.layers
            or not 1 <= self.layers[0] < len(blocks)
            or (self.layers[-1] >= len(blocks))
        ):
            raise ValueError(
                f"layers must be increasing 1-based blocks below the last ({len(blocks)}), got {self.layers}."
            )
        self._batch_first = bool(getattr(visual.transformer, "batch_first", True))
        self._captured: dict[int, torch.Tensor] = {}
        capture = [*self.layers, len(blocks)]
        for layer in capture:
            blocks[layer - 1].register_forward_hook(CaptureHook(self, layer))
        self._deepest = len(blocks)
        self._freeze()

    @classmethod
    def from_clip(
        cls,
        model_name: str = "sdmad-tiny",
        pretrained: str | None = "demo",
        image_size: int | None = 64,
        layers: Sequence[int] | None = None,
        seed: int = 0,
    ) -> CLIPTeacher:
        """The teacher of the image tower :func:`~sdmad_monai.networks.backbone.load_clip` builds (same names, same
        offline errors as SD-MAD's backbone)."""
        model, _ = load_clip(model_name, pretrained, image_size, seed=seed)
        return cls(model, layers)

    def _grid(self, tokens: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if not self._batch_first:
            tokens = tokens.transpose(0, 1)
        patch = self.visual.conv1.kernel_size
        h, w = int(size[0]) // patch[0], int(size[1]) // patch[1]
        prefix = tokens.shape[1] - h * w
        if prefix < 0:
            raise RuntimeError(
                f"{tokens.shape[1]} tokens do not fit the {h} x {w} patch grid of a {tuple(size)} input."
            )
        return tokens[:, prefix:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> TeacherFeatures:
        """Args:
        images: ``[B, 3, H, W]`` normalised as the CLIP model expects.
        """
        self._captured = {}
        self.visual(images)
        maps = {layer: self._grid(tokens, images.shape[-2:]) for layer, tokens in self._captured.items()}
        self._captured = {}
        return TeacherFeatures([maps[layer] for layer in self.layers], maps[self._deepest])


class WideResNetTeacher(_FrozenTeacher):
    """torchvision ``wide_resnet50_2``: layers 1-3 as the scales, layer 4 as the deepest feature.

    Args:
        weights: a local state-dict file of torchvision's ``wide_resnet50_2`` (e.g. ImageNet weights downloaded
            elsewhere); read with ``weights_only=True``.

    Raises:
        WeightsUnavailableError: the file does not exist (this workplace cannot download weights).
    """

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        from torchvision.models import wide_resnet50_2

        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailableError(
                f"wide_resnet50_2 weights {path} not found: nothing is downloaded here. Save torchvision's "
                "Wide_ResNet50_2_Weights state dict on a machine with network access and pass its path, or use the "
                "CLIP teacher (teacher='clip')."
            )
        network = wide_resnet50_2(weights=None)
        try:
            network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (RuntimeError, ValueError, OSError) as error:
            raise ValueError(f"{path} is not a wide_resnet50_2 state dict: {str(error).splitlines()[0]}") from error
        self.stem = nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool)
        self.layer1, self.layer2 = network.layer1, network.layer2
        self.layer3, self.layer4 = network.layer3, network.layer4
        self._freeze()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> TeacherFeatures:
        x1 = self.layer1(self.stem(images))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        return TeacherFeatures([x1, x2, x3], self.layer4(x3))
