"""fxbench's CPU int8 form (int8-cpu: quantize-int8-dynamic granularity=tensor + the onnx-ort int8
rules): the FX graph's run-time Q/DQ, the ONNX graph ORT runs, numerics against eager at a second
shape, a linear that must stay float, and sentence accuracy on the real MiniLM."""

from __future__ import annotations

import copy
import operator
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from accuracy import embedding_agreement, sentence_embeddings

from fxbench.exporters import ExportSubject, export_artifacts
from fxbench.jobs import pass_context
from fxbench.models import SENTENCES, export_graph_module
from fxbench.numerics import Tolerance, compare
from fxbench.passes import create_pass, run_pipeline

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed
CPU_FORM = "quantize-int8-dynamic:granularity=tensor"


def _run(cp, spec=CPU_FORM, gm=None):
    return run_pipeline(gm if gm is not None else cp.graph_module(), [create_pass(spec)], inputs=dict(cp.inputs.tensors),
                        reference=cp.reference, output_names=cp.output_names, context=pass_context(cp))


def _count(gm, target) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target == target)


def test_tensor_granularity_quantizes_at_run_time_per_tensor_and_gelu_rows(captured):
    cp = captured("bert")
    result = _run(cp, f"{CPU_FORM},fallback=0")
    rec = result.records[0]
    assert rec.status == "applied", rec.message
    gm = result.module
    layers = 4
    # One run-time qparams per distinct input (q/k/v share theirs), except GELU outputs: per row.
    assert rec.details["gelu_row_inputs"] == layers
    assert _count(gm, qd.choose_qparams.tensor) == rec.details["activation_groups"] - layers == 3 * layers
    assert _count(gm, torch.ops.fxbench.quantize_rows.default) == _count(gm, torch.ops.fxbench.dequantize_rows.default) == layers
    assert _count(gm, qd.quantize_per_tensor.default) == 0  # nothing calibrated
    assert rec.details["quantized"] == 6 * layers  # every linear but the pooler (the head)
    # Numerics: int8 against eager fp32 on the sample, every position.
    assert compare(tuple(gm(**cp.inputs.tensors)), cp.reference, cp.output_names).cosine >= Tolerance.for_precision("int8").min_cosine
    # The row codes: a small row keeps GELU's bound -0.17 at code 0, a large one its max at 255.
    x = torch.tensor([[-0.17, 0.0, 0.5, 1.0], [-0.17, 0.0, 1.0, 2.23]])
    scale = (x.amax(-1, keepdim=True) / 223).clamp(min=0.17 / 32)
    q = torch.ops.fxbench.quantize_rows(x, scale, 32)
    assert q.tolist() == [[0, 32, 126, 220], [15, 32, 132, 255]]
    assert ((torch.ops.fxbench.dequantize_rows(q, scale, 32) - x).abs() <= scale / 2 + 1e-7).all()
    # Idempotent: quantized linears read dequantized weights and are not found again.
    again = create_pass(CPU_FORM)
    again.context = pass_context(cp)
    assert not again(gm).modified


def test_choose_qparams_matches_onnx_dynamic_quantize_linear():
    # The FX graph's per-tensor scale and zero point are what ORT's DynamicQuantizeLinear computes.
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])], "dql",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
                              [helper.make_tensor_value_info(n, t, s) for n, t, s in
                               (("y", TensorProto.UINT8, [None, None]), ("s", TensorProto.FLOAT, []), ("z", TensorProto.UINT8, []))])
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]).SerializeToString())
    x = torch.randn(16, 64) * 3 + 0.5
    y, s, z = session.run(None, {"x": x.numpy()})
    scale, zero = qd.choose_qparams.tensor(x, 0, 255, float(torch.finfo(torch.float32).eps), torch.uint8)
    q = qd.quantize_per_tensor.tensor(x, scale, zero, 0, 255, torch.uint8)
    assert float(scale) == pytest.approx(float(s), rel=1e-6) and int(zero) == int(z)
    assert (q.numpy().astype(int) - y.astype(int)).__abs__().max() <= 1  # reciprocal vs division at exact ties


@pytest.fixture(scope="module")
def int8_artifacts(captured, tmp_path_factory):
    cp = captured("bert")
    result = _run(cp, f"{CPU_FORM},fallback=0")
    program = export_graph_module(result.module, cp)
    out = tmp_path_factory.mktemp("int8cpu")
    made = export_artifacts(ExportSubject(program, cp, cp.output_names, precision="int8"), ["onnx-ort"], out)
    assert not made.failures, made.failures
    return cp, out, {a.kind: a for a in made.artifacts}


def test_onnx_export_carries_run_time_quantization_at_opset_23(int8_artifacts):
    cp, out, arts = int8_artifacts
    assert arts["onnx"].details["opset"] == 23 and arts["onnx"].details["opset_raised_from"] == 18
    ops = Counter(n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node)
    assert ops["DynamicQuantizeLinear"] == 12 and ops["Attention"] == 4
    blocked = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "QuantizeLinear"
               and any(a.name == "block_size" and a.i == 64 * 2 for a in n.attribute)]
    assert len(blocked) == 4  # the GELU rows: one block of 128 (the FFN width) per row


