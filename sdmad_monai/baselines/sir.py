"""SIR: semantic iterative reconstruction for one-shot universal anomaly detection (arXiv 2603.23766), as a pure
``nn.Module``. No code of the paper is public; the abstract fixes the outline (a pretrained teacher's multi-scale
features, a compact up-then-down decoder, several refinement loops, one model trained on exactly one normal image of
each dataset; maps from multi-scale cosine similarity with Gaussian smoothing). Every other detail is a choice made
here:

- **teacher**: :mod:`.teacher` (the same one D²4FAD uses), its scales and deepest feature;
- **up path**: :class:`~.decoder.ReconstructionDecoder` from a deep feature to every scale (as D²4FAD's student);
- **down path**: every reconstructed scale resized to the deepest feature's grid, concatenated and mapped back to the
  deepest feature's channels by a 1x1 convolution - the next loop's input. Loop 1 starts from the teacher's deepest
  feature; loop ``t + 1`` from loop ``t``'s down path (the output fed back);
- **loops**: ``loops`` (default 3) refinement loops; the map comes from the last one;
- **loss**: the mean over loops of :func:`~.functional.scale_cosine_loss` (teacher scales vs that loop's
  reconstruction): every loop is supervised, so the feedback cannot drift;
- **fusion and map**: :func:`~.functional.reconstruction_anomaly_map` (sum over scales of 1 - cos, upsampled,
  Gaussian ``sigma`` = 4 px as D²4FAD's); image score = the map's maximum;
- **one-shot universal training** (the training glue): exactly one normal image of each dataset, mixed, one model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, cast

import torch
from torch import nn

from .decoder import ReconstructionDecoder, resize_to
from .functional import reconstruction_anomaly_map, scale_cosine_loss

if TYPE_CHECKING:
    from .teacher import CLIPTeacher, WideResNetTeacher

__all__ = ["SIR", "SIROutput"]


class SIROutput(NamedTuple):
    """Attributes:
    anomaly_map: ``[B, H, W]`` of the last loop, higher = more anomalous.
    image_score: ``[B]``, the map's maximum.
    """

    anomaly_map: torch.Tensor
    image_score: torch.Tensor


class SIR(nn.Module):
    """Args:
    teacher: a frozen teacher (:class:`~.teacher.CLIPTeacher` or :class:`~.teacher.WideResNetTeacher`).
    image_size: square input size in pixels (the teacher's shapes are read at it).
    loops: refinement loops (>= 1).
    sigma: Gaussian smoothing of the map in pixels.
    """

    def __init__(
        self, teacher: CLIPTeacher | WideResNetTeacher, image_size: int, loops: int = 3, sigma: float = 4.0
    ) -> None:
        super().__init__()
        if int(loops) < 1:
            raise ValueError(f"loops must be >= 1, got {loops}.")
        self.teacher = teacher
        self.image_size, self.loops, self.sigma = int(image_size), int(loops), float(sigma)
        scales, deepest = teacher.shapes(self.image_size)
        self.deep_grid = deepest[1:]
        self.up = ReconstructionDecoder(deepest[0], scales)
        self.down = nn.Conv2d(sum(c for c, _, _ in scales), deepest[0], kernel_size=1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def reconstructions(self, images: torch.Tensor, loops: int | None = None) -> tuple[list, list[list[torch.Tensor]]]:
        """``(teacher scales, [reconstructed scales of loop 1, ..., loop n]])`` of ``images`` ``[B, 3, H, W]``."""
        features = self.teacher(images)
        h, per_loop = features.deepest, []
        for _ in range(self.loops if loops is None else int(loops)):
            rebuilt = self.up(h)
            per_loop.append(rebuilt)
            h = self.down(torch.cat([resize_to(r, self.deep_grid) for r in rebuilt], dim=1))
        return features.scales, per_loop

    def forward(self, images: torch.Tensor) -> SIROutput:
        teacher, per_loop = self.reconstructions(images)
        anomaly_map = reconstruction_anomaly_map(teacher, per_loop[-1], images.shape[-2:], self.sigma)
        return SIROutput(anomaly_map, anomaly_map.flatten(1).amax(dim=1))

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """Mean over loops of the teacher-vs-reconstruction cosine loss, for normal ``images``."""
        teacher, per_loop = self.reconstructions(images)
        # a tensor: the sum has at least one loop's term (loops >= 1)
        return cast(torch.Tensor, sum(scale_cosine_loss(teacher, rebuilt) for rebuilt in per_loop) / len(per_loop))
