"""The `fxbench` command line: typer commands that parse arguments, call a job and print its report."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console

from fxbench import interrupts
from fxbench.errors import FxbenchError, one_line, show_traceback, verbose, write_error
from fxbench.task_names import task_help

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Capture a model as an FX graph, transform it with verified passes, export and benchmark it.",
    pretty_exceptions_enable=False,
)
passes_app = typer.Typer(no_args_is_help=True, help="The pass library.")
app.add_typer(passes_app, name="passes")

# Piped output gets a wide console: rich's 80-column default folds tables and step lines.
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _quiet_libraries() -> None:
    """Library chatter (weight-loading bars, deprecation notes) would bury fxbench's own lines."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    for name in ("torch", "torch._dynamo", "torch.export", "torch.onnx", "torch.utils._pytree", "transformers", "torchao"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - a dependency
        pass


def _fail(exc: FxbenchError) -> NoReturn:
    show_traceback(exc)  # under -v, above the line: the error line stays the last
    # Plain print, not rich: rich wraps at the terminal width, and the error must stay one line.
    print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
    raise typer.Exit(exc.exit_code)


def _fail_unforeseen(exc: Exception, stage: str | None) -> NoReturn:
    """An exception no layer turned into an FxbenchError: still one line, naming the stage it broke."""
    disk = write_error(exc)
    if disk is not None:
        disk.__cause__ = exc
        _fail(disk)
    show_traceback(exc)
    more = "the traceback is above" if verbose() else "rerun with -v for the traceback"
    print(f"error: {stage or 'fxbench'} failed: {' '.join(one_line(exc, 300).split())}; {more} "
          f"(fxbench did not foresee this failure: please report it)", file=sys.stderr)
    raise typer.Exit(1)


def _verbosity(on: bool) -> None:
    if on:
        os.environ["FXBENCH_VERBOSE"] = "1"


VerboseOpt = Annotated[bool, typer.Option("-v", "--verbose", help="Show the traceback behind an error line.")]


@app.callback()
def _options(verbose_: VerboseOpt = False) -> None:
    _verbosity(verbose_)


class _Tracked:
    """The job's events, passed on, with the step they were in remembered for an unforeseen error."""

    def __init__(self, inner: Callable[[str, str, str], None]):
        self.inner, self.running, self.failed = inner, [], None

    def __call__(self, step: str, status: str, detail: str) -> None:
        if status == "start":
            self.running.append(step)
        elif status != "warn" and step in self.running:
            self.running.remove(step)
            if status == "fail" and self.failed is None:
                self.failed = step
        self.inner(step, status, detail)

    @property
    def stage(self) -> str | None:
        return self.failed or (self.running[-1] if self.running else None)


def _range(text: str, what: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.replace("-", ":").split(":"))
    except ValueError:
        raise FxbenchError(f"bad --{what}-range {text!r}; expected MIN:MAX such as 1:64") from None
    return lo, hi


ModelArg = Annotated[Optional[str], typer.Argument(help="Hub model id or local folder; omitted: the bundled demo model (fxbench[demo]).")]
TaskOpt = Annotated[Optional[str], typer.Option("--task", help=task_help())]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
OpsetOpt = Annotated[Optional[int], typer.Option("--opset", help="ONNX opset for ONNX targets (18-23; default 18).")]
ShapesOpt = Annotated[Optional[str], typer.Option("--shapes", help="TensorRT profile NAME:MIN,OPT,MAX per input, e.g. input_ids:1x16,8x128,32x512 (';' between inputs).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Device the artifacts are built and checked for: cpu or cuda.")]


def _export_options(opset: int | None, shapes: str | None, device: str, trt_precision: str | None = None):  # noqa: ANN202
    from fxbench.exporters.export import ExportOptions  # lazily: it loads onnx and onnxruntime

    return ExportOptions(device=device, shapes=shapes, tensorrt_precision=trt_precision,
                         **({"opset": opset} if opset is not None else {}))


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FxbenchError(f"bad --{what} {text!r}; expected comma-separated integers such as 1,8,32") from None


@contextlib.contextmanager
def _steps(show: bool = True) -> Iterator[Callable[[str, str, str], None]]:
    """The job's step lines on stderr while the block runs (`show`); an error in it is one line and the exit."""
    from fxbench.reports.terminal import Progress  # lazily: the reports pull in torch, which --help does not need

    progress = Progress(err, enabled=show)
    tracked = _Tracked(progress)
    try:
        yield tracked
    except FxbenchError as exc:
        progress.stop()
        _fail(exc)
    except Exception as exc:  # noqa: BLE001 - whatever escaped the layers is still one line
        progress.stop()
        _fail_unforeseen(exc, tracked.stage)
    finally:
        progress.stop()


