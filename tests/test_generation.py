"""The with-past program's artifacts (ONNX, ORT-fused ONNX, AOTInductor) and passes, and greedy generation through them against eager generate()."""

from __future__ import annotations

import onnx_ir as ir
import pytest
import torch
from tiny_decoders import captured_decoder, prompts

from fxbench.exporters.aoti import require_aoti
from fxbench.exporters.checks import ExportSubject
from fxbench.exporters.onnx_past import (
    TOTAL_AXIS,
    decoder_checks,
    export_onnx_ort_with_past,
    export_onnx_with_past,
)
from fxbench.models.decoder import eager_with_cache
from fxbench.runtime.generation import OrtStep, TorchStep, capture_steps, greedy_generate, stop_tokens
from fxbench.numerics import Tolerance, compare
from fxbench.passes.quantize_int8_weight_only import QuantizeInt8WeightOnly
from fxbench.passes import create_pass
from fxbench.passes.runner import run_pipeline

NEW_TOKENS = 16
# The ONNX forms are checked on one model per kind of attention: learned positions and MHA
# (GPT-2), rotary GQA with a sliding window (Mistral). All eight families pass the same checks
# in a scratch run (the branch notes); each export takes about a minute here.
ONNX_FAMILIES = ("gpt2", "mistral")


def _eager_generate(cap, ids, mask, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return cap.loaded.model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True, **kwargs)


def _generate(cap, step, ids, mask, **kwargs):
    eos, pad = stop_tokens(cap.loaded.model.generation_config)
    kwargs = {"eos_token_ids": eos, "pad_token_id": pad, **kwargs}
    return greedy_generate(step, ids, mask, max_new_tokens=NEW_TOKENS, **kwargs)


def test_generation_stops_at_eos_and_pads_as_generate_does():
    """An eos that the first sequence produces midway: both loops end it there and pad it after."""
    cap = captured_decoder("mistral")
    ids, mask = prompts(left_padded=False)
    free = _eager_generate(cap, ids, mask, eos_token_id=None)[:, 6:]
    at = next(k for k in range(3, NEW_TOKENS - 2) if int(free[0, k]) not in free[0, :k].tolist() + free[1, :k + 1].tolist())
    eos = int(free[0, at])
    expected = _eager_generate(cap, ids, mask, eos_token_id=eos, pad_token_id=0)
    out = _generate(cap, capture_steps(cap)["program"], ids, mask, eos_token_ids=(eos,), pad_token_id=0)
    assert torch.equal(out.tokens, expected)
    assert int(out.new_tokens[0, at]) == eos and (out.new_tokens[0, at + 1:] == 0).all() and out.new_tokens.shape[1] > at + 1


# Which attention fusions fire on transformers 5 graphs: onnxscript's MultiHeadAttention takes the
# past itself where there is no rotary embedding and no kv-head repeat (GPT-2); with rotary and GQA
# (Mistral) onnxscript fuses the attention core alone, over an in-graph concat of the past, and
# fxbench's rewrite (onnx_fusions.fuse_group_query_attention) turns that into GroupQueryAttention
# taking the past, with the model's sliding-window mask as its attention bias.
EXPECTED_ATTENTION = {
    "gpt2": {"MultiHeadAttention": 2, "GroupQueryAttention": 0, "taking_past": 2},
    "mistral": {"MultiHeadAttention": 0, "GroupQueryAttention": 2, "taking_past": 2},
}


# One test per family: the export is the slow part, done once.
@pytest.mark.parametrize("family", ONNX_FAMILIES)
def test_onnx_with_past_names_axes_ort_parity_fusions_and_greedy_tokens(family, tmp_path):
    cap = captured_decoder(family)
    subject = ExportSubject(cap.exported, cap, cap.output_names)
    checks = decoder_checks(subject)
    plain = export_onnx_with_past(subject, tmp_path, checks)
    fused = export_onnx_ort_with_past(subject, tmp_path / plain.file, tmp_path, checks)

    # Optimum's names and axes.
    layers = cap.layout.num_layers
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    model = ir.load(tmp_path / plain.file)
    shapes = {v.name: [d if isinstance(d, int) else str(d) for d in v.shape] for v in (*model.graph.inputs, *model.graph.outputs)}
    assert [v.name for v in model.graph.inputs] == ["input_ids", "attention_mask", "position_ids", *past]
    assert [v.name for v in model.graph.outputs] == ["logits", *present]
    assert shapes["input_ids"] == ["batch", "seq"] and shapes["attention_mask"] == ["batch", TOTAL_AXIS]
    assert shapes["logits"] == ["batch", "seq", 512]
    kv = cap.layout.kv_heads[0]
    assert all(shapes[n] == ["batch", kv, "past_seq", 16] for n in past)
    assert all(shapes[n] == ["batch", kv, TOTAL_AXIS, 16] for n in present)

    # ONNX Runtime ran a prefill (past 0) and a decode (past 9, past Mistral's window of 8) that
    # the capture never saw, plain and fused.
    assert {c.name for c in checks} == {"sample", "prefill_batch1_seq11", "decode_batch3_past9"}
    for artifact in (plain, fused):
        assert set(artifact.parity) == {c.name for c in checks}
        assert all(p["max_abs_error"] < 1e-4 for p in artifact.parity.values()), artifact.file

    # The fusions that fired, kept (not rolled back).
    assert fused.details["fusions_rolled_back"] is None
    attention = fused.details["attention"]
    assert {k: attention[k] for k in EXPECTED_ATTENTION[family]} == EXPECTED_ATTENTION[family]

    # Both sessions generate eager's greedy tokens.
    ids, mask = prompts()
    expected = _eager_generate(cap, ids, mask)
    for artifact in (plain, fused):
        step = OrtStep(tmp_path / artifact.file, cap.layout, cap.eager.token_names)
        assert torch.equal(_generate(cap, step, ids, mask).tokens, expected), artifact.file


