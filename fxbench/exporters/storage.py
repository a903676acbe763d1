"""Writing artifacts so that a full disk or a file-size limit is one error line: the space is
checked before a write, and torch's C++ archive writer never sees the disk's error."""

from __future__ import annotations

import contextlib
import io
import resource
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fxbench.errors import OutputWriteError, write_error

__all__ = ["GuardedFile", "ensure_space", "guarded_file", "program_bytes"]

_MIB = 2**20


def program_bytes(program: Any) -> int:
    """The bytes of an ExportedProgram's weights (parameters, buffers, constants): what its archive
    holds, less the serialized graph."""
    tensors = {**dict(program.state_dict), **dict(getattr(program, "constants", {}) or {})}
    seen: set[int] = set()
    total = 0
    for t in tensors.values():
        if not hasattr(t, "untyped_storage") or t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def ensure_space(folder: Path, needed: int, what: str) -> None:
    """Refuse, in one line, to start writing `what` (about `needed` bytes) into `folder` when the
    file system has less free space, or the file-size limit (ulimit -f) is lower."""
    folder = Path(folder)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # not measurable here (some network file systems): the write itself will tell
    if needed > free:
        raise OutputWriteError(
            f"not enough space for {what} in {folder}: about {needed / _MIB:.1f} MiB needed, {free / _MIB:.1f} MiB free; "
            f"free some space or choose another --output"
        )
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and needed > limit:
        raise OutputWriteError(
            f"{what} (about {needed / _MIB:.1f} MiB) exceeds the file-size limit (ulimit -f) of {limit / _MIB:.1f} MiB; "
            f"raise the limit"
        )


class GuardedFile(io.RawIOBase):
    """A file for a C++ writer (torch's PyTorchStreamWriter) to write through. A failed write
    (ENOSPC, EFBIG) is kept, not raised into the writer: an error there makes its destructor throw
    again and abort the process ('inline_container.cc: unexpected pos', 'basic_ios::clear')."""

    def __init__(self, file: Any):
        super().__init__()
        self.file = file
        self.error: OSError | None = None
        self.position = 0  # what the writer believes it wrote, whether or not the disk took it

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.error is None:
            try:
                self.position = self.file.seek(offset, whence)
                return self.position
            except OSError as exc:
                self.error = exc
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position}.get(whence, self.position)
        self.position = base + offset
        return self.position

    def write(self, data: Any) -> int:
        size = len(memoryview(data).cast("B"))
        if self.error is None:
            try:
                self.file.write(data)
            except OSError as exc:
                self.error = exc
        self.position += size
        return size

    def flush(self) -> None:
        if self.error is None:
            try:
                self.file.flush()
            except OSError as exc:
                self.error = exc


@contextlib.contextmanager
def guarded_file(path: Path, what: str) -> Iterator[GuardedFile]:
    """Open `path` for a C++ writer (see GuardedFile); when the writer is done, a write that failed
    is raised as one error line and the partial file is removed."""
    path = Path(path)
    try:
        raw = open(path, "wb")  # noqa: SIM115 - closed below, after the writer is done
    except OSError as exc:
        raise (write_error(exc, path) or exc) from exc
    guarded = GuardedFile(raw)
    try:
        yield guarded
        guarded.flush()
        try:
            raw.close()
        except OSError as exc:
            guarded.error = guarded.error or exc
    except BaseException:
        raw.close() if not raw.closed else None
        path.unlink(missing_ok=True)
        raise
    if guarded.error is not None:
        path.unlink(missing_ok=True)
        raise (write_error(guarded.error, path) or OutputWriteError(f"cannot write {what} to {path}: {guarded.error}")) from guarded.error
