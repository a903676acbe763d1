"""`fxbench bench`: every backend on the same inputs, over a sweep of shapes, checked against eager
fp32 before it is timed, with the environment beside the numbers; and the pick of the best artifact."""

from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import fxbench
from fxbench.environment import collect_environment
from fxbench.errors import FxbenchError
from fxbench.exporters import Artifact, read_artifacts
from fxbench.models import CapturedProgram, DynamicDims
from fxbench.numerics import Tolerance, compare
from fxbench.runtime.agreement import Agreement, task_agreement
from fxbench.runtime.backends import Backend, create_session, default_backends, folder_backends, parse_backends
from fxbench.runtime.harness import (
    BenchOptionError,
    LatencyStats,
    Measure,
    MemoryRecord,
    Warmup,
    WarmupRecord,
    first_call,
    peak_memory,
    time_runs,
    timed_runs,
    warm_up,
)
from fxbench.runtime.sessions import Session
from fxbench.runtime.steps import load_and_capture, resolve_model_source

__all__ = [
    "BackendRecord",
    "BenchResult",
    "BenchTarget",
    "Choice",
    "Measurement",
    "ParityRecord",
    "Shape",
    "best_artifact",
    "default_report_dir",
    "open_target",
    "run_benchmark",
    "shapes_from",
]

EventFn = Callable[[str, str, str], None]  # (step, status: start|done|fail|skip, detail)
BASELINE = "eager"


def _no_events(step: str, status: str, detail: str) -> None:
    pass


@dataclass(frozen=True)
class Shape:
    batch: int
    seq: int | None  # None for inputs without a sequence axis (images, CTC audio)

    @property
    def label(self) -> str:
        return f"b{self.batch}" + (f" s{self.seq}" if self.seq is not None else "")


def shapes_from(batches: Sequence[int], seqs: Sequence[int], *, has_seq: bool = True) -> list[Shape]:
    """The sweep: every batch with every sequence length (one shape per batch without a sequence axis)."""
    if not batches or any(b < 1 for b in batches):
        raise BenchOptionError(f"--batch needs sizes >= 1, not {list(batches)}")
    if has_seq and (not seqs or any(s < 1 for s in seqs)):
        raise BenchOptionError(f"--seq needs lengths >= 1, not {list(seqs)}")
    return [Shape(b, s) for b in dict.fromkeys(batches) for s in (dict.fromkeys(seqs) if has_seq else [None])]


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Measurement:
    """One backend at one shape. `latency` is the host wall clock per run (on a GPU: launch, run and
    synchronize); `device_latency` the CUDA-event time, on a GPU only."""

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

    @property
    def shape(self) -> Shape:
        return Shape(self.batch, self.seq)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shapes"] = [{"batch": s.batch, "seq": s.seq, "label": s.label} for s in self.shapes]
        data["speedups"] = {
            b.label: {s.label: self.speedup(b.label, s) for s in self.shapes} for b in self.backends if b.status == "ok"
        }
        data["fxbench_version"] = fxbench.__version__
        return data


@dataclass(frozen=True)
class BenchTarget:
    """What is benchmarked: the capture (always: eager is the reference) and, for an output folder,
    its path and the artifacts its report lists."""

    captured: CapturedProgram
    folder: Path | None = None
    artifacts: tuple[Artifact, ...] = ()

    def describe(self) -> dict[str, Any]:
        if self.folder is None:
            return {"kind": "model", "model": self.captured.loaded.source}
        return {"kind": "folder", "folder": str(self.folder), "artifacts": [a.file for a in self.artifacts]}


def _capture_dims(shapes: Sequence[Shape]) -> DynamicDims:
    """Dynamic ranges wide enough for the sweep, so that the program from the capture runs at every shape."""
    batch = max([64, *(s.batch for s in shapes)])
    seq = max([512, *(s.seq or 0 for s in shapes)])
    return DynamicDims(batch=(1, batch), seq=(2, seq))


def _is_folder(target: object) -> bool:
    """An fxbench output folder (report.json, no config.json), not a saved model folder."""
    return isinstance(target, (str, Path)) and Path(target).is_dir() and (Path(target) / "report.json").is_file() \
        and not (Path(target) / "config.json").is_file()


