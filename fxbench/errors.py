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
    "UnknownBackendError",
    "ArtifactMissingError",
    "BenchOptionError",
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


class UnknownBackendError(FxbenchError):
    """A backend name that is not in the registry (`fxbench bench --list`)."""


class ArtifactMissingError(FxbenchError):
    """A backend was pointed at an artifact file that is not there."""


class BenchOptionError(FxbenchError):
    """A benchmark or optimize option out of range (device, threads, shapes, budgets, timing)."""
