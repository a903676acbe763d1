"""Measurement: every backend handed in, on the same inputs over a sweep of shapes, checked against
the reference outputs before it is timed, with the environment beside the numbers; and the pick of
the best artifact. What to time comes from the caller (fxbench.jobs.bench opens models and folders)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import gc
import math
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

import fxbench
from fxbench.environment import collect_environment
from fxbench.errors import BenchOptionError, FxbenchError
from fxbench.events import EventFn, count, no_events
from fxbench.models import CapturedProgram
from fxbench.numerics import OutputParity, Tolerance, compare
from fxbench.runtime.agreement import Agreement, task_agreement
from fxbench.runtime.backends import Backend, create_session
from fxbench.runtime.harness import (
    LatencyStats,
    Measure,
    MemoryRecord,
    Warmup,
    WarmupRecord,
    clearly_faster,
    first_call,
    peak_memory,
    timed_runs,
    warm_up,
)
from fxbench.runtime.sessions import Bound, Session

__all__ = [
    "BASELINE",
    "BackendRecord",
    "BenchResult",
    "BenchSettings",
    "Choice",
    "Measurement",
    "ParityRecord",
    "Shape",
    "Workload",
    "best_artifact",
    "bench",
    "check_labels",
    "parse_image_sizes",
    "shapes_from",
]

BASELINE = "eager"


@dataclass(frozen=True)
class Shape:
    batch: int
    seq: int | None  # None for inputs without a sequence axis (images, CTC audio)
    image: tuple[int, int] | None = None  # (height, width) of image inputs; None: the capture's own

    @property
    def label(self) -> str:
        return (f"b{self.batch}" + (f" s{self.seq}" if self.seq is not None else "")
                + (f" {self.image[0]}x{self.image[1]}" if self.image is not None else ""))


def parse_image_sizes(text: str) -> list[tuple[int, int]]:
    """`--image-size 224,384,640x480`: a side N is N x N; HxW is height x width."""
    sizes = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        try:
            h, _, w = part.partition("x")
            size = (int(h), int(w or h))
        except ValueError:
            raise BenchOptionError(f"bad --image-size {part!r}; expected N or HxW, comma-separated, such as 224,384,640x480") from None
        if min(size) < 1:
            raise BenchOptionError(f"--image-size needs sides >= 1, not {part}")
        sizes.append(size)
    return list(dict.fromkeys(sizes))


def shapes_from(batches: Sequence[int], seqs: Sequence[int], *, has_seq: bool = True,
                images: Sequence[tuple[int, int]] = ()) -> list[Shape]:
    """The sweep: every batch with every sequence length (one shape per batch without a sequence
    axis), and with every image size when `images` are given."""
    if not batches or any(b < 1 for b in batches):
        raise BenchOptionError(f"--batch needs sizes >= 1, not {list(batches)}")
    if has_seq and (not seqs or any(s < 1 for s in seqs)):
        raise BenchOptionError(f"--seq needs lengths >= 1, not {list(seqs)}")
    return [Shape(b, s, i) for b in dict.fromkeys(batches) for s in (dict.fromkeys(seqs) if has_seq else [None])
            for i in (list(dict.fromkeys(images)) or [None])]


@dataclass(frozen=True)
class ParityRecord:
    """A backend's outputs against eager fp32 on the same inputs: the worst output, the worse of the
    check before timing and the one after it (a replayed CUDA graph must still be right), judged at
    the tolerance of the backend's precision, and the task's own agreement."""

    max_abs_error: float
    max_rel_error: float
    cosine: float
    finite: bool
    precision: str
    passed: bool
    reason: str
    agreement: Agreement | None
    outputs: tuple[OutputParity, ...] = ()  # each output of the worse check

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParityRecord:
        def num(v: Any) -> float:
            return math.inf if v is None else float(v)  # null: not finite (see `finite`)

        agreement = data.get("agreement")
        return cls(
            max_abs_error=num(data["max_abs_error"]), max_rel_error=num(data["max_rel_error"]), cosine=num(data["cosine"]),
            finite=bool(data["finite"]), precision=data["precision"], passed=bool(data["passed"]), reason=data.get("reason", ""),
            agreement=Agreement(agreement["metric"], num(agreement["value"])) if agreement else None,
            outputs=tuple(OutputParity(o["name"], num(o["max_abs_error"]), num(o["max_rel_error"]), num(o["cosine"]), bool(o["finite"]))
                          for o in data.get("outputs") or ()),
        )


@dataclass(frozen=True)
class Measurement:
    """One backend at one shape. `latency` is the host wall clock per run (on a GPU: launch, run and
    synchronize); `device_latency` the CUDA-event time, on a GPU only. `samples_ms` are the raw
    per-run times in the order they ran, `round_runs` how many of them each round timed."""

    backend: str
    batch: int
    seq: int | None
    status: str  # "ok" or "failed"
    reason: str = ""
    device: str = "cpu"
    latency: LatencyStats | None = None
    device_latency: LatencyStats | None = None
    warmup: WarmupRecord | None = None
    memory: MemoryRecord | None = None
    parity: ParityRecord | None = None
    samples_ms: tuple[float, ...] = ()
    device_samples_ms: tuple[float, ...] | None = None
    round_runs: tuple[int, ...] = ()
    image: tuple[int, int] | None = None

    @property
    def shape(self) -> Shape:
        return Shape(self.batch, self.seq, self.image)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("latency", "device_latency", "warmup", "memory", "parity"):
            value = data[key]
            data[key] = value.to_dict() if value is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        def stats(key: str) -> LatencyStats | None:
            return LatencyStats.from_dict(data[key]) if data.get(key) else None

        parity = data.get("parity")
        return cls(
            backend=data["backend"], batch=data["batch"], seq=data.get("seq"), status=data["status"], reason=data.get("reason", ""),
            device=data.get("device", "cpu"), latency=stats("latency"), device_latency=stats("device_latency"),
            warmup=WarmupRecord(**data["warmup"]) if data.get("warmup") else None,
            memory=MemoryRecord(**data["memory"]) if data.get("memory") else None,
            parity=ParityRecord.from_dict(parity) if parity else None,
            samples_ms=tuple(data.get("samples_ms") or ()),
            device_samples_ms=tuple(data["device_samples_ms"]) if data.get("device_samples_ms") else None,
            round_runs=tuple(data.get("round_runs") or ()),
        )


@dataclass(frozen=True)
class BackendRecord:
    label: str
    name: str
    summary: str
    device: str
    precision: str
    artifact: str | None
    status: str  # "ok", "skipped" or "failed"
    reason: str = ""
    load_seconds: float = 0.0
    cuda_graphs: bool = False
    io: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_BACKEND_FIELDS = {f.name for f in fields(BackendRecord)}


@dataclass(frozen=True)
class BenchResult:
    model: dict[str, Any]
    task: str
    device: str
    threads: int
    reference: str
    shapes: tuple[Shape, ...]
    backends: tuple[BackendRecord, ...]
    measurements: tuple[Measurement, ...]
    settings: dict[str, Any]
    environment: dict[str, Any]
    created: str
    seconds: float
    source: dict[str, Any] = field(default_factory=dict)  # what was benchmarked: a model, or an output folder

    def measurement(self, label: str, shape: Shape) -> Measurement | None:
        return next((m for m in self.measurements if m.backend == label and m.shape == shape), None)

    def speedup(self, label: str, shape: Shape) -> float | None:
        """Eager fp32's median host latency over this backend's, at `shape`."""
        mine, base = self.measurement(label, shape), self.measurement(BASELINE, shape)
        if not (mine and base and mine.latency and base.latency) or mine.latency.median_ms <= 0:
            return None
        return base.latency.median_ms / mine.latency.median_ms

    def failures(self) -> list[BackendRecord | Measurement]:
        """The backends that failed to load and the runs that failed at a shape (skips are not failures)."""
        return [b for b in self.backends if b.status == "failed"] + [m for m in self.measurements if m.status == "failed"]

    def noisy(self) -> list[Measurement]:
        """The measurements whose spread (IQR / median) is at or above torch.utils.benchmark's 10%."""
        return [m for m in self.measurements if m.latency is not None and m.latency.noisy]

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["shapes"] = [{"batch": s.batch, "seq": s.seq, **({"image": list(s.image)} if s.image else {}), "label": s.label}
                          for s in self.shapes]
        data["backends"] = [b.to_dict() for b in self.backends]
        data["measurements"] = [m.to_dict() for m in self.measurements]
        data["speedups"] = {
            b.label: {s.label: self.speedup(b.label, s) for s in self.shapes} for b in self.backends if b.status == "ok"
        }
        data["fxbench_version"] = fxbench.__version__
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], environment: Mapping[str, Any] | None = None) -> BenchResult:
        """From `to_dict`'s form as report.json keeps it (an optimize report keeps the environment
        once, at its top: pass it as `environment`)."""
        return cls(
            model=dict(data.get("model") or {}), task=data["task"], device=data["device"], threads=int(data["threads"]),
            reference=data.get("reference", ""), shapes=tuple(Shape(s["batch"], s.get("seq")) for s in data["shapes"]),
            backends=tuple(BackendRecord(**{k: v for k, v in b.items() if k in _BACKEND_FIELDS}) for b in data["backends"]),
            measurements=tuple(Measurement.from_dict(m) for m in data["measurements"]),
            settings=dict(data.get("settings") or {}), environment=dict(data.get("environment") or environment or {}),
            created=data.get("created", ""), seconds=float(data.get("seconds") or 0.0), source=dict(data.get("source") or {}),
        )