def _json(record: object) -> None:
    from fxbench.reports.files import jsonable

    print(json.dumps(jsonable(record), indent=2))


def _finish(result: Any, json_out: bool, show: Callable[[], None]) -> None:
    """A job's report (JSON or tables), then the exit its failed targets call for (the rest are written)."""
    if json_out:
        _json(result.report)
    else:
        show()
    try:
        result.raise_for_failures()
    except FxbenchError as exc:
        _fail(exc)


@app.command()
def optimize(
    model: ModelArg = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output folder (default: fxbench-out/<model>).")] = None,
    task: TaskOpt = None,
    pipeline: Annotated[Optional[str], typer.Option("--pipeline", help="Named pipeline (see `fxbench passes list`); default O2.")] = None,
    passes: Annotated[Optional[list[str]], typer.Option("--passes", "--pass", help="NAME[:opt=v,...] adds or re-options a pass, -NAME removes one; repeatable; ';' separates several.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="A pass that breaks the tolerance is an error, not a rollback.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty output folder.")] = False,
    batch: Annotated[int, typer.Option("--batch", help="Sample batch size for capture and checks.")] = 2,
    seq: Annotated[int, typer.Option("--seq", help="Sample sequence length for text models.")] = 16,
    batch_range: Annotated[str, typer.Option("--batch-range", help="Dynamic batch range MIN:MAX.")] = "1:64",
    seq_range: Annotated[str, typer.Option("--seq-range", help="Dynamic sequence range MIN:MAX (capped at the model's positions).")] = "2:512",
    image_range: Annotated[Optional[str], typer.Option("--image-range", help="Dynamic image height and width range MIN:MAX for vision models (default 32:2048, narrowed to what the model accepts; the sides stay a multiple of its stride where it needs one).")] = None,
    static: Annotated[bool, typer.Option("--static", help="Capture with static shapes.")] = False,
    attn: Annotated[Optional[str], typer.Option("--attn", help="Attention implementation to load: eager or sdpa.")] = None,
    target: Annotated[Optional[str], typer.Option("--target", help="Artifacts to make: comma-separated onnx, onnx-ort, onnx-int8, tensorrt, aoti; 'none' for model.pt2 only. Default: those that fit --device.")] = None,
    opset: OpsetOpt = None,
    shapes: ShapesOpt = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu or cuda: where artifacts are built and timed (default: cuda if there is a GPU).")] = None,
    bench: Annotated[bool, typer.Option("--bench/--no-bench", help="Time every artifact against eager PyTorch and name the best.")] = True,
    bench_batch: Annotated[str, typer.Option("--bench-batch", help="Batch sizes to time, comma-separated.")] = "1",
    bench_seq: Annotated[str, typer.Option("--bench-seq", help="Sequence lengths to time, comma-separated (capped at the model's positions).")] = "128",
    bench_image_size: Annotated[Optional[str], typer.Option("--bench-image-size", help="Image sizes to time vision models at: N or HxW, comma-separated, e.g. 224,384,640x480 (default: the capture's).")] = None,
    bench_time: Annotated[float, typer.Option("--bench-time", help="Seconds of timed runs per backend and shape.")] = 2.0,
    bench_rounds: Annotated[int, typer.Option("--bench-rounds", help="Interleave the timed runs in this many rounds (all artifacts loaded at once).")] = 1,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for every backend (default: torch's).")] = None,
    min_cosine: Annotated[float, typer.Option("--min-cosine", help="Accuracy budget of the best artifact: worst output cosine against eager fp32.")] = 0.99,
    max_abs_error: Annotated[float, typer.Option("--max-abs-error", help="Accuracy budget: largest absolute error against eager fp32.")] = float("inf"),
    search: Annotated[bool, typer.Option("--search", help="Try the presets that fit --device; keep the fastest within the budget.")] = False,
    json_out: JsonOpt = False,
    verbose_: VerboseOpt = False,
) -> None:
    """Capture MODEL, run a verified pass pipeline, export the artifacts that fit the device, time
    them against eager PyTorch and write DIR/model.pt2, the artifacts and report.json/.md/.html."""
    from fxbench.jobs import OptimizeRequest, default_device
    from fxbench.jobs import optimize as run_optimize
    from fxbench.models import DynamicDims
    from fxbench.reports.terminal import print_optimize
    from fxbench.runtime.bench import parse_image_sizes
    from fxbench.runtime.harness import Measure

    _verbosity(verbose_)
    with _steps() as progress:
        edits = tuple(e for spec in (passes or []) for e in spec.split(";") if e.strip())
        seqs = _int_list(bench_seq, "bench-seq")
        request = OptimizeRequest(
            model=model, output=output, task=task, pipeline=pipeline, passes=edits, strict=strict, force=force,
            batch=batch, seq=seq, attn_implementation=attn,
            dims=DynamicDims(batch=_range(batch_range, "batch"), seq=_range(seq_range, "seq"), static=static,
                             image=_range(image_range, "image") if image_range else None),
            targets=None if target is None else (() if target.strip().lower() == "none" else tuple(target.split(","))),
            export=_export_options(opset, shapes, device or default_device()),
            bench=bench, bench_shapes=tuple((b, s) for b in _int_list(bench_batch, "bench-batch") for s in seqs),
            bench_images=tuple(parse_image_sizes(bench_image_size)) if bench_image_size else (),
            measure=Measure(seconds=bench_time, rounds=bench_rounds), threads=threads, min_cosine=min_cosine, max_abs_error=max_abs_error,
            search=search,
        )
        result = run_optimize(request, events=progress)
    _finish(result, json_out, lambda: print_optimize(out, result.report, result.output_dir))


@app.command()
def export(
    model: Annotated[Optional[str], typer.Argument(help="Hub model id or folder (captured, no passes), an fxbench output folder or a model.pt2; omitted: the demo model.")] = None,
    to: Annotated[str, typer.Option("--to", help="Comma-separated targets: onnx, onnx-ort, onnx-int8, tensorrt, aoti.")] = "onnx",
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output folder (default: the output folder given, else fxbench-out/<model>).")] = None,
    opset: OpsetOpt = None,
    shapes: ShapesOpt = None,
    device: DeviceOpt = "cpu",
    trt_precision: Annotated[Optional[str], typer.Option("--trt-precision", help="TensorRT precision (default: the graph's); fp16/bf16 lower an fp32 graph with TensorRT 10's builder flags.")] = None,
    task: TaskOpt = None,
    batch_range: Annotated[str, typer.Option("--batch-range", help="Dynamic batch range MIN:MAX (a model; a saved program keeps its own).")] = "1:64",
    seq_range: Annotated[str, typer.Option("--seq-range", help="Dynamic sequence range MIN:MAX (capped at the model's positions).")] = "2:512",
    static: Annotated[bool, typer.Option("--static", help="Capture a model with static shapes.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing artifacts or a non-empty output folder.")] = False,
    json_out: JsonOpt = False,
    verbose_: VerboseOpt = False,
) -> None:
    """Export MODEL (or a saved optimized program) to deployable artifacts, each checked against eager PyTorch."""
    from fxbench.jobs import ExportRequest
    from fxbench.jobs import export as run_export
    from fxbench.models import DynamicDims
    from fxbench.reports.terminal import print_export

    _verbosity(verbose_)
    with _steps() as progress:
        dims = DynamicDims(batch=_range(batch_range, "batch"), seq=_range(seq_range, "seq"), static=static)
        request = ExportRequest(source=model, targets=tuple(to.split(",")), output=output,
                                options=_export_options(opset, shapes, device, trt_precision), force=force, task=task, dims=dims)
        result = run_export(request, events=progress)
    _finish(result, json_out, lambda: print_export(out, result.artifacts, result.output_dir))


@passes_app.command("list")
def passes_list(json_out: JsonOpt = False) -> None:
    """Every registered pass: name, summary, options, built-in or plugin; and the pipelines."""
    from fxbench.jobs import pass_catalog
    from fxbench.reports.terminal import catalog_tables

    catalog = pass_catalog()
    if json_out:
        _json(catalog)
        return
    for table in catalog_tables(catalog):
        out.print(table)
    for name, error in catalog.plugin_errors.items():
        err.print(f"[yellow]plugin {name} failed to load:[/] {error}")


@app.command()
def inspect(
    model: ModelArg = None,
    task: TaskOpt = None,
    graph: Annotated[bool, typer.Option("--graph", help="Print the FX graph.")] = False,
    depth: Annotated[int, typer.Option("--depth", help="Module path depth for node counts.")] = 3,
    top: Annotated[int, typer.Option("--top", help="How many ops of the histogram to show.")] = 20,
    json_out: JsonOpt = False,
    verbose_: VerboseOpt = False,
) -> None:
    """Parameters, op histogram and node counts per module of MODEL, a .pt2 file or an output folder."""
    from fxbench.jobs import inspect_target
    from fxbench.reports.terminal import inspection_tables

    _verbosity(verbose_)
    with _steps(show=False) as progress:
        if depth < 1 or top < 1:
            raise FxbenchError(f"--depth and --top must be at least 1, not {depth} and {top}")
        info = inspect_target(model, task=task, depth=depth, events=progress)
    if json_out:
        _json(info)
        return
    for part in inspection_tables(info, depth, top):
        out.print(part)
    if graph:
        out.print(info.graph.print_readable(print_output=False), markup=False)


@app.command()
def bench(
    model: Annotated[Optional[str], typer.Argument(help="Hub model id, model folder, or fxbench output folder (benches its artifacts); omitted: the demo model.")] = None,
    backends: Annotated[Optional[list[str]], typer.Option("--backends", "--backend", help="Comma-separated backend names, NAME@FILE for an artifact; see `fxbench bench --list`. Default: eager, program, compile (a model) or eager plus every artifact (a folder).")] = None,
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes to sweep, comma-separated.")] = "1",
    seq: Annotated[str, typer.Option("--seq", help="Sequence lengths to sweep, comma-separated (text models).")] = "128",
    image_size: Annotated[Optional[str], typer.Option("--image-size", help="Image sizes to sweep (vision models): N or HxW, comma-separated, e.g. 224,384,640x480 (default: the capture's).")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda: where device-agnostic backends run.")] = "cpu",
    warmup: Annotated[int, typer.Option("--warmup", help="Warm-up runs after the first call, at least.")] = 10,
    warmup_time: Annotated[float, typer.Option("--warmup-time", help="Warm-up seconds after the first call, at least.")] = 0.5,
    iters: Annotated[Optional[int], typer.Option("--iters", help="Timed runs, exactly (instead of --time).")] = None,
    seconds: Annotated[Optional[float], typer.Option("--time", help="Seconds of timed runs per backend and shape (default 2).")] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="Interleave the backends' timed runs in this many rounds (all loaded at once): ratios that hold on a noisy machine.")] = 1,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch and ONNX Runtime (default: torch's).")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Folder for report.json, report.md, report.html (default: DIR/bench for a folder, fxbench-out/<model>-bench).")] = None,
    task: TaskOpt = None,
    list_backends: Annotated[bool, typer.Option("--list", help="List the backend names and exit.")] = False,
    json_out: JsonOpt = False,
    verbose_: VerboseOpt = False,
) -> None:
    """Benchmark backends on the same inputs over a batch x sequence sweep, checked against eager fp32."""
    from fxbench.jobs import default_report_dir, run_benchmark
    from fxbench.reports.files import write_reports
    from fxbench.reports.terminal import backends_table, render_table
    from fxbench.runtime import BACKENDS, Measure, Warmup, parse_image_sizes, shapes_from

    _verbosity(verbose_)
    if list_backends:
        out.print(backends_table(list(BACKENDS.values())))
        return
    with _steps() as progress:
        if iters is not None and seconds is not None:
            raise FxbenchError("give --iters or --time, not both")
        names = [n for spec in (backends or []) for n in spec.split(",") if n.strip()] or None
        shapes = shapes_from(_int_list(batch, "batch"), _int_list(seq, "seq"), images=parse_image_sizes(image_size) if image_size else ())
        measure = Measure(iters=iters, seconds=seconds if seconds is not None else 2.0, rounds=rounds)
        result = run_benchmark(
            model, names, shapes, device=device, threads=threads, task=task, events=progress,
            warmup=Warmup(iters=warmup, seconds=warmup_time, max_seconds=max(120.0, warmup_time)), measure=measure,
        )
        paths = write_reports(result, output or default_report_dir(model, result))
    if json_out:
        _json(result)
    else:
        out.print(render_table(result))
        out.print(f"[bold]{paths['json'].parent}[/]: report.json, report.md, report.html")
    failed = result.failures()
    if failed:
        first = failed[0]
        who = getattr(first, "label", None) or getattr(first, "backend", "")
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        print(f"error: {len(failed)} backend run(s) failed, the others were timed: {who}: {' '.join(first.reason.split())[:240]}"
              f"{more}; {paths['json']} says why for each", file=sys.stderr)
        raise typer.Exit(1)


def _usage_error(exc: Any) -> NoReturn:
    """click's usage errors (an unknown option, a value of the wrong type) as the one `error:` line
    every other failure is, instead of a boxed, wrapped usage message."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()  # `fxbench` alone: the help
        sys.exit(exc.exit_code)
    where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "fxbench"
    print(f"error: {' '.join(exc.format_message().split()).rstrip('.')}; see {where} --help", file=sys.stderr)
    sys.exit(exc.exit_code)


def main() -> None:
    _quiet_libraries()
    interrupts.install()
    try:
        code = app(prog_name="fxbench", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
    except typer.TyperException as exc:  # typer's click: usage errors (ClickException and its kind)
        if not hasattr(exc, "format_message"):
            raise
        _usage_error(exc)
    except (interrupts.Interrupted, KeyboardInterrupt) as exc:
        code = exc.exit_code if isinstance(exc, interrupts.Interrupted) else 130
        name = exc.name if isinstance(exc, interrupts.Interrupted) else "SIGINT"
        print(f"error: interrupted by {name}; stopped without leaving a half-written output (exit {code})", file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
