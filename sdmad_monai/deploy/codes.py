"""How the SR codes each category: standard codes from a JSON file a site can edit, checked against DICOM on load.

The shipped file (:data:`DEFAULT_CODES_PATH`, ``finding_codes.json`` beside this module) codes the six fastMRI+
brain categories::

    {
      "description": "free text, ignored",
      "private_schemes": {"99SDMAD": "what the scheme is"},          # every private scheme used must be declared
      "default_finding_site": {"scheme": "SCT", "value": "12738006", "meaning": "Brain"},
      "categories": {
        "<prompt-bank label>": {
          "finding": {"scheme": ..., "value": ..., "meaning": ...},  # TID 1501 Finding (DCM 121071)
          "finding_site": {...},                                    # optional: default_finding_site
          "note": "free text, ignored"
        }
      }
    }

Which codes are standard here: four of the six findings (SCT Post-surgical anatomy at Skull, SCT Lesion, SCT
Enlarged at Brain ventricle, DCM White Matter T2 Hyperintensity at Cerebral White Matter) and every finding site;
posttreatment change and dural thickening have no code in DICOM PS3.16 and keep the declared private scheme
``99SDMAD`` (code value = the category label). A category of the model that the file does not list gets that
private code too, at the default finding site, with a warning naming it.

Validation on load (:func:`load_finding_codes`), each failure one line naming the file and the entry:

- ``DCM`` codes must be in DICOM PS3.16, with its code meaning (case and spacing aside);
- codes of the other schemes of PS3.16 (``SCT``, ``RADLEX``, ``LN``, ``NCIt``, ...) that DICOM lists must carry one
  of its meanings; an ``SCT`` code DICOM does not list must be a well-formed SNOMED CT concept identifier (digits,
  partition ``00``/``10``, Verhoeff check digit) - its meaning cannot be checked offline and is logged as such;
- a ``99...`` scheme must be declared in ``private_schemes``; any other scheme is refused;
- meanings are at most 64 characters (DICOM LO); two categories may not share a (finding, finding site) pair, so an
  SR reads back to its categories (:func:`sdmad_monai.deploy.sr.read_sr_findings`).

DICOM PS3.16 here is the copy shipped with pydicom (``pydicom.sr.codedict``), so the check needs no network.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_CODES_PATH",
    "PRIVATE_SCHEME",
    "CategoryCodes",
    "CodedTerm",
    "FindingCodes",
    "FindingCodesError",
    "load_finding_codes",
    "is_valid_sctid",
]

logger = logging.getLogger(__name__)

#: The shipped category codes (fastMRI+ brain).
DEFAULT_CODES_PATH = Path(__file__).with_name("finding_codes.json")
#: The private scheme of the categories without a standard code (code value = category label).
PRIVATE_SCHEME = "99SDMAD"
_PRIVATE_SCHEME_NAME = "SD-MAD prompt-bank categories (code value = category label)"
_TOP_KEYS = {"description", "private_schemes", "default_finding_site", "categories"}
_CATEGORY_KEYS = {"finding", "finding_site", "note"}
_CODE_KEYS = {"scheme", "value", "meaning"}


class FindingCodesError(ValueError):
    """A finding-codes file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class CodedTerm:
    """One code: scheme designator, code value, code meaning."""

    scheme: str
    value: str
    meaning: str

    @property
    def key(self) -> tuple[str, str]:
        """``(value, scheme)``: what identifies the code (meanings may be written differently)."""
        return (self.value, self.scheme)

    @property
    def is_private(self) -> bool:
        return self.scheme.startswith("99")

    def to_dict(self) -> dict[str, str]:
        return {"scheme": self.scheme, "value": self.value, "meaning": self.meaning}


@dataclass(frozen=True)
class CategoryCodes:
    """The codes of one category in the SR.

    Attributes:
        label: the prompt-bank category label.
        finding: TID 1501 Finding (DCM 121071).
        finding_site: Finding Site (SCT 363698007).
        listed: ``False`` when the file does not list the category (private fallback code).
    """

    label: str
    finding: CodedTerm
    finding_site: CodedTerm
    listed: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"finding": self.finding.to_dict(), "finding_site": self.finding_site.to_dict()}


