"""The measurement harness: warm-up rules, timed runs (wall clock, and CUDA events on a GPU),
latency statistics and peak memory, the way trtexec, triton's do_bench and optimum-benchmark do it."""

from __future__ import annotations

import gc
import math
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from fxbench.errors import BenchOptionError

__all__ = [
    "DEFAULT_ROUNDS",
    "GROSS_SPREAD",
    "NOISY_SPREAD",
    "LatencyStats",
    "Measure",
    "MemoryRecord",
    "Timing",
    "Warmup",
    "WarmupRecord",
    "clearly_faster",
    "first_call",
    "peak_memory",
    "time_runs",
    "timed_runs",
    "warm_up",
]


@dataclass(frozen=True)
class Warmup:
    """When warm-up is over.

    The first call is timed on its own (it compiles, autotunes, builds engines or captures graphs).
    Then at least `iters` runs and at least `seconds` of running, and until the runs have stopped
    getting faster: the median of the last `window` runs is no more than `tolerance` faster than the
    median of the `window` before (lazy autotuning and CUDA-graph recording show as early runs that
    are slower). `max_seconds` ends warm-up whatever the trend; the record says whether it was steady.
    """

    iters: int = 10
    seconds: float = 0.5
    window: int = 5
    tolerance: float = 0.2
    max_seconds: float = 120.0

    def __post_init__(self) -> None:
        if self.iters < 0 or self.seconds < 0 or self.window < 1 or self.tolerance < 0 or self.max_seconds < self.seconds:
            raise BenchOptionError(f"bad warm-up {self}: counts and times must be >= 0 and max_seconds >= seconds")

    def steady(self, times: list[float]) -> bool | None:
        """Whether the warm-up runs so far (first call excluded) have stopped getting faster; None
        while there are fewer than two windows of runs to compare."""
        w = self.window
        if len(times) < 2 * w:
            return None
        last, before = statistics.median(times[-w:]), statistics.median(times[-2 * w : -w])
        return last >= before / (1.0 + self.tolerance)

    def done(self, times: list[float], elapsed: float) -> bool:
        if elapsed >= self.max_seconds:
            return True
        if len(times) < self.iters or elapsed < self.seconds:
            return False
        # Fewer runs than the trend needs: the caller asked for a short warm-up; honour the count.
        return self.steady(times) is not False


# Interleaved rounds by default: every backend of a run sees the same slow minutes.
DEFAULT_ROUNDS = 5


@dataclass(frozen=True)
class Measure:
    """How many timed runs: exactly `iters` when it is set, else for `seconds` (at least
    `min_iters`, at most `max_iters`), per backend and shape.

    `rounds` > 1 (the default, 5) interleaves the backends: all of them are loaded and warmed up,
    then each is timed for 1/rounds of its runs in turn, `rounds` times over. A machine whose speed
    drifts (other jobs, clock changes, a noisy neighbour on a VM) then slows every backend alike,
    and the ratios between them hold; one after another, a slow minute lands on whichever backend
    it hits. `rounds=1` times one backend after another (one loaded at a time, less memory).
    """

    iters: int | None = None
    seconds: float = 2.0
    min_iters: int = 10
    max_iters: int = 1_000_000
    rounds: int = DEFAULT_ROUNDS

    def __post_init__(self) -> None:
        if self.iters is not None and self.iters < 1:
            raise BenchOptionError(f"--iters must be at least 1, not {self.iters}")
        if self.iters is None and not self.seconds > 0:
            raise BenchOptionError(f"--time must be positive, not {self.seconds}")
        if self.min_iters < 1 or self.max_iters < self.min_iters:
            raise BenchOptionError("min_iters must be at least 1 and at most max_iters")
        if self.rounds < 1:
            raise BenchOptionError(f"--rounds must be at least 1, not {self.rounds}")

    def per_round(self) -> Measure:
        """One round's share of the runs (every round times at least one run)."""
        if self.rounds == 1:
            return self
        share = lambda n: max(1, math.ceil(n / self.rounds))  # noqa: E731
        return Measure(iters=share(self.iters) if self.iters is not None else None, seconds=self.seconds / self.rounds,
                       min_iters=share(self.min_iters), max_iters=share(self.max_iters), rounds=1)

    def share(self, index: int) -> Measure | None:
        """Round `index`'s share of the runs: exact counts (10 runs in 3 rounds: 4, 3, 3), time
        split evenly; None for a round left without a run (fewer runs than rounds)."""
        if self.rounds == 1:
            return self

        def part(n: int) -> int:
            return n // self.rounds + (1 if index < n % self.rounds else 0)

        if self.iters is not None:
            n = part(self.iters)
            return Measure(iters=n, rounds=1) if n > 0 else None
        return Measure(seconds=self.seconds / self.rounds, min_iters=max(1, part(self.min_iters)),
                       max_iters=max(1, part(self.max_iters)), rounds=1)

    def done(self, count: int, elapsed: float) -> bool:
        if self.iters is not None:
            return count >= self.iters
        return count >= self.max_iters or (count >= self.min_iters and elapsed >= self.seconds)


