"""Small shared helpers: atomic file writes.

Readers never see a half-written file: they see the old one or the complete new one. Files get the permissions the
process's umask gives ordinary files (not ``mkstemp``'s private 0600).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "current_umask",
    "ensure_writable_folder",
    "json_safe",
]


def current_umask() -> int:
    """The process's umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically, on error it is removed.

    For writers that need a file name (``torch.save``, ``savefig``); :func:`atomic_write_bytes` for bytes in memory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        os.chmod(temporary, 0o666 & ~current_umask())
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def ensure_writable_folder(path: str | os.PathLike, option: str = "output_dir") -> Path:
    """Check, before any long work, that ``path`` is a folder files can be written into, or can be created as one
    (nothing is created here: a run that then fails on its input leaves no empty folder behind).

    Raises:
        NotADirectoryError: ``path`` or one of its parents is a file.
        PermissionError: the folder (or the existing parent it would be created in) is not writable.
    """
    folder = Path(path)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(
            f"{option} {folder}: {existing} is a file, not a folder; choose a folder for the outputs."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == folder else f" (it would be created in {existing})"
        raise PermissionError(f"{option} {folder} is not writable{where}; choose a folder you can write to.")
    return folder


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, flushed to disk before the rename; its folder is created if needed."""
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, infinity) replaced by ``None``: valid JSON (``null``, "undefined")
    instead of the bare ``NaN`` Python writes by default, which other JSON readers refuse."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {str(k): json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented, valid JSON (see :func:`json_safe`) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def distributed_run() -> bool:
    """Whether this process is one of several of an initialised ``torch.distributed`` run (torchrun)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
