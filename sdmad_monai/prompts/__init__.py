"""Prompt banks: normal prompts and per-category radiological-sign prompts (see :mod:`.bank`); single-category banks
for the BMAD datasets (:mod:`.bmad`)."""

from .bank import (
    BUILTIN_BANKS,
    CategoryPrompts,
    PromptBank,
    PromptBankError,
    load_prompt_bank,
)
from .bmad import BMAD_CATEGORY, bmad_bank_key, load_bmad_prompt_bank

__all__ = [
    "BMAD_CATEGORY",
    "BUILTIN_BANKS",
    "CategoryPrompts",
    "PromptBank",
    "PromptBankError",
    "bmad_bank_key",
    "load_bmad_prompt_bank",
    "load_prompt_bank",
]