@dataclass(frozen=True)
class BenchSettings:
    """Where and how long: the device the device-agnostic backends run on, CPU threads (None:
    torch's), the warm-up rule and the timed runs. Checked when made, before any model is opened."""

    device: str = "cpu"
    threads: int | None = None
    warmup: Warmup = Warmup()
    measure: Measure = Measure()

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise BenchOptionError(f"--device must be cpu or cuda, not {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise BenchOptionError(f"--threads must be at least 1, not {self.threads}")


@dataclass(frozen=True)
class Workload:
    """What every backend runs: the shapes, each shape's named inputs, and the reference outputs on
    them (eager fp32 on the CPU) that each backend is checked against."""

    shapes: tuple[Shape, ...]
    inputs: Mapping[Shape, Mapping[str, torch.Tensor]]
    reference: Mapping[Shape, tuple[torch.Tensor, ...]]


def _parity(backend: Backend, outputs: Sequence[tuple[torch.Tensor, ...]], reference: tuple[torch.Tensor, ...],
            captured: CapturedProgram, inputs: Mapping[str, torch.Tensor]) -> ParityRecord:
    precision = backend.effective_precision
    tolerance = Tolerance.for_precision(precision)
    worst = None
    agreement = None
    for outs in outputs:  # the check before timing and the one after
        parity = compare(outs, reference, captured.output_names)
        if worst is None or (parity.cosine, -parity.max_abs_error) < (worst.cosine, -worst.max_abs_error) or not parity.finite:
            worst = parity
        agree = task_agreement(captured.loaded.task, captured.output_names, outs, reference, dict(inputs))
        if agree is not None and (agreement is None or agree.value < agreement.value):
            agreement = agree
    assert worst is not None
    return ParityRecord(
        max_abs_error=worst.max_abs_error, max_rel_error=worst.max_rel_error, cosine=worst.cosine, finite=worst.finite,
        precision=precision, passed=tolerance.accepts(worst), reason=tolerance.explain(worst), agreement=agreement,
        outputs=worst.outputs,
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


# Untimed runs after a session rebuilt what it let go between rounds (Session.resume).
_REWARM_RUNS = 3


class _ShapeRun:
    """One loaded backend at one shape, from binding its inputs to its Measurement: bind, first call,
    the parity check's first outputs and warm-up; then timed runs, in one go or round by round; then
    the second parity check (a replayed CUDA graph must still be right) and the statistics.

    Peak memory covers binding, first call and warm-up, and the timed runs too when they are not
    interleaved with other backends' (whose allocations would then count as this one's)."""

    def __init__(self, backend: Backend, session: Session, shape: Shape, work: Workload, captured: CapturedProgram,
                 settings: BenchSettings, events: EventFn, place: str = ""):
        self.backend, self.session, self.shape, self.work, self.captured = backend, session, shape, work, captured
        self.settings, self.events, self.place = settings, events, place
        self.step = f"{backend.label} {shape.label}"
        self.bound: Bound | None = None
        self.before: tuple[torch.Tensor, ...] = ()
        self.warmup: WarmupRecord | None = None
        self.wall: list[float] = []
        self.device_times: list[float] | None = None
        self.round_runs: list[int] = []
        self.error: str | None = None
        self.result: Measurement | None = None
        self._memory = ExitStack()
        self._probe: Any = None

    @property
    def interleaved(self) -> bool:
        """Timed round by round beside the other backends (all loaded at once)."""
        return self.settings.measure.rounds > 1

    def start(self) -> None:
        self.events(self.step, "start", self.place)
        device = self.session.device
        try:
            self._probe = self._memory.enter_context(peak_memory(device, self.session.torch_allocator))
            self.bound = self.session.bind(self.work.inputs[self.shape])
            first = first_call(self.bound.step, device=device)
            self.before = self.bound.fetch()  # checked before timing, as below; kept to judge after
            self.warmup = warm_up(self.bound.step, device=device, warmup=self.settings.warmup, first_call_s=first)
            if self.interleaved:
                self._memory.close()
                self.session.suspend()
        except Exception as exc:  # noqa: BLE001 - one backend failing at one shape is a result, not a crash
            self._fail(exc)

    def time(self, measure: Measure, round_place: str = "") -> None:
        if self.error is not None or self.bound is None:
            return
        if round_place:
            self.events(self.step, "update", f"round {round_place}")
        try:
            if self.interleaved and self.session.resume():
                for _ in range(_REWARM_RUNS):
                    self.bound.step()
            wall, device_times = timed_runs(self.bound.step, device=self.session.device, measure=measure)
            if self.interleaved:
                self.session.suspend()
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return
        self.wall += wall
        self.round_runs.append(len(wall))
        if device_times is not None:
            self.device_times = (self.device_times or []) + device_times

    def finish(self) -> Measurement:
        shape, device = self.shape, self.session.device
        if self.error is None and self.bound is not None and self.interleaved:
            try:
                self.session.resume()  # the outputs are fetched (and checked) from a live session
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)
        if self.error is None and self.bound is not None and self.warmup is not None:
            try:
                after = self.bound.fetch()
                self._memory.close()
                parity = _parity(self.backend, [self.before, after], self.work.reference[shape], self.captured, self.work.inputs[shape])
                m = Measurement(
                    self.backend.label, shape.batch, shape.seq, "ok", "" if parity.passed else f"parity: {parity.reason}", device,
                    latency=LatencyStats.from_seconds(self.wall, shape.batch),
                    device_latency=LatencyStats.from_seconds(self.device_times, shape.batch) if self.device_times else None,
                    warmup=self.warmup, memory=self._probe.record, parity=parity, image=shape.image,
                    samples_ms=tuple(round(t * 1e3, 4) for t in self.wall),
                    device_samples_ms=tuple(round(t * 1e3, 4) for t in self.device_times) if self.device_times else None,
                    round_runs=tuple(self.round_runs),
                )
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)
        if self.error is not None:
            m = Measurement(self.backend.label, shape.batch, shape.seq, "failed", self.error, device, image=shape.image)
        self.bound = None
        self.result = m
        _report(self.events, self.step, m)
        return m

    def _fail(self, exc: BaseException) -> None:
        self.error = _one_line(exc)
        self.bound = None
        with contextlib.suppress(Exception):  # a broken CUDA context may fail the probe's synchronize too
            self._memory.close()


