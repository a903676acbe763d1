"""The optimized program as a torch.export archive (`model.pt2`), saved and loaded back."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.export import ExportedProgram

import fxbench.passes._quantize  # noqa: F401 - the quantize ops a saved program may call must exist before it loads

__all__ = ["PROGRAM_FILE", "load_program", "save_program"]

PROGRAM_FILE = "model.pt2"  # the name in an output folder


def save_program(program: ExportedProgram, path: Path) -> Path:
    """Write `program` with torch.export.save; it loads with torch.export.load and runs."""
    path = Path(path)
    torch.export.save(program, str(path))
    return path


def load_program(path: Path) -> ExportedProgram:
    return torch.export.load(str(path))
