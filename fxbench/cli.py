"""The `fxbench` command line: typer commands that parse arguments, call a job and print its report.

Every option a command takes is defined once, in the table of options below, by concept: one name
and one default per concept across commands (a sweep is --batch/--seq wherever there is a
benchmark; the capture's sample is --sample-batch/--sample-seq; artifacts are --to; timing is
--time/--iters/--rounds/--warmup/--warmup-time; --device is auto|cpu|cuda everywhere). A new
option (bench --generate, a new peer backend's flag) is one Annotated entry here, then a parameter
of the commands that take it. Names with a fixed set of values are checked while the command line
is parsed, before any model loads. Old names still work as hidden aliases (optimize --target,
--bench-batch, --bench-seq, --bench-time, --bench-rounds; bench --list)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import click
import typer
import typer.core
from rich.console import Console

from fxbench import interrupts
from fxbench.errors import BenchOptionError, FxbenchError, one_line, show_traceback, verbose, write_error
from fxbench.events import set_verbosity, verbosity
from fxbench.task_names import task_help

# ----- choices known without importing torch (tests/test_cli_conventions.py checks each against its source)

PIPELINE_NAMES = ("O1", "O2", "O3", "bf16", "int8-cpu", "bf16-cpu", "int8-cpu-static", "int8-gpu", "fp8", "none")
DEVICE_NAMES = ("auto", "cpu", "cuda")
ATTN_NAMES = ("eager", "sdpa")
DTYPE_NAMES = ("fp32", "fp16", "bf16")
TRT_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# typer >= 0.22 carries its own copy of click: its usage errors are of typer's classes.
_USAGE_ERRORS: tuple[type[Exception], ...] = tuple({click.ClickException, getattr(typer, "TyperException", click.ClickException)})
_BAD_PARAMETER = tuple({click.BadParameter, typer.BadParameter})
_ABORT = tuple({click.Abort, typer.Abort})


class _Group(typer.core.TyperGroup):
    """The command group: a usage error (a bad choice, an unknown option) is one `error:` line and
    exit code 2, as every other user error."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:  # noqa: D102
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except _USAGE_ERRORS as exc:
            if not standalone_mode:
                raise
            print(f"error: {_usage_message(exc)}", file=sys.stderr)
            sys.exit(getattr(exc, "exit_code", 2))
        except _ABORT:
            if not standalone_mode:
                raise
            print("error: aborted", file=sys.stderr)
            sys.exit(1)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


def _usage_message(exc: Exception) -> str:
    if isinstance(exc, _BAD_PARAMETER) and str(exc.message).startswith("-"):  # type: ignore[attr-defined]
        message = exc.message  # type: ignore[attr-defined]  # a parser of ours: its message names the option
    else:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    ctx = getattr(exc, "ctx", None)
    hint = f"; see {ctx.command_path} --help" if ctx is not None and not isinstance(exc, _BAD_PARAMETER) else ""
    return _one_line(message).rstrip(".") + hint


_CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    add_completion=True,
    context_settings=_CONTEXT,
    # Rich markup reads `[word]` as a style tag: help text writes a literal bracket as `\\[`
    # (`fxbench\\[demo]`); tests/test_cli_conventions.py checks the help prints it.
    rich_markup_mode="rich",
    help="Capture a model as an FX graph, transform it with verified passes, export and benchmark it.",
    pretty_exceptions_enable=False,
)
passes_app = typer.Typer(cls=_Group, no_args_is_help=True, context_settings=_CONTEXT, rich_markup_mode="rich", help="The pass library.")
backends_app = typer.Typer(cls=_Group, no_args_is_help=True, context_settings=_CONTEXT, rich_markup_mode="rich",
                           help="The benchmark's backends.")
targets_app = typer.Typer(cls=_Group, no_args_is_help=True, context_settings=_CONTEXT, rich_markup_mode="rich",
                          help="The export targets.")
app.add_typer(passes_app, name="passes")
app.add_typer(backends_app, name="backends")
app.add_typer(targets_app, name="targets")


