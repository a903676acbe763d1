"""The shared row builders: every table fxbench prints or writes (terminal, markdown, HTML) takes its
cells from here, so the three say the same thing; the renderers only lay them out."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fxbench.exporters import Artifact
from fxbench.passes import PassRecord
from fxbench.reports.records import Inspection, OptimizeReport, PassCatalog, SearchCandidate
from fxbench.runtime.backends import BackendSpec
from fxbench.runtime.bench import BenchResult, Measurement, Shape

if TYPE_CHECKING:
    from fxbench.exporters.export import ExportFailure

__all__ = [
    "ARTIFACT_COLUMNS",
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
            "p90 ms": f"{lat.p90_ms:.3f}",
            "p99 ms": f"{lat.p99_ms:.3f}",
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


COLUMNS = ("backend", "shape", "median ms", "p90 ms", "p99 ms", "mean ms", "std ms", "samples/s", "speedup", "mem MiB",
           "max abs", "cosine", "agree", "status")
LEFT = ("backend", "shape", "status")


def table_columns(result: BenchResult) -> tuple[str, ...]:
    return COLUMNS[:3] + ("device ms",) + COLUMNS[3:] if result.device == "cuda" else COLUMNS


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
    clock = ("host wall clock per run, synchronized (latency) and CUDA events (device ms)" if result.device == "cuda"
             else "wall clock per run")
    return (
        f"Latency: {clock}; speedup = eager fp32 median / backend median. Warm-up: the first call alone, then at least "
        f"{w['iters']} runs and {w['seconds']} s until runs stop getting faster (cap {w['max_seconds']} s); then {timed}. "
        "mem MiB: peak memory growth over the measurement (CPU: peak RSS; GPU: allocator peak, or device memory in use for ORT/TensorRT). "
        "Garbage collection is off while timing."
    )


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


def environment_lines(env: dict[str, Any]) -> list[str]:
    """The environment as short lines: machine, library versions, the exact command."""
    lines = [f"CPU: {env.get('cpu')}, {env.get('cpu_count')} logical CPUs, torch threads {env.get('torch_threads')}",
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
        if key not in ("cpu", "cpu_count", "torch_threads", "python", "platform", "gpu", "packages", "command", "cuda_available"):
            lines.append(f"{key}: {value}")
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


def summary_lines(report: OptimizeReport) -> list[str]:
    """model, pipeline, device, final parity and the best artifact, one line each."""
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
    if report.best:
        best = report.best.choice
        speed = f", {best.speedup:.2f}x eager fp32" if best.speedup else ""
        lines.append(
            f"best artifact: {best.backend} ({best.artifact}): {best.median_ms:.2f} ms median{speed}, "
            f"worst cosine {best.worst_cosine:.6f} (budget: cosine >= {report.best.min_cosine})"
        )
    elif report.benchmark is not None:
        lines.append("best artifact: none meets the accuracy budget")
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
            "max rel err": f"{max(p['max_rel_error'] for p in parity.values()):.2e}" if parity else "-",
            "MiB": f"{size / 2**20:.1f}" if size else "-", "export s": f"{a.seconds or 0.0:.1f}",
        })
    for f in failures:
        rows_.append({"kind": f.target, "file": "-", "device": "-", "precision": "-", "checks": f"failed: {f.error[:100]}"})
    return rows_


SEARCH_COLUMNS = ("pipeline", "status", "precision", "best backend", "median ms", "speedup", "worst cosine")


def search_rows(candidates: Sequence[SearchCandidate]) -> list[Cells]:
    rows_ = []
    for c in candidates:
        best = c.best
        rows_.append({
            "pipeline": str(c.pipeline), "status": c.status if not c.error else f"failed: {c.error[:80]}", "precision": c.precision or "-",
            "best backend": best.backend if best else "-", "median ms": f"{best.median_ms:.2f}" if best else "-",
            "speedup": f"{best.speedup:.2f}x" if best and best.speedup else "-", "worst cosine": f"{best.worst_cosine:.6f}" if best else "-",
        })
    return rows_


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
