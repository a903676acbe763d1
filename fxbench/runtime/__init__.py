"""The top layer: the optimize workflow, inspection, backend sessions, the benchmark harness and reports."""

from fxbench.runtime.backends import BACKENDS, Backend, BackendSpec, create_session
from fxbench.runtime.bench import BenchResult, Choice, Measurement, Shape, best_artifact, run_benchmark, shapes_from
from fxbench.runtime.bench_report import render_markdown, render_table, write_reports
from fxbench.runtime.harness import LatencyStats, Measure, Warmup
from fxbench.runtime.html_report import render_html
from fxbench.runtime.report import jsonable, write_json
from fxbench.runtime.workflow import OptimizeRequest, OptimizeResult, optimize

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendSpec",
    "BenchResult",
    "Choice",
    "LatencyStats",
    "Measure",
    "Measurement",
    "OptimizeRequest",
    "OptimizeResult",
    "Shape",
    "Warmup",
    "best_artifact",
    "create_session",
    "jsonable",
    "optimize",
    "render_html",
    "render_markdown",
    "render_table",
    "run_benchmark",
    "shapes_from",
    "write_json",
    "write_reports",
]
