"""Benchmark reports for people and tools: a rich table for the terminal, report.json, and
report.md to paste into a review (report.html is in html_report)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.table import Table

from fxbench.runtime.bench import BenchResult, Measurement, Shape
from fxbench.runtime.report import write_json

__all__ = ["COLUMNS", "LEFT", "Row", "agreement_metric", "environment_lines", "header_lines", "method_note", "render_markdown", "render_table", "rows", "table_columns", "write_reports"]


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


def rows(result: BenchResult) -> Iterator[Row]:
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


def render_table(result: BenchResult) -> Table:
    """The terminal table (rich); backends that never measured are listed under it, with why."""
    never = [f"{rec.status}: {rec.label}: {rec.reason}" for rec in result.backends if rec.status != "ok"]
    table = Table(title=f"fxbench bench: {result.model.get('name')}", title_justify="left",
                  caption="\n".join(header_lines(result) + never), caption_justify="left")
    cols = table_columns(result)
    for col in cols:
        table.add_column(col, justify="left" if col in LEFT else "right", overflow="fold")
    for row in rows(result):
        if row.shape is None:
            continue  # in the caption
        cells = row.cells()
        if not row.ok:
            table.add_row(cells["backend"], cells["shape"], *([""] * (len(cols) - 3)), f"[red]{cells['status']}[/]")
            continue
        status = cells["status"]
        table.add_row(*[cells.get(c, "-") if c != "status" else (status if status == "ok" else f"[red]{status}[/]") for c in cols])
    return table


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(result: BenchResult) -> str:
    """report.md: the table, what was measured and how, the backends, and the environment."""
    cols = table_columns(result)
    out = [f"# fxbench bench: {result.model.get('name')}", ""]
    out += [f"- {line}" for line in header_lines(result)] + [""]
    out += ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" if c in LEFT else "---:" for c in cols) + " |"]
    for row in rows(result):
        cells = row.cells()
        out.append("| " + " | ".join(_md_escape(cells.get(c, "")) for c in cols) + " |")
    out += ["", method_note(result), "", "## Backends", "", "| backend | what | device | precision | CUDA graphs | I/O | load s | artifact |",
            "| --- | --- | --- | --- | --- | --- | ---: | --- |"]
    for b in result.backends:
        out.append(
            f"| {_md_escape(b.label)} | {_md_escape(b.summary)} | {b.device} | {b.precision} | {'on' if b.cuda_graphs else 'off'} | "
            f"{_md_escape(b.io or '-')} | {b.load_seconds:.1f} | {_md_escape(Path(b.artifact).name) if b.artifact else '-'} |"
        )
    warm = [m for m in result.measurements if m.warmup is not None]
    if warm:
        out += ["", "## Warm-up", "", "| backend | shape | first call s | warm-up runs | warm-up s | steady |", "| --- | --- | ---: | ---: | ---: | --- |"]
        for m in warm:
            assert m.warmup is not None
            steady = {True: "yes", False: "no (capped)", None: "not judged"}[m.warmup.steady]
            out.append(f"| {_md_escape(m.backend)} | {m.shape.label} | {m.warmup.first_call_s:.2f} | {m.warmup.runs} | {m.warmup.seconds:.2f} | {steady} |")
    out += ["", "## Environment", ""] + [f"- {line}" for line in environment_lines(result.environment)] + [""]
    return "\n".join(out)


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


def write_reports(result: BenchResult, folder: Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html into `folder` (created; these three are replaced)."""
    from fxbench.runtime.html_report import render_html

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "md": folder / "report.md", "html": folder / "report.html"}
    write_json(result.to_dict(), paths["json"])
    paths["md"].write_text(render_markdown(result), encoding="utf-8")
    paths["html"].write_text(render_html(result), encoding="utf-8")
    return paths