@dataclass(frozen=True)
class FindingCodes:
    """A validated finding-codes file (:func:`load_finding_codes`).

    Attributes:
        categories: the listed categories by label.
        default_finding_site: the site of a category whose entry gives none, and of unlisted categories.
        private_schemes: designator -> name of every declared private scheme.
        source: the file it was read from.
    """

    categories: Mapping[str, CategoryCodes]
    default_finding_site: CodedTerm
    private_schemes: Mapping[str, str] = field(default_factory=lambda: {PRIVATE_SCHEME: _PRIVATE_SCHEME_NAME})
    source: str = str(DEFAULT_CODES_PATH)

    def for_category(self, label: str, display_name: str | None = None) -> CategoryCodes:
        """The codes of ``label``; an unlisted category gets its private ``99SDMAD`` code (value = label, meaning
        = display name) at the default finding site."""
        if label in self.categories:
            return self.categories[label]
        return CategoryCodes(
            label, CodedTerm(PRIVATE_SCHEME, label, (display_name or label)[:64]), self.default_finding_site, False
        )

    def resolve(self, labels: Iterable[str], display_names: Iterable[str | None] | None = None) -> list[CategoryCodes]:
        """:meth:`for_category` of each label, warning once per call about the labels the file does not list."""
        labels = list(labels)
        names = list(display_names) if display_names is not None else [None] * len(labels)
        resolved = [self.for_category(label, name) for label, name in zip(labels, names)]
        unlisted = [c.label for c in resolved if not c.listed]
        if unlisted:
            logger.warning(
                "Finding codes %s list no code for %s: coded in the private scheme %s (value = category label).",
                self.source, unlisted, PRIVATE_SCHEME,
            )  # fmt: skip
        return resolved

    def label_of(self, finding: tuple[str, str], finding_site: tuple[str, str] | None) -> str | None:
        """The category whose (finding, finding site) codes these are (``(value, scheme)`` pairs); a private
        ``99SDMAD`` finding of an unlisted category is its label; ``None`` when nothing matches."""
        for codes in self.categories.values():
            if codes.finding.key == finding and (finding_site is None or codes.finding_site.key == finding_site):
                return codes.label
        return finding[0] if finding[1] == PRIVATE_SCHEME else None

    def digest(self, labels: Iterable[str]) -> str:
        """SHA-256 of the codes the categories ``labels`` get: what changes the SR document when the file does."""
        coded = [self.for_category(label).to_dict() | {"label": label} for label in labels]
        return hashlib.sha256(json.dumps(coded, sort_keys=True).encode("utf-8")).hexdigest()

    def declared_schemes(self, used: Iterable[CategoryCodes]) -> dict[str, str]:
        """The private schemes among ``used`` (plus ``99SDMAD``, which the SR's own measurement codes use), with
        their names, for the SR's Coding Scheme Identification Sequence."""
        schemes = {PRIVATE_SCHEME: self.private_schemes.get(PRIVATE_SCHEME, _PRIVATE_SCHEME_NAME)}
        for codes in used:
            for term in (codes.finding, codes.finding_site):
                if term.is_private:
                    schemes[term.scheme] = self.private_schemes.get(term.scheme, _PRIVATE_SCHEME_NAME)
        return schemes


# ------------------------------------------------------------------------------------------------- validation
_VERHOEFF_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]  # fmt: skip
_VERHOEFF_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]  # fmt: skip


def is_valid_sctid(value: str) -> bool:
    """Whether ``value`` is a well-formed SNOMED CT concept identifier: 6-18 digits, no leading zero, concept
    partition ``00`` or ``10`` (the two digits before the check digit) and a valid Verhoeff check digit."""
    if not re.fullmatch(r"[1-9][0-9]{5,17}", value) or value[-3:-1] not in ("00", "10"):
        return False
    check = 0
    for i, digit in enumerate(reversed(value)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[i % 8][int(digit)]]
    return check == 0


@functools.cache
def _dicom_meanings(scheme: str) -> dict[str, frozenset[str]]:
    """Code value -> its meanings in pydicom's copy of DICOM PS3.16, for one scheme ({} for a scheme it lacks)."""
    from pydicom.sr.codedict import codes

    if scheme not in set(codes.schemes()):
        return {}
    table = getattr(codes, scheme)
    meanings: dict[str, set[str]] = {}
    for keyword in dir(table):
        if keyword.startswith("_") or not keyword[:1].isupper():
            continue
        code = getattr(table, keyword)
        meanings.setdefault(str(code.value), set()).add(_normalized(code.meaning))
    return {value: frozenset(m) for value, m in meanings.items()}


def _normalized(meaning: str) -> str:
    meaning = re.sub(r"\s+\((?:finding|disorder|body structure|qualifier value|procedure|morphologic abnormality)\)$",
                     "", meaning.strip())  # fmt: skip
    return re.sub(r"\s+", " ", meaning).casefold()


def _standard_schemes() -> set[str]:
    from pydicom.sr.codedict import codes

    return set(codes.schemes())


