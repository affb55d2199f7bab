"""Bundle overrides checked before any work: an unknown key or a value of the wrong type is refused in one line.

``python -m monai.bundle run training --config_file configs/train.json --max_epoch 2`` would otherwise add a new,
unused key ``max_epoch`` and train all 40 epochs; ``--text_adapter false`` would pass the text ``"false"``, which is
true. :func:`check_overrides` compares every override with the config files it overrides: the id must exist (the
closest valid id is suggested) and the value must have the type of the value it replaces (an ``int`` for an ``int``,
a number for a ``float``, ``True``/``False`` for a ``bool``, a list for a list; ``null`` and ``$`` expression
defaults take anything, and ``None`` or an expression is accepted as a value). The bundle configs call
:func:`check_command_line_overrides` first thing in ``initialize``; ``sdmad sweep`` calls :func:`check_overrides`
before it starts any seed.
"""

from __future__ import annotations

import difflib
import inspect
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import running_bundle_command

__all__ = ["BundleOptionError", "check_command_line_overrides", "check_overrides", "parse_override_value"]

#: what a bundle run's own options are (not config ids): ``monai.bundle.scripts.run``'s parameters and those
#: ``ConfigWorkflow`` takes as keywords
_RUN_OPTIONS = ("workflow_type", "workflow_name", "properties_path")


class BundleOptionError(ValueError):
    """An override names no config id of the bundle, or its value has the wrong type."""


def parse_override_value(text: str) -> Any:
    """An override value as ``monai.bundle run`` receives it from its command line (``fire``'s rule)."""
    from fire.parser import DefaultParseValue

    return DefaultParseValue(text)


def _lookup(config: Any, key: str) -> tuple[bool, Any, list[str]]:
    """Whether ``key`` (``a#b#0``) exists in ``config``, its value, and the valid names at the level it failed."""
    node = config
    for part in key.split("#"):
        if isinstance(node, Mapping):
            if part not in node:
                return False, None, [str(k) for k in node]
            node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return False, None, [str(i) for i in range(len(node))]
            node = node[int(part)]
        else:
            return False, None, []
    return True, node, []


def _type_problem(default: Any, value: Any) -> str | None:
    """Why ``value`` cannot replace ``default``, or ``None`` when it can."""
    if default is None or (isinstance(default, str) and default.startswith(("$", "@", "%"))):
        return None
    if value is None or (isinstance(value, str) and value.startswith(("$", "@", "%"))):
        return None  # null (e.g. --slices None: every slice), or an expression or reference evaluated by the bundle
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "True or False"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if isinstance(default, (list, tuple)):
        return None if isinstance(value, (list, tuple)) else "a list, e.g. [0,5,10]"
    if isinstance(default, Mapping):
        return None if isinstance(value, Mapping) else "a mapping, e.g. {'key': 1}"
    return None


def check_overrides(config_files: str | Sequence[str], overrides: Mapping[str, Any]) -> None:
    """Refuse overrides that name no id of the merged ``config_files`` or whose value has the wrong type.

    Args:
        config_files: the bundle config file(s), merged in order as ``monai.bundle`` does.
        overrides: id -> value as the bundle receives it (see :func:`parse_override_value`).

    Raises:
        BundleOptionError: with the id, the closest valid one, or the type expected.
    """
    from monai.bundle import ConfigParser

    files = [config_files] if isinstance(config_files, (str, os.PathLike)) else list(config_files)
    config = ConfigParser.load_config_files(files)
    names = ", ".join(str(f) for f in files)
    for key, value in overrides.items():
        found, default, siblings = _lookup(config, str(key))
        if not found:
            leaf = str(key).split("#")[-1]
            close = difflib.get_close_matches(leaf, siblings, n=1)
            prefix = "#".join(str(key).split("#")[:-1])
            hint = f"did you mean --{prefix + '#' if prefix else ''}{close[0]}? " if close else ""
            raise BundleOptionError(f"--{key}: no such setting in {names}{'; ' + hint.strip() if hint else '.'}")
        problem = _type_problem(default, value)
        if problem is not None:
            raise BundleOptionError(f"--{key} {value!r}: expected {problem} (the default is {default!r}).")


def _command_line_overrides(argv: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """The config file(s) and overrides of a ``python -m monai.bundle run [id] --key value ...`` command line."""
    from monai.bundle.scripts import run

    own = set(inspect.signature(run).parameters) | set(_RUN_OPTIONS)
    options: dict[str, Any] = {}
    index = 2
    while index < len(argv):
        arg = argv[index]
        index += 1
        if not arg.startswith("--"):
            continue
        name, has_value, text = arg[2:].partition("=")
        if not has_value:
            if index < len(argv) and not argv[index].startswith("--"):
                text = argv[index]
                index += 1
            else:
                text = "True"  # a bare flag, as fire reads it
        options[name] = parse_override_value(text)
    config_file = options.get("config_file")
    return config_file, {k: v for k, v in options.items() if k not in own}


def check_command_line_overrides(argv: Sequence[str] | None = None) -> None:
    """Check the overrides of the running ``python -m monai.bundle run ...`` command (a no-op in any other program,
    e.g. a ``ConfigWorkflow`` built in Python, whose overrides are the caller's own keywords).

    Raises:
        BundleOptionError: see :func:`check_overrides`.
    """
    argv = list(sys.argv if argv is None else argv)
    if not running_bundle_command(argv):
        return
    config_file, overrides = _command_line_overrides(argv)
    if config_file and overrides:
        check_overrides(config_file, overrides)