def _read_folder(path: Path) -> tuple[dict[str, Any], tuple[Artifact, ...]]:
    try:
        report = json.loads((path / "report.json").read_text(encoding="utf-8"))
        return report, tuple(read_artifacts(path))
    except (OSError, ValueError, TypeError) as exc:
        raise FxbenchError(f"{path / 'report.json'} is not an fxbench report ({exc}); point bench at an fxbench output folder") from exc


def open_target(
    target: CapturedProgram | str | Path | None, shapes: Sequence[Shape] = (), *, task: str | None = None,
    events: EventFn = _no_events,
) -> BenchTarget:
    """A capture as is; an fxbench output folder (its report.json names the model and its artifacts);
    or a Hub id / model folder (None: the bundled demo model) to load and capture."""
    if isinstance(target, CapturedProgram):
        return BenchTarget(target)
    if _is_folder(target):
        path = Path(target)  # type: ignore[arg-type]
        report, artifacts = _read_folder(path)
        model = report.get("model") or {}
        source = model.get("source")
        if source and not Path(source).exists() and source.startswith((".", "/", "~")) and model.get("model_id"):
            source = model["model_id"]  # the model folder moved; its Hub id still names it
        if not source:
            raise FxbenchError(f"{path / 'report.json'} names no model source; rerun fxbench optimize")
        captured = load_and_capture(
            source, task=task or model.get("task"), batch=2, seq=16, dims=_capture_dims(shapes),
            attn_implementation=model.get("attn_implementation"), events=events,
        )
        return BenchTarget(captured, path, artifacts)
    source = resolve_model_source(str(target) if target is not None else None)
    captured = load_and_capture(source, task=task, batch=2, seq=16, dims=_capture_dims(shapes), attn_implementation=None, events=events)
    return BenchTarget(captured)


