"""The optimized program as a torch.export archive (`model.pt2`), saved and loaded back."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from torch.export import ExportedProgram

from fxbench.errors import ModelLoadError, one_line
from fxbench.exporters.storage import ensure_space, guarded_file, program_bytes

__all__ = ["PROGRAM_FILE", "load_program", "save_program"]

PROGRAM_FILE = "model.pt2"  # the name in an output folder
_ARCHIVE_SLACK = 2**20  # the serialized graph, the signature and the zip directory beside the weights


def save_program(program: ExportedProgram, path: Path) -> Path:
    """Write `program` with torch.export.save; it loads with torch.export.load and runs. A disk
    that cannot take it is one error line, before the write where the space is measurable."""
    path = Path(path)
    ensure_space(path.parent, program_bytes(program) + _ARCHIVE_SLACK, path.name)
    with guarded_file(path, path.name) as f:
        torch.export.save(program, f)
    return path


def _check_archive(path: Path) -> None:
    """A whole zip archive with every member's CRC right, checked before torch's C++ reader sees it."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot read {path}: it is not a whole torch.export archive ({one_line(exc, 120)}); it is truncated or "
            f"corrupt: run fxbench optimize again to write it anew"
        ) from exc
    if bad is not None:
        raise ModelLoadError(f"cannot read {path}: its member {bad} is corrupt (CRC mismatch); run fxbench optimize again to write it anew")


def load_program(path: Path) -> ExportedProgram:
    """The program saved at `path`; a truncated, zeroed or foreign file is one error line."""
    path = Path(path)
    _check_archive(path)
    try:
        return torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - the deserializer raises many types; all mean an unreadable file
        raise ModelLoadError(
            f"cannot load {path} as a torch.export program ({one_line(exc, 160)}); it is corrupt or was saved by an "
            f"incompatible torch (this is {torch.__version__}): run fxbench optimize again to write it anew"
        ) from exc
