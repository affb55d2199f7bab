"""TorchScript export of a detector's score path: what ``torch.jit.script(detector)`` compiles (MONAI's
``ckpt_export`` scripts the bundle's ``network_def``), through
:meth:`~sdmad_monai.networks.detector.SignDrivenDetector.__prepare_scriptable__`.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .detector import SignDrivenDetector

__all__ = ["ExportedScores"]


class ExportedScores(nn.Module):
    """A detector's score path (``detector(image)``: Eq. 7 scores ``[B, K]``) as a traced TorchScript module inside
    a scriptable wrapper: what :meth:`SignDrivenDetector.__prepare_scriptable__` gives ``torch.jit.script``.

    The trace runs in eval mode on a 2-image batch at the detector's input size; batch size is free afterwards.
    Prompt features (with sign selection as configured) are computed once and become constants.

    Args:
        detector: the detector with its trained adapters loaded.
    """

    def __init__(self, detector: SignDrivenDetector) -> None:
        super().__init__()
        detector.eval()
        parameter = next(detector.parameters())
        size = int(detector.image_size)
        example = torch.zeros(2, 3, size, size, device=parameter.device, dtype=parameter.dtype)
        with torch.no_grad(), warnings.catch_warnings():
            detector.text_state()  # prompt side computed (and cached) before tracing: constants of the export
            # the tracer warns about Python-side checks it freezes: tensor-shape checks (open_clip's attention,
            # ours) and nothing that depends on the image values (checked), so the trace holds for any batch
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            self.scores = torch.jit.trace(_ScorePath(detector), example, check_trace=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.scores(image)


class _ScorePath(nn.Module):
    def __init__(self, detector: SignDrivenDetector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.detector(image, output="scores")
