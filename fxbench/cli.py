"""The `fxbench` command line: typer commands over models, passes, exporters and runtime."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from fxbench.errors import FxbenchError

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


def _fail(exc: FxbenchError) -> None:
    # Plain print, not rich: rich wraps at the terminal width, and the error must stay one line.
    print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
    raise typer.Exit(exc.exit_code)


class _Progress:
    """Step lines on stderr: a spinner while a step runs, a tick and its detail when it ends."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.started: dict[str, float] = {}
        self.status = None

    def __call__(self, step: str, status: str, detail: str) -> None:
        if not self.enabled:
            return
        if status == "start":
            self.started[step] = time.perf_counter()
            if self.status is None:
                self.status = err.status(f"{step}...")
                self.status.start()
            else:
                self.status.update(f"{step}...")
            return
        seconds = time.perf_counter() - self.started.pop(step, time.perf_counter())
        if status == "fail":
            detail = ""  # the error line that follows says why
        mark = {"done": "[green]✓[/]", "skip": "[yellow]-[/]"}.get(status, "[red]✗[/]")
        err.print(f"{mark} {step:<40} {detail}  [dim]{seconds:.1f}s[/]")

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def _range(text: str, what: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.replace("-", ":").split(":"))
    except ValueError:
        raise FxbenchError(f"bad --{what}-range {text!r}; expected MIN:MAX such as 1:64") from None
    return lo, hi


