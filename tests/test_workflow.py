"""`optimize` on every architecture: model.pt2 reloads and matches eager, report.json has a record per pass."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ALL_FAMILIES

from fxbench.errors import OutputExistsError
from fxbench.models import load_model, make_inputs, run_module
from fxbench.numerics import Tolerance, compare
from fxbench.jobs import OptimizeRequest, optimize


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_optimize_writes_a_program_that_reloads_and_matches(tiny_dir, minilm_dir, tmp_path, family):
    source = str(minilm_dir if family == "minilm" else tiny_dir(family))
    events: list[tuple[str, str]] = []
    result = optimize(OptimizeRequest(model=source, output=tmp_path / "out", targets=(), bench=False), events=lambda s, st, d: events.append((s, st)))
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["passes"]] == [
        "remove-noops", "fuse-attention", "fold-batchnorm", "fold-constants", "eliminate-common-subexpressions", "eliminate-dead-code",
    ]
    assert [r["name"] for r in report["passes"]] == [r.name for r in result.pipeline.records]
    assert all(r["status"] in ("applied", "unchanged") for r in report["passes"])
    assert ("load", "done") in events and ("save", "done") in events
    (program_artifact,) = report["artifacts"]
    assert program_artifact["kind"] == "program" and program_artifact["file"] == "model.pt2"

    # Reload the saved program and compare with the eager model at a shape the capture never saw.
    program = torch.export.load(str(out / "model.pt2")).module()
    loaded = load_model(source)
    seq = 24 if loaded.modality == "text" or loaded.is_encoder_decoder else 16
    inputs = make_inputs(loaded, batch=3, seq=seq, seed=7)
    got = run_module(program, inputs.tensors)
    want = result.captured.run_eager(inputs.tensors)
    parity = compare(got, want, result.captured.output_names)
    assert Tolerance.for_precision("fp32").accepts(parity), parity.brief()


def test_optimize_refuses_non_empty_output_before_doing_work(tiny_dir, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "x").write_text("x")
    events: list[str] = []
    with pytest.raises(OutputExistsError):
        optimize(OptimizeRequest(model=str(tiny_dir("gpt2")), output=out, targets=(), bench=False), events=lambda s, st, d: events.append(s))
    assert events == []  # nothing was loaded


def test_interrupted_run_leaves_no_output(tiny_dir, tmp_path):
    out = tmp_path / "out"

    def interrupt(step: str, status: str, detail: str) -> None:
        if step == "save" and status == "start":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        optimize(OptimizeRequest(model=str(tiny_dir("gpt2")), output=out, targets=(), bench=False), events=interrupt)
    assert list(tmp_path.iterdir()) == []
