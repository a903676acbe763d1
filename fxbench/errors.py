"""Errors a user can cause and fix: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

__all__ = [
    "FxbenchError",
    "ModelLoadError",
    "CaptureError",
    "PassOptionError",
    "UnknownPassError",
    "VerificationError",
    "OutputExistsError",
    "ExportError",
    "BackendUnavailableError",
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


class ExportError(FxbenchError):
    pass


class BackendUnavailableError(FxbenchError):
    pass