# torch.utils.benchmark's judgement of a measurement: an interquartile range above 10% of the median
# "suggests significant environmental influence" (its _IQR_WARN_THRESHOLD); above 25% it is gross.
NOISY_SPREAD = 0.10
GROSS_SPREAD = 0.25


@dataclass(frozen=True)
class LatencyStats:
    """Statistics of per-run latencies, in milliseconds; throughput in samples per second.

    Percentiles interpolate linearly between ranks (numpy's default, as optimum-benchmark);
    `std_ms` is the population standard deviation (ddof=0, as numpy.std). `spread` is the
    interquartile range over the median, the noise measure torch.utils.benchmark warns on; the
    median's 95% confidence half-width is a box plot's notch, 1.57 x IQR / sqrt(count) (McGill,
    Tukey and Larsen 1978): two medians whose notches do not overlap differ beyond the noise.
    """

    count: int
    mean_ms: float
    std_ms: float
    median_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    throughput: float  # samples/s: batch / mean latency
    p25_ms: float = math.nan
    p75_ms: float = math.nan
    p95_ms: float = math.nan

    @classmethod
    def from_seconds(cls, samples: list[float], batch: int) -> LatencyStats:
        if not samples:
            raise ValueError("no samples")
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        mean = float(ms.mean())
        p25, p50, p75, p90, p95, p99 = (float(v) for v in np.percentile(ms, [25, 50, 75, 90, 95, 99]))
        return cls(
            count=int(ms.size), mean_ms=mean, std_ms=float(ms.std()), median_ms=p50, p90_ms=p90, p99_ms=p99,
            min_ms=float(ms.min()), max_ms=float(ms.max()), throughput=batch * 1e3 / mean if mean > 0 else math.inf,
            p25_ms=p25, p75_ms=p75, p95_ms=p95,
        )

    @property
    def iqr_ms(self) -> float:
        return self.p75_ms - self.p25_ms

    @property
    def spread(self) -> float:
        """IQR / median: 0.1 and above is noisy by torch.utils.benchmark's rule."""
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else math.inf

    @property
    def noisy(self) -> bool:
        return not self.spread < NOISY_SPREAD

    @property
    def median_ci_ms(self) -> float:
        """Half-width of the median's 95% confidence interval (a box plot's notch)."""
        return 1.57 * self.iqr_ms / math.sqrt(self.count)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "iqr_ms": self.iqr_ms, "spread": self.spread, "noisy": self.noisy, "median_ci_ms": self.median_ci_ms}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyStats:
        names = {f.name for f in fields(cls)}
        return cls(**{k: (math.inf if v is None else v) for k, v in data.items() if k in names})


def clearly_faster(a: LatencyStats, b: LatencyStats) -> bool:
    """Whether `a`'s median is below `b`'s by more than the noise: their notches do not overlap."""
    return a.median_ms + a.median_ci_ms < b.median_ms - b.median_ci_ms


@dataclass(frozen=True)
class WarmupRecord:
    first_call_s: float  # the first call alone: compilation, autotuning, engine build, graph capture
    runs: int  # warm-up runs after the first call
    seconds: float
    steady: bool | None  # False: max_seconds ended warm-up while runs were still getting faster; None: too few runs to tell

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Timing:
    """Raw per-run times of the timed runs, in seconds: host wall clock and, on a GPU, CUDA events."""

    wall: list[float]
    device: list[float] | None
    warmup: WarmupRecord


