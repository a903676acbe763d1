"""Report files: JSON that tools read, markdown and HTML that people read."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fxbench.reports.records import OptimizeReport
    from fxbench.runtime.bench import BenchResult

__all__ = ["jsonable", "write_json", "write_optimize_reports", "write_reports"]


def jsonable(obj: Any) -> Any:
    """Plain JSON types: dataclasses to dicts, tuples to lists, inf/nan to strings, paths to str."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        to_dict = getattr(obj, "to_dict", None)
        return jsonable(to_dict() if callable(to_dict) else dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else ("nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf"))
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def write_json(data: Any, path: Path) -> Path:
    Path(path).write_text(json.dumps(jsonable(data), indent=2) + "\n", encoding="utf-8")
    return Path(path)


def write_reports(result: BenchResult, folder: Path) -> dict[str, Path]:
    """The benchmark's report.json, report.md and report.html into `folder` (created; these three are replaced)."""
    from fxbench.reports.html import render_html
    from fxbench.reports.markdown import render_markdown

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "md": folder / "report.md", "html": folder / "report.html"}
    write_json(result.to_dict(), paths["json"])
    paths["md"].write_text(render_markdown(result), encoding="utf-8")
    paths["html"].write_text(render_html(result), encoding="utf-8")
    return paths


def write_optimize_reports(report: OptimizeReport, folder: Path) -> None:
    """`fxbench optimize`'s report.json and report.md into `folder`, and report.html when it has a benchmark."""
    from fxbench.reports.html import render_optimize_html
    from fxbench.reports.markdown import render_optimize_markdown

    write_json(report.to_dict(), folder / "report.json")
    (folder / "report.md").write_text(render_optimize_markdown(report), encoding="utf-8")
    if report.benchmark is not None:
        (folder / "report.html").write_text(render_optimize_html(report), encoding="utf-8")