def _report(events: EventFn, step: str, m: Measurement) -> None:
    if m.status == "ok":
        assert m.latency is not None and m.parity is not None
        mark = "" if m.parity.passed else " PARITY FAIL"
        lat = m.latency
        noisy = f", spread {lat.spread:.0%}" if lat.noisy else ""
        events(step, "done", f"median {lat.median_ms:.3f} ms, p95 {lat.p95_ms:.3f} ms{noisy}, cos {m.parity.cosine:.6f}{mark}")
    else:
        events(step, "fail", m.reason)


def _measure_shape(loaded: Sequence[tuple[Backend, Session]], shape: Shape, work: Workload, captured: CapturedProgram,
                   settings: BenchSettings, events: EventFn, places: Sequence[str] = ()) -> list[Measurement]:
    """The loaded backends at one shape: each started (a failure to bind is reported at once), then
    timed `measure.rounds` times over for one round's share of its runs in turn, then finished."""
    runs = [_ShapeRun(backend, session, shape, work, captured, settings, events, places[i] if i < len(places) else "")
            for i, (backend, session) in enumerate(loaded)]
    for run in runs:
        run.start()
        if run.error is not None:
            run.finish()
    rounds = settings.measure.rounds
    for index in range(rounds):
        share = settings.measure.share(index)
        if share is None:
            continue
        for run in runs:
            run.time(share, count(index + 1, rounds) if rounds > 1 else "")
    return [run.result or run.finish() for run in runs]


