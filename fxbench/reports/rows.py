"""The shared row builders: every table fxbench prints or writes (terminal, markdown, HTML) takes its
cells from here, so the three say the same thing; the renderers only lay them out."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fxbench.exporters import Artifact
from fxbench.passes import PassRecord
from fxbench.reports.records import Comparison, Inspection, OptimizeReport, PassCatalog, SearchCandidate
from fxbench.runtime.backends import BackendSpec
from fxbench.runtime.bench import BenchResult, Choice, Measurement, Shape
from fxbench.runtime.harness import NOISY_SPREAD

if TYPE_CHECKING:
    from fxbench.exporters.export import ExportFailure

__all__ = [
    "ARTIFACT_COLUMNS",
    "Column",
    "P99_MIN_RUNS",
    "bench_columns",
    "best_lines",
    "compare_columns",
    "compare_rows",
    "difference_lines",
    "noise_lines",
    "op_diff_rows",
    "op_histogram_rows",
    "output_parity_rows",
    "artifact_output_rows",
    "BACKEND_COLUMNS",
    "COLUMNS",
    "LEFT",
    "PASS_COLUMNS",
    "RUN_BACKEND_COLUMNS",
    "SEARCH_COLUMNS",
    "WARMUP_COLUMNS",
    "Row",
    "agreement_metric",
    "artifact_rows",
    "backend_rows",
    "bench_rows",
    "catalog_rows",
    "environment_lines",
    "header_lines",
    "inspection_rows",
    "method_note",
    "pass_rows",
    "pipeline_rows",
    "run_backend_rows",
    "search_rows",
    "summary_lines",
    "table_columns",
    "warmup_rows",
]

Cells = dict[str, str]


@dataclass(frozen=True)
class Column:
    """A table column as every renderer sees it: `kind` "name" (never wrapped: backend and file
    names), "num" (never wrapped, right-aligned) or "text" (prose, wraps); `priority` is the order
    in which a narrow terminal drops columns (the highest first; 0 is never dropped)."""

    name: str
    kind: str = "num"
    priority: int = 0


# p99 from fewer runs than this is close to the maximum: tables show it from this many on.
P99_MIN_RUNS = 100


def _num(x: float | None) -> float:
    return float("inf") if x is None else x  # null in a report: not finite


def _pct(x: float) -> str:
    return f"{x:.0%}" if x < 10 else ">999%"


# ----- the benchmark

class Row:
    """One table row: a measurement, or a backend that never measured (skipped / failed to load)."""

    def __init__(self, result: BenchResult, label: str, shape: Shape | None, m: Measurement | None, status: str, reason: str):
        self.result, self.label, self.shape, self.m, self.status, self.reason = result, label, shape, m, status, reason

    @property
    def ok(self) -> bool:
        return self.m is not None and self.m.status == "ok" and self.m.latency is not None

    def cells(self) -> dict[str, str]:
        """Formatted cells; '-' where there is nothing to show."""
        m = self.m
        if not self.ok or m is None or m.latency is None:
            return {"backend": self.label, "shape": self.shape.label if self.shape else "-", "status": f"{self.status}: {self.reason}"}
        lat, par = m.latency, m.parity
        speed = self.result.speedup(self.label, m.shape)
        cells = {
            "backend": self.label,
            "shape": m.shape.label,
            "median ms": f"{lat.median_ms:.3f}",
            "p95 ms": f"{lat.p95_ms:.3f}",
            "spread": _pct(lat.spread) + ("!" if lat.noisy else ""),
            "runs": str(lat.count),
            "p90 ms": f"{lat.p90_ms:.3f}",
            "p99 ms": f"{lat.p99_ms:.3f}" if lat.count >= P99_MIN_RUNS else "-",
            "mean ms": f"{lat.mean_ms:.3f}",
            "std ms": f"{lat.std_ms:.3f}",
            "samples/s": f"{lat.throughput:,.1f}",
            "speedup": f"{speed:.2f}x" if speed is not None else "-",
            "mem MiB": f"{m.memory.growth_mib:,.1f}" if m.memory else "-",
            "max abs": f"{par.max_abs_error:.1e}" if par else "-",
            "cosine": f"{par.cosine:.6f}" if par else "-",
            "agree": f"{par.agreement.value:.4f}" if par and par.agreement else "-",
            "status": "ok" if par is None or par.passed else f"PARITY FAIL ({par.reason})",
        }
        if self.result.device == "cuda":
            cells["device ms"] = f"{m.device_latency.median_ms:.3f}" if m.device_latency else "-"
        return cells


_BENCH = (
    Column("backend", "name", 0), Column("shape", "name", 0), Column("median ms", "num", 0), Column("p95 ms", "num", 2),
    Column("spread", "num", 3), Column("speedup", "num", 1), Column("cosine", "num", 2), Column("agree", "num", 4),
    Column("status", "text", 1), Column("max abs", "num", 5), Column("p99 ms", "num", 6), Column("runs", "num", 6),
    Column("samples/s", "num", 7), Column("mem MiB", "num", 7), Column("p90 ms", "num", 8), Column("mean ms", "num", 8),
    Column("std ms", "num", 9),
)
COLUMNS = tuple(c.name for c in _BENCH)
LEFT = ("backend", "shape", "status")


def bench_columns(result: BenchResult) -> tuple[Column, ...]:
    """The benchmark table's columns, in order, with the CUDA-event time after the median on a GPU."""
    if result.device != "cuda":
        return _BENCH
    return _BENCH[:3] + (Column("device ms", "num", 1),) + _BENCH[3:]


