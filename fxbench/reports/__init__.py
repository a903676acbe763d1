"""Reports: the typed records the jobs return, rendered as terminal tables, markdown and HTML from shared row builders."""

from fxbench.reports.files import bench_report, jsonable, write_json, write_optimize_reports, write_reports
from fxbench.reports.html import render_export_html, render_html, render_optimize_html
from fxbench.reports.markdown import render_comparison_markdown, render_export_markdown, render_markdown, render_optimize_markdown
from fxbench.reports.records import Comparison, ExportReport, Inspection, OptimizeReport, PassCatalog
from fxbench.reports.schema import SCHEMA_PATH, SCHEMA_VERSION
from fxbench.reports.terminal import Progress, render_table

__all__ = [
    "SCHEMA_PATH",
    "SCHEMA_VERSION",
    "Comparison",
    "ExportReport",
    "Inspection",
    "OptimizeReport",
    "PassCatalog",
    "Progress",
    "bench_report",
    "jsonable",
    "render_comparison_markdown",
    "render_export_html",
    "render_export_markdown",
    "render_html",
    "render_markdown",
    "render_optimize_html",
    "render_optimize_markdown",
    "render_table",
    "write_json",
    "write_optimize_reports",
    "write_reports",
]
