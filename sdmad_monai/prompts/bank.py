"""Prompt bank: normal prompts plus, per anomaly category, the radiological-sign prompts that describe it.

JSON format (see ``fastmri_brain.json`` beside this file)::

    {
      "name": "fastmri-brain", "version": "1.0", "description": "...",
      "normal": ["a normal brain MRI ...", ...],
      "categories": [
        {"label": "Craniotomy", "display_name": "Craniotomy", "signs": ["...", ...]},
        ...
      ]
    }

``label`` is the dataset's exact label string (for fastMRI+ the strings of ``Annotations/brain.csv``), the key used by
datalists; ``display_name`` is a short name for reports and figures. Category order in the file is the channel order
of the detector's output unless :meth:`PromptBank.select` reorders it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CategoryPrompts", "PromptBank", "PromptBankError", "BUILTIN_BANKS", "load_prompt_bank"]

_HERE = Path(__file__).resolve().parent

#: Prompt banks shipped with the package, by name.
BUILTIN_BANKS = {"fastmri_brain": _HERE / "fastmri_brain.json"}


class PromptBankError(ValueError):
    """A prompt bank is malformed or does not contain what was asked of it."""


@dataclass(frozen=True)
class CategoryPrompts:
    """The sign prompts of one anomaly category.

    Args:
        label: the dataset's label string (key in datalists).
        display_name: short human-readable name.
        signs: sign descriptions, one text prompt each.
    """

    label: str
    display_name: str
    signs: tuple[str, ...]


@dataclass(frozen=True)
class PromptBank:
    """Normal prompts and per-category sign prompts, validated on construction.

    Args:
        name: bank name, recorded in checkpoints.
        version: bank version string.
        normal: normal-image prompts; the anchor is derived from them.
        categories: per-category prompts, in output-channel order.
        description: free text.
        source: where the bank was read from, used in error messages.
    """

    name: str
    version: str
    normal: tuple[str, ...]
    categories: tuple[CategoryPrompts, ...]
    description: str = ""
    source: str = "<in memory>"

    def __post_init__(self) -> None:
        where = f"prompt bank {self.name!r} ({self.source})"
        if not self.normal:
            raise PromptBankError(f"{where} has no normal prompt; at least one is needed for the anchor feature.")
        if not self.categories:
            raise PromptBankError(f"{where} has no category.")
        seen_labels: set[str] = set()
        seen_prompts: dict[str, str] = {}
        for text in self.normal:
            self._check_prompt(text, "normal", seen_prompts, where)
        for category in self.categories:
            if not category.label.strip():
                raise PromptBankError(f"{where} has a category with an empty label.")
            if category.label in seen_labels:
                raise PromptBankError(f"{where} lists category {category.label!r} twice.")
            seen_labels.add(category.label)
            if not category.signs:
                raise PromptBankError(f"{where}: category {category.label!r} has no sign prompt.")
            for text in category.signs:
                self._check_prompt(text, category.label, seen_prompts, where)

    @staticmethod
    def _check_prompt(text: Any, owner: str, seen: dict[str, str], where: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise PromptBankError(f"{where}: {owner!r} has an empty or non-text prompt: {text!r}.")
        key = " ".join(text.lower().split())
        if key in seen:
            raise PromptBankError(
                f"{where}: duplicate prompt {text!r} (in {owner!r}, already in {seen[key]!r}); each prompt must be "
                "unique, since a shared prompt cannot belong to one category."
            )
        seen[key] = owner

    # ------------------------------------------------------------------ views
    @property
    def labels(self) -> list[str]:
        """Category label strings in output-channel order."""
        return [c.label for c in self.categories]

    @property
    def display_names(self) -> list[str]:
        """Short category names in output-channel order."""
        return [c.display_name for c in self.categories]

    @property
    def num_categories(self) -> int:
        return len(self.categories)

    def flatten(self) -> tuple[list[str], list[int]]:
        """All prompts and their category index: normal prompts first (index ``-1``), then each category's signs.

        Returns:
            ``(texts [P], prompt_categories [P])``.
        """
        texts = list(self.normal)
        categories = [-1] * len(self.normal)
        for index, category in enumerate(self.categories):
            texts.extend(category.signs)
            categories.extend([index] * len(category.signs))
        return texts, categories

    def select(self, labels: Sequence[str]) -> PromptBank:
        """A bank with only ``labels``, in that order (the datalist's category order).

        Raises:
            PromptBankError: naming every label that is not in the bank and listing those that are.
        """
        by_label = {c.label: c for c in self.categories}
        unknown = [label for label in labels if label not in by_label]
        if unknown:
            raise PromptBankError(
                f"Labels {unknown} are not in prompt bank {self.name!r} ({self.source}); it has {self.labels}. "
                "Add sign prompts for them to the bank or drop them from the category list."
            )
        return PromptBank(
            self.name,
            self.version,
            self.normal,
            tuple(by_label[label] for label in labels),
            self.description,
            self.source,
        )

    # ------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (the file format above)."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "normal": list(self.normal),
            "categories": [
                {"label": c.label, "display_name": c.display_name, "signs": list(c.signs)} for c in self.categories
            ],
        }

    def fingerprint(self) -> str:
        """SHA-256 of the prompts and category order; equal fingerprints mean interchangeable banks."""
        content = {"normal": list(self.normal), "categories": [[c.label, list(c.signs)] for c in self.categories]}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<in memory>") -> PromptBank:
        """Build from the JSON structure; errors name ``source`` and the missing or malformed field."""
        if not isinstance(data, Mapping):
            raise PromptBankError(f"Prompt bank {source} must be a JSON object, got {type(data).__name__}.")
        missing = [key for key in ("normal", "categories") if key not in data]
        if missing:
            raise PromptBankError(f"Prompt bank {source} lacks the field(s) {missing}.")
        if not isinstance(data["normal"], list) or not isinstance(data["categories"], list):
            raise PromptBankError(f"Prompt bank {source}: 'normal' and 'categories' must be lists.")
        categories = []
        for index, entry in enumerate(data["categories"]):
            if not isinstance(entry, Mapping) or "label" not in entry:
                raise PromptBankError(f"Prompt bank {source}: categories[{index}] must be an object with a 'label'.")
            signs = entry.get("signs", [])
            if not isinstance(signs, list):
                raise PromptBankError(f"Prompt bank {source}: 'signs' of {entry['label']!r} must be a list.")
            categories.append(
                CategoryPrompts(str(entry["label"]), str(entry.get("display_name", entry["label"])), tuple(signs))
            )
        return cls(
            name=str(data.get("name", Path(source).stem)),
            version=str(data.get("version", "0")),
            normal=tuple(data["normal"]),
            categories=tuple(categories),
            description=str(data.get("description", "")),
            source=source,
        )

    @classmethod
    def from_json(cls, path: str | Path) -> PromptBank:
        """Read a bank from a JSON file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PromptBankError(f"Prompt bank file {path} does not exist.") from None
        except json.JSONDecodeError as error:
            raise PromptBankError(f"Prompt bank file {path} is not valid JSON: {error}.") from None
        return cls.from_dict(data, source=str(path))


def load_prompt_bank(
    bank: str | Path | Mapping[str, Any] | PromptBank, labels: Sequence[str] | None = None
) -> PromptBank:
    """Load a prompt bank from a built-in name (``"fastmri_brain"``), a JSON path, a dict, or pass one through.

    Args:
        bank: the bank or where to find it.
        labels: optional category labels to keep, in this order (see :meth:`PromptBank.select`).
    """
    if isinstance(bank, PromptBank):
        result = bank
    elif isinstance(bank, Mapping):
        result = PromptBank.from_dict(bank)
    elif str(bank) in BUILTIN_BANKS:
        result = PromptBank.from_json(BUILTIN_BANKS[str(bank)])
    else:
        path = Path(bank)
        if not path.is_file():
            raise PromptBankError(
                f"Prompt bank {str(bank)!r} is neither a built-in bank ({sorted(BUILTIN_BANKS)}) nor an existing file."
            )
        result = PromptBank.from_json(path)
    return result.select(labels) if labels is not None else result
