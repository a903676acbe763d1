"""fxbench from Python: `optimize`, `bench` and `export` a Hub id, a folder or an nn.Module (with
example inputs), quiet by default, each returning the typed result its job returns."""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from fxbench.events import EventFn, no_events, set_verbosity, verbosity
from fxbench.jobs import ExportRequest, ExportResult, OptimizeRequest, OptimizeResult, run_benchmark
from fxbench.jobs import export as export_job
from fxbench.jobs import optimize as optimize_job
from fxbench.models import DynamicDims, LoadedModel, LoadOptions, from_module
from fxbench.models.inputs import example_shape
from fxbench.quiet import quiet_libraries
from fxbench.runtime.bench import BenchResult, Shape
from fxbench.runtime.harness import DEFAULT_ROUNDS, Measure, Warmup

__all__ = ["bench", "export", "optimize"]

Model = str | Path | torch.nn.Module | None


def _model(model: Model, example_inputs: Any, task: str | None) -> str | LoadedModel | None:
    if isinstance(model, torch.nn.Module):
        return from_module(model, example_inputs, task=task)
    if example_inputs is not None:
        raise TypeError("example_inputs go with an nn.Module; a model id or folder makes its own inputs")
    return None if model is None else str(model)


def _shapes(model: str | LoadedModel | None, batch: Sequence[int] | int, seq: Sequence[int] | int | None) -> list[tuple[int, int | None]]:
    """The benchmark's shapes: the sweep asked for, or a plain module's example shape (its only one
    without a batch axis)."""
    batches = [batch] if isinstance(batch, int) else list(batch)
    seqs: list[int | None] = [seq] if isinstance(seq, int) or seq is None else list(seq)
    if isinstance(model, LoadedModel) and model.modality == "tensor":
        ex_batch = example_shape(model)[0]
        return [(b, None) for b in batches] if ex_batch is not None and ex_batch >= 2 else [(ex_batch or 1, None)]
    return [(b, s) for b in batches for s in seqs]


def _dims(model: str | LoadedModel | None) -> DynamicDims:
    """A module whose examples have a batch of 1 is captured static (a dynamic batch needs 2)."""
    if isinstance(model, LoadedModel) and model.example_inputs is not None and (example_shape(model)[0] or 0) < 2:
        return DynamicDims(static=True)
    return DynamicDims()


@contextlib.contextmanager
def _session(progress: bool) -> Iterator[EventFn]:
    """Library chatter off while fxbench works (restored afterwards); with `progress`, the CLI's
    step lines on stderr."""
    before = verbosity()
    if progress:
        set_verbosity(max(before, 0))
    try:
        with quiet_libraries():
            if not progress:
                yield no_events
                return
            from rich.console import Console

            from fxbench.reports.terminal import Progress

            display = Progress(Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120))
            try:
                yield display
            finally:
                display.stop()
    finally:
        set_verbosity(before)


def _export_options(opset: int | None, shapes: str | None):  # noqa: ANN202
    from fxbench.exporters.export import ExportOptions

    return ExportOptions(shapes=shapes, **({"opset": opset} if opset is not None else {}))


