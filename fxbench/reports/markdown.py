"""report.md: the benchmark's, and `fxbench optimize`'s (its summary, search, passes and artifacts, then the benchmark)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fxbench.reports import rows
from fxbench.reports.records import Comparison, ExportReport, OptimizeReport
from fxbench.runtime.bench import BenchResult

__all__ = ["md_table", "render_comparison_markdown", "render_export_markdown", "render_markdown", "render_optimize_markdown"]

_RIGHT = {"load s", "first call s", "warm-up runs", "warm-up s"}


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(columns: Sequence[str], cells: Iterable[rows.Cells], right: Iterable[str] = ()) -> list[str]:
    """A markdown table of the rows' cells in `columns` ('' where a row has none); `right` columns right-aligned."""
    right = set(right)
    return ["| " + " | ".join(columns) + " |", "| " + " | ".join("---:" if c in right else "---" for c in columns) + " |",
            *("| " + " | ".join(_escape(row.get(c, "")) for c in columns) + " |" for row in cells)]


def render_markdown(result: BenchResult) -> str:
    """report.md: the table, what was measured and how, the backends, and the environment."""
    cols = rows.table_columns(result)
    out = [f"# fxbench bench: {result.model.get('name')}", ""]
    out += [f"- {line}" for line in rows.header_lines(result)] + [""]
    out += md_table(cols, (row.cells() for row in rows.bench_rows(result)), right=[c for c in cols if c not in rows.LEFT])
    out += [""] + [f"**{line}**" for line in rows.noise_lines(result)]
    out += ["", rows.method_note(result), "", "## Backends", ""] + md_table(rows.RUN_BACKEND_COLUMNS, rows.run_backend_rows(result), _RIGHT)
    warm = rows.warmup_rows(result)
    if warm:
        out += ["", "## Warm-up", ""] + md_table(rows.WARMUP_COLUMNS, warm, _RIGHT)
    out += ["", "## Environment", ""] + [f"- {line}" for line in rows.environment_lines(result.environment)] + [""]
    return "\n".join(out)


def render_optimize_markdown(report: OptimizeReport) -> str:
    out = [f"# fxbench optimize: {report.model.name}", ""]
    out += [f"- {line}" for line in rows.summary_lines(report)] + [""]
    if report.search:
        out += ["## Search", ""] + md_table(rows.SEARCH_COLUMNS, rows.search_rows(report.search)) + [""]
    out += ["## Passes", ""] + md_table(rows.PASS_COLUMNS, rows.pass_rows(report.passes)) + [""]
    changed = rows.op_histogram_rows(report)
    if changed:
        out += ["### Ops before and after the pipeline", ""] + md_table(("op", "before", "after", "change"), changed,
                                                                        right=("before", "after", "change")) + [""]
    out += ["## Artifacts", ""] + md_table(rows.ARTIFACT_COLUMNS, rows.artifact_rows(report.artifacts, report.export_failures)) + [""]
    if report.benchmark is None:
        out += ["## Benchmark", "", "Not run (--no-bench): `fxbench bench DIR` times every artifact.", ""]
        out += ["## Environment", ""] + [f"- {line}" for line in rows.environment_lines(dict(report.environment))] + [""]
    if report.benchmark is not None:
        body = render_markdown(report.benchmark).splitlines()
        body = body[1:] if body and body[0].startswith("# ") else body  # its title is ours now
        out += ["## Benchmark", ""] + [("#" + line if line.startswith("## ") else line) for line in body]
    return "\n".join(out).rstrip() + "\n"


def render_export_markdown(report: ExportReport) -> str:
    """report.md of `fxbench export` into a new folder: the model, where it came from, the artifacts."""
    model = report.model
    out = [f"# fxbench export: {model.name}", "",
           f"- model: {model.model_id or model.source} ({model.architecture}, {model.task}, {model.parameters / 1e6:.1f}M parameters)",
           f"- exported from: {report.source.get('program') or 'the model, captured without passes'}", ""]
    out += ["## Artifacts", ""] + md_table(rows.ARTIFACT_COLUMNS, rows.artifact_rows(report.artifacts, report.export_failures)) + [""]
    out += ["## Environment", ""] + [f"- {line}" for line in rows.environment_lines(dict(report.environment))] + [""]
    return "\n".join(out)


def render_comparison_markdown(comparison: Comparison) -> str:
    """`fxbench compare --markdown`: the side-by-side table and what differs, to paste into a review."""
    columns = [c.name for c in rows.compare_columns(comparison)]
    out = ["# fxbench compare", ""]
    out += md_table(columns, rows.compare_rows(comparison), right=columns[2:])
    out += ["", "X vs A: A's median over X's (above 1.00x X is faster); ~: within the noise of both runs.", ""]
    out += [f"- {line}" for line in rows.difference_lines(comparison)] + [""]
    return "\n".join(out)