def _parse_code(entry: Any, where: str, source: str, private: Mapping[str, str]) -> CodedTerm:
    if not isinstance(entry, Mapping) or set(entry) != _CODE_KEYS:
        raise FindingCodesError(
            f"{source}: {where} must be an object with exactly 'scheme', 'value' and 'meaning', got {entry!r}."
        )
    if not all(isinstance(entry[k], str) and entry[k].strip() for k in _CODE_KEYS):
        raise FindingCodesError(
            f"{source}: {where}: scheme, value and meaning must be non-empty strings, got {entry!r}."
        )
    term = CodedTerm(entry["scheme"].strip(), entry["value"].strip(), entry["meaning"].strip())
    if len(term.meaning) > 64:
        raise FindingCodesError(f"{source}: {where}: the meaning is {len(term.meaning)} characters, DICOM allows 64.")
    if term.is_private:
        if term.scheme not in private:
            raise FindingCodesError(
                f"{source}: {where}: private scheme {term.scheme!r} is not declared in 'private_schemes' "
                f"(declared: {sorted(private)})."
            )
        return term
    if term.scheme not in _standard_schemes():
        raise FindingCodesError(
            f"{source}: {where}: unknown coding scheme {term.scheme!r}; expected one of DICOM PS3.16's "
            f"({', '.join(sorted(_standard_schemes()))}) or a declared private '99...' scheme."
        )
    listed = _dicom_meanings(term.scheme)
    if term.value in listed:
        if _normalized(term.meaning) not in listed[term.value]:
            raise FindingCodesError(
                f"{source}: {where}: {term.scheme} {term.value} means {sorted(listed[term.value])[0]!r} in DICOM "
                f"PS3.16, not {term.meaning!r}."
            )
    elif term.scheme == "DCM":
        raise FindingCodesError(f"{source}: {where}: DCM {term.value} is not a code of DICOM PS3.16.")
    elif term.scheme == "SCT":
        if not is_valid_sctid(term.value):
            raise FindingCodesError(
                f"{source}: {where}: {term.value!r} is not a SNOMED CT concept identifier (digits, concept "
                "partition 00 or 10, Verhoeff check digit)."
            )
        logger.info("%s: %s: SCT %s is not in DICOM PS3.16; its meaning %r is not checked.", source, where,
                    term.value, term.meaning)  # fmt: skip
    else:
        logger.info("%s: %s: %s %s is not in DICOM PS3.16; accepted unchecked.", source, where, term.scheme, term.value)
    return term


def load_finding_codes(path: str | Path | None = None) -> FindingCodes:
    """Read and validate a finding-codes file (format and checks in the module docstring).

    Args:
        path: the file; ``None`` for the shipped :data:`DEFAULT_CODES_PATH`.

    Raises:
        FindingCodesError: the file is missing, not JSON, or an entry is malformed or not a valid code.
    """
    path = Path(path) if path is not None else DEFAULT_CODES_PATH
    source = str(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FindingCodesError(f"Finding-codes file {source} not found.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FindingCodesError(f"{source} is not a readable JSON file: {error}.") from None
    if not isinstance(raw, Mapping):
        raise FindingCodesError(f"{source}: expected a JSON object, got {type(raw).__name__}.")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise FindingCodesError(f"{source}: unknown key(s) {sorted(unknown)}; expected {sorted(_TOP_KEYS)}.")
    if "categories" not in raw or not isinstance(raw["categories"], Mapping):
        raise FindingCodesError(f"{source}: 'categories' must be an object of category label -> codes.")
    private = raw.get("private_schemes", {PRIVATE_SCHEME: _PRIVATE_SCHEME_NAME})
    if not isinstance(private, Mapping) or not all(
        isinstance(k, str) and re.fullmatch(r"99[A-Za-z0-9_]{1,14}", k) and isinstance(v, str) and v.strip()
        for k, v in private.items()
    ):
        raise FindingCodesError(
            f"{source}: 'private_schemes' must map designators '99...' (at most 16 characters) to names, "
            f"got {private!r}."
        )
    private = {PRIVATE_SCHEME: _PRIVATE_SCHEME_NAME, **private}
    site = _parse_code(
        raw.get("default_finding_site", {"scheme": "SCT", "value": "12738006", "meaning": "Brain"}),
        "default_finding_site", source, private,
    )  # fmt: skip
    categories: dict[str, CategoryCodes] = {}
    seen: dict[tuple[tuple[str, str], tuple[str, str]], str] = {}
    for label, entry in raw["categories"].items():
        where = f"category {label!r}"
        if not label.strip():
            raise FindingCodesError(f"{source}: a category label is empty.")
        if not isinstance(entry, Mapping) or "finding" not in entry or set(entry) - _CATEGORY_KEYS:
            raise FindingCodesError(
                f"{source}: {where} must be an object with 'finding' and optionally 'finding_site' and 'note', "
                f"got {entry!r}."
            )
        codes = CategoryCodes(
            label,
            _parse_code(entry["finding"], f"{where} finding", source, private),
            _parse_code(entry["finding_site"], f"{where} finding_site", source, private)
            if "finding_site" in entry else site,
        )  # fmt: skip
        pair = (codes.finding.key, codes.finding_site.key)
        if pair in seen:
            raise FindingCodesError(
                f"{source}: categories {seen[pair]!r} and {label!r} have the same finding and finding site; "
                "an SR could not tell them apart."
            )
        seen[pair] = label
        categories[label] = codes
    return FindingCodes(categories, site, private, source)
