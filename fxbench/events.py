"""The one event type every job, exporter and the benchmark reports progress with, and how much to say."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Literal

__all__ = ["EventFn", "Status", "count", "no_events", "prefixed", "set_verbosity", "step", "verbosity"]

Status = Literal["start", "update", "done", "fail", "skip", "warn"]

# (step, status, detail): a step starts, may update, then ends done, failed or skipped with one line
# saying how; "warn" is a step's remark that does not end it (inputs made from the config: the
# tokenizer is corrupt). A start's (and an update's) detail is the step's place in its group, "k/N"
# (pass 3 of 6, candidate 1 of 2, round 2 of 5), or "" where there is no count. A plain callable, so
# that a lambda or a list's append-wrapper is a listener; listeners ignore the statuses they do not know.
EventFn = Callable[[str, Status, str], None]

# How much the command line says: -1 quiet (results and errors only), 0 normal, 1 verbose (library
# warnings, tracebacks of bugs), 2 debug. The CLI sets it from -q / -v; the Python API stays at 0.
_VERBOSITY = 0


def verbosity() -> int:
    return _VERBOSITY


def set_verbosity(level: int) -> None:
    global _VERBOSITY
    _VERBOSITY = max(-1, min(2, int(level)))


def count(k: int, n: int) -> str:
    """The detail of a start event that is the k-th of n (1-based)."""
    return f"{k}/{n}"


def no_events(step: str, status: Status, detail: str) -> None:
    pass


def prefixed(events: EventFn, prefix: str) -> EventFn:
    """`events` with every step named `prefix` + step (a search candidate's steps carry its pipeline)."""
    if not prefix:
        return events
    return lambda name, status, detail: events(f"{prefix}{name}", status, detail)


@contextlib.contextmanager
def step(events: EventFn, name: str, timings: dict[str, float], *, key: str | None = None,
         place: str = "") -> Iterator[dict[str, str]]:
    """Time a step into `timings[key or name]` and report start / done / fail; the yielded dict
    carries the done-detail. `place` is the start's "k/N"."""
    detail: dict[str, str] = {"detail": ""}
    events(name, "start", place)
    start = time.perf_counter()
    try:
        yield detail
    except BaseException as exc:
        timings[key or name] = time.perf_counter() - start
        events(name, "fail", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    timings[key or name] = time.perf_counter() - start
    events(name, "done", detail["detail"])
