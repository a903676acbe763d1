"""Every preset end to end through the optimize workflow, and the accuracy each must hold on the real MiniLM."""

from __future__ import annotations

import json

import pytest
import torch
from accuracy import embedding_agreement, sentence_embeddings

from fxbench.models import SENTENCES, run_module
from fxbench.numerics import Tolerance, compare
from fxbench.passes import PIPELINES, build_passes, run_pipeline
from fxbench.jobs import OptimizeRequest, optimize_captured, pass_context

FAMILIES = ["bert", "gpt2", "llama", "vit", "resnet", "minilm"]


# O1 on every family is test_workflow's; here the presets that add to it ("none" adds nothing).
@pytest.mark.parametrize("preset", [p for p in PIPELINES if p not in ("O1", "none")])
@pytest.mark.parametrize("family", FAMILIES)
def test_preset_runs_end_to_end(captured, tmp_path, family, preset):
    cp = captured(family)
    result = optimize_captured(cp, OptimizeRequest(output=tmp_path / "o", pipeline=preset, targets=(), bench=False))
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    # One record per pass of the preset, in its order, none failed.
    assert [r["name"] for r in report["passes"]] == [p.name for p in build_passes(preset)]
    assert all(r["status"] in ("applied", "unchanged", "rolled-back") for r in report["passes"]), report["passes"]
    assert report["pipeline"]["name"] == preset
    # The saved program reloads and holds the tolerance of the precision it reached.
    program = torch.export.load(str(tmp_path / "o" / "model.pt2")).module()
    tolerance = Tolerance.from_dict(report["parity"]["tolerance"])
    parity = compare(run_module(program, cp.inputs.tensors), cp.reference, cp.output_names)
    assert tolerance.accepts(parity), (preset, family, parity.brief())
    assert result.pipeline.precision == report["artifacts"][0]["precision"]


# Per preset: what its passes must actually do on MiniLM (a preset whose key pass was rolled back
# would pass the accuracy check vacuously), and the sentence-embedding cosine it must keep.
MINILM = {
    "O1": ("eliminate-dead-code", 0.999),
    "O2": ("eliminate-dead-code", 0.999),
    "O3": ("to-fp16", 0.999),
    "bf16": ("to-bf16", 0.99),
    "int8-cpu": ("quantize-int8-dynamic", 0.995),
    "bf16-cpu": ("to-bf16", 0.999),
    "int8-cpu-static": ("quantize-int8-static", 0.99),
    "int8-gpu": ("quantize-int8-static", 0.99),
    "fp8": ("quantize-fp8", 0.99),
}


@pytest.fixture(scope="module")
def minilm_reference(captured):
    cp = captured("minilm")
    return sentence_embeddings(lambda **t: cp.eager(**t), cp.loaded.preprocessor, SENTENCES)


@pytest.mark.parametrize("preset", list(MINILM))
def test_minilm_sentence_embeddings_hold_per_preset(captured, minilm_reference, preset):
    cp = captured("minilm")
    key_pass, threshold = MINILM[preset]
    result = run_pipeline(
        cp.graph_module(), build_passes(preset), inputs=dict(cp.inputs.tensors), reference=cp.reference,
        output_names=cp.output_names, context=pass_context(cp),
    )
    statuses = {r.name: r.status for r in result.records}
    assert statuses[key_pass] == "applied", result.records
    assert len(SENTENCES) >= 32
    agreement = embedding_agreement(result.module, None, cp.loaded.preprocessor, SENTENCES, reference_embeddings=minilm_reference)
    print(f"{preset}: {agreement}")
    assert agreement.mean >= threshold, f"{preset}: {agreement}"