def test_ort_form_runs_integer_gemms_with_sum_layernorm_and_onnx_attention(int8_artifacts):
    cp, out, arts = int8_artifacts
    model = onnx.load(str(out / "model.ort.onnx"))
    ops = Counter((n.domain or "ai.onnx", n.op_type) for n in model.graph.node)
    ms = "com.microsoft"
    # q/k/v share one DynamicQuantizeLinear each layer and take MatMulIntegerToFloat; the attention
    # output and FFN input projections quantize their own input; the GELU rows go per row.
    assert ops[(ms, "MatMulIntegerToFloat")] == 4 * 3 + 4 and ops[(ms, "DynamicQuantizeMatMul")] == 4 * 2
    assert ops[("ai.onnx", "DynamicQuantizeLinear")] == 4
    assert ops[("ai.onnx", "Attention")] == 4 and ops[("ai.onnx", "Sum")] == 8 and ops[("ai.onnx", "LayerNormalization")] == 8
    assert ops[(ms, "EmbedLayerNormalization")] == 1
    for slower in ("SkipLayerNormalization", "BiasGelu", "MultiHeadAttention", "QAttention", "MatMulNBits"):
        assert ops[(ms, slower)] == 0, slower
    assert ops[("ai.onnx", "MatMul")] == 0 and ops[("ai.onnx", "DequantizeLinear")] == 0  # no linear left in float
    assert arts["onnx-ort"].details["fusions"]["attention_3d"] == 4
    # The 3-D attention takes the projections as they are: no head split left.
    assert ops[("ai.onnx", "Transpose")] == 0


def test_ort_runs_the_artifact_at_a_second_shape_against_eager(int8_artifacts):
    import onnxruntime as ort

    cp, out, arts = int8_artifacts
    assert arts["onnx-ort"].parity["batch3_seq40"]["cosine"] >= Tolerance.for_precision("int8").min_cosine
    # As a user loads it: a plain InferenceSession, threads set, ORT's default optimizations.
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(out / "model.ort.onnx"), options)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, 2000, (3, 40), generator=g)
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[1, 25:] = 0
    mask[2, 9:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    got = session.run(None, {i.name: feeds[i.name].numpy() for i in session.get_inputs()})
    want = cp.eager(**feeds)
    real = mask.bool()
    hidden = torch.from_numpy(got[0])[real].double().flatten()
    ref = want[0][real].double().flatten()
    assert torch.nn.functional.cosine_similarity(hidden, ref, dim=0) >= 0.99
    assert np.isfinite(got[0]).all()


def test_a_linear_that_breaks_int8_stays_float(captured):
    # One FFN channel made an outlier (bias 1000) whose weight into the output projection is ~0: one
    # scale per row is set by it, every other feature quantizes to nothing, and only that
    # projection kept float restores the outputs.
    cp = captured("bert")
    gm = copy.deepcopy(cp.graph_module())  # its weights are the cached capture's: edited on a copy
    layer = "model.encoder.layer.1"
    bias = dict(gm.named_parameters()).get(f"{layer}.intermediate.dense.bias")
    weight = dict(gm.named_parameters()).get(f"{layer}.output.dense.weight")
    assert bias is not None and weight is not None
    with torch.no_grad():
        bias[7] = 1000.0
        weight.mul_(50.0)  # the FFN output outweighs the residual, so its loss shows
        weight[:, 7] = 0.0
    from fxbench.passes._graph import run

    reference = run(gm, dict(cp.inputs.tensors))
    result = run_pipeline(gm, [create_pass(CPU_FORM)], inputs=dict(cp.inputs.tensors), reference=reference,
                          output_names=cp.output_names, context=pass_context(cp))
    rec = result.records[0]
    assert rec.status == "applied", rec.message
    kept = rec.details["fallback"]["kept_float"]
    assert kept == ["encoder.layer.1.output.dense"], rec.details["fallback"]
    assert rec.details["fallback"]["cosine_all_quantized"] < 0.9 <= rec.details["fallback"]["cosine"]
    floats = [n for n in result.module.graph.nodes if n.target == aten.linear.default and n.args[1].op == "get_attr"]
    assert [n.args[1].target for n in floats] == [f"{layer}.output.dense.weight", "model.pooler.dense.weight"]


def test_minilm_sentences_hold_and_one_layer_stays_float(captured):
    cp = captured("minilm")
    result = _run(cp)
    rec = result.records[0]
    assert rec.status == "applied", rec.message
    tok = cp.loaded.preprocessor
    want = sentence_embeddings(lambda **t: cp.eager(**t), tok, SENTENCES, batch_size=1)
    agreement = embedding_agreement(result.module, None, tok, SENTENCES, batch_size=1, reference_embeddings=want)
    assert agreement.mean >= 0.995 and agreement.min >= 0.99, agreement
    # BERT's outlier features appear in the first layer's FFN output: all else is int8.
    assert rec.details["fallback"]["kept_float"] == ["encoder.layer.0.output.dense"]
    assert rec.details["quantized"] == 35 and rec.details["gelu_row_inputs"] == 6
