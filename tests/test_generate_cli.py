"""Decoders from the CLI: `fxbench optimize MODEL --task text-generation-with-past` (its artifacts
and its generation benchmark), `fxbench bench DIR --generate` on them, and the one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from test_cli import fxbench
from tiny_decoders import UNSUPPORTED

# Tiny runs: these prove the plumbing; benchmarks/generate_cpu.py measures.
QUICK_GENERATION = ("--new-tokens", "3", "--bench-seq", "6", "--bench-batch", "1")


@pytest.fixture(scope="module")
def with_past_dir(tiny_dir, tmp_path_factory):
    """`fxbench optimize` of the tiny Llama with its KV cache: ONNX and ORT-fused ONNX, timed by generation."""
    out = tmp_path_factory.mktemp("gen") / "out"
    proc = fxbench("optimize", str(tiny_dir("llama")), "--task", "text-generation-with-past", "-o", str(out),
                   "--target", "onnx,onnx-ort", *QUICK_GENERATION, "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout), proc.stderr


@pytest.mark.slow
def test_optimize_with_past_writes_optimum_named_artifacts_and_benches_them_by_generation(with_past_dir):
    out, printed, log = with_past_dir
    # The step line of the ORT target says which fusions fired.
    # (Whitespace joined: the progress lines wrap at the console's width.)
    assert "fused: GroupQueryAttention x4 (4 taking the past)" in " ".join(log.split())
    report = json.loads((out / "report.json").read_text())
    assert printed["model"]["task"] == report["model"]["task"] == "text-generation-with-past"
    assert [a["kind"] for a in report["artifacts"]] == ["program", "onnx", "onnx-ort"]
    onnx = next(a for a in report["artifacts"] if a["kind"] == "onnx")
    assert onnx["input_names"][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert "past_key_values.3.value" in onnx["input_names"] and onnx["output_names"][-1] == "present.3.value"
    # Checked in ONNX Runtime at a prefill and a decode the capture never saw.
    assert {"prefill_batch1_seq11", "decode_batch3_past9"} <= set(onnx["parity"])
    fused = next(a for a in report["artifacts"] if a["kind"] == "onnx-ort")
    assert fused["details"]["attention"]["GroupQueryAttention"] == 4 and fused["details"]["attention"]["taking_past"] == 4
    # The benchmark is by generation: the baselines, the loop on every artifact, fp32 tokens equal to eager generate()'s.
    generation = report["generation"]
    labels = [b["label"] for b in generation["backends"]]
    assert labels[:3] == ["generate", "compile-static", "eager"] and "ort@model.ort.onnx" in labels
    assert all(b["status"] == "ok" for b in generation["backends"]), generation["backends"]
    for m in generation["measurements"]:
        assert (m["batch"], m["prompt"], m["new_tokens"]) == (1, 6, 3) and m["status"] == "ok", m
        assert m["ttft"]["median_ms"] > 0 and m["tpot"]["median_ms"] > 0 and m["tpot"]["p90_ms"] >= m["tpot"]["median_ms"]
        assert m["tokens_per_s"] > 0 and m["memory"] is not None
        assert m["parity"]["tokens_equal"] and m["parity"]["passed"], m
    assert report["best"]["artifact"] in {"model.pt2", "model.onnx", "model.ort.onnx"}
    assert "TPOT" in (out / "report.md").read_text()


@pytest.mark.slow
def test_bench_generate_on_the_output_folder(with_past_dir, tmp_path):
    out, _, _ = with_past_dir
    proc = fxbench("bench", str(out), "--generate", "--prompt-len", "5", "--new-tokens", "3", "--batch", "1,2",
                   "--backends", "generate,eager,ort@model.onnx,ort@model.ort.onnx", "-o", str(tmp_path / "gen"), "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert [s["label"] for s in result["shapes"]] == ["b1 p5", "b2 p5"]
    assert [b["label"] for b in result["backends"]] == ["generate", "eager", "ort@model.onnx", "ort@model.ort.onnx"]
    assert len(result["measurements"]) == 8 and all(m["parity"]["tokens_equal"] for m in result["measurements"])
    # The loop's backends are checked teacher forced too; every speedup is against eager generate().
    assert all(m["parity"]["forced_agreement"] == 1.0 for m in result["measurements"] if m["backend"] != "generate")
    assert result["speedups"]["generate"] == {"b1 p5": 1.0, "b2 p5": 1.0}
    assert (tmp_path / "gen" / "report.json").exists() and (tmp_path / "gen" / "report.md").exists()


def test_unsupported_caches_and_folders_without_a_cache_are_one_line_errors(tiny_dir, tmp_path):
    torch.manual_seed(0)
    mamba = tmp_path / "mamba"
    transformers.AutoModelForCausalLM.from_config(UNSUPPORTED["mamba"]()).save_pretrained(mamba)
    proc = fxbench("optimize", str(mamba), "--task", "text-generation-with-past", "-o", str(tmp_path / "m"))
    assert proc.returncode != 0 and not (tmp_path / "m").exists()
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "'mamba'" in lines[-1] and "--task text-generation" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr

    proc = fxbench("optimize", str(tiny_dir("bert")), "--generate", "--task", "fill-mask", "-o", str(tmp_path / "b"))
    assert proc.returncode != 0 and "error:" in proc.stderr and "is not one" in proc.stderr

    # A folder of artifacts without a cache: --generate says how to make one, before loading anything.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "report.json").write_text(json.dumps({"model": {"task": "text-generation"}, "artifacts": []}))
    proc = fxbench("bench", str(plain), "--generate")
    assert proc.returncode != 0 and "--task text-generation-with-past" in proc.stderr and "Traceback" not in proc.stderr
    # Options of the one-forward benchmark are refused with --generate, not ignored.
    proc = fxbench("bench", str(plain), "--generate", "--seq", "64", "--iters", "5")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --generate does not take --seq")