def _release(session: Session | None) -> None:
    if session is not None:
        session.close()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _load(backend: Backend, captured: CapturedProgram, settings: BenchSettings, run_threads: int,
          events: EventFn, place: str = "") -> tuple[BackendRecord, Session | None]:
    """Load one backend: its record, and its session (None when it was skipped or failed to load)."""
    spec = backend.spec
    base = dict(label=backend.label, name=backend.name, summary=spec.summary, device=spec.device_for(settings.device),
                precision=backend.effective_precision, artifact=str(backend.artifact) if backend.artifact else None)
    events(backend.label, "start", place)
    t0 = time.perf_counter()
    session: Session | None = None
    try:
        session = create_session(backend, captured, device=settings.device, threads=run_threads)
    except FxbenchError as exc:
        # BackendUnavailableError: not installed, no device, built for another machine.
        reason = " ".join(str(exc).split())
        events(backend.label, "skip", f"skipped: {reason}")
        return BackendRecord(**base, status="skipped", reason=reason), None
    except Exception as exc:  # noqa: BLE001 - a backend that breaks while loading is reported, the rest still run
        events(backend.label, "fail", _one_line(exc))
        _release(session)
        return BackendRecord(**base, status="failed", reason=_one_line(exc), load_seconds=time.perf_counter() - t0), None
    events(backend.label, "done", f"loaded on {session.device}")
    return BackendRecord(**base, status="ok", load_seconds=time.perf_counter() - t0, cuda_graphs=session.cuda_graphs, io=session.io), session