# Every fp32 pass of the presets, the reduced-precision ones, and both weight-only quantizations,
# each alone on the with-past graph (int8 weight-only has its own test below).
CACHE_GRAPH_PASSES = {
    "remove-noops": "fp32", "fuse-attention": "fp32", "fold-batchnorm": "fp32", "merge-qkv": "fp32", "fold-constants": "fp32",
    "eliminate-common-subexpressions": "fp32", "eliminate-dead-code": "fp32", "to-fp16": "fp16", "to-bf16": "bf16",
    "quantize-int4-weight-only:group_size=32": "int4",
}


@pytest.mark.parametrize("spec", list(CACHE_GRAPH_PASSES))
def test_every_pass_runs_on_the_cache_graph_verified_on_logits_and_presents(spec):
    """Each pass on the with-past graph: verified (strict) on the logits and every present key and
    value, the past/present I/O kept, and within its precision's tolerance of eager at a prefill
    and a decode step the sample never had."""
    cap = captured_decoder("llama")
    precision = CACHE_GRAPH_PASSES[spec]
    result = run_pipeline(cap.graph_module(), [create_pass(spec)], inputs=dict(cap.inputs.tensors), reference=cap.reference,
                          output_names=cap.output_names, strict=True)
    record = result.records[0]
    assert record.status in ("applied", "unchanged") and result.precision == precision
    assert [o.name for o in result.parity.outputs] == list(cap.output_names)  # logits and every present
    tolerance = Tolerance.for_precision(precision)
    for batch, seq, past in ((1, 11, 0), (3, 1, 9)):
        inputs = cap.step_inputs(batch, seq, past, seed=7)
        with torch.no_grad():
            got = tuple(result.module(**inputs))
        parity = compare(got, cap.run_eager(inputs), cap.output_names)
        assert len(got) == len(cap.output_names) and tolerance.accepts(parity), (spec, batch, seq, past, parity.brief())
        assert got[1].shape == (batch, cap.layout.kv_heads[0], past + seq, cap.layout.head_dims[0])
        # The past passes through unchanged (at fp16/bf16 it is the same values in the program's precision).
        torch.testing.assert_close(got[1][:, :, :past].float(), inputs["past_key_values_0_key"], rtol=1e-2, atol=1e-2)


def test_int8_weight_only_runs_on_the_cache_graph():
    """The existing int8 weight-only pass on the with-past graph: every linear quantized, the
    past/present I/O kept, logits and presents within the int8 tolerance of eager at a decode step."""
    cap = captured_decoder("mistral")
    gm = cap.graph_module()
    result = run_pipeline(gm, [QuantizeInt8WeightOnly()], inputs=dict(cap.inputs.tensors), reference=cap.reference,
                          output_names=cap.output_names, strict=True)
    record = result.records[0]
    assert record.status == "applied" and record.details["quantized"] == 2 * 7 + 1  # q k v o gate up down per layer, lm_head
    inputs = cap.step_inputs(3, 1, 9, seed=2)
    with torch.no_grad():
        got = tuple(result.module(**inputs))
    ref = cap.run_eager(inputs)  # the eager wrapper: the whole past, as the program keeps it
    assert len(got) == len(cap.output_names)
    assert Tolerance.for_precision("int8").accepts(compare(got, ref, cap.output_names))
    # The past passes through: the presents' past part is the input, bit for bit.
    assert torch.equal(got[1][:, :, :9], inputs["past_key_values_0_key"])


@pytest.mark.slow
def test_aoti_package_of_the_program_runs_prefill_and_decode(tmp_path):
    """AOTInductor compiles the with-past program (dynamic batch, seq, past) and its greedy tokens
    equal eager generate()."""
    require_aoti("cpu")
    cap = captured_decoder("mistral")
    path = tmp_path / "model.aoti.pt2"
    torch._inductor.aoti_compile_and_package(cap.exported, package_path=str(path))
    runner = torch._inductor.aoti_load_package(str(path))

    step = TorchStep(runner, cap.layout, cap.eager.token_names)
    inputs = cap.step_inputs(3, 1, 9, seed=4)
    got = runner(**inputs)
    ref = eager_with_cache(cap.loaded.model, cap.layout, inputs)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-4)
    ids, mask = prompts()
    free = _generate(cap, step, ids, mask, keep_logits=True)
    assert torch.equal(free.tokens, _eager_generate(cap, ids, mask))
    # Teacher forced with its own tokens (each fed as a column of a [batch, new] tensor, a strided
    # view): the runner reads its inputs at the compiled strides, so the loop must feed contiguous ones.
    forced = greedy_generate(step, ids, mask, max_new_tokens=NEW_TOKENS, keep_logits=True, forced=free.new_tokens)
    assert torch.equal(forced.tokens, free.tokens)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(forced.logits, free.logits))
