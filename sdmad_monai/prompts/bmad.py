"""Prompt banks for BMAD (protocol 1 of the paper, Section 4.2): one ``abnormal`` category per dataset.

BMAD is single-category (``good`` vs ``Ungood``), so a BMAD detector has ``K = 1``: normal prompts (the Eq. 4
anchor) and the sign prompts of the dataset's abnormality, under the label :data:`BMAD_CATEGORY` (the datalists of
:func:`sdmad_monai.data.bmad_protocol.prepare_bmad_training` use it). ``bmad.json`` beside this file holds one section
per BMAD dataset (``brainmri``, ``liverct``, ``resc``, ``oct17``, ``chestxray``, ``his``) plus ``generic`` for other
folders::

    {"name": "bmad", "version": "1.0", "label": "abnormal",
     "datasets": {"brainmri": {"aliases": [...], "display_name": "...", "normal": [...], "signs": [...]}, ...}}

A dataset folder name is matched case- and separator-insensitively against the section keys and their aliases
(e.g. ``BrainMRI``, ``brain_mri``, MVFA's ``Brain_AD``, BMAD's ``BraTS2021_slice``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .bank import CategoryPrompts, PromptBank, PromptBankError

__all__ = ["BMAD_BANK_FILE", "BMAD_CATEGORY", "bmad_bank_key", "load_bmad_prompt_bank"]

logger = logging.getLogger(__name__)

#: The shipped multi-dataset BMAD bank.
BMAD_BANK_FILE = Path(__file__).resolve().parent / "bmad.json"
#: The one category label of a BMAD detector.
BMAD_CATEGORY = "abnormal"
_GENERIC = "generic"


def _normalised(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _read(path: Path) -> Mapping[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PromptBankError(f"BMAD prompt bank file {path} does not exist.") from None
    except json.JSONDecodeError as error:
        raise PromptBankError(f"BMAD prompt bank file {path} is not valid JSON: {error}.") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("datasets"), Mapping) or not data["datasets"]:
        raise PromptBankError(f"BMAD prompt bank file {path} must be an object with a non-empty 'datasets' object.")
    return data


def bmad_bank_key(dataset: str, path: str | Path = BMAD_BANK_FILE) -> str:
    """The section of the BMAD bank file used for a dataset folder name (``"generic"`` when none matches).

    Args:
        dataset: dataset folder name (e.g. ``"BrainMRI"``) or path (its last component is used).
        path: BMAD bank file.

    Returns:
        A key of the file's ``datasets``.
    """
    datasets = _read(Path(path))["datasets"]
    name = _normalised(Path(str(dataset)).name)
    for key, section in datasets.items():
        aliases = section.get("aliases", []) if isinstance(section, Mapping) else []
        if name == _normalised(key) or name in {_normalised(a) for a in aliases}:
            return key
    return _GENERIC


def load_bmad_prompt_bank(dataset: str, path: str | Path = BMAD_BANK_FILE) -> PromptBank:
    """The single-category prompt bank of one BMAD dataset.

    Args:
        dataset: dataset folder name (``"BrainMRI"``, ``"LiverCT"``, ``"RESC"``, ``"OCT17"``, ``"ChestXray"``,
            ``"HIS"``, an alias, or any other name for the ``generic`` section) or the folder path.
        path: a bank file in the format of the module docstring (default: the shipped ``bmad.json``).

    Returns:
        :class:`~sdmad_monai.prompts.PromptBank` named ``"bmad-<key>"`` with one category labelled by the file's
        ``label`` (``"abnormal"``).

    Raises:
        PromptBankError: unreadable file, no matching section and no ``generic`` section, or a malformed section.
    """
    path = Path(path)
    data = _read(path)
    key = bmad_bank_key(dataset, path)
    section = data["datasets"].get(key)
    if not isinstance(section, Mapping):
        raise PromptBankError(
            f"BMAD prompt bank {path} has no section for dataset {dataset!r} and no 'generic' section; it has "
            f"{sorted(data['datasets'])}."
        )
    source = f"{path}#{key}"
    for field in ("normal", "signs"):
        if not isinstance(section.get(field), list):
            raise PromptBankError(f"BMAD prompt bank {source}: '{field}' must be a list of prompts.")
    label = str(data.get("label", BMAD_CATEGORY))
    if key == _GENERIC:
        logger.info("No BMAD prompt section matches dataset %r: using the generic one of %s", str(dataset), path)
    return PromptBank(
        name=f"{data.get('name', 'bmad')}-{key}",
        version=str(data.get("version", "0")),
        normal=tuple(section["normal"]),
        categories=(CategoryPrompts(label, str(section.get("display_name", label)), tuple(section["signs"])),),
        description=str(data.get("description", "")),
        source=source,
    )