def _run_backends(backends: Sequence[Backend], captured: CapturedProgram, work: Workload, settings: BenchSettings,
                  run_threads: int, events: EventFn) -> tuple[list[BackendRecord], list[Measurement]]:
    """One backend loaded at a time, measured at every shape and released before the next loads;
    with `measure.rounds` > 1, all of them loaded at once and timed in interleaved rounds."""
    groups = [[b] for b in backends] if settings.measure.rounds == 1 else [list(backends)]
    records: list[BackendRecord] = []
    measured: dict[tuple[str, Shape], Measurement] = {}
    done = 0  # measurements started so far, for "k/N"
    total = len(backends) * len(work.shapes)
    for group in groups:
        loaded: list[tuple[Backend, Session]] = []
        try:
            for backend in group:
                record, session = _load(backend, captured, settings, run_threads, events, count(len(records) + 1, len(backends)))
                records.append(record)
                if session is not None:
                    loaded.append((backend, session))
            for shape in work.shapes:
                places = [count(done + i + 1, total) for i in range(len(loaded))]
                done += len(loaded)
                for m in _measure_shape(loaded, shape, work, captured, settings, events, places):
                    measured[m.backend, shape] = m
        finally:
            for _, session in loaded:
                session.close()
            _release(None)  # one collection for the group, not one per backend (each walks the whole heap)
    # By backend, then by shape, however they were timed.
    return records, [measured[b.label, s] for b in backends for s in work.shapes if (b.label, s) in measured]