def table_columns(result: BenchResult) -> tuple[str, ...]:
    return tuple(c.name for c in bench_columns(result))


def bench_rows(result: BenchResult) -> Iterator[Row]:
    """Rows shape by shape, backends in the order they ran; then each backend that never measured
    (skipped or failed to load), once, with the reason."""
    for shape in result.shapes:
        for rec in result.backends:
            if rec.status != "ok":
                continue
            m = result.measurement(rec.label, shape)
            if m is not None:
                yield Row(result, rec.label, shape, m, m.status, m.reason)
    for rec in result.backends:
        if rec.status != "ok":
            yield Row(result, rec.label, None, None, rec.status, rec.reason)


def agreement_metric(result: BenchResult) -> str | None:
    """The task's agreement metric (top-1, next-token argmax, embedding cosine), as measured."""
    return next((m.parity.agreement.metric for m in result.measurements if m.parity and m.parity.agreement), None)


def header_lines(result: BenchResult) -> list[str]:
    env = result.environment
    gpu = env.get("gpu") or {}
    lines = [
        f"model: {result.model.get('model_id') or result.model.get('source')} ({result.model.get('architecture')}, {result.task}, "
        f"{result.model.get('parameters', 0) / 1e6:.1f}M parameters, inputs from {result.model.get('inputs_from')})",
        f"device: {result.device}; CPU: {env.get('cpu')} ({env.get('cpu_count')} logical CPUs), {result.threads} threads"
        + (f"; GPU: {gpu.get('name')}, driver {gpu.get('driver')}, CUDA {gpu.get('cuda')}" if gpu else ""),
        f"parity against {result.reference}" + (f"; agree = {metric}" if (metric := agreement_metric(result)) else ""),
    ]
    if result.model.get("inputs_warning"):
        lines.append(f"warning: {result.model['inputs_warning']}")
    return lines


def method_note(result: BenchResult) -> str:
    w, m = result.settings["warmup"], result.settings["measure"]
    timed = f"{m['iters']} timed runs" if m.get("iters") else f"timed runs for {m['seconds']} s (at least {m['min_iters']})"
    if m.get("rounds", 1) > 1:
        timed += f", interleaved across the backends in {m['rounds']} rounds (all loaded at once)"
    else:
        timed += ", one backend after another"
    clock = ("host wall clock per run, synchronized (latency) and CUDA events (device ms)" if result.device == "cuda"
             else "wall clock per run")
    return (
        f"Latency: {clock}; speedup = eager fp32 median / backend median. Warm-up: the first call alone, then at least "
        f"{w['iters']} runs and {w['seconds']} s until runs stop getting faster (cap {w['max_seconds']} s); then {timed}. "
        f"spread = interquartile range / median (marked ! at {NOISY_SPREAD:.0%} and above, torch.utils.benchmark's threshold); "
        f"p99 is shown from {P99_MIN_RUNS} runs (below that it is about the maximum); every run's time is in report.json. "
        "mem MiB: peak memory growth over the measurement (CPU: peak RSS; GPU: allocator peak, or device memory in use for ORT/TensorRT). "
        "Garbage collection is off while timing."
    )


