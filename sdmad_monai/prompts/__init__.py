"""Prompt banks: normal prompts and per-category radiological-sign prompts (see :mod:`.bank`)."""

from .bank import BUILTIN_BANKS, CategoryPrompts, PromptBank, PromptBankError, load_prompt_bank

__all__ = ["BUILTIN_BANKS", "CategoryPrompts", "PromptBank", "PromptBankError", "load_prompt_bank"]
