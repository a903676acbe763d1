"""From an optimized program to deployable artifacts: the torch.export archive, ONNX, TensorRT, AOTInductor."""

from __future__ import annotations

import importlib
from typing import Any

from fxbench.exporters.base import ARTIFACT_KINDS, Artifact, read_artifacts
from fxbench.exporters.program import PROGRAM_FILE, load_program, save_program
from fxbench.exporters.targets import (
    TARGETS,
    ExportContext,
    ExportTarget,
    device_targets,
    parse_targets,
    preflight,
    register_target,
    target_file,
    target_files,
    target_names,
)

__all__ = [
    "ARTIFACT_KINDS",
    "PROGRAM_FILE",
    "TARGETS",
    "Artifact",
    "ExportContext",
    "ExportFailure",
    "ExportOptions",
    "ExportOutcome",
    "ExportSubject",
    "ExportTarget",
    "device_targets",
    "export_artifacts",
    "load_program",
    "parse_targets",
    "preflight",
    "read_artifacts",
    "register_target",
    "save_program",
    "target_file",
    "target_files",
    "target_names",
]

# The export faces pull in onnx, onnxruntime and onnxscript (over a second): loaded on first use,
# so that commands which never export (inspect, passes list) do not pay for them. The target
# table is light (its makers import their exporters when called).
_LAZY = {
    "ExportFailure": "fxbench.exporters.export",
    "ExportOptions": "fxbench.exporters.export",
    "ExportOutcome": "fxbench.exporters.export",
    "export_artifacts": "fxbench.exporters.export",
    "ExportSubject": "fxbench.exporters.checks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