def _parity(backend: Backend, outputs: Sequence[tuple[torch.Tensor, ...]], reference: tuple[torch.Tensor, ...],
            captured: CapturedProgram, inputs: dict[str, torch.Tensor]) -> ParityRecord:
    precision = backend.effective_precision
    tolerance = Tolerance.for_precision(precision)
    worst = None
    agreement = None
    for outs in outputs:
        parity = compare(outs, reference, captured.output_names)
        if worst is None or (parity.cosine, -parity.max_abs_error) < (worst.cosine, -worst.max_abs_error) or not parity.finite:
            worst = parity
        agree = task_agreement(captured.loaded.task, captured.output_names, outs, reference, inputs)
        if agree is not None and (agreement is None or agree.value < agreement.value):
            agreement = agree
    assert worst is not None
    return ParityRecord(
        max_abs_error=worst.max_abs_error, max_rel_error=worst.max_rel_error, cosine=worst.cosine, finite=worst.finite,
        precision=precision, passed=tolerance.accepts(worst), reason=tolerance.explain(worst), agreement=agreement,
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _measure(session: Session, backend: Backend, shape: Shape, inputs: dict[str, torch.Tensor], reference: tuple[torch.Tensor, ...],
             captured: CapturedProgram, warmup: Warmup, measure: Measure) -> Measurement:
    device = session.device
    try:
        with peak_memory(device, session.torch_allocator) as mem:
            bound = session.bind(inputs)
            first = first_call(bound.step, device=device)
            before = bound.fetch()  # checked before timing, as below; kept to judge after
            timing = time_runs(bound.step, device=device, warmup=warmup, measure=measure, first_call_s=first)
            after = bound.fetch()
            del bound
        parity = _parity(backend, [before, after], reference, captured, inputs)
    except Exception as exc:  # noqa: BLE001 - one backend failing at one shape is a result, not a crash
        return Measurement(backend.label, shape.batch, shape.seq, "failed", _one_line(exc), device)
    return _measured(backend, shape, device, timing.wall, timing.device, timing.warmup, mem.record, parity)


def _measured(backend: Backend, shape: Shape, device: str, wall: list[float], device_times: list[float] | None,
              warmup: WarmupRecord, memory: MemoryRecord | None, parity: ParityRecord) -> Measurement:
    return Measurement(
        backend.label, shape.batch, shape.seq, "ok", "" if parity.passed else f"parity: {parity.reason}", device,
        latency=LatencyStats.from_seconds(wall, shape.batch),
        device_latency=LatencyStats.from_seconds(device_times, shape.batch) if device_times else None,
        warmup=warmup, memory=memory, parity=parity,
    )


def _release(session: Session | None) -> None:
    if session is not None:
        session.close()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_benchmark(
    target: CapturedProgram | str | Path | None,
    backends: Sequence[str | Backend] | None = None,
    shapes: Sequence[Shape] | None = None,
    *,
    device: str = "cpu",
    threads: int | None = None,
    warmup: Warmup = Warmup(),
    measure: Measure = Measure(),
    task: str | None = None,
    events: EventFn = _no_events,
    command: Sequence[str] | None = None,
) -> BenchResult:
    """Benchmark `backends` (names, NAME@FILE, or Backend records; None: the defaults for a model or
    for an output folder) on `target` at every shape (default: batch 1, sequence 128).

    Each backend loads once; at each shape its outputs are checked against eager fp32 on the CPU on
    the same inputs, then it is warmed up and timed. A backend that cannot run here is recorded as
    skipped with the reason; one that fails, as failed with the error; neither stops the others.
    """
    if device not in ("cpu", "cuda"):
        raise BenchOptionError(f"--device must be cpu or cuda, not {device!r}")
    if threads is not None and threads < 1:
        raise BenchOptionError(f"--threads must be at least 1, not {threads}")
    shapes = list(shapes) if shapes else [Shape(1, 128)]
    started = time.perf_counter()
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    # Names and files are checked before minutes of loading: an unknown name or a missing file is a user error.
    folder = Path(target) if _is_folder(target) else None  # type: ignore[arg-type]
    artifacts = _read_folder(folder)[1] if folder is not None else ()
    chosen = _resolve(backends, folder, artifacts, device)
    labels = [b.label for b in chosen]
    if len(set(labels)) != len(labels):
        raise BenchOptionError(f"backend listed twice: {', '.join(sorted({x for x in labels if labels.count(x) > 1}))}")
    bench_target = open_target(target, shapes, task=task, events=events)
    captured = bench_target.captured
    has_seq = captured.loaded.modality == "text" or captured.loaded.is_encoder_decoder
    if not has_seq:
        shapes = list(dict.fromkeys(Shape(s.batch, None) for s in shapes))

    # Inputs and the fp32 reference for every shape first: a shape the model cannot take fails now.
    inputs = {s: captured.make_inputs(s.batch, s.seq if s.seq is not None else 16).tensors for s in shapes}
    reference = {s: captured.run_eager(inputs[s]) for s in shapes}

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    run_threads = torch.get_num_threads()
    try:
        records, measurements = _run_backends(chosen, captured, shapes, inputs, reference, device, run_threads, warmup, measure, events)
        environment = collect_environment(list(command) if command is not None else list(sys.argv))  # with the threads used
    finally:
        torch.set_num_threads(previous_threads)  # the caller's process keeps its own setting

    return BenchResult(
        model={
            "source": captured.loaded.source, "model_id": captured.loaded.model_id, "name": captured.loaded.name,
            "task": captured.loaded.task, "architecture": type(captured.loaded.model).__name__,
            "parameters": captured.loaded.parameter_count(), "inputs_from": captured.inputs.origin,
        },
        task=captured.loaded.task,
        device=device,
        threads=run_threads,
        reference="eager PyTorch fp32 on the CPU, same inputs",
        shapes=tuple(shapes),
        backends=tuple(records),
        measurements=tuple(measurements),
        settings={"warmup": asdict(warmup), "measure": asdict(measure), "gc": "disabled while timing"},
        environment=environment,
        created=created,
        seconds=time.perf_counter() - started,
        source=bench_target.describe(),
    )


def _load(backend: Backend, captured: CapturedProgram, device: str, run_threads: int, events: EventFn) -> tuple[BackendRecord, Session | None]:
    """Load one backend: its record, and its session (None when it was skipped or failed to load)."""
    spec = backend.spec
    base = dict(label=backend.label, name=backend.name, summary=spec.summary, device=spec.device_for(device),
                precision=backend.effective_precision, artifact=str(backend.artifact) if backend.artifact else None)
    events(backend.label, "start", "")
    t0 = time.perf_counter()
    session: Session | None = None
    try:
        session = create_session(backend, captured, device=device, threads=run_threads)
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


def _report(events: EventFn, step: str, m: Measurement) -> None:
    if m.status == "ok":
        assert m.latency is not None and m.parity is not None
        mark = "" if m.parity.passed else " PARITY FAIL"
        events(step, "done", f"median {m.latency.median_ms:.3f} ms, p99 {m.latency.p99_ms:.3f} ms, cos {m.parity.cosine:.6f}{mark}")
    else:
        events(step, "fail", m.reason)


def _run_backends(chosen: Sequence[Backend], captured: CapturedProgram, shapes: Sequence[Shape], inputs: dict[Shape, dict[str, torch.Tensor]],
                  reference: dict[Shape, tuple[torch.Tensor, ...]], device: str, run_threads: int, warmup: Warmup, measure: Measure,
                  events: EventFn) -> tuple[list[BackendRecord], list[Measurement]]:
    """Each backend in turn: load it, measure it at every shape, release it before the next loads
    (with `measure.rounds` > 1: all loaded at once, timed in interleaved rounds)."""
    if measure.rounds > 1:
        return _run_interleaved(chosen, captured, shapes, inputs, reference, device, run_threads, warmup, measure, events)
    records: list[BackendRecord] = []
    measurements: list[Measurement] = []
    for backend in chosen:
        record, session = _load(backend, captured, device, run_threads, events)
        records.append(record)
        if session is None:
            continue
        try:
            for shape in shapes:
                step = f"{backend.label} {shape.label}"
                events(step, "start", "")
                m = _measure(session, backend, shape, inputs[shape], reference[shape], captured, warmup, measure)
                measurements.append(m)
                _report(events, step, m)
        finally:
            _release(session)
    return records, measurements


@dataclass
class _Live:
    """A backend bound to one shape's inputs, warmed up, collecting its timed runs round by round."""

    backend: Backend
    bound: Any
    before: tuple[torch.Tensor, ...]
    warmup: WarmupRecord
    memory: MemoryRecord | None
    wall: list[float] = field(default_factory=list)
    device_times: list[float] | None = None
    error: str | None = None


def _run_interleaved(chosen: Sequence[Backend], captured: CapturedProgram, shapes: Sequence[Shape], inputs: dict[Shape, dict[str, torch.Tensor]],
                     reference: dict[Shape, tuple[torch.Tensor, ...]], device: str, run_threads: int, warmup: Warmup, measure: Measure,
                     events: EventFn) -> tuple[list[BackendRecord], list[Measurement]]:
    """Every backend loaded at once; at each shape, each is checked and warmed up, then timed for
    one round's share of its runs in turn, `measure.rounds` times over. Peak memory is taken over
    each backend's binding, first call and warm-up (the timed rounds of the others interleave)."""
    records: list[BackendRecord] = []
    loaded: list[tuple[Backend, Session]] = []
    measurements: dict[tuple[str, Shape], Measurement] = {}
    per_round = measure.per_round()
    try:
        for backend in chosen:
            record, session = _load(backend, captured, device, run_threads, events)
            records.append(record)
            if session is not None:
                loaded.append((backend, session))
        for shape in shapes:
            live: list[_Live] = []
            for backend, session in loaded:
                events(f"{backend.label} {shape.label}", "start", "")
                try:
                    with peak_memory(device, session.torch_allocator) as mem:
                        bound = session.bind(inputs[shape])
                        first = first_call(bound.step, device=device)
                        before = bound.fetch()
                        record = warm_up(bound.step, device=device, warmup=warmup, first_call_s=first)
                    live.append(_Live(backend, bound, before, record, mem.record))
                except Exception as exc:  # noqa: BLE001 - as in _measure: a failure at one shape is a result
                    measurements[backend.label, shape] = Measurement(backend.label, shape.batch, shape.seq, "failed", _one_line(exc), device)
                    _report(events, f"{backend.label} {shape.label}", measurements[backend.label, shape])
            for _ in range(measure.rounds):
                for item in live:
                    if item.error is not None:
                        continue
                    try:
                        wall, device_times = timed_runs(item.bound.step, device=device, measure=per_round)
                    except Exception as exc:  # noqa: BLE001
                        item.error = _one_line(exc)
                        continue
                    item.wall += wall
                    if device_times is not None:
                        item.device_times = (item.device_times or []) + device_times
            for item in live:
                label = item.backend.label
                if item.error is None:
                    try:
                        parity = _parity(item.backend, [item.before, item.bound.fetch()], reference[shape], captured, inputs[shape])
                        measurements[label, shape] = _measured(item.backend, shape, device, item.wall, item.device_times, item.warmup,
                                                               item.memory, parity)
                    except Exception as exc:  # noqa: BLE001
                        item.error = _one_line(exc)
                if item.error is not None:
                    measurements[label, shape] = Measurement(label, shape.batch, shape.seq, "failed", item.error, device)
                _report(events, f"{label} {shape.label}", measurements[label, shape])
            del live
    finally:
        for _, session in loaded:
            _release(session)
    # In the order the sequential run gives: by backend, then by shape.
    ordered = [measurements[b.label, s] for b in chosen for s in shapes if (b.label, s) in measurements]
    return records, ordered


def _resolve(backends: Sequence[str | Backend] | None, folder: Path | None, artifacts: Sequence[Artifact], device: str) -> list[Backend]:
    if backends is None:
        return folder_backends(folder, artifacts, device) if folder is not None else default_backends(device)
    out: list[Backend] = []
    for b in backends:
        if isinstance(b, Backend):
            b.check_files()
            out.append(b)
        else:
            out.extend(parse_backends([b], device=device, folder=folder, artifacts=artifacts))
    return out


@dataclass(frozen=True)
class Choice:
    """The fastest backend that keeps its answers: geometric means over the shapes measured."""

    backend: str
    name: str
    artifact: str | None
    median_ms: float
    speedup: float | None
    worst_cosine: float
    worst_max_abs_error: float
    shapes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def best_artifact(
    result: BenchResult, min_cosine: float = 0.99999, max_abs_error: float = math.inf, *, artifacts_only: bool = True,
    shape: Shape | None = None, among: Sequence[str] | None = None,
) -> Choice | None:
    """The fastest backend (geometric mean of median latency over the shapes, or at `shape`) whose
    worst cosine against eager fp32 is at least `min_cosine` and worst max abs error at most
    `max_abs_error`, and that ran at every shape. `artifacts_only`: only backends that load an
    artifact file (the deployable ones); `among`: only these labels (fxbench's own, say, beside
    baselines in the same run). None when nothing qualifies."""
    shapes = [shape] if shape is not None else list(result.shapes)
    best: Choice | None = None
    for rec in result.backends:
        if rec.status != "ok" or (artifacts_only and rec.artifact is None) or (among is not None and rec.label not in among):
            continue
        ms = [result.measurement(rec.label, s) for s in shapes]
        if any(m is None or m.status != "ok" or m.latency is None or m.parity is None for m in ms):
            continue
        parities = [m.parity for m in ms if m is not None and m.parity is not None]
        cos = min(p.cosine for p in parities)
        err = max(p.max_abs_error for p in parities)
        if not all(p.finite for p in parities) or cos < min_cosine or err > max_abs_error:
            continue
        median = _geomean([m.latency.median_ms for m in ms if m is not None and m.latency is not None])
        speedups = [result.speedup(rec.label, s) for s in shapes]
        speedup = _geomean([x for x in speedups if x is not None]) if all(x is not None for x in speedups) else None
        choice = Choice(rec.label, rec.name, rec.artifact, median, speedup, cos, err, len(shapes))
        if best is None or choice.median_ms < best.median_ms:
            best = choice
    return best


def default_report_dir(target: object, result: BenchResult) -> Path:
    """Where `fxbench bench` writes its reports without -o: beside an output folder's artifacts
    (DIR/bench), or fxbench-out/<model name>-bench (beside where optimize writes, not inside it)."""
    if _is_folder(target):
        return Path(target) / "bench"  # type: ignore[arg-type]
    return Path("fxbench-out") / f"{result.model.get('name') or 'model'}-bench"
