"""Reports: the typed records the jobs return, rendered as terminal tables, markdown and HTML from shared row builders."""

from fxbench.reports.files import jsonable, write_json, write_optimize_reports, write_reports
from fxbench.reports.html import render_html, render_optimize_html
from fxbench.reports.markdown import render_markdown, render_optimize_markdown
from fxbench.reports.records import Inspection, OptimizeReport, PassCatalog
from fxbench.reports.terminal import Progress, render_table

__all__ = [
    "Inspection",
    "OptimizeReport",
    "PassCatalog",
    "Progress",
    "jsonable",
    "render_html",
    "render_markdown",
    "render_optimize_html",
    "render_optimize_markdown",
    "render_table",
    "write_json",
    "write_optimize_reports",
    "write_reports",
]
