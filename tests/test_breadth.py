"""The breadth script's machinery (benchmarks/breadth.py) on a couple of tiny models: it builds them,
runs the CLI as a user does, and records ok or the one error line; a stopped run resumes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def breadth():
    spec = importlib.util.spec_from_file_location("breadth", ROOT / "benchmarks" / "breadth.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["breadth"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("breadth", None)


def test_the_sample_spans_every_group_and_interleaves_them(breadth):
    groups = {group for group, *_ in breadth.SAMPLE.values()}
    assert groups == {"encoder", "decoder", "encoder-decoder", "vision", "audio", "multimodal"}
    assert len(breadth.SAMPLE) >= 30 and sorted(breadth.interleaved()) == sorted(breadth.SAMPLE)
    assert {breadth.SAMPLE[n][0] for n in breadth.interleaved()[:6]} == groups


def test_a_model_runs_through_both_commands_and_a_stopped_run_resumes(breadth, tmp_path):
    seen = []
    results = breadth.run_sample(["resnet"], tmp_path, progress=seen.append)
    (resnet,) = results
    assert [r.command.split()[0] for r in resnet.runs] == ["optimize", "export"]
    assert all(r.ok and r.one_line and r.line == "" for r in resnet.runs), resnet
    assert (tmp_path / "resnet" / "exported" / "model.onnx").is_file() and (tmp_path / "resnet" / "optimized" / "model.pt2").is_file()
    summary = breadth.summary(results)
    assert (summary["tried"], summary["both_ok"], summary["failures_not_one_line"]) == (1, 1, [])
    assert "| resnet | vision | ResNetForImageClassification | ok (" in breadth.markdown(
        results, {"summary": summary, "pipeline": "O1", "environment": {}, "seconds": 1.0, "load_average_after": [], "complete": True})
    # Run again in the same folder: the result is read back, nothing runs (the worker would rebuild the model).
    (tmp_path / "resnet" / "model" / "config.json").unlink()
    again = breadth.run_sample(["resnet"], tmp_path)
    assert [r.exit_code for r in again[0].runs] == [0, 0] and not (tmp_path / "resnet" / "model" / "config.json").exists()


def test_a_failure_is_recorded_as_its_one_error_line(breadth, tmp_path):
    folder = tmp_path / "model"
    breadth.build("bert", folder)
    run = breadth._cli(["optimize", str(folder), "--sample-batch", "0", "-o", str(tmp_path / "out")])
    assert (run.exit_code, run.one_line) == (2, True)
    assert run.line == "error: --sample-batch must be at least 1, not 0" and run.command.startswith("optimize model --sample-batch 0")
    # A folder that is not there: one line too, exit 2, before anything loads.
    run = breadth._cli(["optimize", str(tmp_path / "missing"), "-o", str(tmp_path / "out")])
    assert run.exit_code == 2 and run.one_line and run.line.startswith("error: ")
