"""The text side of the detector, computed once and cached: the text path, the text states, the scoring parts.

- :class:`TextPath`: run the frozen text blocks once, re-run only the adapted last block;
- :class:`TextState` and :func:`compute_text_state`: prompt features, anchor and the prompts kept by sign selection
  (Eq. 6, :mod:`sdmad_monai.functional.sign_selection`), with :class:`TextStateCache` keeping the last few;
- :class:`ScoringCache`: the image-independent parts of Eq. 7 and Eq. 8 of a text state.

Cached text path:

The prompts never change and every text block before the last is frozen, so their output (the input of the last
block) is computed once and kept. Each training step then runs only the last block (with its shift adapter), the
final layer norm, pooling and projection -- the same computation ``encode_text`` does, split in two.

Supported: open_clip's native text tower (``CLIP``) and its ``TextTransformer`` (``CustomTextCLIP``) without a CoCa
class token. Other towers (Hugging Face text models) fall back to a full ``encode_text`` per call; results are the
same, only slower.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn

from ..functional.common import _check_prompt_args
from ..functional.scoring import anchor_feature_from_normal_prompts
from ..functional.sign_selection import kept_prompt_membership, select_signs, selection_with_fallback

__all__ = ["PromptScoring", "ScoringCache", "TextPath", "TextState", "TextStateCache", "compute_text_state"]

#: Text states kept (adapters on/off x sign selection on/off).
TEXT_CACHE_SIZE = 4


class _StopBeforeLastBlock(Exception):
    """Raised by the capture hook to end ``encode_text`` once the last block's input is known."""


class TextPath:
    """Text encoding of a fixed set of tokens, split at the last text block.

    Args:
        model: the open_clip model.
        last_block: the text tower's last transformer block (the one carrying the text adapter).
    """

    def __init__(self, model: nn.Module, last_block: nn.Module) -> None:
        # open_clip's towers are typed Any here: open_clip ships no type information, and nn.Module.__getattr__
        # would make every attribute Tensor | Module
        self.model: Any = model
        self.last_block = last_block
        self._head_owner: Any
        self._transformer: Any = None
        self._pool_type: Any = None
        self._eos_attr: str = ""
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


class TextState(NamedTuple):
    """Everything the scoring functions need from the text side.

    Attributes:
        features: ``[P, D]`` prompt features (unnormalised).
        prompt_categories: ``[P]`` category per prompt, ``-1`` for normal.
        anchor: ``[D]`` anchor feature (unit norm).
        keep: ``[P]`` prompts kept by sign selection (with fallback), all ``True`` when selection is off.
    """

    features: torch.Tensor
    prompt_categories: torch.Tensor
    anchor: torch.Tensor
    keep: torch.Tensor


def compute_text_state(
    features: torch.Tensor,
    prompt_categories: torch.Tensor,
    category_labels: Sequence[str],
    sign_selection: bool,
    warn: bool = True,
) -> TextState:
    """The text state of prompt features: the anchor (normal prompts' centroid) and, with ``sign_selection``, the
    prompts Eq. 6 keeps (:func:`~sdmad_monai.functional.selection_with_fallback`: a category that would keep none
    keeps all, with a warning naming it when ``warn``); without it every prompt is kept.

    Args:
        features: ``[P, D]`` prompt features.
        prompt_categories: ``[P]`` category per prompt, ``-1`` for normal.
        category_labels: the ``K`` category names (for the fallback warning).
        sign_selection: apply Eq. 6.
        warn: report fallbacks (training steps pass ``False``: selection is an inference step).
    """
    anchor = anchor_feature_from_normal_prompts(features, prompt_categories)
    if sign_selection:
        keep = selection_with_fallback(
            select_signs(features.detach(), prompt_categories),
            prompt_categories,
            len(category_labels),
            list(category_labels),
            warn=warn,
        )
    else:
        keep = torch.ones_like(prompt_categories, dtype=torch.bool)
    return TextState(features, prompt_categories, anchor, keep)


class TextStateCache:
    """The last few text states by key (adapters on/off, sign selection, device, the text adapter's weight versions),
    so that alternating adapters on/off (the evaluation's ``clip`` and ``sdmad`` variants on every batch) does not
    recompute them on each switch. Stale entries (adapter weights since changed) are never asked for again and are
    evicted oldest first.

    Args:
        size: number of states kept.
    """

    def __init__(self, size: int = TEXT_CACHE_SIZE) -> None:
        self.size = size
        self._entries: dict[tuple, TextState] = {}

    def get(self, key: tuple, compute: Callable[[], TextState]) -> TextState:
        """The state cached under ``key``, or ``compute()`` stored under it."""
        state = self._entries.get(key)
        if state is None:
            state = compute()
            while len(self._entries) >= self.size:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = state
        return state

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every state (after loading other adapter weights)."""
        self._entries.clear()


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
