"""The top layer: the optimize workflow, inspection, and (with the benchmark) sessions and reports."""

from fxbench.runtime.report import jsonable, write_json
from fxbench.runtime.workflow import OptimizeRequest, OptimizeResult, optimize

__all__ = ["OptimizeRequest", "OptimizeResult", "jsonable", "optimize", "write_json"]
