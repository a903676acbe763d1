"""Errors a user can cause and fix: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

import errno
import os
import sys
import traceback
from pathlib import Path

__all__ = [
    "FxbenchError",
    "ModelLoadError",
    "CaptureError",
    "PassOptionError",
    "UnknownPassError",
    "VerificationError",
    "OutputExistsError",
    "OutputWriteError",
    "ExportError",
    "BackendUnavailableError",
    "UnknownBackendError",
    "ArtifactMissingError",
    "BenchOptionError",
    "StageError",
    "one_line",
    "show_traceback",
    "verbose",
    "write_error",
]


class FxbenchError(Exception):
    """Base class; the message is one line that names the fix."""

    exit_code = 2


class ModelLoadError(FxbenchError):
    pass


class CaptureError(FxbenchError):
    pass


class UnknownPassError(FxbenchError):
    pass


class PassOptionError(FxbenchError):
    pass


class VerificationError(FxbenchError):
    exit_code = 3


class OutputExistsError(FxbenchError):
    pass


class OutputWriteError(FxbenchError):
    """The output could not be written: the disk is full, read-only, or not ours to write."""

    exit_code = 4


class ExportError(FxbenchError):
    pass


class BackendUnavailableError(FxbenchError):
    pass


class UnknownBackendError(FxbenchError):
    """A backend name that is not in the registry (`fxbench bench --list`)."""


class ArtifactMissingError(FxbenchError):
    """A backend was pointed at an artifact file that is not there."""


class BenchOptionError(FxbenchError):
    """A benchmark or optimize option out of range (device, threads, shapes, budgets, timing)."""


class StageError(FxbenchError):
    """A stage (save, an exporter, ...) failed on this model in a way fxbench did not foresee: the
    line names the stage, the op and the model; the traceback is shown under -v."""

    exit_code = 1


def verbose() -> bool:
    """Whether tracebacks are shown (`fxbench -v`, or FXBENCH_VERBOSE=1 in the environment)."""
    return os.environ.get("FXBENCH_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on")


def show_traceback(exc: BaseException) -> None:
    """Under -v, the traceback of an error that becomes one line (raised or recorded); else nothing."""
    if verbose():
        traceback.print_exception(exc, file=sys.stderr)


def one_line(exc: BaseException, limit: int = 240) -> str:
    """`Type: first line of the message`, the way an unexpected exception is named in one line."""
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {first[:limit]}" if first else type(exc).__name__


_WRITE_ERRNOS = {
    errno.ENOSPC: ("no space left on the device", "free some space or choose another --output"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space or choose another --output"),
    errno.EFBIG: ("the file exceeds the file-size limit (ulimit -f)", "raise the limit or choose another --output"),
    errno.EROFS: ("the file system is read-only", "choose a writable --output"),
    errno.EACCES: ("permission denied", "choose a writable --output"),
    errno.EPERM: ("operation not permitted", "choose a writable --output"),
}


def write_error(exc: BaseException, where: Path | str | None = None) -> OutputWriteError | None:
    """The one line for an OSError that says the disk cannot take the output (full, read-only, not
    ours), or None for any other error. `where` names what was being written when the error does not."""
    if not isinstance(exc, OSError) or exc.errno not in _WRITE_ERRNOS:
        return None
    reason, fix = _WRITE_ERRNOS[exc.errno]
    target = exc.filename or where
    return OutputWriteError(f"cannot write {target if target else 'the output'}: {reason}; {fix}")