def check_labels(backends: Sequence[Backend]) -> list[Backend]:
    """`backends`, each under its own label (a report's columns), or the error naming the one listed twice."""
    labels = [b.label for b in backends]
    if len(set(labels)) != len(labels):
        raise BenchOptionError(f"backend listed twice: {', '.join(sorted({x for x in labels if labels.count(x) > 1}))}")
    return list(backends)


def bench(
    captured: CapturedProgram,
    backends: Sequence[Backend],
    work: Workload,
    settings: BenchSettings = BenchSettings(),
    *,
    model: Mapping[str, Any],
    source: Mapping[str, Any] | None = None,
    events: EventFn = no_events,
    command: Sequence[str] | None = None,
) -> BenchResult:
    """Time `backends` (sessions built from `captured`) on `work`: each backend's outputs at each
    shape are checked against the reference, then it is warmed up and timed. A backend that cannot
    run here is recorded as skipped with the reason; one that fails, as failed with the error;
    neither stops the others. `model` and `source` describe what was measured, for the reports."""
    check_labels(backends)
    started = time.perf_counter()
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    previous_threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    run_threads = torch.get_num_threads()
    try:
        records, measurements = _run_backends(backends, captured, work, settings, run_threads, events)
        environment = collect_environment(list(command) if command is not None else list(sys.argv))  # with the threads used
    finally:
        torch.set_num_threads(previous_threads)  # the caller's process keeps its own setting
    return BenchResult(
        model=dict(model),
        task=captured.loaded.task,
        device=settings.device,
        threads=run_threads,
        reference="eager PyTorch fp32 on the CPU, same inputs",
        shapes=tuple(work.shapes),
        backends=tuple(records),
        measurements=tuple(measurements),
        settings={"warmup": asdict(settings.warmup), "measure": asdict(settings.measure), "gc": "disabled while timing"},
        environment=environment,
        created=created,
        seconds=time.perf_counter() - started,
        source=dict(source or {}),
    )


@dataclass(frozen=True)
class Choice:
    """The fastest backend that keeps its answers (geometric means over the shapes measured), and
    whether its lead is larger than the noise.

    `worst_cosine` / `worst_max_abs_error` are the worst over every benchmark shape and every check
    the artifact passed when it was exported (`worst_at` names where). `clear` is True when no
    other qualifying backend comes within the noise of it at any shape (box-plot notches that do
    not overlap: see `LatencyStats.median_ci_ms`), False when some do (`tied_with`), None when it
    had no rival. `lead` is the runner-up's median over this one's, minus 1."""

    backend: str
    name: str
    artifact: str | None
    median_ms: float
    speedup: float | None
    worst_cosine: float
    worst_max_abs_error: float
    shapes: int
    worst_at: str = ""
    precision: str = "fp32"
    clear: bool | None = None
    runner_up: str | None = None
    lead: float | None = None
    tied_with: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Choice:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if values.get("worst_max_abs_error") is None:
            values["worst_max_abs_error"] = math.inf
        values["tied_with"] = tuple(values.get("tied_with") or ())
        return cls(**values)


# When two artifacts are within the noise of each other, the one that keeps more precision wins.
_PRECISION_RANK = {"fp32": 0, "bf16": 1, "fp16": 1, "int8": 2, "fp8": 3}


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


@dataclass(frozen=True)
class _Candidate:
    choice: Choice
    latencies: tuple[LatencyStats, ...]  # per shape, in the order of the shapes judged


