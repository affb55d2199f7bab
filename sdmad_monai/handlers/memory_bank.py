"""MemoryBankBuilder: the few-shot normal memory bank, built when the evaluator starts, after the weights are in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["MemoryBankBuilder"]


class MemoryBankBuilder:
    """Give the network its few-shot normal patch tokens
    (:func:`~sdmad_monai.data.bmad_protocol.build_memory_bank`) at ``Events.STARTED``.

    The memory bank holds adapted features, so it must be built after the checkpoint is loaded: list this handler
    after :class:`~sdmad_monai.handlers.DetectorCheckpointLoader` (handlers of one event run in the order given).

    Args:
        network: the detector.
        items: the memory-bank items of :func:`~sdmad_monai.data.prepare_bmad_protocol`.
        transform: the preprocessing of those items (:func:`~sdmad_monai.data.bmad_protocol.bmad_transforms`).
    """

    def __init__(self, network: torch.nn.Module, items: Sequence[dict], transform: Any) -> None:
        self.network = network
        self.items = list(items)
        self.transform = transform

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        from ..data.bmad_protocol import build_memory_bank

        build_memory_bank(self.network, self.items, self.transform)
