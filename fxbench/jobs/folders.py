"""Output folders: which folder is one, and writing into one so that it appears whole or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fxbench.errors import FxbenchError, OutputExistsError
from fxbench.exporters.program import PROGRAM_FILE

__all__ = ["check_output_dir", "output_folder", "read_report", "saved_program", "staged_directory"]


def output_folder(target: object) -> Path | None:
    """`target` as an fxbench output folder, or None: a folder holding what optimize or export
    writes (report.json or model.pt2) and no config.json (which a saved Hugging Face model has)."""
    if not isinstance(target, (str, Path)) or not str(target):
        return None
    path = Path(target).expanduser()
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    return path if (path / "report.json").is_file() or (path / PROGRAM_FILE).is_file() else None


def saved_program(target: str | None, command: str) -> Path | None:
    """The model.pt2 that `target` names (a .pt2 file, or an output folder's), or None for a model
    to load. An output folder without one (an export of a model) is an error naming the fix."""
    if not target:
        return None
    path = Path(target).expanduser()
    if path.is_file() and path.suffix == ".pt2":
        return path
    folder = output_folder(path)
    if folder is None:
        return None
    if not (folder / PROGRAM_FILE).is_file():
        raise FxbenchError(f"{folder} is an fxbench output folder without model.pt2 (an export of a model); {command} the model instead")
    return folder / PROGRAM_FILE


def read_report(folder: Path) -> dict[str, Any]:
    """An output folder's report.json, or one error line saying it is not one."""
    path = Path(folder) / "report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FxbenchError(f"{path} is not an fxbench report ({exc}); point fxbench at an fxbench output folder") from exc


def check_output_dir(path: Path, force: bool) -> None:
    """Refuse a non-empty folder (or a file) at `path` unless `force`."""
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a folder; choose another --output")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise OutputExistsError(f"output folder {path} is not empty; pass --force to replace it or choose another --output")


@contextlib.contextmanager
def staged_directory(path: Path, force: bool = False, *, add_to: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path` to write into; on failure it is deleted, so an
    interrupted run leaves no half-written file. On success it replaces `path` by one rename, or,
    with `add_to`, its files are renamed into the existing folder `path` one by one, report.json
    last (so the report never names a file that is not there yet)."""
    path = Path(path)
    if not add_to:
        check_output_dir(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield staging
        if add_to:
            for f in sorted(staging.iterdir(), key=lambda f: f.name == "report.json"):
                os.replace(f, path / f.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if add_to:
        staging.rmdir()
        return
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        os.replace(path, old)
    os.replace(staging, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