def noise_lines(result: BenchResult) -> list[str]:
    """One warning line when any measurement's spread is at or above torch.utils.benchmark's 10%."""
    noisy = result.noisy()
    if not noisy:
        return []
    env = result.environment
    load = env.get("load_average")
    busy = f" (load average {load[0]:.1f} on {env.get('cpu_count')} CPUs)" if load else ""
    worst = sorted(noisy, key=lambda m: -m.latency.spread if m.latency else 0)[:4]
    listed = ", ".join(f"{m.backend} {m.shape.label} {_pct(m.latency.spread)}" for m in worst if m.latency)
    more = f" and {len(noisy) - len(worst)} more" if len(noisy) > len(worst) else ""
    return [f"warning: noisy timings: spread (IQR/median) >= {NOISY_SPREAD:.0%} for {listed}{more}{busy}; the machine was busy. "
            "Ratios within this interleaved run still compare; absolute times and small leads do not (a longer --time narrows them)"]


RUN_BACKEND_COLUMNS = ("backend", "what", "device", "precision", "CUDA graphs", "I/O", "load s", "artifact", "status")


def run_backend_rows(result: BenchResult) -> list[Cells]:
    """The backends of one run: what each ran, how its I/O was placed, its load time and its outcome."""
    return [
        {"backend": b.label, "what": b.summary, "device": b.device, "precision": b.precision, "CUDA graphs": "on" if b.cuda_graphs else "off",
         "I/O": b.io or "-", "load s": f"{b.load_seconds:.1f}", "artifact": Path(b.artifact).name if b.artifact else "-",
         "status": b.status if b.status == "ok" else f"{b.status}: {b.reason}"}
        for b in result.backends
    ]


WARMUP_COLUMNS = ("backend", "shape", "first call s", "warm-up runs", "warm-up s", "steady")


def warmup_rows(result: BenchResult) -> list[Cells]:
    rows_ = []
    for m in result.measurements:
        if m.warmup is not None:
            steady = {True: "yes", False: "no (capped)", None: "not judged"}[m.warmup.steady]
            rows_.append({"backend": m.backend, "shape": m.shape.label, "first call s": f"{m.warmup.first_call_s:.2f}",
                          "warm-up runs": str(m.warmup.runs), "warm-up s": f"{m.warmup.seconds:.2f}", "steady": steady})
    return rows_


def isa_brief(env: Mapping[str, Any]) -> str:
    """' (AVX2 kernels; no AVX-512, no VNNI, no AMX)': what explains int8 and bf16 speed on this CPU."""
    isa = env.get("cpu_isa")
    if not isa:
        return ""
    has = [("AVX-512", isa.get("avx512")), ("VNNI", isa.get("vnni")), ("AMX", isa.get("amx"))]
    return f" ({isa.get('capability')} kernels; " + ", ".join(n if v else f"no {n}" for n, v in has) + ")"


def environment_lines(env: dict[str, Any]) -> list[str]:
    """The environment as short lines: machine, library versions, the exact command."""
    lines = [f"CPU: {env.get('cpu')}{isa_brief(env)}, {env.get('cpu_count')} logical CPUs, torch threads {env.get('torch_threads')}",
             f"Python {env.get('python')} on {env.get('platform')}"]
    gpu = env.get("gpu")
    if gpu:
        lines.append(f"GPU: {gpu.get('name')} (compute {gpu.get('compute_capability')}, {gpu.get('memory_gib')} GiB), "
                     f"driver {gpu.get('driver')}, CUDA {gpu.get('cuda')}")
    else:
        lines.append("GPU: none")
    pkgs = env.get("packages") or {}
    lines.append("packages: " + ", ".join(f"{k} {v}" for k, v in pkgs.items()))
    for key, value in env.items():
        if key not in ("cpu", "cpu_count", "torch_threads", "python", "platform", "gpu", "packages", "command", "cuda_available", "cpu_isa"):
            lines.append(f"{key}: {value}")
    if env.get("cpu_isa"):
        lines.append("CPU ISA flags: " + " ".join(env["cpu_isa"].get("flags") or []))
    if env.get("command"):
        lines.append(f"command: `{env['command']}`")
    return lines


# ----- fxbench optimize

def _cos(parity: Any) -> str:
    return f"{parity.cosine:.6f}" if parity else "-"


def _err(parity: Any) -> str:
    return f"{parity.max_abs_error:.2e}" if parity else "-"


