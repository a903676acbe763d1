"""The terminal: a live progress display and step lines while a job runs, and rich tables of its
results, from the shared rows, fitted to the terminal's width (columns dropped, never digits split)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from rich import box
from rich.console import Console
from rich.progress import Progress as RichProgress
from rich.progress import SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fxbench.events import Status, verbosity
from fxbench.exporters import Artifact
from fxbench.reports import rows
from fxbench.reports.records import Comparison, ExportReport, Inspection, OptimizeReport, PassCatalog
from fxbench.reports.rows import Column
from fxbench.runtime.backends import BackendSpec
from fxbench.runtime.bench import BenchResult

__all__ = [
    "Progress",
    "artifact_table",
    "backends_table",
    "catalog_tables",
    "comparison_table",
    "fit_table",
    "inspection_tables",
    "pass_table",
    "print_bench",
    "print_comparison",
    "print_export",
    "print_optimize",
    "render_table",
    "search_table",
]

_PASS_STYLE = {"applied": "green", "unchanged": "dim", "rolled-back": "yellow", "failed": "red"}


class Progress:
    """What a job is doing, on `console` (stderr): a live display of the steps running (spinner,
    step, its place "k/N", elapsed time), and a line for each step that ends (mark, step, its
    place, detail, seconds). The live display shows only on a terminal; piped output (a log, CI)
    gets the lines alone, which keep the place. Quiet (verbosity -1): nothing."""

    def __init__(self, console: Console, enabled: bool = True):
        self.console = console
        self.enabled = enabled and verbosity() >= 0
        self.started: dict[str, float] = {}
        self.places: dict[str, str] = {}  # step -> "k/N", as its start said
        self._live: RichProgress | None = None
        self._tasks: dict[str, TaskID] = {}

    def _display(self) -> RichProgress | None:
        if self._live is None and self.console.is_terminal:  # piped output: the step lines alone
            self._live = RichProgress(
                SpinnerColumn(), TextColumn("{task.description}"), TextColumn("[cyan]{task.fields[place]}"), TimeElapsedColumn(),
                console=self.console, transient=True,
            )
            self._live.start()
        return self._live

    def __call__(self, step: str, status: Status, detail: str) -> None:
        if not self.enabled:
            return
        if status == "warn":
            self.console.print(f"[yellow]![/] {step:<40} [yellow]warning:[/] {detail}", soft_wrap=True)  # one line, however long
            return
        if status == "start":
            self.started[step] = time.perf_counter()
            self.places[step] = detail
            live = self._display()
            if live is not None:
                self._tasks[step] = live.add_task(step, total=None, place=detail)
            return
        if status == "update":
            if step in self._tasks and self._live is not None:
                self._live.update(self._tasks[step], place=detail)
            return
        if status not in ("done", "fail", "skip"):
            return  # a status this display does not know
        seconds = time.perf_counter() - self.started.pop(step, time.perf_counter())
        task = self._tasks.pop(step, None)
        if task is not None and self._live is not None:
            self._live.remove_task(task)
        if status == "fail":
            detail = ""  # the error line that follows says why
        mark = {"done": "[green]✓[/]", "skip": "[yellow]-[/]"}.get(status, "[red]✗[/]")
        self.console.print(step_line(mark, step, detail, seconds, self.console.width, place=self.places.pop(step, "")))

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            self._tasks.clear()


def step_line(mark: str, step: str, detail: str, seconds: float, width: int, *, place: str = "") -> Table:
    """One finished step: the detail wraps in its own column at word boundaries (a number is never
    split) after the step's place ("3/5"), the step name keeps up to 46% of the width, the seconds
    stay at the right."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    widest = max(12, int(width * 0.46))
    # The name whole up to that width: rich would otherwise shrink it before the wrapping detail.
    grid.add_column(min_width=max(min(24, width // 3), min(len(step), widest)), max_width=widest, overflow="fold")
    grid.add_column(ratio=1, overflow="fold")
    grid.add_column(justify="right", no_wrap=True)
    said = Text(f"{place} ", style="dim") + Text(detail) if place else Text(detail)
    grid.add_row(mark, Text(step), said, f"[dim]{seconds:.1f}s[/]")
    return grid


_GAP = 3  # between two columns: padding, the (blank) rule, padding
_TEXT_MIN = 12  # a prose column keeps at least this width (or its longest word)


def _needed(col: Column, data: Sequence[rows.Cells]) -> int:
    """The narrowest a column may be: a name or number, and its header, in full (rich does not wrap
    the header of a column it does not wrap); prose down to `_TEXT_MIN` or its longest word."""
    cells = [str(row.get(col.name, "")) for row in data]
    if col.kind == "text":
        header = max(len(w) for w in col.name.split())
        longest_word = max((len(w) for c in cells for w in c.split()), default=0)
        return max(header, min(max((len(c) for c in cells), default=0), max(_TEXT_MIN, longest_word)))
    return max([len(col.name), *(len(line) for c in cells for line in c.splitlines() or [""])])


def fit_table(title: str, columns: Sequence[Column], cells: Iterable[rows.Cells], width: int, *, caption: str = "",
              styles: dict[str, str] | None = None) -> Table:
    """A table of `cells` under `columns` that fits `width`: names and numbers are never wrapped
    or cut, prose wraps, headers wrap at spaces; while the table is wider than `width`, the column
    of the highest priority number goes (the caption says which went, and that report.md has them)."""
    data = list(cells)
    kept = [c for c in columns if any(row.get(c.name, "") not in ("", None) for row in data)] or list(columns)
    dropped: list[str] = []

    def total(cols: Sequence[Column]) -> int:
        return sum(_needed(c, data) for c in cols) + _GAP * (len(cols) - 1)

    while total(kept) > width:
        droppable = [c for c in kept if c.priority > 0]
        if not droppable:
            break
        worst = max(droppable, key=lambda c: (c.priority, kept.index(c)))
        kept.remove(worst)
        dropped.append(worst.name)
    for name in reversed(list(dropped)):  # a narrow column dropped before a wide one may fit again
        col = next(c for c in columns if c.name == name)
        trial = [c for c in columns if c in kept or c is col]
        if total(trial) <= width:
            kept, dropped = trial, [d for d in dropped if d != name]
    table = Table(title=title or None, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  caption_justify="left", collapse_padding=False)
    for col in kept:
        fixed = col.kind != "text"
        table.add_column(col.name, justify="right" if col.kind == "num" else "left", no_wrap=fixed,
                         overflow="fold" if not fixed else "ellipsis", min_width=_needed(col, data))
    for row in data:
        style = (styles or {}).get(row.get("_style", ""), "")
        table.add_row(*(Text(str(row.get(c.name, "")), style=style if c.kind == "text" or c.name == "status" else "") for c in kept))
    notes = [caption] if caption else []
    if dropped:
        notes.append(f"not shown at {width} columns: {', '.join(dropped)} (report.md has every column)")
    if notes:
        table.caption = "\n".join(notes)
    return table


def _console_width(console: Console | None, width: int | None) -> int:
    return width or (console.width if console is not None else 100)


def render_table(result: BenchResult, width: int | None = None, console: Console | None = None) -> Table:
    """The benchmark's table; backends that never measured are listed under it, with why."""
    width = _console_width(console, width)
    never = [f"{rec.status}: {rec.label}: {rec.reason}" for rec in result.backends if rec.status != "ok"]
    columns = list(rows.bench_columns(result))
    shapes = {s.label for s in result.shapes}
    title = f"fxbench bench: {result.model.get('name')}"
    if len(shapes) == 1:  # one shape: it goes in the title, not in a column
        columns = [c for c in columns if c.name != "shape"]
        title += f", {next(iter(shapes))}"
    body = []
    for row in rows.bench_rows(result):
        if row.shape is None:
            continue  # in the caption
        cells = row.cells()
        cells["_style"] = "ok" if cells.get("status") == "ok" else "bad"
        body.append(cells)
    return fit_table(title, columns, body, width, caption="\n".join(rows.header_lines(result) + never), styles={"bad": "red"})


def pass_table(report: OptimizeReport, width: int | None = None, console: Console | None = None) -> Table:
    """The passes, status in color; why a pass rolled back (or what it did) in the note column."""
    columns = (Column("pass", "name", 0), Column("status", "name", 0), Column("nodes", "num", 2), Column("op changes", "text", 3),
               Column("cosine", "num", 1), Column("max abs err", "num", 4), Column("s", "num", 5), Column("note", "text", 2))
    body = []
    for cells in rows.pass_rows(report.passes):
        cells["_style"] = cells["status"]
        body.append(cells)
    return fit_table("passes", columns, body, _console_width(console, width), styles=_PASS_STYLE)


_ARTIFACT_COLUMNS = (Column("kind", "name", 0), Column("file", "name", 0), Column("device", "name", 4), Column("precision", "name", 2),
                     Column("checks", "text", 3), Column("cosine", "num", 1), Column("max rel err", "num", 3), Column("MiB", "num", 5),
                     Column("export s", "num", 5))


def artifact_table(artifacts: Sequence[Artifact], failures: Sequence = (), width: int | None = None,
                   console: Console | None = None) -> Table:
    return fit_table("artifacts", _ARTIFACT_COLUMNS, rows.artifact_rows(artifacts, failures), _console_width(console, width))


def search_table(report: OptimizeReport, width: int | None = None, console: Console | None = None) -> Table:
    columns = (Column("pipeline", "name", 0), Column("status", "text", 0), Column("precision", "name", 3),
               Column("best backend", "name", 1), Column("median ms", "num", 0), Column("speedup", "num", 1),
               Column("worst cosine", "num", 2), Column("at", "name", 4))
    return fit_table("search (one benchmark, one eager baseline)", columns, rows.search_rows(report.search or ()),
                     _console_width(console, width))


def _warnings(console: Console, lines: Sequence[str]) -> None:
    for line in lines:
        console.print(Text(line, style="yellow"))


def print_bench(console: Console, result: BenchResult, folder: Path | None = None, warnings: Console | None = None) -> None:
    console.print(render_table(result, console=console))
    _warnings(warnings or console, rows.noise_lines(result))
    if folder is not None:
        console.print(f"[bold]{folder}[/]: report.json, report.md, report.html")


def print_optimize(console: Console, report: OptimizeReport, output_dir: Path, warnings: Console | None = None) -> None:
    """The passes, the artifacts, the benchmark and the search; the summary after the tables; the files."""
    console.print(pass_table(report, console=console))
    if len(report.artifacts) > 1:
        console.print(artifact_table(report.artifacts, console=console))
    if report.benchmark is not None:
        console.print(render_table(report.benchmark, console=console))
    if report.search:
        console.print(search_table(report, console=console))
    if report.benchmark is not None:
        _warnings(warnings or console, rows.noise_lines(report.benchmark))
    for line in rows.summary_lines(report)[3:]:  # model, pipeline and device were on the step lines
        console.print(Text(line))
    console.print(Text.assemble((str(output_dir), "bold"), f": {', '.join(report.files())}"))


def print_export(console: Console, report: OptimizeReport | ExportReport, artifacts: Sequence[Artifact], output_dir: Path) -> None:
    console.print(artifact_table(artifacts, console=console))
    made = ", ".join(a.file for a in artifacts)
    console.print(Text.assemble((str(output_dir), "bold"), f": {made} + report.json, report.md, report.html"))


def comparison_table(comparison: Comparison, width: int | None = None, console: Console | None = None) -> Table:
    return fit_table("fxbench compare", rows.compare_columns(comparison), rows.compare_rows(comparison), _console_width(console, width),
                     caption="X vs A: A's median over X's (above 1.00x X is faster); ~: within the noise of both runs")


def print_comparison(console: Console, comparison: Comparison) -> None:
    console.print(comparison_table(comparison, console=console))
    for line in rows.difference_lines(comparison):
        console.print(Text(line))


def inspection_tables(info: Inspection, depth: int, top: int, width: int | None = None) -> list[object]:
    """The headline, the op histogram and the node counts per module."""
    ops, modules = rows.inspection_rows(info, top)
    width = width or 100
    return [Text.assemble((info.source, "bold"), f": {info.parameters:,} parameters, {info.nodes} nodes"),
            fit_table("ops", (Column("op", "name"), Column("count")), ops, width),
            fit_table(f"nodes per module (depth {depth})", (Column("module", "name"), Column("nodes")), modules, width)]


def backends_table(specs: Sequence[BackendSpec], width: int | None = None) -> Table:
    columns = (Column("name", "name", 0), Column("runs", "text", 0), Column("devices", "name", 1), Column("artifact", "text", 2))
    return fit_table("backends", columns, rows.backend_rows(specs), width or 100)


def catalog_tables(catalog: PassCatalog, width: int | None = None) -> list[Table]:
    width = width or 100
    return [fit_table("passes", (Column("name", "name", 0), Column("summary", "text", 0), Column("options", "text", 1),
                                 Column("origin", "text", 2)), rows.catalog_rows(catalog), width),
            fit_table("pipelines", (Column("name", "name", 0), Column("summary", "text", 0), Column("passes", "text", 1)),
                      rows.pipeline_rows(catalog), width)]