def _now() -> float:
    return time.perf_counter()


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The collector stays out of the timed loop (as timeit does): a collection inside one run
    would show as a latency outlier that belongs to no backend. The young generations are swept
    first (what the runs before left); a full collection walks every object of the loaded programs
    and costs ~0.5 s on a busy 2-core host, per call, which is several per backend."""
    was = gc.isenabled()
    gc.collect(1)
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def first_call(step: Callable[[], object], *, device: str) -> float:
    """Run `step` once, synchronized, and return its wall time: the call that compiles, autotunes,
    builds engines or records graphs, kept apart from every statistic."""
    sync: Callable[[], None] = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = _now()
    step()
    sync()
    return _now() - t0


def warm_up(step: Callable[[], object], *, device: str, warmup: Warmup, first_call_s: float | None = None) -> WarmupRecord:
    """Run `step` until `warmup` is done (its first call too, unless the caller made it: `first_call_s`)."""
    sync: Callable[[], None] = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with _gc_paused():
        first = first_call(step, device=device) if first_call_s is None else first_call_s
        warm_times: list[float] = []
        start = _now()
        while not warmup.done(warm_times, _now() - start):
            t = _now()
            step()
            sync()
            warm_times.append(_now() - t)
        return WarmupRecord(first, len(warm_times), _now() - start, warmup.steady(warm_times))


def timed_runs(step: Callable[[], object], *, device: str, measure: Measure) -> tuple[list[float], list[float] | None]:
    """Time `step` until `measure` is done (one round of it: see `Measure.per_round`).

    CPU: each run is timed with the wall clock. GPU: each run is bracketed by CUDA events on the
    current stream and synchronized before the clock stops, so the wall clock is the host latency
    (launch, run, wait) and the events are the device time; both are read after synchronizing.
    Returns the per-run wall times and, on a GPU, the device times, in seconds.
    """
    cuda = device == "cuda"
    with _gc_paused():
        wall: list[float] = []
        events: list[tuple[Any, Any]] = []
        start = _now()
        while not measure.done(len(wall), _now() - start):
            if cuda:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                t = _now()
                begin.record()
                step()
                end.record()
                end.synchronize()
                wall.append(_now() - t)
                events.append((begin, end))
            else:
                t = _now()
                step()
                wall.append(_now() - t)
    return wall, ([b.elapsed_time(e) / 1e3 for b, e in events] if cuda else None)


def time_runs(
    step: Callable[[], object], *, device: str, warmup: Warmup, measure: Measure, first_call_s: float | None = None
) -> Timing:
    """Warm `step` up, then time it: `warm_up`, then `timed_runs` (all of `measure`'s rounds back to back)."""
    record = warm_up(step, device=device, warmup=warmup, first_call_s=first_call_s)
    wall, device_times = timed_runs(step, device=device, measure=replace(measure, rounds=1))
    return Timing(wall, device_times, record)


@dataclass(frozen=True)
class MemoryRecord:
    """Peak memory over one measurement (bind, first call, warm-up and timed runs), in MiB.

    `kind`: "rss" (CPU: the process's peak resident set, VmHWM, reset before the run), "cuda-allocator"
    (torch's allocator peak) or "cuda-device" (device memory in use, for backends that allocate
    outside torch: ONNX Runtime, TensorRT; read after the run, so a transient peak may be missed).
    `growth_mib` is the peak minus what was in use when the measurement began.
    """

    kind: str
    peak_mib: float
    growth_mib: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _proc_status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class _MemoryProbe:
    device: str
    torch_allocator: bool
    record: MemoryRecord | None = field(default=None)


@contextmanager
def peak_memory(device: str, torch_allocator: bool = True) -> Iterator[_MemoryProbe]:
    """Measure peak memory over the block; the probe's `record` is set when it ends."""
    probe = _MemoryProbe(device, torch_allocator)
    mib = 1 / 1024
    if device == "cuda":
        torch.cuda.synchronize()
        if torch_allocator:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            free, total = torch.cuda.mem_get_info()
            base = total - free
        yield probe
        torch.cuda.synchronize()
        if torch_allocator:
            peak = torch.cuda.max_memory_allocated()
            probe.record = MemoryRecord("cuda-allocator", peak / 2**20, (peak - base) / 2**20)
        else:
            free, total = torch.cuda.mem_get_info()
            used = total - free
            probe.record = MemoryRecord("cuda-device", used / 2**20, (used - base) / 2**20)
        return
    reset = _reset_peak_rss()
    base_kib = _proc_status_kib("VmRSS")
    # Without clear_refs the lifetime peak is all there is: growth is then only what exceeds it.
    before_max_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield probe
    if reset and base_kib is not None:
        hwm = _proc_status_kib("VmHWM") or 0
        probe.record = MemoryRecord("rss", hwm * mib, max(0, hwm - base_kib) * mib)
    else:
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        probe.record = MemoryRecord("rss-lifetime", after * mib, max(0, after - before_max_kib) * mib)