ModelArg = Annotated[Optional[str], typer.Argument(help="Hub model id or local folder; omitted: the bundled demo model (fxbench[demo]).")]
TaskOpt = Annotated[Optional[str], typer.Option("--task", help="Task head to load (default: from the config's architectures).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
OpsetOpt = Annotated[Optional[int], typer.Option("--opset", help="ONNX opset for ONNX targets (18-23; default 18).")]
ShapesOpt = Annotated[Optional[str], typer.Option("--shapes", help="TensorRT profile NAME:MIN,OPT,MAX per input, e.g. input_ids:1x16,8x128,32x512 (';' between inputs).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Device the artifacts are built and checked for: cpu or cuda.")]


def _export_options(opset: int | None, shapes: str | None, device: str, trt_precision: str | None = None):  # noqa: ANN202
    from fxbench.exporters.targets import ExportOptions  # lazily: it loads onnx and onnxruntime

    return ExportOptions(device=device, shapes=shapes, tensorrt_precision=trt_precision,
                         **({"opset": opset} if opset is not None else {}))


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
    static: Annotated[bool, typer.Option("--static", help="Capture with static shapes.")] = False,
    attn: Annotated[Optional[str], typer.Option("--attn", help="Attention implementation to load: eager or sdpa.")] = None,
    target: Annotated[Optional[str], typer.Option("--target", help="Artifacts to make: comma-separated onnx, onnx-ort, onnx-int8, tensorrt, aoti; 'none' for model.pt2 only. Default: those that fit --device.")] = None,
    opset: OpsetOpt = None,
    shapes: ShapesOpt = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu or cuda: where artifacts are built and timed (default: cuda if there is a GPU).")] = None,
    bench: Annotated[bool, typer.Option("--bench/--no-bench", help="Time every artifact against eager PyTorch and name the best.")] = True,
    bench_batch: Annotated[str, typer.Option("--bench-batch", help="Batch sizes to time, comma-separated.")] = "1",
    bench_seq: Annotated[str, typer.Option("--bench-seq", help="Sequence lengths to time, comma-separated (capped at the model's positions).")] = "128",
    bench_time: Annotated[float, typer.Option("--bench-time", help="Seconds of timed runs per backend and shape.")] = 2.0,
    bench_rounds: Annotated[int, typer.Option("--bench-rounds", help="Interleave the timed runs in this many rounds (all artifacts loaded at once).")] = 1,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for every backend (default: torch's).")] = None,
    min_cosine: Annotated[float, typer.Option("--min-cosine", help="Accuracy budget of the best artifact: worst output cosine against eager fp32.")] = 0.99,
    max_abs_error: Annotated[float, typer.Option("--max-abs-error", help="Accuracy budget: largest absolute error against eager fp32.")] = float("inf"),
    search: Annotated[bool, typer.Option("--search", help="Try the presets that fit --device; keep the fastest within the budget.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Capture MODEL, run a verified pass pipeline, export the artifacts that fit the device, time
    them against eager PyTorch and write DIR/model.pt2, the artifacts and report.json/.md/.html."""
    from fxbench.models import DynamicDims
    from fxbench.runtime.harness import Measure
    from fxbench.runtime.workflow import OptimizeRequest
    from fxbench.runtime.workflow import optimize as run_optimize

    progress = _Progress(enabled=True)
    try:
        edits = tuple(e for spec in (passes or []) for e in spec.split(";") if e.strip())
        seqs = _int_list(bench_seq, "bench-seq")
        request = OptimizeRequest(
            model=model, output=output, task=task, pipeline=pipeline, passes=edits, strict=strict, force=force,
            batch=batch, seq=seq, attn_implementation=attn,
            dims=DynamicDims(batch=_range(batch_range, "batch"), seq=_range(seq_range, "seq"), static=static),
            targets=None if target is None else (() if target.strip().lower() == "none" else tuple(target.split(","))),
            export=_export_options(opset, shapes, device or _default_device()),
            bench=bench, bench_shapes=tuple((b, s) for b in _int_list(bench_batch, "bench-batch") for s in seqs),
            measure=Measure(seconds=bench_time, rounds=bench_rounds), threads=threads, min_cosine=min_cosine, max_abs_error=max_abs_error,
            search=search,
        )
        result = run_optimize(request, events=progress)
    except FxbenchError as exc:
        progress.stop()
        _fail(exc)
    finally:
        progress.stop()
    if json_out:
        from fxbench.runtime.report import jsonable

        print(json.dumps(jsonable(result.report), indent=2))
    else:
        from fxbench.runtime.optimize_report import summary_lines

        _print_pass_table(result.report["passes"])
        if len(result.report["artifacts"]) > 1:
            _print_artifact_table(result.report["artifacts"])
        if result.bench is not None:
            from fxbench.runtime.bench_report import render_table

            out.print(render_table(result.bench))
        if result.report.get("search"):
            _print_search_table(result.report["search"])
        for line in summary_lines(result.report)[3:]:
            out.print(line)
        files = ["model.pt2", *(a["file"] for a in result.report["artifacts"][1:]), "report.json", "report.md"]
        if result.bench is not None:
            files.append("report.html")
        out.print(f"[bold]{result.output_dir}[/]: {', '.join(files)}")
    try:
        result.raise_for_failures()  # the other artifacts are written; the exit says some failed
    except FxbenchError as exc:
        _fail(exc)


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
    force: Annotated[bool, typer.Option("--force", help="Replace existing artifacts or a non-empty output folder.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Export MODEL (or a saved optimized program) to deployable artifacts, each checked against eager PyTorch."""
    from fxbench.runtime.workflow import ExportRequest
    from fxbench.runtime.workflow import export as run_export

    progress = _Progress(enabled=True)
    try:
        request = ExportRequest(source=model, targets=tuple(to.split(",")), output=output,
                                options=_export_options(opset, shapes, device, trt_precision), force=force, task=task)
        result = run_export(request, events=progress)
    except FxbenchError as exc:
        progress.stop()
        _fail(exc)
    finally:
        progress.stop()
    if json_out:
        from fxbench.runtime.report import jsonable

        print(json.dumps(jsonable(result.report), indent=2))
    else:
        _print_artifact_table([a.to_dict() for a in result.artifacts])
        out.print(f"[bold]{result.output_dir}[/]: {', '.join(a.file for a in result.artifacts)} + report.json")
    try:
        result.raise_for_failures()
    except FxbenchError as exc:
        _fail(exc)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _print_search_table(candidates: list[dict]) -> None:
    table = Table(title="search", title_justify="left")
    for col in ("pipeline", "status", "precision", "best", "median ms", "speedup", "worst cosine"):
        table.add_column(col, justify="right" if col in ("median ms", "speedup", "worst cosine") else "left")
    for c in candidates:
        best = c.get("best") or {}
        table.add_row(
            str(c["pipeline"]), c["status"] if not c.get("error") else f"[red]failed[/]: {c['error'][:60]}", str(c.get("precision") or "-"),
            best.get("backend", "-"), f"{best['median_ms']:.2f}" if best else "-",
            f"{best['speedup']:.2f}x" if best.get("speedup") else "-", f"{best['worst_cosine']:.6f}" if best else "-",
        )
    out.print(table)


def _print_artifact_table(artifacts: list[dict]) -> None:
    table = Table(title="artifacts", title_justify="left")
    for col in ("kind", "file", "device", "precision", "checks", "cosine", "max rel err", "MiB", "s"):
        table.add_column(col, justify="right" if col in ("cosine", "max rel err", "MiB", "s") else "left")
    for a in artifacts:
        parity = a.get("parity") or {}
        size = a.get("details", {}).get("bytes")
        table.add_row(
            a["kind"], a["file"], a["device"], a["precision"], ", ".join(parity) or "-",
            f"{min(p['cosine'] for p in parity.values()):.6f}" if parity else "-",
            f"{max(p['max_rel_error'] for p in parity.values()):.2e}" if parity else "-",
            f"{size / 2**20:.1f}" if size else "-", f"{a.get('seconds', 0.0):.1f}",
        )
    out.print(table)


def _print_pass_table(records: list[dict]) -> None:
    table = Table(title="passes", title_justify="left")
    for col in ("pass", "status", "nodes", "op changes", "cosine", "max abs err", "s"):
        table.add_column(col, justify="right" if col in ("nodes", "cosine", "max abs err", "s") else "left")
    for r in records:
        delta = ", ".join(f"{op.removeprefix('aten.').removesuffix('.default')} {d:+d}" for op, d in list(r["op_delta"].items())[:4])
        if len(r["op_delta"]) > 4:
            delta += ", ..."
        par = r["parity"]
        style = {"applied": "green", "unchanged": "dim", "rolled-back": "yellow", "failed": "red"}[r["status"]]
        table.add_row(
            r["name"], f"[{style}]{r['status']}[/]", f"{r['nodes_before']}→{r['nodes_after']}", delta or "-",
            f"{par['cosine']:.6f}" if par else "-", f"{par['max_abs_error']:.2e}" if par else "-",
            f"{r['seconds'] + r['verify_seconds']:.2f}",
        )
        if r["message"]:
            table.add_row("", f"[{style}]{r['message'][:100]}[/]", "", "", "", "", "")
    out.print(table)


@passes_app.command("list")
def passes_list(json_out: JsonOpt = False) -> None:
    """Every registered pass: name, summary, options, built-in or plugin; and the pipelines."""
    from fxbench.passes import PIPELINES, available_passes, option_help
    from fxbench.passes.registry import plugin_errors

    rows = []
    for name, info in available_passes().items():
        cls = info.cls
        rows.append({
            "name": name, "summary": cls.summary(), "origin": info.origin, "precision": cls.precision,
            "options": [{"name": n, "type": t, "default": d} for n, t, d in option_help(cls)],
        })
    if json_out:
        pipelines = {p.name: {"summary": p.summary, "passes": list(p.passes), "device": p.device} for p in PIPELINES.values()}
        print(json.dumps({"passes": rows, "pipelines": pipelines, "plugin_errors": plugin_errors()}, indent=2))
        return
    table = Table(title="passes", title_justify="left")
    for col in ("name", "summary", "options", "origin"):
        table.add_column(col, overflow="fold")
    for r in rows:
        opts = "\n".join(f"{o['name']}: {o['type']} = {o['default']}" for o in r["options"]) or "-"
        table.add_row(r["name"], r["summary"], opts, r["origin"])
    out.print(table)
    pt = Table(title="pipelines", title_justify="left")
    for col in ("name", "summary", "passes"):
        pt.add_column(col, overflow="fold")
    for p in PIPELINES.values():
        pt.add_row(p.name, p.summary, " → ".join(p.passes))
    out.print(pt)
    for name, error in plugin_errors().items():
        err.print(f"[yellow]plugin {name} failed to load:[/] {error}")


@app.command()
def inspect(
    model: ModelArg = None,
    task: TaskOpt = None,
    graph: Annotated[bool, typer.Option("--graph", help="Print the FX graph.")] = False,
    depth: Annotated[int, typer.Option("--depth", help="Module path depth for node counts.")] = 3,
    top: Annotated[int, typer.Option("--top", help="How many ops of the histogram to show.")] = 20,
    json_out: JsonOpt = False,
) -> None:
    """Parameters, op histogram and node counts per module of MODEL, a .pt2 file or an output folder."""
    from fxbench.runtime.inspection import inspect_target

    try:
        info = inspect_target(model, task=task, depth=depth)
    except FxbenchError as exc:
        _fail(exc)
    if json_out:
        print(json.dumps(info.to_dict(), indent=2))
        return
    out.print(f"[bold]{info.source}[/]: {info.parameters:,} parameters, {info.nodes} nodes")
    hist = Table(title="ops", title_justify="left")
    hist.add_column("op")
    hist.add_column("count", justify="right")
    for op, count in list(info.op_histogram.items())[:top]:
        hist.add_row(op, str(count))
    out.print(hist)
    mods = Table(title=f"nodes per module (depth {depth})", title_justify="left")
    mods.add_column("module")
    mods.add_column("nodes", justify="right")
    for mod, count in info.nodes_per_module.items():
        mods.add_row(mod, str(count))
    out.print(mods)
    if graph:
        out.print(info.graph.print_readable(print_output=False), markup=False)


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FxbenchError(f"bad --{what} {text!r}; expected comma-separated integers such as 1,8,32") from None


@app.command()
def bench(
    model: Annotated[Optional[str], typer.Argument(help="Hub model id, model folder, or fxbench output folder (benches its artifacts); omitted: the demo model.")] = None,
    backends: Annotated[Optional[list[str]], typer.Option("--backends", "--backend", help="Comma-separated backend names, NAME@FILE for an artifact; see `fxbench bench --list`. Default: eager, program, compile (a model) or eager plus every artifact (a folder).")] = None,
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes to sweep, comma-separated.")] = "1",
    seq: Annotated[str, typer.Option("--seq", help="Sequence lengths to sweep, comma-separated (text models).")] = "128",
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
) -> None:
    """Benchmark backends on the same inputs over a batch x sequence sweep, checked against eager fp32."""
    from fxbench.runtime.backends import BACKENDS

    if list_backends:
        table = Table(title="backends", title_justify="left")
        for col in ("name", "runs", "devices", "artifact"):
            table.add_column(col, overflow="fold")
        for spec in BACKENDS.values():
            art = "/".join(spec.artifacts) + (" (required)" if spec.needs_artifact else " (optional)") if spec.artifacts else "-"
            table.add_row(spec.name, spec.summary, ", ".join(spec.devices), art)
        out.print(table)
        return
    from fxbench.runtime.bench import default_report_dir, run_benchmark, shapes_from
    from fxbench.runtime.bench_report import render_table, write_reports
    from fxbench.runtime.harness import Measure, Warmup
    from fxbench.runtime.report import jsonable

    progress = _Progress(enabled=True)
    try:
        if iters is not None and seconds is not None:
            raise FxbenchError("give --iters or --time, not both")
        names = [n for spec in (backends or []) for n in spec.split(",") if n.strip()] or None
        shapes = shapes_from(_int_list(batch, "batch"), _int_list(seq, "seq"))
        measure = Measure(iters=iters, seconds=seconds if seconds is not None else 2.0, rounds=rounds)
        result = run_benchmark(
            model, names, shapes, device=device, threads=threads, task=task, events=progress,
            warmup=Warmup(iters=warmup, seconds=warmup_time, max_seconds=max(120.0, warmup_time)), measure=measure,
        )
        paths = write_reports(result, output or default_report_dir(model, result))
    except FxbenchError as exc:
        progress.stop()
        _fail(exc)
    finally:
        progress.stop()
    if json_out:
        print(json.dumps(jsonable(result.to_dict()), indent=2))
    else:
        out.print(render_table(result))
        out.print(f"[bold]{paths['json'].parent}[/]: report.json, report.md, report.html")
    failed = [m for m in result.measurements if m.status == "failed"] + [b for b in result.backends if b.status == "failed"]
    if failed:
        err.print(f"[red]{len(failed)} backend run(s) failed[/]; the reports say why")
        raise typer.Exit(1)


def main() -> None:
    _quiet_libraries()
    app()


if __name__ == "__main__":
    main()
