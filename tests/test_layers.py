"""The house's layering: data flows one way (models -> passes -> exporters -> runtime -> reports ->
jobs -> cli and the Python API), read statically from every module's imports; and importing
measurement loads no job or report, and importing fxbench loads no layer at all."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fxbench"

# Each layer and the fxbench layers it may import; the top-level leaves (errors, events, interrupts,
# numerics, environment, quiet, task_names) serve every layer and import none. The package face
# (fxbench/__init__.py) imports the API on first use of fxbench.optimize / bench / export, and nothing else.
LEAVES = {"errors", "events", "interrupts", "numerics", "environment", "quiet", "task_names", "__init__"}
FACE_MAY_IMPORT = {"api"}
MAY_IMPORT = {
    "models": set(),
    "passes": {"models"},
    "exporters": {"models", "passes"},
    "runtime": {"models", "passes", "exporters"},
    "reports": {"models", "passes", "exporters", "runtime"},
    "jobs": {"models", "passes", "exporters", "runtime", "reports"},
    "cli": {"models", "passes", "exporters", "runtime", "reports", "jobs"},
    "api": {"models", "passes", "exporters", "runtime", "reports", "jobs"},
    "__main__": {"cli"},
}


def _layer(module: str) -> str | None:
    """'fxbench.runtime.sessions.base' -> 'runtime'; a leaf module -> None."""
    parts = module.split(".")
    if parts[0] != "fxbench" or len(parts) == 1:
        return None
    return None if parts[1] in LEAVES else parts[1]


def _module(path: Path, package: Path) -> str:
    return ".".join(path.relative_to(package.parent).with_suffix("").parts)


def _imports(path: Path, package: Path) -> list[tuple[int, str]]:
    """Every fxbench module `path` imports (at the top, in a function, or under TYPE_CHECKING), with its line."""
    module = _module(path, package)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                parent = module.split(".")[:-1]
                base = ".".join([*parent[: len(parent) - node.level + 1], *([base] if base else [])])
            found.append((node.lineno, base))
    return [(line, name) for line, name in found if name == "fxbench" or name.startswith("fxbench.")]


def _violations(package: Path) -> list[str]:
    """'module (layer) line N: imported' for each import of a layer the module's layer may not import."""
    wrong = []
    for path in sorted(package.rglob("*.py")):
        me = _layer(_module(path, package))
        face = path == package / "__init__.py"
        allowed = MAY_IMPORT[me] if me is not None else (FACE_MAY_IMPORT if face else set())  # a leaf imports no layer
        for line, name in _imports(path, package):
            theirs = _layer(name)
            if theirs is not None and theirs != me and theirs not in allowed:
                wrong.append(f"{path.relative_to(package)} ({me or 'leaf'}) line {line}: {name}")
    return wrong


def test_the_layer_table_covers_every_module():
    layers = {_layer(_module(p, PACKAGE)) for p in PACKAGE.rglob("*.py")}
    assert layers - {None} == set(MAY_IMPORT), "a new top-level package or module needs its place in MAY_IMPORT or LEAVES"


def test_imports_flow_one_way():
    assert _violations(PACKAGE) == []


def test_the_checker_sees_a_wrong_import(tmp_path):
    # The rule must be able to fail: a measurement module that imports a job and a report is caught,
    # and so is a report that imports a job (relative imports too).
    (tmp_path / "fxbench" / "runtime").mkdir(parents=True)
    (tmp_path / "fxbench" / "reports").mkdir()
    (tmp_path / "fxbench" / "runtime" / "oops.py").write_text("from fxbench.jobs.optimize import optimize\nimport fxbench.reports.rows\n")
    (tmp_path / "fxbench" / "reports" / "oops.py").write_text("from ..models import capture\nfrom ..jobs import bench\n")
    assert _violations(tmp_path / "fxbench") == [
        "reports/oops.py (reports) line 2: fxbench.jobs",
        "runtime/oops.py (runtime) line 1: fxbench.jobs.optimize",
        "runtime/oops.py (runtime) line 2: fxbench.reports.rows",
    ]


def test_importing_fxbench_loads_no_layer_until_the_api_is_used():
    code = ("import sys, fxbench\n"
            "print(sorted(m for m in sys.modules if m.startswith('fxbench.') and m not in ('fxbench.errors',)), 'torch' in sys.modules)\n"
            "fxbench.optimize\n"
            "print('fxbench.api' in sys.modules, 'fxbench.jobs' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[] False", "True True"]


@pytest.mark.parametrize("module", ["fxbench.runtime.sessions", "fxbench.runtime"])
def test_importing_measurement_loads_no_job_and_no_report(module):
    code = (f"import sys, {module}\n"
            "print(sorted(m for m in sys.modules if m.startswith(('fxbench.jobs', 'fxbench.reports', 'fxbench.cli'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
