"""`fxbench export` and `fxbench optimize --target` end to end in subprocesses: artifacts, report.json, errors."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_cli import fxbench

TENSORRT_HERE = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


@pytest.fixture(scope="module")
def optimized(tiny_dir, tmp_path_factory):
    """`fxbench optimize` of tiny BERT with ONNX, ORT and TensorRT targets (TensorRT fails here)."""
    out = tmp_path_factory.mktemp("cli") / "bert"
    proc = fxbench("optimize", str(tiny_dir("bert")), "-o", str(out), "--target", "onnx,onnx-ort,tensorrt", "--no-bench", "--json")
    return out, proc


def test_optimize_with_targets_keeps_the_artifacts_that_worked_and_exits_nonzero(optimized, tiny_dir):
    out, proc = optimized
    report = json.loads(proc.stdout)
    assert json.loads((out / "report.json").read_text()) == report
    kinds = [a["kind"] for a in report["artifacts"]]
    if TENSORRT_HERE:
        assert proc.returncode == 0, proc.stderr
        assert kinds == ["program", "onnx", "onnx-ort", "tensorrt"]
    else:
        assert proc.returncode == 2
        (line,) = _error_lines(proc.stderr)
        assert line.startswith("error: --to tensorrt needs") and "fxbench[tensorrt]" in line
        assert kinds == ["program", "onnx", "onnx-ort"]
        assert [f["target"] for f in report["export_failures"]] == ["tensorrt"]
        assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.ort.onnx", "model.pt2", "report.html", "report.json", "report.md"]
    for art in report["artifacts"][1:]:
        assert set(art["parity"]) == {"sample", "batch3_seq40"}
        assert all(p["cosine"] >= 0.99999 for p in art["parity"].values())
    assert report["artifacts"][2]["details"]["fused_ops"]["Attention"] == 4
    # The ONNX of the optimized program, run directly against the Hugging Face model at a new shape.
    from transformers import AutoModel

    ids = torch.randint(0, 30522, (2, 24))
    feeds = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids)}
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["last_hidden_state"], {k: v.numpy() for k, v in feeds.items()})[0]
    with torch.no_grad():
        want = AutoModel.from_pretrained(str(tiny_dir("bert"))).eval()(**feeds).last_hidden_state
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def test_export_adds_to_an_output_folder_and_refuses_to_overwrite(optimized):
    out, _ = optimized
    before = json.loads((out / "report.json").read_text())
    proc = fxbench("export", str(out), "--to", "onnx-int8", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert json.loads((out / "report.json").read_text()) == report
    # The folder's model.onnx is reused, not exported again; the earlier records stay.
    assert [a["kind"] for a in report["artifacts"]] == [a["kind"] for a in before["artifacts"]] + ["onnx-int8"]
    assert report["artifacts"][1] == before["artifacts"][1]
    int8 = report["artifacts"][-1]
    assert int8["file"] == "model.int8-dynamic.onnx" and (out / int8["file"]).is_file()
    assert set(int8["parity"]) == {"sample", "batch3_seq40"} and int8["details"]["quantized_ops"]["MatMulInteger"] > 0
    assert report["export_failures"] == []
    # report.md and report.html say the same as report.json: they are rewritten with it.
    assert "model.int8-dynamic.onnx" in (out / "report.md").read_text() and "model.int8-dynamic.onnx" in (out / "report.html").read_text()

    # A saved program keeps the shapes it was captured with: capture ranges are refused, before any work.
    ranged = fxbench("export", str(out), "--to", "onnx-ort", "--seq-range", "4:32")
    assert ranged.returncode == 2
    (line,) = _error_lines(ranged.stderr)
    assert "keeps the shapes it was captured with" in line and "--seq-range" in line
    assert json.loads((out / "report.json").read_text()) == report

    again = fxbench("export", str(out), "--to", "onnx")
    assert again.returncode == 2
    (line,) = _error_lines(again.stderr)
    assert "already has model.onnx" in line and "--force" in line
    assert json.loads((out / "report.json").read_text()) == report


def test_export_of_a_model_captures_it_and_writes_a_new_folder(tiny_dir, tmp_path):
    out = tmp_path / "vit"
    proc = fxbench("export", str(tiny_dir("vit")), "-o", str(out), "--opset", "20", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "report.html", "report.json", "report.md"]
    assert report["kind"] == "export" and "## Artifacts" in (out / "report.md").read_text()
    (art,) = report["artifacts"]
    assert art["kind"] == "onnx" and art["details"]["opset"] == 20 and set(art["parity"]) == {"sample", "batch3"}
    assert art["details"]["inputs"]["pixel_values"][0] == "batch"
    assert report["model"]["architecture"] == "ViTForImageClassification" and report["source"]["passes"] is False
    assert [p.name for p in tmp_path.iterdir()] == ["vit"]  # no staging folder left


def test_export_of_a_model_takes_the_capture_ranges(tiny_dir, tmp_path):
    out = tmp_path / "bert"
    proc = fxbench("export", str(tiny_dir("bert")), "-o", str(out), "--batch-range", "1:8", "--seq-range", "4:32", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["inputs"]["dynamic"]["input_ids"] == {"0": {"name": "batch", "min": 1, "max": 8}, "1": {"name": "seq", "min": 4, "max": 32}}
    (art,) = report["artifacts"]
    assert art["details"]["inputs"]["input_ids"] == ["batch", "seq"]
    assert set(art["parity"]) == {"sample", "batch3_seq32"}  # the unseen shape is checked inside the range
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.ones((5, 24), dtype=np.int64) for i in session.get_inputs()}
    assert session.run(None, feeds)[0].shape[:2] == (5, 24)


@pytest.mark.parametrize("args, message", [
    (["--to", "onnx", "--opset", "7"], "--opset 7 is not supported: torch.onnx exports opsets 18 to 23"),
    (["--to", "tensorrt", "--shapes", "input_ids:1x16,8x128"], "bad --shapes entry 'input_ids:1x16,8x128'"),
    (["--to", "onnx", "-o", "{nonempty}"], "is not empty; pass --force"),
    pytest.param(["--to", "tensorrt"], "--to tensorrt needs", marks=pytest.mark.skipif(TENSORRT_HERE, reason="TensorRT works here")),
])
def test_export_user_errors_are_one_line_and_nothing_is_written(tiny_dir, tmp_path, args, message):
    nonempty = tmp_path / "taken"
    nonempty.mkdir()
    (nonempty / "keep.txt").write_text("mine")
    default_out = tmp_path / "default"
    args = [a.format(nonempty=nonempty) for a in args]
    if "-o" not in args:
        args += ["-o", str(default_out)]
    proc = fxbench("export", str(tiny_dir("bert")), *args)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(("✗", "W1", "Failed to load"))]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not default_out.exists() and [p.name for p in nonempty.iterdir()] == ["keep.txt"]
    assert "✓ load" not in proc.stderr  # refused before the model was loaded
