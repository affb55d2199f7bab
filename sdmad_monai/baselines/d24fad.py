"""D²4FAD: dual distillation for few-shot anomaly detection (arXiv 2603.01713; public code ttttqz/D24FAD, read, not
copied), as a pure ``nn.Module``.

- a frozen teacher (:mod:`.teacher`) gives multi-scale features of the query and of ``k`` normal *support* images;
- a student decoder (:class:`~.decoder.ReconstructionDecoder`) fed the teacher's deepest feature reproduces the
  teacher's scales;
- learn-to-weight (:class:`LearnToWeight`): per scale, a 1x1 convolution makes a key from each support's student
  feature; the query's student feature (flattened) is the query; a scaled dot-product softmax over the ``k`` supports
  weights the supports' student features into one reference per query;
- losses (:meth:`D24FAD.loss`): TSD = teacher-student distillation on the query, SSD = student-student distillation
  between the query and its weighted supports (both :func:`~.functional.scale_cosine_loss`); total = SSD + 0.1 TSD;
- anomaly map: :func:`~.functional.reconstruction_anomaly_map` of the query's student features against the weighted
  supports (sum over scales of 1 - cos, upsampled, Gaussian sigma 4); image score = the map's maximum.

Departures from the public code, on purpose: maps are not min-max normalised over the test set (a score must not
depend on the other test images), and training glue here selects checkpoints on validation data, never on test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from .decoder import ReconstructionDecoder
from .functional import reconstruction_anomaly_map, scale_cosine_loss

if TYPE_CHECKING:
    from .teacher import CLIPTeacher, WideResNetTeacher

__all__ = ["D24FAD", "D24FADLoss", "D24FADOutput", "LearnToWeight", "support_weights"]


class D24FADOutput(NamedTuple):
    """Attributes:
    anomaly_map: ``[B, H, W]``, higher = more anomalous.
    image_score: ``[B]``, the map's maximum.
    support_weights: ``[B, S]`` learn-to-weight weights of the deepest scale (diagnostics).
    """

    anomaly_map: torch.Tensor
    image_score: torch.Tensor
    support_weights: torch.Tensor


class D24FADLoss(NamedTuple):
    """Attributes: total = ssd + tsd_weight * tsd; ssd; tsd (scalars)."""

    total: torch.Tensor
    ssd: torch.Tensor
    tsd: torch.Tensor


def support_weights(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention weights of each query over its supports.

    Args:
        query: ``[B, D]`` flattened query features.
        keys: ``[B, S, D]`` flattened support keys.

    Returns:
        ``[B, S]``: ``softmax_s(<query, key_s> / sqrt(D))``.
    """
    logits = torch.einsum("bd,bsd->bs", query, keys) / math.sqrt(query.shape[-1])
    return logits.softmax(dim=-1)


class LearnToWeight(nn.Module):
    """One scale's learn-to-weight: 1x1 conv keys of the supports, :func:`support_weights` against the query, the
    weighted sum of the supports' features.

    Args:
        channels: the scale's channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.key = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, query: torch.Tensor, supports: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            query: ``[B, C, h, w]`` student features of the queries.
            supports: ``[B, S, C, h, w]`` student features of each query's supports.

        Returns:
            ``([B, C, h, w]`` weighted supports, ``[B, S]`` weights).
        """
        b, s = supports.shape[:2]
        keys = self.key(supports.flatten(0, 1)).reshape(b, s, -1)
        weights = support_weights(query.flatten(1), keys)
        return torch.einsum("bs,bschw->bchw", weights, supports), weights


class D24FAD(nn.Module):
    """Args:
    teacher: a frozen teacher (:class:`~.teacher.CLIPTeacher` or :class:`~.teacher.WideResNetTeacher`).
    image_size: square input size in pixels (the teacher's shapes are read at it).
    sigma: Gaussian smoothing of the map in pixels (4 in D²4FAD).
    tsd_weight: weight of the teacher-student term (0.1 in D²4FAD).
    """

    def __init__(
        self, teacher: CLIPTeacher | WideResNetTeacher, image_size: int, sigma: float = 4.0, tsd_weight: float = 0.1
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.image_size = int(image_size)
        scales, deepest = teacher.shapes(self.image_size)
        self.student = ReconstructionDecoder(deepest[0], scales)
        self.weighting = nn.ModuleList(LearnToWeight(c) for c, _, _ in scales)
        self.sigma, self.tsd_weight = float(sigma), float(tsd_weight)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _student(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features = self.teacher(images)
        return features.scales, self.student(features.deepest)

    def _references(
        self, query: Sequence[torch.Tensor], supports: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Weighted support features per scale for each query; ``supports`` is ``[S, 3, H, W]`` (shared by the batch)
        or ``[B, S, 3, H, W]`` (one set per query)."""
        b = query[0].shape[0]
        shared = supports.ndim == 4
        images = supports if shared else supports.flatten(0, 1)
        _, support_students = self._student(images)
        references: list[torch.Tensor] = []
        weights: torch.Tensor | None = None
        for scale, (q, module) in enumerate(zip(query, self.weighting)):
            s_features = support_students[scale]
            s_features = (s_features[None].expand(b, *s_features.shape) if shared
                          else s_features.reshape(b, -1, *s_features.shape[1:]))  # fmt: skip
            reference, weights = module(q, s_features)
            references.append(reference)
        if weights is None:
            raise ValueError("the teacher has no feature scales; D24FAD needs at least one.")
        return references, weights

    def forward(self, query: torch.Tensor, supports: torch.Tensor) -> D24FADOutput:
        """Anomaly maps and scores of ``query`` ``[B, 3, H, W]`` against the normal ``supports``."""
        _, student = self._student(query)
        references, weights = self._references(student, supports)
        anomaly_map = reconstruction_anomaly_map(student, references, query.shape[-2:], self.sigma)
        return D24FADOutput(anomaly_map, anomaly_map.flatten(1).amax(dim=1), weights)

    def loss(self, query: torch.Tensor, supports: torch.Tensor) -> D24FADLoss:
        """SSD + ``tsd_weight`` TSD for normal ``query`` images and their normal ``supports``."""
        teacher, student = self._student(query)
        references, _ = self._references(student, supports)
        ssd = scale_cosine_loss(student, references)
        tsd = scale_cosine_loss(teacher, student)
        return D24FADLoss(ssd + self.tsd_weight * tsd, ssd, tsd)
