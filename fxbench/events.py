"""The one event type every job, exporter and the benchmark reports progress with."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Literal

__all__ = ["EventFn", "Status", "no_events", "prefixed", "step"]

Status = Literal["start", "done", "fail", "skip", "warn"]

# (step, status, detail): a step starts, then ends done, failed or skipped with one line saying how;
# "warn" is a step's remark that does not end it (inputs made from the config: the tokenizer is corrupt).
# A plain callable, so that a lambda or a list's append-wrapper is a listener.
EventFn = Callable[[str, Status, str], None]


def no_events(step: str, status: Status, detail: str) -> None:
    pass


def prefixed(events: EventFn, prefix: str) -> EventFn:
    """`events` with every step named `prefix` + step (a search candidate's steps carry its pipeline)."""
    if not prefix:
        return events
    return lambda name, status, detail: events(f"{prefix}{name}", status, detail)


@contextlib.contextmanager
def step(events: EventFn, name: str, timings: dict[str, float]) -> Iterator[dict[str, str]]:
    """Time a step into `timings` and report start / done / fail; the yielded dict carries the done-detail."""
    detail: dict[str, str] = {"detail": ""}
    events(name, "start", "")
    start = time.perf_counter()
    try:
        yield detail
    except BaseException as exc:
        timings[name] = time.perf_counter() - start
        events(name, "fail", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    timings[name] = time.perf_counter() - start
    events(name, "done", detail["detail"])