def _worst_check(parities: Mapping[str, Mapping[str, Any]]) -> tuple[float, float, bool, str] | None:
    """(cosine, max abs error, finite, check name) of the worst of an artifact's export checks."""
    worst = None
    for name, p in parities.items():
        cos = p.get("cosine")
        err = p.get("max_abs_error")
        finite = bool(p.get("finite", True)) and cos is not None and err is not None
        entry = (float(cos) if cos is not None else 0.0, float(err) if err is not None else math.inf, finite, name)
        if worst is None or (entry[0], -entry[1]) < (worst[0], -worst[1]):
            worst = entry
    return worst


def best_artifact(
    result: BenchResult, min_cosine: float = 0.99999, max_abs_error: float = math.inf, *, artifacts_only: bool = True,
    shape: Shape | None = None, among: Sequence[str] | None = None, checks: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> Choice | None:
    """The fastest backend (geometric mean of median latency over the shapes, or at `shape`) whose
    worst cosine against eager fp32 is at least `min_cosine` and worst max abs error at most
    `max_abs_error` at every shape and at every export check in `checks` (label -> the artifact's
    parity per check, as `Artifact.parity` holds it), and that ran at every shape. `artifacts_only`:
    only backends that load an artifact file (the deployable ones); `among`: only these labels
    (fxbench's own, say, beside baselines in the same run). None when nothing qualifies.

    Backends within the noise of the fastest (see `Choice`) are ties: among them the one of the
    higher precision is chosen (fp32 over bf16/fp16 over int8 over fp8), then the faster median."""
    shapes = [shape] if shape is not None else list(result.shapes)
    found: list[_Candidate] = []
    for rec in result.backends:
        if rec.status != "ok" or (artifacts_only and rec.artifact is None) or (among is not None and rec.label not in among):
            continue
        ms = [result.measurement(rec.label, s) for s in shapes]
        if any(m is None or m.status != "ok" or m.latency is None or m.parity is None for m in ms):
            continue
        judged = [(m.parity.cosine, m.parity.max_abs_error, m.parity.finite, m.shape.label) for m in ms if m is not None and m.parity is not None]
        extra = _worst_check((checks or {}).get(rec.label) or {})
        if extra is not None:
            judged.append(extra)
        cos, _, _, where = min(judged, key=lambda j: (j[0], -j[1]))
        err = max(j[1] for j in judged)
        if not all(j[2] for j in judged) or cos < min_cosine or err > max_abs_error:
            continue
        latencies = tuple(m.latency for m in ms if m is not None and m.latency is not None)
        speedups = [result.speedup(rec.label, s) for s in shapes]
        speedup = _geomean([x for x in speedups if x is not None]) if all(x is not None for x in speedups) else None
        choice = Choice(rec.label, rec.name, rec.artifact, _geomean([lat.median_ms for lat in latencies]), speedup, cos, err,
                        len(shapes), worst_at=where, precision=rec.precision)
        found.append(_Candidate(choice, latencies))
    if not found:
        return None

    def tied(a: _Candidate, b: _Candidate) -> bool:
        """Neither is clearly faster than the other at every shape."""
        return not (all(clearly_faster(x, y) for x, y in zip(a.latencies, b.latencies))
                    or all(clearly_faster(y, x) for x, y in zip(a.latencies, b.latencies)))

    fastest = min(found, key=lambda c: c.choice.median_ms)
    pool = [c for c in found if c is fastest or tied(fastest, c)]
    chosen = min(pool, key=lambda c: (_PRECISION_RANK.get(c.choice.precision, 9), c.choice.median_ms))
    others = [c for c in found if c is not chosen]
    if not others:
        return chosen.choice
    runner = min(others, key=lambda c: c.choice.median_ms)
    ties = tuple(c.choice.backend for c in others if tied(chosen, c))
    return dataclasses.replace(chosen.choice, clear=not ties, runner_up=runner.choice.backend,
                               lead=runner.choice.median_ms / chosen.choice.median_ms - 1.0, tied_with=ties)
