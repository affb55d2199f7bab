"""One clear line per error: which exceptions are the user's to fix, and how a command reports them.

Errors about the input (a missing file, a bad dataset, prompt bank, checkpoint, option or PACS answer) are raised as
``FileNotFoundError``, ``ValueError`` subclasses or the package's own ``RuntimeError`` subclasses, with a message that
names the file or value and says what was expected. A command prints that message as one line and exits with status
1; the full traceback goes to a log file (or to the terminal with ``SDMAD_DEBUG=1``). Anything else is a bug and keeps
its traceback.

Secrets never reach that line or traceback, whatever the exception (a ``requests`` error quoting a URL with
``user:password@``, a header dump with ``Authorization: Bearer ...``): :func:`one_line` and the tracebacks written
here pass through :func:`redact`, the redaction of :mod:`sdmad_monai.deploy.security` (which re-exports it; it lives
here so that this module still imports nothing heavy).

``monai.bundle`` wraps an error raised inside a config expression in two more exceptions whose last lines dump the
expression; :func:`install_bundle_error_hook` (the first ``initialize`` step of the bundle configs) makes such a run
end with the original message instead.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from types import TracebackType
from typing import Any

__all__ = [
    "MissingExtraError",
    "format_traceback",
    "innermost_user_error",
    "install_bundle_error_hook",
    "is_user_error",
    "missing_extra",
    "one_line",
    "redact",
    "register_secrets",
    "require_extra",
    "running_bundle_command",
]

#: ``RuntimeError`` subclasses of the package that are about the input (looked up by module, so that this module
#: imports nothing heavy)
_USER_RUNTIME_ERRORS = {
    "sdmad_monai.networks.checkpoint_io": ("DetectorStateError",),
    "sdmad_monai.networks.backbone": ("WeightsUnavailableError",),
    "sdmad_monai.networks.demo_backbone": ("DemoWeightsError",),
    "sdmad_monai.handlers.resume": ("ResumeMismatchError",),
    "sdmad_monai.sweep": ("SweepFailed",),
    "sdmad_monai.deploy.dicomweb": ("DicomWebError",),
}


class MissingExtraError(ModuleNotFoundError):
    """A feature's optional dependency is not installed; the message names the setup.cfg extra that brings it."""


def missing_extra(module: str, extra: str, feature: str) -> MissingExtraError:
    """The error for ``feature`` needing ``module`` of the ``extra`` (raise it ``from`` the ImportError)."""
    return MissingExtraError(
        f'{feature} needs the {module} package, from the {extra!r} extra: pip install -e ".[{extra}]" in a clone '
        f"(or pip install {module})."
    )


def require_extra(modules: tuple[str, ...], extra: str, feature: str) -> None:
    """Refuse ``feature`` before any work when a module of ``extra`` is missing (``importlib.util.find_spec``: cheap,
    nothing is imported).

    Raises:
        MissingExtraError: the first missing module, naming the extra.
    """
    import importlib.util

    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules, or half-installed
            found = False
        if not found:
            raise missing_extra(module, extra, feature)


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is about the input or the environment (see module docstring), not a bug."""
    if isinstance(error, MissingExtraError):
        return True
    if isinstance(error, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return True
    if isinstance(error, ValueError):
        return True
    for module_name, names in _USER_RUNTIME_ERRORS.items():
        module = sys.modules.get(module_name)
        if module is not None and isinstance(error, tuple(getattr(module, n) for n in names if hasattr(module, n))):
            return True
    return False


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def innermost_user_error(error: BaseException) -> BaseException | None:
    """The first cause in ``error``'s chain (``raise ... from``, or raised while handling) that is a user error."""
    found = [e for e in _chain(error) if is_user_error(e)]
    return found[-1] if found else None


# ----------------------------------------------------------------------------------------------------- redaction
REDACTED = "***"
#: every secret loaded in this process (and its Basic-header form), removed by :func:`redact`
_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@")
_AUTH_HEADER = re.compile(
    r"(?i)((?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?)(?:(basic|bearer|digest|token)\s+)?[^'\"\s,}]+"
)
_BARE_SCHEME = re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/=-]{8,}")


def register_secrets(*secrets: str) -> None:
    """Have :func:`redact` remove these strings (a password, a token) from now on (4 characters or more)."""
    with _SECRETS_LOCK:
        _SECRETS.update(s for s in secrets if s and len(s) >= 4)


def redact(text: Any) -> str:
    """``text`` without URL user info (``https://***@host``), ``Authorization`` header values and any secret loaded
    by :func:`sdmad_monai.deploy.security.load_credentials`."""
    text = str(text)
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{(m.group(2) + ' ') if m.group(2) else ''}{REDACTED}", text)
    return _BARE_SCHEME.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


def one_line(error: BaseException) -> str:
    """The error's message on one line, redacted (:func:`redact`: whatever the exception's type)."""
    return " ".join(redact(error).split()) or type(error).__name__


def format_traceback(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> str:
    """The traceback as Python prints it, redacted (:func:`redact`)."""
    return redact("".join(traceback.format_exception(kind, value, tb)))


def _write_traceback(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> str:
    handle, path = tempfile.mkstemp(prefix=f"sdmad-error-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log")
    with os.fdopen(handle, "w") as stream:
        stream.write(format_traceback(kind, value, tb))
    return path


def running_bundle_command(argv: list[str] | None = None) -> bool:
    """Whether this process is ``python -m monai.bundle run ...`` (not a ``ConfigWorkflow`` built in Python)."""
    argv = list(sys.argv if argv is None else argv)
    launcher = os.path.normpath(argv[0]) if argv else ""
    return launcher.endswith(os.path.join("monai", "bundle", "__main__.py")) and argv[1:2] == ["run"]


def install_bundle_error_hook() -> None:
    """Make a ``python -m monai.bundle run ...`` command that fails on a user error end with one line on stderr
    (``sdmad: error: <message> (full traceback: <file>)``) and exit status 1. Other errors (and every error with
    ``SDMAD_DEBUG=1``) print their whole traceback, redacted; any other program (a ``ConfigWorkflow`` built in
    Python) is untouched and raises as usual."""

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        error = innermost_user_error(value)
        if error is None or os.environ.get("SDMAD_DEBUG"):
            sys.stderr.write(format_traceback(kind, value, tb))
            sys.stderr.flush()
            return
        path = _write_traceback(kind, value, tb)
        print(f"sdmad: error: {one_line(error)} (full traceback: {path}; SDMAD_DEBUG=1 shows it)", file=sys.stderr)
        sys.stderr.flush()  # Python then exits with status 1

    if running_bundle_command():
        sys.excepthook = hook
