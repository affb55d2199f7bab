"""Typed outputs of the detector: :class:`DetectorOutput` (``forward(image, output="all")``, :meth:`score` ``"all"``)
and :class:`AnomalyMaps` (the map head's maps of one pass).

Fields are read as attributes (``out.scores``). A :class:`DetectorOutput` is also a read-only
``Mapping[str, Tensor]`` over the fields that are set (``out["scores"]``, ``"anomaly_map" in out``): the view MONAI
engines and bundle configs use, whose ``output_transform`` strings name an output
(:func:`sdmad_monai.handlers.detector_output`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

__all__ = ["AnomalyMaps", "DetectorOutput"]


@dataclass(frozen=True, eq=False)
class AnomalyMaps:
    """Patch-level anomaly maps of one batch (pixel-level protocol; MVFA formulas, :mod:`sdmad_monai.functional.maps`).

    Attributes:
        anomaly_map: ``[B, H, W]`` combined map at the input size (higher = more anomalous).
        anomaly_map_zero_shot: ``[B, H, W]`` zero-shot (text) branch.
        patch_logits: ``[B, L, h, w]`` zero-shot logits per map layer on the patch grid (the segmentation losses).
        anomaly_map_few_shot: ``[B, H, W]`` memory-bank branch, only when a memory bank is set.
    """

    anomaly_map: torch.Tensor
    anomaly_map_zero_shot: torch.Tensor
    patch_logits: torch.Tensor
    anomaly_map_few_shot: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class DetectorOutput(Mapping[str, torch.Tensor]):
    """Everything one scoring pass gives: Eq. 7 scores, Eq. 8 predictions, the image score, the similarities and the
    text state they were computed with, and the anomaly maps when the detector computed them.

    Attributes:
        scores: ``[B, K]`` Eq. 7 category scores (max cosine similarity over the kept prompts).
        predictions: ``[B, K]`` Eq. 8 0/1 predictions against the anchor.
        image_score: ``[B]`` normal-vs-abnormal score ``max_c s_c - cos(image, anchor)``.
        similarities: ``[B, P]`` cosine similarity of each image to each prompt.
        anchor_similarity: ``[B]`` cosine similarity to the anchor.
        image_features: ``[B, D]`` image features (unnormalised).
        text_features: ``[P, D]`` prompt features.
        prompt_categories: ``[P]`` category per prompt, ``-1`` for normal prompts.
        anchor_feature: ``[D]`` anchor feature.
        keep: ``[P]`` prompts kept by sign selection (all for no selection).
        anomaly_map, anomaly_map_zero_shot, anomaly_map_few_shot, patch_logits: :class:`AnomalyMaps`' fields, or
            ``None`` (and absent from the mapping view) when no maps were computed.
        sign_selection_keep: ``[P]`` for a variant scored with every prompt (the evaluation's ``clip`` and
            ``sdmad_no_ss``, :class:`~sdmad_monai.inferers.ProtocolInferer`): what sign selection would keep for its
            prompt features, so reports can mark the prompts it drops; ``None`` otherwise.
    """

    scores: torch.Tensor
    predictions: torch.Tensor
    image_score: torch.Tensor
    similarities: torch.Tensor
    anchor_similarity: torch.Tensor
    image_features: torch.Tensor
    text_features: torch.Tensor
    prompt_categories: torch.Tensor
    anchor_feature: torch.Tensor
    keep: torch.Tensor
    anomaly_map: torch.Tensor | None = None
    anomaly_map_zero_shot: torch.Tensor | None = None
    anomaly_map_few_shot: torch.Tensor | None = None
    patch_logits: torch.Tensor | None = None
    sign_selection_keep: torch.Tensor | None = None

    def with_maps(self, maps: AnomalyMaps | None) -> DetectorOutput:
        """This output with the maps of the same pass (unchanged for ``None``)."""
        if maps is None:
            return self
        return dataclasses.replace(self, **{f.name: getattr(maps, f.name) for f in dataclasses.fields(maps)})

    @property
    def has_maps(self) -> bool:
        """Whether the anomaly maps were computed."""
        return self.anomaly_map is not None

    # the read-only mapping view over the fields that are set
    def __getitem__(self, key: str) -> torch.Tensor:
        value = getattr(self, key, None) if key in _FIELD_NAMES else None
        if value is None:
            available = ", ".join(self)
            raise KeyError(f"Detector output has no {key!r} (it has: {available}).")
        return value

    def __iter__(self) -> Iterator[str]:
        return (name for name in _FIELD_NAMES if getattr(self, name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __eq__(self, other: object) -> bool:  # tensors have no single truth value: identity, as for a plain object
        return self is other

    __hash__ = object.__hash__


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(DetectorOutput))
