"""Shift adapter (Eq. 1-2 of the paper) and how it attaches to a transformer block.

The adapter is attached with a forward hook, so the backbone's modules and state-dict keys stay exactly open_clip's
(pretrained weights load into it unchanged) and the adapters are owned by the detector alone. The hook rewrites the
block's output for every token: ``out <- lambda * out + (1 - lambda) * adapter(out)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["ShiftAdapter", "shift_interpolate", "attach_adapter", "DEFAULT_ADAPTER_LAMBDA", "ACTIVATIONS"]

#: Default interpolation weight of the frozen block output in Eq. 2. The paper does not state its value and reports
#: (Fig. 3) that results are insensitive to it; 0.8 keeps most of CLIP's prior, the ratio MVFA's adapters use.
DEFAULT_ADAPTER_LAMBDA = 0.8

#: Activation ``alpha`` of Eq. 1, by name.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "leaky_relu": nn.LeakyReLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
}


def shift_interpolate(block_output: torch.Tensor, adapter_output: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 2: ``f_out = lambda * f_out_hat + (1 - lambda) * f_ada``."""
    return lam * block_output + (1.0 - lam) * adapter_output


class ShiftAdapter(nn.Module):
    """Shift adapter of SD-MAD: two linear layers, each followed by the activation (Eq. 1), mixed with the frozen
    block's output by interpolation (Eq. 2, :meth:`shift`).

    Args:
        width: token width of the block it adapts.
        bottleneck: hidden width; ``None`` gives ``3 * width // 4`` (768 for ViT-L/14's 1024-wide blocks).
        lam: ``lambda`` of Eq. 2, the weight of the frozen block output (default :data:`DEFAULT_ADAPTER_LAMBDA`).
        activation: name of ``alpha`` in :data:`ACTIVATIONS`.
    """

    def __init__(
        self,
        width: int,
        bottleneck: int | None = None,
        lam: float = DEFAULT_ADAPTER_LAMBDA,
        activation: str = "leaky_relu",
    ) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"Adapter lambda must be in [0, 1], got {lam}.")
        if activation not in ACTIVATIONS:
            raise ValueError(f"Unknown adapter activation {activation!r}; choose one of {sorted(ACTIVATIONS)}.")
        hidden = bottleneck if bottleneck is not None else max(1, 3 * width // 4)
        if hidden < 1:
            raise ValueError(f"Adapter bottleneck must be a positive width, got {bottleneck}.")
        self.width = width
        self.lam = float(lam)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.act1 = ACTIVATIONS[activation]()
        self.act2 = ACTIVATIONS[activation]()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Eq. 1: ``f_ada = alpha(W2 alpha(W1 f_in))`` on every token; ``[..., width] -> [..., width]``."""
        # The layers' own forward computations, called directly: the same ops as calling the four submodules, without
        # four nn.Module.__call__ dispatches per adapter (a quarter of an adapter's time on the tiny model on CPU).
        hidden = self.act1.forward(F.linear(features, self.fc1.weight, self.fc1.bias))
        return self.act2.forward(F.linear(hidden, self.fc2.weight, self.fc2.bias))

    def shift(self, block_output: torch.Tensor) -> torch.Tensor:
        """The adapted block output, Eq. 1 then Eq. 2."""
        return shift_interpolate(block_output, self(block_output), self.lam)


class _ShiftHook:
    """The forward hook of :func:`attach_adapter`.

    An object rather than a closure: ``copy.deepcopy`` copies an object's attributes, so a deep copy of a detector has
    hooks that call the copy's adapters and switch (a closure would be shared and keep calling the original's).
    """

    def __init__(self, adapter: ShiftAdapter, enabled: Callable[[], bool]) -> None:
        self.adapter = adapter
        self.enabled = enabled

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        if not self.enabled():
            return None
        if isinstance(output, tuple):
            return (self.adapter.shift(output[0]),) + tuple(output[1:])
        return self.adapter.shift(output)


def attach_adapter(block: nn.Module, adapter: ShiftAdapter, enabled: Callable[[], bool]) -> RemovableHandle:
    """Make ``block`` return ``adapter.shift(output)`` whenever ``enabled()`` is true.

    Blocks that return a tuple (Hugging Face layers) have their first element adapted.

    Returns:
        The hook handle; ``handle.remove()`` detaches the adapter.
    """
    return block.register_forward_hook(_ShiftHook(adapter, enabled))