def _op_changes(delta: Mapping[str, int], limit: int = 5) -> str:
    items = [f"{op.removeprefix('aten.').removesuffix('.default')} {d:+d}" for op, d in list(delta.items())[:limit]]
    return ", ".join(items) + (", ..." if len(delta) > limit else "") or "-"


def best_lines(best: Choice | None, min_cosine: float, *, benchmarked: bool = True) -> list[str]:
    """What the benchmark says of the best artifact: its speed, whether its lead is larger than the
    noise (and when it is not, which rivals are within it), and its worst accuracy and where."""
    if best is None:
        return ["best artifact: none meets the accuracy budget"] if benchmarked else []
    speed = f", {best.speedup:.2f}x eager fp32" if best.speedup else ""
    accuracy = f"worst cosine {best.worst_cosine:.6f} at {best.worst_at or 'every check'} (budget: cosine >= {min_cosine})"
    what = f"{best.backend} ({best.artifact}): {best.median_ms:.2f} ms median{speed}"
    if best.clear is None:
        return [f"best artifact: {what}, the only one within budget; {accuracy}"]
    if best.clear:
        return [f"best artifact: {what}, {best.lead:.0%} ahead of {best.runner_up}, beyond the noise; {accuracy}"]
    ties = ", ".join(best.tied_with)
    why = "the higher precision" if best.lead is not None and best.lead < 0 else "the faster median"
    return [f"best artifact: no clear winner: {ties} {'is' if len(best.tied_with) == 1 else 'are'} within the noise of {best.backend}; "
            f"kept {what} ({why}); {accuracy}"]


def summary_lines(report: OptimizeReport) -> list[str]:
    """model, pipeline, device, final parity, the best artifact, and artifacts the benchmark has not timed."""
    model, pipe, parity = report.model, report.pipeline, report.parity
    lines = [
        f"model: {model.model_id or model.source} ({model.architecture}, {model.task}, {model.parameters / 1e6:.1f}M parameters)",
        f"pipeline: {pipe.name or 'custom'} ({' → '.join(pipe.passes)})",
        f"device: {report.device}",
        *([f"capture: {report.capture.axes}"] if report.capture.axes else []),
        f"final parity against {parity.against}: cosine {_cos(parity.final)}, max abs error {_err(parity.final)}",
    ]
    if report.header.inputs.get("warning"):
        lines.append(f"warning: {report.header.inputs['warning']}")
    if report.generation is not None and report.best:
        best = report.best.choice
        speed = f", {best.speedup:.2f}x eager generate()" if best.speedup else ""
        lines.append(
            f"best artifact: {best.backend} ({best.artifact}): {best.median_ms:.2f} ms per output token (median){speed}, "
            f"worst logits cosine {best.worst_cosine:.6f} (budget: cosine >= {report.best.min_cosine})"
        )
    else:
        lines += best_lines(report.best.choice if report.best else None, report.best.min_cosine if report.best else 0.0,
                            benchmarked=report.benchmark is not None or report.generation is not None)
    if report.benchmark is not None:
        # A search's benchmark names files by candidate (int8-cpu/model.onnx): the kept ones are the winner's.
        kept = f"{report.pipeline.name}/" if report.search else ""
        timed = {Path(b.artifact).as_posix() for b in report.benchmark.backends if b.artifact}
        screened = {Path(b.artifact).as_posix() for b in report.screen.backends if b.artifact} if report.screen else set()
        later = [a.file for a in report.artifacts if kept + a.file not in timed]
        short = [f for f in later if kept + f in screened]
        if short:
            lines.append(f"screened only: {', '.join(short)} (a short run beside every candidate's artifacts, report.json's `screen`; "
                         "the benchmark times each candidate's fastest; --no-screen times them all)")
        if len(short) < len(later):
            lines.append(f"not in the benchmark: {', '.join(f for f in later if kept + f not in screened)} (added after it; fxbench bench DIR times every artifact)")
    left = sorted({t for c in report.search or () for t in c.left_out})
    if left:
        lines.append(f"not made in the search: {', '.join(left)} (--to names the targets to make)")
    return lines


PASS_COLUMNS = ("pass", "status", "nodes", "op changes", "cosine", "max abs err", "s", "note")


