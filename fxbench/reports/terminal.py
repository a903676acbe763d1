"""The terminal: step lines while a job runs, and rich tables of its results, from the shared rows."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fxbench.events import Status
from fxbench.exporters import Artifact
from fxbench.reports.records import Inspection, OptimizeReport, PassCatalog
from fxbench.reports import rows
from fxbench.runtime.backends import BackendSpec
from fxbench.runtime.bench import BenchResult

__all__ = [
    "Progress",
    "artifact_table",
    "backends_table",
    "catalog_tables",
    "inspection_tables",
    "pass_table",
    "print_export",
    "print_optimize",
    "render_table",
    "search_table",
]

_NUMERIC = {"nodes", "cosine", "max abs err", "max rel err", "MiB", "s", "export s", "median ms", "speedup", "worst cosine", "count"}
_PASS_STYLE = {"applied": "green", "unchanged": "dim", "rolled-back": "yellow", "failed": "red"}


class Progress:
    """Step lines on `console` (stderr): a spinner while a step runs, a mark and its detail when it ends."""

    def __init__(self, console: Console, enabled: bool = True):
        self.console, self.enabled = console, enabled
        self.started: dict[str, float] = {}
        self.status = None

    def __call__(self, step: str, status: Status, detail: str) -> None:
        if not self.enabled:
            return
        if status == "warn":
            self.console.print(f"[yellow]![/] {step:<40} [yellow]warning:[/] {detail}", soft_wrap=True)  # one line, however long
            return
        if status == "start":
            self.started[step] = time.perf_counter()
            if self.status is None:
                self.status = self.console.status(f"{step}...")
                self.status.start()
            else:
                self.status.update(f"{step}...")
            return
        seconds = time.perf_counter() - self.started.pop(step, time.perf_counter())
        if status == "fail":
            detail = ""  # the error line that follows says why
        mark = {"done": "[green]✓[/]", "skip": "[yellow]-[/]"}.get(status, "[red]✗[/]")
        self.console.print(f"{mark} {step:<40} {detail}  [dim]{seconds:.1f}s[/]")

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def _table(title: str, columns: Sequence[str], cells: Iterable[rows.Cells], *, fold: bool = False) -> Table:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, justify="right" if col in _NUMERIC else "left", overflow="fold" if fold else "ellipsis")
    for row in cells:
        table.add_row(*(row.get(c, "") for c in columns))
    return table


def render_table(result: BenchResult) -> Table:
    """The benchmark's table; backends that never measured are listed under it, with why."""
    never = [f"{rec.status}: {rec.label}: {rec.reason}" for rec in result.backends if rec.status != "ok"]
    table = Table(title=f"fxbench bench: {result.model.get('name')}", title_justify="left",
                  caption="\n".join(rows.header_lines(result) + never), caption_justify="left")
    cols = rows.table_columns(result)
    for col in cols:
        table.add_column(col, justify="left" if col in rows.LEFT else "right", overflow="fold")
    for row in rows.bench_rows(result):
        if row.shape is None:
            continue  # in the caption
        cells = row.cells()
        if not row.ok:
            table.add_row(cells["backend"], cells["shape"], *([""] * (len(cols) - 3)), f"[red]{cells['status']}[/]")
            continue
        status = cells["status"]
        table.add_row(*[cells.get(c, "-") if c != "status" else (status if status == "ok" else f"[red]{status}[/]") for c in cols])
    return table


def pass_table(report: OptimizeReport) -> Table:
    """The passes, status in color; a pass's note (why it rolled back, what it did) on a line of its own."""
    columns = rows.PASS_COLUMNS[:-1]
    table = Table(title="passes", title_justify="left")
    for col in columns:
        table.add_column(col, justify="right" if col in _NUMERIC else "left")
    for cells in rows.pass_rows(report.passes):
        style = _PASS_STYLE[cells["status"]]
        table.add_row(*(f"[{style}]{cells[c]}[/]" if c == "status" else cells[c] for c in columns))
        if cells["note"]:
            table.add_row("", f"[{style}]{cells['note'][:100]}[/]", *([""] * (len(columns) - 2)))
    return table


def artifact_table(artifacts: Sequence[Artifact], failures: Sequence = ()) -> Table:
    return _table("artifacts", rows.ARTIFACT_COLUMNS, rows.artifact_rows(artifacts, failures))


def search_table(report: OptimizeReport) -> Table:
    return _table("search", rows.SEARCH_COLUMNS, rows.search_rows(report.search or ()))


def print_optimize(console: Console, report: OptimizeReport, output_dir: Path) -> None:
    """The passes, the artifacts, the benchmark and the search; the summary after the tables; the files."""
    console.print(pass_table(report))
    if len(report.artifacts) > 1:
        console.print(artifact_table(report.artifacts))
    if report.benchmark is not None:
        console.print(render_table(report.benchmark))
    if report.generation is not None:
        from fxbench.reports.generation import render_generation_table

        console.print(render_generation_table(report.generation))
    if report.search:
        console.print(search_table(report))
    for line in rows.summary_lines(report)[3:]:  # model, pipeline and device were on the step lines
        console.print(line)
    console.print(f"[bold]{output_dir}[/]: {', '.join(report.files())}")


def print_export(console: Console, artifacts: Sequence[Artifact], output_dir: Path) -> None:
    console.print(artifact_table(artifacts))
    console.print(f"[bold]{output_dir}[/]: {', '.join(a.file for a in artifacts)} + report.json")


def inspection_tables(info: Inspection, depth: int, top: int) -> list[object]:
    """The headline, the op histogram and the node counts per module."""
    ops, modules = rows.inspection_rows(info, top)
    return [f"[bold]{info.source}[/]: {info.parameters:,} parameters, {info.nodes} nodes",
            _table("ops", ("op", "count"), ops), _table(f"nodes per module (depth {depth})", ("module", "nodes"), modules)]


def backends_table(specs: Sequence[BackendSpec]) -> Table:
    return _table("backends", rows.BACKEND_COLUMNS, rows.backend_rows(specs), fold=True)


def catalog_tables(catalog: PassCatalog) -> list[Table]:
    return [_table("passes", ("name", "summary", "options", "origin"), rows.catalog_rows(catalog), fold=True),
            _table("pipelines", ("name", "summary", "passes"), rows.pipeline_rows(catalog), fold=True)]