def _width(stream: Any) -> int | None:
    """The width to lay tables out for: $COLUMNS, else the terminal's (of this stream or of the
    other one, when this one is piped), else 120 for a log file."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    if stream.isatty():
        return None  # rich follows the terminal, resizes included
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            return os.get_terminal_size(fd).columns
    return 120


err = Console(stderr=True, highlight=False, width=_width(sys.stderr))
out = Console(highlight=False, width=_width(sys.stdout))


def _fail(exc: FxbenchError) -> NoReturn:
    show_traceback(exc)  # under -v, above the line: the error line stays the last
    # Plain print, not rich: rich wraps at the terminal width, and the error must stay one line.
    print(f"error: {_one_line(str(exc))}", file=sys.stderr)
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


class _Tracked:
    """The job's events, passed on, with the step they were in remembered for an unforeseen error."""

    def __init__(self, inner: Callable[[str, str, str], None]):
        self.inner, self.running, self.failed = inner, [], None

    def __call__(self, step: str, status: str, detail: str) -> None:
        if status == "start":
            self.running.append(step)
        elif status not in ("warn", "update") and step in self.running:
            self.running.remove(step)
            if status == "fail" and self.failed is None:
                self.failed = step
        self.inner(step, status, detail)

    @property
    def stage(self) -> str | None:
        return self.failed or (self.running[-1] if self.running else None)