def pass_rows(records: Sequence[PassRecord]) -> list[Cells]:
    return [
        {"pass": r.name, "status": r.status, "nodes": f"{r.nodes_before}→{r.nodes_after}", "op changes": _op_changes(r.op_delta),
         "cosine": _cos(r.parity), "max abs err": _err(r.parity), "s": f"{r.seconds + r.verify_seconds:.2f}", "note": r.message or ""}
        for r in records
    ]


ARTIFACT_COLUMNS = ("kind", "file", "device", "precision", "checks", "cosine", "max rel err", "MiB", "export s")


def artifact_rows(artifacts: Sequence[Artifact], failures: Sequence[ExportFailure] = ()) -> list[Cells]:
    """One row per artifact (its checks against eager, the worst of them, its size), then one per failed target."""
    rows_: list[Cells] = []
    for a in artifacts:
        parity = a.parity or {}
        size = (a.details or {}).get("bytes")
        rows_.append({
            "kind": a.kind, "file": a.file, "device": a.device, "precision": a.precision, "checks": ", ".join(parity) or "-",
            "cosine": f"{min(p['cosine'] for p in parity.values()):.6f}" if parity else "-",
            "max rel err": f"{max(_num(p['max_rel_error']) for p in parity.values()):.2e}" if parity else "-",
            "MiB": f"{size / 2**20:.1f}" if size else "-", "export s": f"{a.seconds or 0.0:.1f}",
        })
    for f in failures:
        rows_.append({"kind": f.target, "file": "-", "device": "-", "precision": "-", "checks": f"failed: {f.error[:100]}"})
    return rows_


SEARCH_COLUMNS = ("pipeline", "status", "precision", "best backend", "median ms", "speedup", "worst cosine", "at")


def search_rows(candidates: Sequence[SearchCandidate]) -> list[Cells]:
    rows_ = []
    for c in candidates:
        best = c.best
        rows_.append({
            "pipeline": str(c.pipeline), "status": c.status if not c.error else f"failed: {c.error[:80]}", "precision": c.precision or "-",
            "best backend": best.backend if best else "-", "median ms": f"{best.median_ms:.2f}" if best else "-",
            "speedup": f"{best.speedup:.2f}x" if best and best.speedup else "-", "worst cosine": f"{best.worst_cosine:.6f}" if best else "-",
            "at": (best.worst_at or "-") if best else "-",
        })
    return rows_


def op_histogram_rows(report: OptimizeReport) -> list[Cells]:
    """Every op whose count the pipeline changed: before, after, change."""
    before, after = report.op_histogram.before, report.op_histogram.after
    ops = [op for op in dict.fromkeys([*before, *after]) if before.get(op, 0) != after.get(op, 0)]
    return [{"op": op, "before": str(before.get(op, 0)), "after": str(after.get(op, 0)), "change": f"{after.get(op, 0) - before.get(op, 0):+d}"}
            for op in sorted(ops, key=lambda o: after.get(o, 0) - before.get(o, 0))]


def op_diff_rows(records: Sequence[PassRecord]) -> list[Cells]:
    """Each pass's full op diff, one row per op it changed (passes that changed nothing: one row)."""
    out: list[Cells] = []
    for r in records:
        if not r.op_delta:
            out.append({"pass": r.name, "status": r.status, "op": "-", "change": "-"})
            continue
        for i, (op, d) in enumerate(r.op_delta.items()):
            out.append({"pass": r.name if i == 0 else "", "status": r.status if i == 0 else "", "op": op, "change": f"{d:+d}"})
    return out


def output_parity_rows(result: BenchResult) -> list[Cells]:
    """Every output of every backend at every shape against eager fp32 (the worse of the checks
    before and after timing)."""
    out: list[Cells] = []
    for m in result.measurements:
        if m.parity is None:
            continue
        for o in m.parity.outputs:
            out.append({"backend": m.backend, "shape": m.shape.label, "output": o.name, "cosine": f"{o.cosine:.6f}",
                        "max abs": f"{o.max_abs_error:.2e}", "max rel": f"{o.max_rel_error:.2e}", "finite": "yes" if o.finite else "NO"})
    return out


def artifact_output_rows(artifacts: Sequence[Artifact]) -> list[Cells]:
    """Every output of every artifact at each of its export checks."""
    out: list[Cells] = []
    for a in artifacts:
        for check, p in (a.parity or {}).items():
            for o in p.get("outputs") or ():
                err = o.get("max_abs_error")
                rel = o.get("max_rel_error")
                out.append({"file": a.file, "check": check, "output": o["name"], "cosine": f"{o['cosine']:.6f}",
                            "max abs": f"{err:.2e}" if err is not None else "inf", "max rel": f"{rel:.2e}" if rel is not None else "inf"})
    return out