def optimize(
    model: Model = None,
    example_inputs: Any = None,
    *,
    output: str | Path | None = None,
    pipeline: str | None = None,
    passes: Sequence[str] = (),
    dtype: str = "fp32",
    to: Sequence[str] | str | None = None,
    device: str = "auto",
    bench: bool = True,
    batch: Sequence[int] | int = (1,),
    seq: Sequence[int] | int | None = (128,),
    time: float = 2.0,
    rounds: int = DEFAULT_ROUNDS,
    threads: int | None = None,
    min_cosine: float = 0.99,
    max_abs_error: float | None = None,
    search: bool | None = None,
    screen: bool = True,
    task: str | None = None,
    opset: int | None = None,
    force: bool = False,
    load: LoadOptions | None = None,
    progress: bool = False,
) -> OptimizeResult:
    """`fxbench optimize` from Python: `model` is a Hub id, a folder, or an nn.Module (a
    transformers model, or any module with `example_inputs`: a tensor, a tuple in forward's order or
    a dict by name); None is the bundled demo model. Writes `output` (default fxbench-out/<model>)
    and returns the OptimizeResult: `.report` (an OptimizeReport: passes, artifacts, benchmark,
    best), `.artifacts`, `.best`, `.output_dir`. Quiet unless `progress`.

        result = fxbench.optimize("sentence-transformers/all-MiniLM-L6-v2", to="onnx-ort", time=1.0)
        print(result.best.backend, result.best.median_ms)
    """
    source = _model(model, example_inputs, task)
    targets = None if to is None else ((to,) if isinstance(to, str) else tuple(to))
    if targets is not None and targets in (("none",), ()):
        targets = ()
    request = OptimizeRequest(
        model=source, output=Path(output) if output else None, task=task, pipeline=pipeline, passes=tuple(passes), dtype=dtype,
        force=force, dims=_dims(source), load=load or LoadOptions(), targets=targets, export=_export_options(opset, None), device=device,
        bench=bench, bench_shapes=tuple(_shapes(source, batch, seq)), warmup=Warmup(), measure=Measure(seconds=time, rounds=rounds),
        threads=threads, min_cosine=min_cosine, max_abs_error=math.inf if max_abs_error is None else max_abs_error, search=search,
        screen=screen,
    )
    with _session(progress) as events:
        return optimize_job(request, events=events)


def bench(
    target: Model = None,
    backends: Sequence[str] | None = None,
    example_inputs: Any = None,
    *,
    batch: Sequence[int] | int = (1,),
    seq: Sequence[int] | int | None = (128,),
    device: str = "auto",
    time: float = 2.0,
    iters: int | None = None,
    rounds: int = DEFAULT_ROUNDS,
    threads: int | None = None,
    task: str | None = None,
    output: str | Path | None = None,
    load: LoadOptions | None = None,
    progress: bool = False,
) -> BenchResult:
    """`fxbench bench` from Python: `target` is a Hub id, a model folder, an fxbench output folder
    (eager plus every artifact it holds) or an nn.Module with example inputs; `backends` names them
    as the CLI does (eager, program, compile, ort@model.onnx, ...). Returns the BenchResult
    (`.measurements`, `.speedup(label, shape)`, `.noisy()`); writes report.json / .md / .html
    into `output` when one is given. Quiet unless `progress`."""
    source = _model(target, example_inputs, task)
    shapes = [Shape(b, s) for b, s in _shapes(source, batch, seq)]
    with _session(progress) as events:
        result = run_benchmark(
            source, list(backends) if backends is not None else None, shapes, device=device, threads=threads, task=task, events=events,
            measure=Measure(iters=iters, seconds=time, rounds=rounds), load=load, command=["fxbench.bench", repr(target)],
        )
        if output is not None:
            from fxbench.reports.files import write_reports

            write_reports(result, Path(output))
    return result


def export(
    source: Model = None,
    to: Sequence[str] | str = ("onnx",),
    example_inputs: Any = None,
    *,
    output: str | Path | None = None,
    device: str = "auto",
    opset: int | None = None,
    shapes: str | None = None,
    task: str | None = None,
    force: bool = False,
    load: LoadOptions | None = None,
    progress: bool = False,
) -> ExportResult:
    """`fxbench export` from Python: `source` is a Hub id or folder (captured without passes), an
    fxbench output folder or model.pt2 (the artifacts are added to that folder, its reports
    rewritten), or an nn.Module with example inputs. Returns the ExportResult (`.artifacts`, each
    checked against eager PyTorch; `.report`; `.output_dir`). Quiet unless `progress`."""
    loaded = _model(source, example_inputs, task)
    request = ExportRequest(source=loaded, targets=(to,) if isinstance(to, str) else tuple(to), output=Path(output) if output else None,
                            options=_export_options(opset, shapes), force=force, task=task, device=device, load=load or LoadOptions())
    with _session(progress) as events:
        return export_job(request, events=events)