class _Names:
    """A parser for a name (or, `many`, comma-separated names) from a list, static or known only
    after an import (tasks, export targets): checked while the command line is parsed, before any
    model loads, as one `error:` line; and offered by shell completion."""

    def __init__(self, what: str, names: Callable[[], Sequence[str]] | Sequence[str], *, many: bool = False, extra: Sequence[str] = ()):
        self.what, self._names, self.many, self.extra = what, names, many, tuple(extra)
        self.flag = ""  # the option's name, for the error line (click does not hand a parser its option)

    def known(self) -> list[str]:
        names = self._names() if callable(self._names) else self._names
        return [*names, *self.extra]

    def __call__(self, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        items = [v.strip() for v in value.split(",") if v.strip()] if self.many else [value.strip()]
        known = self.known()
        bad = [v for v in items if v not in known]
        if bad or not items:
            where = f"{self.flag}: " if self.flag else ""
            raise typer.BadParameter(f"{where}unknown {self.what} {(bad or [value])[0]!r}; choose {'some' if self.many else 'one'} of: {', '.join(known)}")
        return ",".join(items) if self.many else items[0]

    def complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
        head, _, tail = incomplete.rpartition(",") if self.many else ("", "", incomplete)
        return [f"{head},{n}" if head else n for n in self.known() if n.startswith(tail)]

    def option(self, *decls: str, metavar: str | None = None, **kwargs: Any) -> Any:
        """A typer.Option parsed and completed by this."""
        static = None if callable(self._names) else "|".join(self.known())
        self.flag = decls[0]
        return typer.Option(*decls, parser=self, shell_complete=self.complete, metavar=metavar or (f"[{static}]" if static else None), **kwargs)


def _tasks() -> list[str]:
    from fxbench.models import TASKS

    return list(TASKS)


def _targets() -> list[str]:
    from fxbench.exporters.targets import target_names

    return list(target_names())


_TARGETS = _Names("export target", _targets, many=True)
_TARGETS_OR_NONE = _Names("export target", _targets, many=True, extra=("none",))


# ----- the table of options, by concept

def _flag(*decls: str, **kwargs: Any) -> Any:
    """An option that takes no value (a switch, or -v counted): the help shows no type beside it."""
    return typer.Option(*decls, metavar="", **kwargs)


# model
ModelArg = Annotated[Optional[str], typer.Argument(help="Hub model id or local folder; omitted: the bundled demo model (fxbench\\[demo]).")]
TaskOpt = Annotated[Optional[str], _Names("task", _tasks).option("--task", metavar="TASK", rich_help_panel="Model", help=task_help())]
AttnOpt = Annotated[Optional[str], _Names("attention implementation", ATTN_NAMES).option("--attn", rich_help_panel="Model",
                                                help="Attention implementation to load: eager or sdpa.")]
RevisionOpt = Annotated[Optional[str], typer.Option("--revision", rich_help_panel="Model", help="Hub revision: a branch, tag or commit.")]
CacheDirOpt = Annotated[Optional[Path], typer.Option("--cache-dir", rich_help_panel="Model", help="Folder for the Hub's downloads (default: HF's cache).")]
TokenOpt = Annotated[Optional[str], typer.Option("--token", envvar="HF_TOKEN", show_envvar=True, rich_help_panel="Model",
                                                 help="Hub access token for gated or private models (never written to a report).")]
RemoteCodeOpt = Annotated[bool, _flag("--trust-remote-code", rich_help_panel="Model",
                                             help="Let the repository's own modeling code run.")]
# capture
SampleBatchOpt = Annotated[int, typer.Option("--sample-batch", rich_help_panel="Capture", help="Batch of the sample the model is captured and checked on.")]
SampleSeqOpt = Annotated[int, typer.Option("--sample-seq", rich_help_panel="Capture", help="Sequence length of that sample (text models).")]
BatchRangeOpt = Annotated[Optional[str], typer.Option("--batch-range", rich_help_panel="Capture", help="Dynamic batch range MIN:MAX (default 1:64).")]
SeqRangeOpt = Annotated[Optional[str], typer.Option("--seq-range", rich_help_panel="Capture",
                                                    help="Dynamic sequence range MIN:MAX, capped at the model's positions (default 2:512).")]
ImageRangeOpt = Annotated[Optional[str], typer.Option("--image-range", rich_help_panel="Capture",
                                                      help="Dynamic image height and width range MIN:MAX for vision models (default 32:2048, narrowed to what the model accepts).")]
StaticOpt = Annotated[bool, _flag("--static", rich_help_panel="Capture", help="Capture with static shapes.")]
# artifacts
DeviceOpt = Annotated[str, _Names("device", DEVICE_NAMES).option("--device", rich_help_panel="Artifacts",
                                        help="Where artifacts are built and timed: auto (an output folder's own device, else the GPU if there is one), cpu or cuda.")]
OpsetOpt = Annotated[Optional[int], typer.Option("--opset", rich_help_panel="Artifacts", help="ONNX opset for ONNX targets (18-23; default 18).")]
ShapesOpt = Annotated[Optional[str], typer.Option("--shapes", rich_help_panel="Artifacts",
                                                  help="TensorRT profile NAME:MIN,OPT,MAX per input, e.g. input_ids:1x16,8x128,32x512 (';' between inputs).")]
TrtPrecisionOpt = Annotated[Optional[str], _Names("precision", TRT_PRECISIONS).option("--trt-precision", rich_help_panel="Artifacts",
                                                        help="TensorRT precision (default: the graph's); fp16/bf16 lower an fp32 graph with TensorRT 10's builder flags.")]
# benchmark
BatchOpt = Annotated[str, typer.Option("--batch", rich_help_panel="Benchmark", help="Batch sizes to time, comma-separated.")]
SeqOpt = Annotated[str, typer.Option("--seq", rich_help_panel="Benchmark", help="Sequence lengths to time, comma-separated (capped at the model's positions).")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", rich_help_panel="Benchmark", help="CPU threads for torch and ONNX Runtime (default: torch's).")]
TimeOpt = Annotated[Optional[float], typer.Option("--time", rich_help_panel="Timing", help="Seconds of timed runs per backend and shape (default 2).")]
ItersOpt = Annotated[Optional[int], typer.Option("--iters", rich_help_panel="Timing", help="Timed runs, exactly (instead of --time).")]
RoundsOpt = Annotated[int, typer.Option("--rounds", rich_help_panel="Timing",
                                        help="Interleave the backends' timed runs in this many rounds (all loaded at once), so that ratios hold on a noisy machine; 1: one backend after another.")]
WarmupOpt = Annotated[int, typer.Option("--warmup", rich_help_panel="Timing", help="Warm-up runs after the first call, at least.")]
WarmupTimeOpt = Annotated[float, typer.Option("--warmup-time", rich_help_panel="Timing", help="Warm-up seconds after the first call, at least.")]
# output
OutputOpt = Annotated[Optional[Path], typer.Option("-o", "--output", rich_help_panel="Output", help="Output folder (default: fxbench-out/<model>).")]
ForceOpt = Annotated[bool, _flag("--force", rich_help_panel="Output", help="Replace a non-empty output folder (export: existing artifacts).")]
JsonOpt = Annotated[bool, _flag("--json", rich_help_panel="Output", help="Print machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, _flag("-q", "--quiet", rich_help_panel="Output", help="No progress or step lines: results and errors only.")]
VerboseOpt = Annotated[int, _flag("-v", "--verbose", count=True, show_default=False, rich_help_panel="Output",
                                         help="Say more: library warnings, and tracebacks of fxbench's own errors (-vv: debug).")]


def _hidden(name: str) -> Any:
    """An old option name kept working, out of the help."""
    return typer.Option(name, hidden=True)


# ----- helpers the commands share

def _set_verbosity(quiet: bool, verbose: int) -> None:
    if quiet and verbose:
        raise FxbenchError("give -q or -v, not both")
    if quiet:
        set_verbosity(-1)
    elif verbose:
        set_verbosity(max(verbosity(), verbose))
        os.environ["FXBENCH_VERBOSE"] = "1"  # fxbench.errors.show_traceback: the traceback above the error line


@contextlib.contextmanager
def _job(quiet: bool = False, verbose: int = 0) -> Iterator[Callable[[str, str, str], None]]:
    """Progress on stderr while the block runs; a user error in it is one line and the exit."""
    try:
        _set_verbosity(quiet, verbose)
    except FxbenchError as exc:
        _fail(exc)
    from fxbench.reports.terminal import Progress  # lazily: the reports pull in torch, which --help does not need

    progress = Progress(err)
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

    print(json.dumps(jsonable(record), indent=2, allow_nan=False))


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


def _range(text: str, what: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.replace("-", ":").split(":"))
    except ValueError:
        raise FxbenchError(f"bad --{what}-range {text!r}; expected MIN:MAX such as 1:64") from None
    return lo, hi


def _dims(batch_range: str | None, seq_range: str | None, image_range: str | None, static: bool) -> "DynamicDims":
    """The capture's dynamic ranges from --batch-range/--seq-range/--image-range/--static (unset: the defaults)."""
    from fxbench.models import DynamicDims

    given = {k: _range(v, k) for k, v in (("batch", batch_range), ("seq", seq_range), ("image", image_range)) if v}
    return DynamicDims(static=static, **given)


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FxbenchError(f"bad --{what} {text!r}; expected comma-separated integers such as 1,8,32") from None


def _export_options(opset: int | None, shapes: str | None, trt_precision: str | None = None):  # noqa: ANN202
    from fxbench.exporters.export import ExportOptions  # lazily: it loads onnx and onnxruntime

    return ExportOptions(shapes=shapes, tensorrt_precision=trt_precision, **({"opset": opset} if opset is not None else {}))


def _load_options(revision: str | None, cache_dir: Path | None, token: str | None, trust_remote_code: bool):  # noqa: ANN202
    from fxbench.models import LoadOptions

    return LoadOptions(revision=revision, cache_dir=str(cache_dir) if cache_dir else None, token=token, trust_remote_code=trust_remote_code)


def _timing(iters: int | None, seconds: float | None, rounds: int, warmup: int, warmup_time: float):  # noqa: ANN202
    from fxbench.runtime.harness import Measure, Warmup

    if iters is not None and seconds is not None:
        raise FxbenchError("give --iters or --time, not both")
    measure = Measure(iters=iters, seconds=seconds if seconds is not None else 2.0, rounds=rounds)
    return Warmup(iters=warmup, seconds=warmup_time, max_seconds=max(120.0, warmup_time)), measure


def _version(value: bool) -> None:
    if value:
        versions = []
        for name in ("torch", "transformers", "onnxruntime"):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                versions.append(f"{name} {importlib.metadata.version(name)}")
        from fxbench import __version__

        print(f"fxbench {__version__} ({', '.join(versions)})")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, _flag("--version", callback=_version, is_eager=True, help="Print fxbench's version and exit.")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Capture a model as an FX graph, transform it with verified passes, export and benchmark it."""
    if quiet or verbose:
        try:
            _set_verbosity(quiet, verbose)
        except FxbenchError as exc:
            _fail(exc)


# ----- commands

@app.command()
def optimize(
    model: ModelArg = None,
    output: OutputOpt = None,
    task: TaskOpt = None,
    attn: AttnOpt = None,
    revision: RevisionOpt = None,
    cache_dir: CacheDirOpt = None,
    token: TokenOpt = None,
    trust_remote_code: RemoteCodeOpt = False,
    pipeline: Annotated[Optional[str], _Names("pipeline", PIPELINE_NAMES).option("--pipeline", metavar="NAME", rich_help_panel="Passes",
                                                    help="Named pipeline: " + ", ".join(PIPELINE_NAMES) + " (see `fxbench passes list`); default O2; none: only the --passes given.")] = None,
    passes: Annotated[Optional[list[str]], typer.Option("--passes", "--pass", metavar="SPEC", rich_help_panel="Passes",
                                                        help="NAME[:opt=v,...] adds a pass to the pipeline (or re-options one in it), -NAME removes one; repeatable; ';' separates several.")] = None,
    dtype: Annotated[str, _Names("dtype", DTYPE_NAMES).option("--dtype", rich_help_panel="Passes",
                                       help="Precision of the program and its artifacts: fp16/bf16 add to-fp16/to-bf16 to the pipeline (eager fp32 stays the reference).")] = "fp32",
    strict: Annotated[bool, _flag("--strict", rich_help_panel="Passes", help="A pass that breaks the tolerance is an error, not a rollback.")] = False,
    search: Annotated[Optional[bool], _flag("--search/--no-search", rich_help_panel="Passes",
                                            help="Try the presets that fit --device; keep the fastest within the budget (default: on a CPU without --pipeline or --passes).")] = None,
    sample_batch: SampleBatchOpt = 2,
    sample_seq: SampleSeqOpt = 16,
    batch_range: BatchRangeOpt = None,
    seq_range: SeqRangeOpt = None,
    image_range: ImageRangeOpt = None,
    static: StaticOpt = False,
    to: Annotated[Optional[str], _TARGETS_OR_NONE.option("--to", metavar="TARGETS", rich_help_panel="Artifacts",
                                              help="Artifacts to make, comma-separated (see `fxbench targets list`); none: model.pt2 only. Default: those that fit --device.")] = None,
    device: DeviceOpt = "auto",
    opset: OpsetOpt = None,
    shapes: ShapesOpt = None,
    trt_precision: TrtPrecisionOpt = None,
    bench: Annotated[bool, _flag("--bench/--no-bench", rich_help_panel="Benchmark", help="Time every artifact against eager PyTorch and name the best.")] = True,
    screen: Annotated[bool, _flag("--screen/--no-screen", rich_help_panel="Benchmark",
                                  help="Under a search: a short interleaved screen of every candidate's artifacts, then the full benchmark of each candidate's fastest; --no-screen gives every artifact the full benchmark.")] = True,
    batch: BatchOpt = "1",
    seq: SeqOpt = "128",
    image_size: Annotated[Optional[str], typer.Option("--image-size", rich_help_panel="Benchmark",
                                                      help="Image sizes to time vision models at: N or HxW, comma-separated, e.g. 224,384,640x480 (default: the capture's).")] = None,
    threads: ThreadsOpt = None,
    min_cosine: Annotated[float, typer.Option("--min-cosine", rich_help_panel="Benchmark", help="Accuracy budget of the best artifact: worst output cosine against eager fp32, at every checked shape.")] = 0.99,
    max_abs_error: Annotated[Optional[float], typer.Option("--max-abs-error", rich_help_panel="Benchmark", help="Accuracy budget: largest absolute error against eager fp32 (default: no limit).")] = None,
    seconds: TimeOpt = None,
    iters: ItersOpt = None,
    rounds: RoundsOpt = 5,
    warmup: WarmupOpt = 10,
    warmup_time: WarmupTimeOpt = 0.5,
    force: ForceOpt = False,
    generate: Annotated[bool, _flag("--generate", rich_help_panel="Benchmark",
                                    help="A causal LM for generation: capture it with its KV cache (--task text-generation-with-past) and bench by greedy generation.")] = False,
    new_tokens: Annotated[int, typer.Option("--new-tokens", rich_help_panel="Benchmark", help="With-past models: new tokens per generation in the benchmark (--seq is the prompt length).")] = 32,
    min_token_agreement: Annotated[float, typer.Option("--min-token-agreement", rich_help_panel="Benchmark",
                                                       help="With-past models: accuracy budget of the best artifact, teacher-forced token agreement with eager generate().")] = 0.9,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
    target: Annotated[Optional[str], _Names("export target", _targets, many=True, extra=("none",)).option("--target", hidden=True)] = None,
    bench_batch: Annotated[Optional[str], _hidden("--bench-batch")] = None,
    bench_seq: Annotated[Optional[str], _hidden("--bench-seq")] = None,
    bench_time: Annotated[Optional[float], _hidden("--bench-time")] = None,
    bench_rounds: Annotated[Optional[int], _hidden("--bench-rounds")] = None,
    bench_image_size: Annotated[Optional[str], _hidden("--bench-image-size")] = None,
) -> None:
    """Capture MODEL, run a verified pass pipeline, export the artifacts that fit the device, time
    them against eager PyTorch (interleaved rounds, one eager baseline) and write DIR/model.pt2,
    the artifacts and report.json/.md/.html. With --generate (or --task text-generation-with-past)
    the capture takes and returns the KV cache, and the artifacts are timed by greedy generation
    against eager generate()."""
    with _job(quiet, verbose) as progress:
        from fxbench.jobs import OptimizeRequest
        from fxbench.jobs import optimize as run_optimize
        from fxbench.reports.terminal import print_optimize
        from fxbench.runtime.bench import parse_image_sizes

        to = target if to is None else to
        image_size = bench_image_size if image_size is None else image_size
        warm, measure = _timing(iters, seconds if seconds is not None else bench_time, bench_rounds or rounds, warmup, warmup_time)
        edits = tuple(e for spec in (passes or []) for e in spec.split(";") if e.strip())
        seqs = _int_list(bench_seq or seq, "seq")
        request = OptimizeRequest(
            model=model, output=output, task=task, pipeline=pipeline, passes=edits, dtype=dtype, strict=strict, force=force,
            batch=sample_batch, seq=sample_seq, attn_implementation=attn,
            load=_load_options(revision, cache_dir, token, trust_remote_code),
            dims=_dims(batch_range, seq_range, image_range, static),
            targets=None if to is None else (() if to.strip().lower() == "none" else tuple(to.split(","))),
            export=_export_options(opset, shapes, trt_precision), device=device,
            bench=bench, bench_shapes=tuple((b, s) for b in _int_list(bench_batch or batch, "batch") for s in seqs),
            bench_images=tuple(parse_image_sizes(image_size)) if image_size else (),
            warmup=warm, measure=measure, threads=threads, min_cosine=min_cosine,
            max_abs_error=float("inf") if max_abs_error is None else max_abs_error, search=search,
            screen=screen, generate=generate, new_tokens=new_tokens, min_token_agreement=min_token_agreement,
        )
        result = run_optimize(request, events=progress)
    _finish(result, json_out, lambda: print_optimize(out, result.report, result.output_dir, warnings=err))


@app.command()
def export(
    model: Annotated[Optional[str], typer.Argument(help="Hub model id or folder (captured, no passes), an fxbench output folder or a model.pt2; omitted: the demo model.")] = None,
    to: Annotated[str, _TARGETS.option("--to", metavar="TARGETS", rich_help_panel="Artifacts",
                                    help="Comma-separated targets (see `fxbench targets list`).")] = "onnx",
    output: Annotated[Optional[Path], typer.Option("-o", "--output", rich_help_panel="Output", help="Output folder (default: the output folder given, else fxbench-out/<model>).")] = None,
    device: DeviceOpt = "auto",
    opset: OpsetOpt = None,
    shapes: ShapesOpt = None,
    trt_precision: TrtPrecisionOpt = None,
    task: TaskOpt = None,
    revision: RevisionOpt = None,
    cache_dir: CacheDirOpt = None,
    token: TokenOpt = None,
    trust_remote_code: RemoteCodeOpt = False,
    batch_range: BatchRangeOpt = None,
    seq_range: SeqRangeOpt = None,
    image_range: ImageRangeOpt = None,
    static: StaticOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Export MODEL (or a saved optimized program) to deployable artifacts, each checked against eager
    PyTorch; adding to an output folder rewrites its report.json, report.md and report.html."""
    with _job(quiet, verbose) as progress:
        from fxbench.jobs import ExportRequest
        from fxbench.jobs import export as run_export
        from fxbench.reports.terminal import print_export

        request = ExportRequest(source=model, targets=tuple(to.split(",")), output=output, options=_export_options(opset, shapes, trt_precision),
                                force=force, task=task, device=device, load=_load_options(revision, cache_dir, token, trust_remote_code),
                                dims=_dims(batch_range, seq_range, image_range, static))
        result = run_export(request, events=progress)
    _finish(result, json_out, lambda: print_export(out, result.report, result.artifacts, result.output_dir))


@app.command()
def bench(
    model: Annotated[Optional[str], typer.Argument(help="Hub model id, model folder, or fxbench output folder (benches its artifacts); omitted: the demo model.")] = None,
    backends: Annotated[Optional[list[str]], typer.Option("--backends", "--backend", metavar="NAMES", rich_help_panel="Benchmark",
                                                          help="Comma-separated backend names, NAME@FILE for an artifact (see `fxbench backends list`). Default: eager, program, compile (a model) or eager plus every artifact (a folder).")] = None,
    batch: BatchOpt = "1",
    seq: SeqOpt = "128",
    image_size: Annotated[Optional[str], typer.Option("--image-size", rich_help_panel="Benchmark",
                                                      help="Image sizes to sweep (vision models): N or HxW, comma-separated, e.g. 224,384,640x480 (default: the capture's).")] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    seconds: TimeOpt = None,
    iters: ItersOpt = None,
    rounds: RoundsOpt = 5,
    warmup: WarmupOpt = 10,
    warmup_time: WarmupTimeOpt = 0.5,
    task: TaskOpt = None,
    revision: RevisionOpt = None,
    cache_dir: CacheDirOpt = None,
    token: TokenOpt = None,
    trust_remote_code: RemoteCodeOpt = False,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", rich_help_panel="Output", help="Folder for report.json, report.md, report.html (default: DIR/bench for a folder, fxbench-out/<model>-bench).")] = None,
    generate: Annotated[bool, _flag("--generate", rich_help_panel="Benchmark",
                                    help="Greedy generation instead of one forward: prefill, then one token at a time with the KV cache fed back, every backend through one loop, against eager generate() and torch.compile with a static cache.")] = False,
    prompt_len: Annotated[str, typer.Option("--prompt-len", rich_help_panel="Benchmark", help="--generate: prompt lengths, comma-separated.")] = "128",
    new_tokens: Annotated[int, typer.Option("--new-tokens", rich_help_panel="Benchmark", help="--generate: new tokens per generation.")] = 64,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
    list_backends: Annotated[bool, _hidden("--list")] = False,
) -> None:
    """Benchmark backends on the same inputs over a batch x sequence sweep, checked against eager fp32,
    in interleaved rounds. With --generate: greedy generation (time to first token, time per output
    token, tokens/s, peak memory, token parity) over a batch x prompt-length sweep."""
    if list_backends:
        backends_list(json_out=json_out)
        return
    if generate:
        # Options of the one-forward benchmark that generation does not take: refused, not ignored.
        ignored = [flag for flag, given in (("--seq (the prompt is --prompt-len)", seq != "128"), ("--iters", iters is not None),
                                            ("--time", seconds is not None), (f"--device {device}", device not in ("cpu", "auto")),
                                            ("--task", task is not None)) if given]
        if ignored:
            _fail(BenchOptionError(f"--generate does not take {', '.join(ignored)}: it generates on the CPU, "
                                   "timed over interleaved rounds (--rounds)"))
        _bench_generate(model, backends, batch, prompt_len, new_tokens, rounds, threads, output, json_out, quiet, verbose)
        return
    with _job(quiet, verbose) as progress:
        from fxbench.jobs import default_report_dir, run_benchmark
        from fxbench.reports.files import bench_report, write_reports
        from fxbench.reports.terminal import print_bench
        from fxbench.runtime import parse_image_sizes, shapes_from

        warm, measure = _timing(iters, seconds, rounds, warmup, warmup_time)
        names = [n for spec in (backends or []) for n in spec.split(",") if n.strip()] or None
        shapes = shapes_from(_int_list(batch, "batch"), _int_list(seq, "seq"), images=parse_image_sizes(image_size) if image_size else ())
        result = run_benchmark(
            model, names, shapes, device=device, threads=threads, task=task, events=progress, warmup=warm, measure=measure,
            load=_load_options(revision, cache_dir, token, trust_remote_code),
        )
        paths = write_reports(result, output or default_report_dir(model, result))
    _bench_output(result, json_out, lambda: bench_report(result), lambda: print_bench(out, result, paths["json"].parent, warnings=err), paths["json"])


def _bench_generate(model: str | None, backends: list[str] | None, batch: str, prompt_len: str, new_tokens: int, rounds: int,
                    threads: int | None, output: Path | None, json_out: bool, quiet: bool, verbose: int) -> None:
    """`fxbench bench --generate`: the generation benchmark, its table and report.json / report.md."""
    from fxbench.jobs.generate import default_generation_dir, run_generation_benchmark
    from fxbench.reports.generation import render_generation_table, write_generation_reports
    from fxbench.runtime.generation import GenerationSettings

    with _job(quiet, verbose) as progress:
        names = [n for spec in (backends or []) for n in spec.split(",") if n.strip()] or None
        # Interleaved rounds are what make ratios hold here: at least 3.
        settings = GenerationSettings(batches=tuple(_int_list(batch, "batch")), prompt_lengths=tuple(_int_list(prompt_len, "prompt-len")),
                                      new_tokens=new_tokens, rounds=max(3, rounds), threads=threads)
        result = run_generation_benchmark(model, names, settings, events=progress, command=sys.argv)
        paths = write_generation_reports(result, output or default_generation_dir(model, result))
    _bench_output(result, json_out, lambda: result, lambda: (out.print(render_generation_table(result)),
                                                              out.print(f"[bold]{paths['json'].parent}[/]: report.json, report.md")), paths["json"])


def _bench_output(result: Any, json_out: bool, record: Callable[[], Any], show: Callable[[], Any], report: Path) -> None:
    """A benchmark's JSON or its tables and the files written; exit 1 if any backend run failed."""
    if json_out:
        _json(record())
    else:
        show()
    failed = result.failures()
    if failed:
        first = failed[0]
        who = getattr(first, "label", None) or getattr(first, "backend", "")
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        print(f"error: {len(failed)} backend run(s) failed, the others were timed: {who}: {' '.join(first.reason.split())[:240]}"
              f"{more}; {report} says why for each", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def compare(
    runs: Annotated[list[str], typer.Argument(help="Two or more report.json files or output folders (optimize or bench).")],
    json_out: JsonOpt = False,
    markdown: Annotated[bool, _flag("--markdown", rich_help_panel="Output", help="Print the comparison as markdown, to paste into a review.")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """The same backends and shapes of several runs side by side: medians, the speed of each run
    against the first (beyond the noise or not), speedups, spread, accuracy, and what differs in
    versions, machine and settings."""
    with _job(quiet, verbose):
        from fxbench.jobs import compare_runs

        comparison = compare_runs(runs)
    if json_out:
        _json(comparison)
    elif markdown:
        from fxbench.reports.markdown import render_comparison_markdown

        print(render_comparison_markdown(comparison), end="")
    else:
        from fxbench.reports.terminal import print_comparison

        print_comparison(out, comparison)


@passes_app.command("list")
def passes_list(json_out: JsonOpt = False) -> None:
    """Every registered pass: name, summary, options, built-in or plugin; and the pipelines."""
    with _job():
        from fxbench.jobs import pass_catalog
        from fxbench.reports.terminal import catalog_tables

        catalog = pass_catalog()
    if json_out:
        _json(catalog)
        return
    for table in catalog_tables(catalog, out.width):
        out.print(table)
    for name, error in catalog.plugin_errors.items():
        err.print(f"[yellow]plugin {name} failed to load:[/] {error}")


@backends_app.command("list")
def backends_list(json_out: JsonOpt = False) -> None:
    """Every backend name `fxbench bench --backends` takes: what it runs, where, the artifact it loads."""
    with _job():
        from fxbench.reports.rows import backend_rows
        from fxbench.reports.terminal import backends_table
        from fxbench.runtime import BACKENDS

    specs = list(BACKENDS.values())
    if json_out:
        _json(backend_rows(specs))
        return
    out.print(backends_table(specs, out.width))


@targets_app.command("list")
def targets_list(json_out: JsonOpt = False) -> None:
    """Every export target `--to` takes: its files per device and what it is."""
    with _job():
        from fxbench.exporters.targets import TARGETS
        from fxbench.reports.rows import Column
        from fxbench.reports.terminal import fit_table

    listing = [{"name": t.name, "files": "; ".join(f"{d}: {' + '.join(f)}" for d, f in t.files.items()),
                "builds on": "model.onnx" if t.needs_onnx else "-", "default on": ", ".join(t.devices) or "-", "what": t.summary}
               for t in TARGETS.values()]
    if json_out:
        _json(listing)
        return
    columns = (Column("name", "name", 0), Column("files", "text", 1), Column("builds on", "name", 3), Column("default on", "name", 2),
               Column("what", "text", 0))
    out.print(fit_table("export targets", columns, listing, out.width))


@app.command()
def inspect(
    model: ModelArg = None,
    task: TaskOpt = None,
    graph: Annotated[bool, _flag("--graph", help="Print the FX graph.")] = False,
    depth: Annotated[int, typer.Option("--depth", help="Module path depth for node counts.")] = 3,
    top: Annotated[int, typer.Option("--top", help="How many ops of the histogram to show.")] = 20,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Parameters, op histogram and node counts per module of MODEL, a .pt2 file or an output folder."""
    with _job(quiet, verbose) as progress:
        from fxbench.jobs import inspect_target
        from fxbench.reports.terminal import inspection_tables

        if depth < 1 or top < 1:
            raise FxbenchError(f"--depth and --top must be at least 1, not {depth} and {top}")
        info = inspect_target(model, task=task, depth=depth, events=progress)
    if json_out:
        _json(info)
        return
    for part in inspection_tables(info, depth, top, out.width):
        out.print(part)
    if graph:
        out.print(info.graph.print_readable(print_output=False), markup=False)


def main() -> None:
    # Library chatter stays out of the way for the whole command, unless it asks to say more.
    from fxbench.quiet import quiet_libraries

    loud = any(a in ("-v", "-vv", "--verbose") or (a.startswith("-v") and set(a[1:]) == {"v"}) for a in sys.argv[1:])
    interrupts.install()
    with quiet_libraries(enabled=not loud):
        try:
            app(prog_name="fxbench")
        except (interrupts.Interrupted, KeyboardInterrupt) as exc:
            code = exc.exit_code if isinstance(exc, interrupts.Interrupted) else 130
            name = exc.name if isinstance(exc, interrupts.Interrupted) else "SIGINT"
            print(f"error: interrupted by {name}; stopped without leaving a half-written output (exit {code})", file=sys.stderr)
            sys.exit(code)


if __name__ == "__main__":
    main()
