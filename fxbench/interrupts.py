"""SIGINT and SIGTERM as an exception that unwinds (staged output is removed on the way out), and
the short spans (renaming a finished output into place) that they wait for."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

__all__ = ["Interrupted", "deferred", "install"]

_HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_state = {"deferring": 0, "pending": None, "raised": False}


class Interrupted(BaseException):
    """A signal asked the run to stop. A BaseException, as KeyboardInterrupt is, so that no
    `except Exception` on the way swallows it; exits with the shell's code for it (128 + signal)."""

    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {self.name}")


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state["deferring"]:
        _state["pending"] = _state["pending"] or signum
        return
    if _state["raised"]:
        return  # a second signal while the first unwinds must not cut the clean-up short
    _state["raised"] = True
    raise Interrupted(signum)


def install() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise Interrupted in the main thread; ignore SIGXFSZ, so that
    a file-size limit (ulimit -f) fails the write (EFBIG, one error line) instead of killing the process."""
    _state.update(deferring=0, pending=None, raised=False)
    for sig in _HANDLED:
        signal.signal(sig, _handler)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold signals while the block runs (a few renames that must not stop half-way); one that came
    meanwhile is raised when it ends."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
        signum = _state["pending"]
        if not _state["deferring"] and signum is not None:
            _state["pending"] = None
            _handler(signum, None)
