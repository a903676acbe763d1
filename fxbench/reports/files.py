"""Report files: JSON that tools read, markdown and HTML that people read."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fxbench.reports.records import ExportReport, OptimizeReport
    from fxbench.runtime.bench import BenchResult

__all__ = ["bench_report", "jsonable", "write_json", "write_optimize_reports", "write_reports"]


def jsonable(obj: Any) -> Any:
    """Plain JSON types: dataclasses to dicts, tuples to lists, paths to str, and a number that is
    not finite (an unbounded budget, an overflowed error) to null: the record it sits in says why
    (parity's `finite`, a budget's "no limit"), as the schema documents."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        to_dict = getattr(obj, "to_dict", None)
        return jsonable(to_dict() if callable(to_dict) else dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def write_json(data: Any, path: Path) -> Path:
    # allow_nan=False: a stray inf or nan is a bug here, never an "Infinity" token in the file.
    Path(path).write_text(json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return Path(path)


def bench_report(result: BenchResult) -> dict[str, Any]:
    """`fxbench bench`'s report.json: the schema's header, then the benchmark."""
    from fxbench.reports.schema import SCHEMA_VERSION

    return {"schema_version": SCHEMA_VERSION, "kind": "bench", **result.to_dict()}


def write_reports(result: BenchResult, folder: Path) -> dict[str, Path]:
    """The benchmark's report.json, report.md and report.html into `folder` (created; these three are replaced)."""
    from fxbench.reports.html import render_html
    from fxbench.reports.markdown import render_markdown

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "md": folder / "report.md", "html": folder / "report.html"}
    write_json(bench_report(result), paths["json"])
    paths["md"].write_text(render_markdown(result), encoding="utf-8")
    paths["html"].write_text(render_html(result), encoding="utf-8")
    return paths


def write_optimize_reports(report: OptimizeReport | ExportReport, folder: Path) -> None:
    """report.json, report.md and report.html of `fxbench optimize` (or of `fxbench export`) into
    `folder`: all three, always, so that they never say different things. report.json is written
    last, so that a reader that sees it finds the other two."""
    from fxbench.reports.html import render_export_html, render_optimize_html
    from fxbench.reports.markdown import render_export_markdown, render_optimize_markdown
    from fxbench.reports.records import OptimizeReport

    folder = Path(folder)
    optimize = isinstance(report, OptimizeReport)
    (folder / "report.md").write_text(render_optimize_markdown(report) if optimize else render_export_markdown(report), encoding="utf-8")
    (folder / "report.html").write_text(render_optimize_html(report) if optimize else render_export_html(report), encoding="utf-8")
    write_json(report.to_dict(), folder / "report.json")
