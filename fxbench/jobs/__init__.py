"""Jobs: what each command does end to end (optimize, search, export, bench, inspect, passes list),
calling models, passes, exporters and runtime, and returning typed results."""

from fxbench.jobs.bench import BenchTarget, default_report_dir, open_target, run_benchmark
from fxbench.jobs.catalog import pass_catalog
from fxbench.jobs.compare import compare_runs
from fxbench.jobs.common import DEVICES, default_device, load_and_capture, pass_context, resolve_device, resolve_model_source
from fxbench.jobs.export import ExportRequest, ExportResult, export
from fxbench.jobs.inspect import inspect_program, inspect_target
from fxbench.jobs.optimize import OptimizeRequest, OptimizeResult, optimize, optimize_captured

__all__ = [
    "DEVICES",
    "BenchTarget",
    "ExportRequest",
    "ExportResult",
    "OptimizeRequest",
    "OptimizeResult",
    "compare_runs",
    "default_device",
    "default_report_dir",
    "export",
    "inspect_program",
    "inspect_target",
    "load_and_capture",
    "open_target",
    "optimize",
    "optimize_captured",
    "pass_catalog",
    "pass_context",
    "resolve_device",
    "resolve_model_source",
    "run_benchmark",
]