# ----- fxbench compare

def compare_columns(comparison: Comparison) -> tuple[Column, ...]:
    """backend, shape, then per run its median (never dropped), its speed against the first run,
    its speedup over its own eager, its spread and its cosine (dropped in that order when narrow)."""
    cols = [Column("backend", "name", 0), Column("shape", "name", 0)]
    first = comparison.runs[0].key
    for i, run in enumerate(comparison.runs):
        cols.append(Column(f"{run.key} ms", "num", 0))
        if i:
            cols.append(Column(f"{run.key} vs {first}", "num", 1))
    for run in comparison.runs:
        cols.append(Column(f"{run.key} ×eager", "num", 2))
    for run in comparison.runs:
        cols.append(Column(f"{run.key} spread", "num", 3))
    for run in comparison.runs:
        cols.append(Column(f"{run.key} cos", "num", 4))
    return tuple(cols)


def compare_rows(comparison: Comparison) -> list[Cells]:
    """`X vs A` is A's median over X's: above 1.00x X is faster; a ~ marks a change within the noise."""
    out: list[Cells] = []
    first = comparison.runs[0].key
    for row in comparison.rows:
        cells = {"backend": row.backend, "shape": row.shape}
        for i, run in enumerate(comparison.runs):
            median, spread, speed, cos = row.median_ms[i], row.spread[i], row.speedup[i], row.cosine[i]
            cells[f"{run.key} ms"] = f"{median:.3f}" if median is not None else "-"
            cells[f"{run.key} ×eager"] = f"{speed:.2f}x" if speed is not None else "-"
            cells[f"{run.key} spread"] = (_pct(spread) + ("!" if spread >= NOISY_SPREAD else "")) if spread is not None else "-"
            cells[f"{run.key} cos"] = f"{cos:.6f}" if cos is not None else "-"
            if i:
                ratio, beyond = row.ratio[i], row.beyond_noise[i]
                cells[f"{run.key} vs {first}"] = f"{'' if beyond else '~'}{ratio:.2f}x" if ratio is not None else "-"
        out.append(cells)
    return out


def difference_lines(comparison: Comparison) -> list[str]:
    """The runs, then what differs between them (versions, CPU and ISA, threads, settings), one key a line."""
    lines = [f"{r.key}: {r.path} ({r.kind}, {r.model}, {r.device}, {r.threads} threads, {r.created})"
             + (f", best {r.best}" if r.best else "") for r in comparison.runs]
    if not comparison.differences:
        lines.append("same fxbench, model, machine, libraries and settings in every run")
    for key, values in comparison.differences.items():
        shown = " | ".join(f"{r.key}: {'-' if v is None else v}" for r, v in zip(comparison.runs, values))
        lines.append(f"differs: {key}: {shown}")
    return lines


# ----- listings: bench --list, passes list, inspect

BACKEND_COLUMNS = ("name", "runs", "devices", "artifact")


def backend_rows(specs: Sequence[BackendSpec]) -> list[Cells]:
    rows_ = []
    for spec in specs:
        art = ("/".join(spec.artifacts) + (" (required)" if spec.needs_artifact else " (optional)")) if spec.artifacts else "-"
        rows_.append({"name": spec.name, "runs": spec.summary, "devices": ", ".join(spec.devices), "artifact": art})
    return rows_


def catalog_rows(catalog: PassCatalog) -> list[Cells]:
    return [
        {"name": p.name, "summary": p.summary, "options": "\n".join(f"{o.name}: {o.type} = {o.default}" for o in p.options) or "-",
         "origin": p.origin}
        for p in catalog.passes
    ]


def pipeline_rows(catalog: PassCatalog) -> list[Cells]:
    return [{"name": p.name, "summary": p.summary, "passes": " → ".join(p.passes)} for p in catalog.pipelines]


def inspection_rows(info: Inspection, top: int) -> tuple[list[Cells], list[Cells]]:
    """The op histogram's `top` ops, and the node count per module."""
    ops = [{"op": op, "count": str(n)} for op, n in list(info.op_histogram.items())[:top]]
    return ops, [{"module": mod, "nodes": str(n)} for mod, n in info.nodes_per_module.items()]
