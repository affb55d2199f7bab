"""Cached text path: run the frozen text blocks once, re-run only the adapted last block.

The prompts never change and every text block before the last is frozen, so their output (the input of the last
block) is computed once and kept. Each training step then runs only the last block (with its shift adapter), the
final layer norm, pooling and projection -- the same computation ``encode_text`` does, split in two.

Supported: open_clip's native text tower (``CLIP``) and its ``TextTransformer`` (``CustomTextCLIP``) without a CoCa
class token. Other towers (Hugging Face text models) fall back to a full ``encode_text`` per call; results are the
same, only slower.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn

from ..functional import _check_prompt_args, kept_prompt_membership

__all__ = ["PromptScoring", "ScoringCache", "TextPath"]


class _StopBeforeLastBlock(Exception):
    """Raised by the capture hook to end ``encode_text`` once the last block's input is known."""


class TextPath:
    """Text encoding of a fixed set of tokens, split at the last text block.

    Args:
        model: the open_clip model.
        last_block: the text tower's last transformer block (the one carrying the text adapter).
    """

    def __init__(self, model: nn.Module, last_block: nn.Module) -> None:
        self.model = model
        self.last_block = last_block
        text = getattr(model, "text", None)
        if text is None and hasattr(model, "ln_final") and hasattr(model, "transformer"):
            self._head_owner, self._pool_type, self._eos_attr = model, model.text_pool_type, "text_eos_id"
            self._transformer = model.transformer
        elif text is not None and hasattr(text, "ln_final") and getattr(text, "cls_emb", None) is None:
            self._head_owner, self._pool_type, self._eos_attr = text, text.pool_type, "eos_id"
            self._transformer = text.transformer
        else:
            self._head_owner = None
        self._prefix: dict[str, Any] | None = None
        self._prefix_key: tuple | None = None

    @property
    def splittable(self) -> bool:
        """Whether the prefix can be cached (otherwise :meth:`encode` runs the whole tower)."""
        return self._head_owner is not None

    def _capture_prefix(self, tokens: torch.Tensor) -> dict[str, Any]:
        captured: dict[str, Any] = {}

        def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured["args"], captured["kwargs"] = args, kwargs
            raise _StopBeforeLastBlock

        handle = self.last_block.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            with torch.no_grad():
                self.model.encode_text(tokens)
        except _StopBeforeLastBlock:
            pass
        finally:
            handle.remove()
        if "args" not in captured:
            raise RuntimeError("The text tower's last block did not run during encode_text; cannot cache its input.")
        return captured

    def _head(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        owner = self._head_owner
        if not self._transformer.batch_first:
            hidden = hidden.transpose(0, 1)
        hidden = owner.ln_final(hidden)
        pooled = text_global_pool(hidden, tokens, self._pool_type, eos_token_id=getattr(owner, self._eos_attr, None))
        projection = owner.text_projection
        if projection is None:
            return pooled
        return projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features ``[P, D]`` for ``tokens`` ``[P, L]`` (unnormalised, as ``encode_text`` returns them).

        The frozen prefix is computed without gradient on the first call for these tokens, device and dtype; the
        last block and head run on every call, with gradient if it is enabled.
        """
        if not self.splittable:
            return self.model.encode_text(tokens)
        key = (tokens.data_ptr(), tuple(tokens.shape), tokens.device, self._transformer.get_cast_dtype())
        if self._prefix is None or self._prefix_key != key:
            self._prefix = self._capture_prefix(tokens)
            self._prefix_key = key
        hidden = self.last_block(*self._prefix["args"], **self._prefix["kwargs"])
        return self._head(hidden, tokens)

    def clear(self) -> None:
        """Forget the cached prefix (e.g. after moving the model to another device)."""
        self._prefix = None
        self._prefix_key = None


class PromptScoring(NamedTuple):
    """The image-independent parts of Eq. 7 and Eq. 8 for one text state, computed once by :class:`ScoringCache`.

    Attributes:
        unit_features: ``[P, D]`` L2-normalised prompt features.
        membership: ``[K, P]`` kept prompts of each category (:func:`~sdmad_monai.functional.kept_prompt_membership`).
        unit_anchor: ``[D]`` L2-normalised anchor feature (Eq. 8 normalises the anchor it is given).
    """

    unit_features: torch.Tensor
    membership: torch.Tensor
    unit_anchor: torch.Tensor


class ScoringCache:
    """:class:`PromptScoring` of the last few text states scored, so that scoring a batch costs one image
    normalisation, one matrix product and the per-category max/min -- not a re-normalisation of the prompt features
    and a rebuild of the category masks on every call.

    An entry is reused for the same ``features``, ``prompt_categories`` and ``anchor`` tensors (the same objects,
    unmodified: their version counters are checked) and an equal ``keep`` mask, so the evaluation's
    ``text._replace(keep=torch.ones_like(text.keep))`` variants hit the cache too. Prompt features that require grad
    (training the text adapter: a new graph every step) are never cached, so no autograd graph is kept alive.

    Args:
        size: number of entries kept (oldest evicted).
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        #: ``(tensors, versions, settings, keep, scoring)``, most recently used first
        self._entries: list[tuple[tuple, tuple, tuple, torch.Tensor, PromptScoring]] = []

    @staticmethod
    def _compute(
        features: torch.Tensor, categories: torch.Tensor, keep: torch.Tensor, anchor: torch.Tensor, k: int
    ) -> PromptScoring:
        _check_prompt_args(features, categories)
        return PromptScoring(
            F.normalize(features, dim=-1), kept_prompt_membership(categories, keep, k), F.normalize(anchor, dim=-1)
        )

    def get(
        self,
        features: torch.Tensor,
        prompt_categories: torch.Tensor,
        keep: torch.Tensor,
        anchor: torch.Tensor,
        num_categories: int,
    ) -> PromptScoring:
        """The scoring parts of ``features`` ``[P, D]``, ``prompt_categories`` ``[P]``, ``keep`` ``[P]`` and
        ``anchor`` ``[D]`` with ``num_categories`` categories, from the cache when possible."""
        if features.requires_grad or anchor.requires_grad or torch.jit.is_tracing():
            return self._compute(features, prompt_categories, keep, anchor, num_categories)
        versions = (features._version, prompt_categories._version, anchor._version)
        settings = (num_categories, keep.shape, keep.dtype, keep.device)
        for index, (tensors, their_versions, their_settings, kept, scoring) in enumerate(self._entries):
            if (
                tensors[0] is features
                and tensors[1] is prompt_categories
                and tensors[2] is anchor
                and their_versions == versions
                and their_settings == settings
                and torch.equal(kept, keep)
            ):
                if index:
                    self._entries.insert(0, self._entries.pop(index))
                return scoring
        scoring = self._compute(features, prompt_categories, keep, anchor, num_categories)
        entry = ((features, prompt_categories, anchor), versions, settings, keep.clone(), scoring)
        self._entries.insert(0, entry)
        del self._entries[self.size :]
        return scoring

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
