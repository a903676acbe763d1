"""From an optimized program to deployable artifacts: the torch.export archive, ONNX, TensorRT, AOTInductor."""

from __future__ import annotations

import importlib
from typing import Any

from fxbench.exporters.base import ARTIFACT_KINDS, Artifact, read_artifacts
from fxbench.exporters.program import load_program, save_program

__all__ = [
    "ARTIFACT_KINDS",
    "TARGETS",
    "Artifact",
    "ExportFailure",
    "ExportOptions",
    "ExportOutcome",
    "ExportSubject",
    "export_artifacts",
    "load_program",
    "parse_targets",
    "preflight",
    "read_artifacts",
    "save_program",
    "target_files",
]

# The export faces pull in onnx, onnxruntime and onnxscript (over a second): loaded on first use,
# so that commands which never export (inspect, passes list) do not pay for them.
_LAZY = {
    "TARGETS": "fxbench.exporters.targets",
    "ExportFailure": "fxbench.exporters.targets",
    "ExportOptions": "fxbench.exporters.targets",
    "ExportOutcome": "fxbench.exporters.targets",
    "export_artifacts": "fxbench.exporters.targets",
    "parse_targets": "fxbench.exporters.targets",
    "preflight": "fxbench.exporters.targets",
    "target_files": "fxbench.exporters.targets",
    "ExportSubject": "fxbench.exporters.checks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
