"""Output folders: which folder is one, and writing into one so that it appears whole or not at all,
by one run at a time."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fxbench.errors import FxbenchError, OutputExistsError, write_error
from fxbench.exporters.program import PROGRAM_FILE
from fxbench.interrupts import deferred

__all__ = ["check_output_dir", "output_folder", "output_lock", "read_report", "saved_program", "staged_directory"]


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


# Beside an output folder NAME, while a run writes it: .NAME.lock (its lock), .NAME.<pid>.partial
# (what the run writes) and, for the instant of a --force replacement, .NAME.<pid>.old.
def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _scratch(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{kind}")


def _leftovers(path: Path, kind: str) -> list[Path]:
    pattern = re.compile(re.escape(f".{path.name}.") + r"\d+\." + kind + "$")
    try:
        return [p for p in path.parent.iterdir() if pattern.match(p.name)]
    except OSError:
        return []


def _clean_leftovers(path: Path) -> None:
    """What a killed run left beside `path` (only a lock holder calls this, so no live run owns it):
    its partial folders are removed; an `.old` folder is the previous output if the run died
    between the two renames of a --force replacement, and is put back when `path` is missing."""
    for stale in _leftovers(path, "partial"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in _leftovers(path, "old"):
        if not path.exists():
            with contextlib.suppress(OSError):
                os.rename(old, path)
        shutil.rmtree(old, ignore_errors=True)


_held: dict[Path, tuple[int, int]] = {}  # lock path -> (fd, depth): the locks this process holds


def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        pid = ""
    return f"another fxbench run (pid {pid})" if pid.isdigit() else "another fxbench run"


def _made_parents(path: Path) -> list[Path]:
    """Create `path`'s missing parents; the ones created, deepest first (removed again on failure)."""
    missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    return missing


@contextlib.contextmanager
def output_lock(path: Path) -> Iterator[None]:
    """Hold the lock of the output folder `path` while the block runs: a second fxbench run that
    writes the same folder is refused at once, in one line, instead of replacing this one's output.

    The lock is an flock on `.NAME.lock` beside the folder, so a killed run's lock goes with its
    process; the next holder removes the dead run's leftovers. Taking it also proves the folder's
    parent writable before any model is loaded. Re-entrant within a process.
    """
    path = Path(path).absolute()
    lock = _lock_path(path)
    if lock in _held:
        fd, depth = _held[lock]
        _held[lock] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[lock]
            _held[lock] = (fd, depth - 1)
        return
    try:
        made = _made_parents(path)
    except OSError as exc:
        raise (write_error(exc, path.parent) or exc) from exc
    try:
        fd = _acquire(lock, path)
    except BaseException:
        for parent in made:
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    _held[lock] = (fd, 1)
    try:
        _clean_leftovers(path)
        yield
    finally:
        del _held[lock]
        with contextlib.suppress(OSError):
            os.unlink(lock)  # before the unlock: a run that opened it meanwhile sees it gone and retries
        os.close(fd)
        for parent in made:
            if not path.exists():
                with contextlib.suppress(OSError):
                    parent.rmdir()


def _acquire(lock: Path, path: Path) -> int:
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise (write_error(exc, path.parent) or exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputExistsError(
                f"{_holder(lock)} is writing {path}; wait for it to finish or choose another --output"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # the holder removed the file between our open and our lock: take the new one


def _commit(staging: Path, path: Path, force: bool) -> None:
    """Rename the finished `staging` into `path`. Without `force` the rename itself refuses a
    folder that is there and not empty (whoever made it meanwhile); with `force` the old output
    moves aside first and goes only once the new one is in place."""
    with deferred():
        if force and path.exists():
            old = _scratch(path, "old")
            os.rename(path, old)
            os.rename(staging, path)
            shutil.rmtree(old, ignore_errors=True)
            return
        try:
            os.rename(staging, path)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise OutputExistsError(
                    f"{path} appeared while this run was writing it; pass --force to replace it or choose another --output"
                ) from exc
            raise


@contextlib.contextmanager
def staged_directory(path: Path, force: bool = False, *, add_to: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path` to write into, under `path`'s lock; on failure (an
    error, a full disk, SIGINT/SIGTERM) it is deleted, so an interrupted run leaves no half-written
    file. On success it replaces `path` by one rename, or, with `add_to`, its files are renamed into
    the existing folder `path` one by one, report.json last (so the report never names a file
    that is not there yet)."""
    path = Path(path)
    with output_lock(path):
        if not add_to:
            check_output_dir(path, force)
        staging = _scratch(path, "partial")
        try:
            staging.mkdir()
        except OSError as exc:
            raise (write_error(exc, path.parent) or exc) from exc
        try:
            yield staging
            if add_to:
                with deferred():
                    for f in sorted(staging.iterdir(), key=lambda f: f.name == "report.json"):
                        os.replace(f, path / f.name)
                staging.rmdir()
            else:
                _commit(staging, path, force)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            mapped = write_error(exc, path)
            if mapped is None:
                raise
            raise mapped from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
