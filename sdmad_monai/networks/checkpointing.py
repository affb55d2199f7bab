"""Activation checkpointing of the frozen image blocks between shift adapters.

Training SD-MAD back-propagates from the image embedding down to the first adapted block. Every frozen block on that
path keeps its intermediate activations for backward (layer norms, the attention's query/key/value, the 4x-wide MLP
hidden layer): at ViT-L/14, 240 px, batch 8 that is about 170 MiB per block in fp32, for 18 of the 24 blocks with the
paper's adapters at 6, 8, 18 and 24. With checkpointing each such block keeps only its input and recomputes the rest
during backward (one more forward of those blocks: about a third more compute per training step).

What is checkpointed is the block's own ``forward``, not its ``__call__``: the shift adapter, attached as a forward
hook (:func:`~sdmad_monai.networks.adapter.attach_adapter`), runs outside the checkpointed region, so its (small)
activations are kept as usual and it is not recomputed; gradients are identical to those without checkpointing.

Blocks before the first adapter need nothing: no parameter there requires grad and neither does their input, so
autograd keeps no activations of theirs. The wrapper also runs a block plainly whenever its input does not require
grad (adapters switched off, gradient disabled), and whenever checkpointing is switched off (the detector switches it
on only in training mode), so inference is unchanged.

Why not open_clip's own switch (``model.visual.set_grad_checkpointing()``)? It wraps ``block.__call__`` and so
checkpoints the adapter hooks too (recomputed in backward, and re-evaluating the detector's adapters-on switch then),
checkpoints every block of the tower including those before the first adapter, is on in eval mode as well until
switched off, and exists only for open_clip's own ViT (timm towers have another switch).
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["BlockCheckpointing", "blocks_between_adapters"]

#: Attribute set on each wrapped block: whether the wrapper checkpoints it now.
_ACTIVE = "_sdmad_checkpointing"


def blocks_between_adapters(num_blocks: int, adapter_layers: Sequence[int]) -> list[int]:
    """1-based indices of the blocks that lie on the backward path of the adapters and hold no adapter parameter:
    every block after the first adapted one (the adapted blocks after it included: their adapters run outside the
    checkpointed region).

    Args:
        num_blocks: depth of the image tower.
        adapter_layers: 1-based indices of the adapted blocks.

    Returns:
        ``[first + 1, ..., num_blocks]``, empty without adapters.

    Example:
        The paper's ViT-L/14 (24 blocks, adapters at 6, 8, 18, 24) gives blocks 7 to 24.
    """
    if not adapter_layers:
        return []
    return list(range(min(adapter_layers) + 1, num_blocks + 1))


def _needs_grad(values: Iterable[Any]) -> bool:
    return any(isinstance(value, torch.Tensor) and value.requires_grad for value in values)


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The block's class ``forward``, run under :func:`torch.utils.checkpoint.checkpoint` when switched on, gradient
    is enabled and an input requires grad; plainly otherwise."""
    forward = type(self).forward
    if (
        getattr(self, _ACTIVE, False)
        and torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and (_needs_grad(args) or _needs_grad(kwargs.values()))
    ):
        return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)
    return forward(self, *args, **kwargs)


class BlockCheckpointing:
    """Activation checkpointing for a fixed set of transformer blocks, switched on and off as a whole.

    Each block's ``forward`` is replaced (on the instance; its class, parameters and state-dict keys are untouched) by
    a method that checkpoints the class ``forward`` while :attr:`active`. A bound method, not a closure, so that
    ``copy.deepcopy`` of the model gives blocks that run their own weights.

    Args:
        blocks: the blocks to checkpoint (e.g. ``[image_blocks(model)[i - 1] for i in blocks_between_adapters(...)]``).

    Raises:
        ValueError: a block already has an instance-level ``forward`` (wrapped twice, or by another library).
    """

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        self.blocks = list(blocks)
        for block in self.blocks:
            if "forward" in vars(block):
                raise ValueError(
                    f"{type(block).__name__} already has an instance-level forward (checkpointing installed twice, or "
                    "another wrapper); cannot checkpoint it."
                )
        for block in self.blocks:
            setattr(block, _ACTIVE, False)
            block.forward = types.MethodType(_checkpointed_forward, block)

    @property
    def active(self) -> bool:
        """Whether the blocks are checkpointed (when gradient is enabled and their input requires it)."""
        return any(getattr(block, _ACTIVE, False) for block in self.blocks)

    def set_active(self, active: bool) -> None:
        """Switch checkpointing of every block on or off."""
        for block in self.blocks:
            setattr(block, _ACTIVE, bool(active))

    def remove(self) -> None:
        """Give every block back its class ``forward``."""
        for block in self.blocks:
            vars(block).pop("forward", None)
            vars(block).pop(_ACTIVE, None)
        self.blocks = []
