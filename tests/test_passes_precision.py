"""to-fp16 and to-bf16: structure, numerics, idempotence, keep-lists, fp16 overflow, re-export, ONNX Runtime, MiniLM accuracy."""

from __future__ import annotations

import pytest
import torch
from accuracy import embedding_agreement

from fxbench.models import SENTENCES, export_graph_module, unlift
from fxbench.numerics import Tolerance, compare
from fxbench.passes import create_pass, module_path, op_histogram, run_pipeline
from fxbench.passes.base import PassContext
from fxbench.jobs import pass_context

aten = torch.ops.aten
LOW = {"to-fp16": torch.float16, "to-bf16": torch.bfloat16}
MATMULS = (aten.linear.default, aten.addmm.default)


def _run(cp, gm, spec, reference=None, context=None):
    """The pass through the verifying runner, as `fxbench optimize` runs it."""
    return run_pipeline(
        gm, [create_pass(spec)], inputs=dict(cp.inputs.tensors), reference=cp.reference if reference is None else reference,
        output_names=cp.output_names, context=context or pass_context(cp),
    )


def _dtype(node) -> torch.dtype:
    return node.meta["val"].dtype


@pytest.mark.parametrize(
    "spec, family",
    [("to-fp16", "bert"), ("to-fp16", "gpt2"), ("to-fp16", "llama"), ("to-fp16", "vit"), ("to-bf16", "bert"), ("to-bf16", "llama")],
)
def test_mixed_precision_structure_numerics_idempotence_reexport(captured, spec, family):
    cp = captured(family)
    gm = cp.graph_module()
    low = LOW[spec]
    result = _run(cp, gm, spec)
    (rec,) = result.records
    assert rec.status == "applied", rec.message
    assert Tolerance.for_precision(spec.removeprefix("to-")).accepts(rec.parity)
    graph = result.module.graph

    # Matmuls and attention compute in the low precision, on weights stored in it...
    products = [n for n in graph.nodes if n.target in MATMULS]
    assert products and all(_dtype(n) == low for n in products)
    for n in products:
        weight = n.args[1] if n.target == aten.linear.default else n.args[2]
        assert weight.op == "get_attr" and result.module.get_parameter(weight.target).dtype == low
    sdpa = list(graph.find_nodes(op="call_function", target=aten.scaled_dot_product_attention.default))
    assert sdpa and all(_dtype(a) == low for n in sdpa for a in n.args[:3])
    # ...norms, softmax-like reductions and pow stay fp32, fed through casts...
    kept = [n for n in graph.nodes if n.target in (aten.layer_norm.default, aten.mean.dim, aten.pow.Tensor_Scalar)]
    assert kept and all(_dtype(n) == torch.float32 and _dtype(n.args[0]) == torch.float32 for n in kept)
    assert rec.op_delta["aten._to_copy.default"] == rec.details["casts"] > 0
    # ...inputs keep their dtype, outputs come back fp32.
    assert [_dtype(p) for p in graph.find_nodes(op="placeholder")] == [t.dtype for t in cp.inputs.tensors.values()]
    outputs = result.module(**cp.inputs.tensors)
    assert all(o.dtype == torch.float32 for o in outputs)
    assert rec.details["nodes_low"] > 0 and rec.details["parameters_low"] > 0

    again = create_pass(spec)
    again.context = pass_context(cp)
    assert not again(result.module).modified

    program = export_graph_module(result.module, cp)
    torch.testing.assert_close(program.module()(**cp.inputs.tensors), outputs, rtol=0, atol=0)
    assert {n.meta["val"].dtype for n in program.graph.nodes if n.target in MATMULS} == {low}


def test_keep_list_by_op_and_module_path(captured):
    cp = captured("bert")
    result = _run(cp, cp.graph_module(), "to-fp16:keep=gelu,encoder.layer.0")
    assert result.records[0].status == "applied"
    module = result.module
    for n in module.graph.nodes:
        if n.target == aten.gelu.default:
            assert _dtype(n) == torch.float32 and _dtype(n.args[0]) == torch.float32
        if n.target == aten.linear.default:
            want = torch.float32 if module_path(n).startswith("encoder.layer.0.") else torch.float16
            assert _dtype(n) == want and module.get_parameter(n.args[1].target).dtype == want
    assert len(result.records[0].details["kept_by_option"]) > 6

    # Without the defaults, layer norms run in fp16 too.
    bare = _run(cp, cp.graph_module(), "to-fp16:keep_defaults=false").module
    norms = list(bare.graph.find_nodes(op="call_function", target=aten.layer_norm.default))
    assert norms and all(_dtype(n) == torch.float16 for n in norms)


class _Integers(torch.nn.Module):
    def forward(self, ids):
        return (ids * 3 + 1).sum(-1), torch.argmax(ids, -1)


class _Float64(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4).double()

    def forward(self, x):
        return self.lin(x).softmax(-1)


@pytest.mark.parametrize("spec", ["to-fp16", "to-bf16"])
def test_programs_without_fp32_math_are_left_alone(spec):
    ids = torch.arange(12).reshape(3, 4)
    for module, args in ((_Integers(), (ids,)), (_Float64(), (torch.randn(2, 4, dtype=torch.float64),))):
        gm = unlift(torch.export.export(module.eval(), args, strict=False))
        before = op_histogram(gm)
        p = create_pass(spec)
        p.context = PassContext(inputs={"ids" if isinstance(module, _Integers) else "x": args[0]})
        assert not p(gm).modified
        assert op_histogram(gm) == before


def _hot_bert(cp):
    """Tiny BERT with one FFN projection scaled up until its output leaves fp16's range."""
    gm = cp.graph_module()
    dense = gm.get_submodule("model.encoder.layer.1.intermediate.dense")
    dense.weight = torch.nn.Parameter(dense.weight.detach() * 3e5, requires_grad=False)
    return gm


def test_fp16_overflow_is_reported_and_kept_in_fp32_on_request(captured):
    cp = captured("bert")
    reference = _hot_bert(cp)(**cp.inputs.tensors)
    ctx = pass_context(cp)
    plain = _run(cp, _hot_bert(cp), "to-fp16", reference=reference, context=ctx).records[0]
    assert plain.status == "rolled-back" and "non-finite" in plain.message
    found = {(o["module"], o["op"]) for o in plain.details["overflow"]}
    assert ("encoder.layer.1.intermediate.dense", "aten.linear.default") in found
    assert all(o["max_abs"] > 65504 for o in plain.details["overflow"])
    (note,) = ctx.notes
    assert "encoder.layer.1.intermediate.dense (aten.linear.default" in note and "keep_overflow=true" in note

    ctx = pass_context(cp)
    kept = _run(cp, _hot_bert(cp), "to-fp16:keep_overflow=true", reference=reference, context=ctx)
    rec = kept.records[0]
    assert rec.status == "applied" and Tolerance.for_precision("fp16").accepts(rec.parity)
    assert rec.details["kept_for_overflow"] and "kept" in ctx.notes[0]
    hot = [n for n in kept.module.graph.nodes if n.name in rec.details["kept_for_overflow"]]
    assert hot and all(_dtype(n) == torch.float32 for n in hot)
    # bf16 has fp32's range: the same model converts without help.
    assert _run(cp, _hot_bert(cp), "to-bf16", reference=reference).records[0].status == "applied"


def test_float_attention_masks_are_clamped_not_infinite():
    class EagerMask(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, x, keep):
            mask = torch.zeros(keep.shape, dtype=torch.float32).masked_fill(~keep, torch.finfo(torch.float32).min)
            q = self.proj(x).unsqueeze(1)
            return torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask[:, None, None, :])

    x, keep = torch.randn(2, 5, 8), torch.tensor([[True] * 5, [True, True, False, False, False]])
    gm = unlift(torch.export.export(EagerMask().eval(), (x, keep), strict=False))
    ref = gm(x, keep)
    p = create_pass("to-fp16")
    p.context = PassContext(inputs={"x": x, "keep": keep})
    assert p(gm).modified
    clamps = list(gm.graph.find_nodes(op="call_function", target=aten.clamp.default))
    assert len(clamps) == 1 and clamps[0].args[1:] == (-65504.0, 65504.0)
    out = gm(x, keep)
    assert torch.isfinite(out[0]).all() and Tolerance.for_precision("fp16").accepts(compare(out, ref))


@pytest.mark.parametrize("spec", ["to-fp16", "to-bf16"])
def test_precision_onnx_on_onnxruntime_cpu(captured, spec, tmp_path):
    import onnxruntime as ort

    cp = captured("bert")
    result = _run(cp, cp.graph_module(), spec)
    onnx_program = torch.onnx.export(export_graph_module(result.module, cp), dynamo=True, verbose=False)
    path = tmp_path / "model.onnx"
    onnx_program.save(str(path))
    elem = {torch.float16: 10, torch.bfloat16: 16}[LOW[spec]]
    assert any(i.data_type == elem for i in onnx_program.model_proto.graph.initializer)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - what ORT says is the finding
        pytest.skip(f"onnxruntime {ort.__version__} CPU cannot run the {spec} model: {str(exc).splitlines()[0]}")
    names = {i.name for i in session.get_inputs()}
    outputs = session.run(None, {k: v.numpy() for k, v in cp.inputs.tensors.items() if k in names})
    assert Tolerance.for_precision(spec.removeprefix("to-")).accepts(compare(outputs, cp.reference, cp.output_names))


@pytest.fixture(scope="module")
def minilm_reference(captured):
    from accuracy import sentence_embeddings

    cp = captured("minilm")
    return sentence_embeddings(lambda **t: cp.eager(**t), cp.loaded.preprocessor, SENTENCES)


@pytest.mark.parametrize("spec, floor", [("to-fp16", 0.9999), ("to-bf16", 0.999)])
def test_minilm_sentence_embeddings_keep_their_direction(captured, minilm_reference, spec, floor):
    cp = captured("minilm")
    result = _run(cp, cp.graph_module(), spec)
    assert result.records[0].status == "applied"
    agreement = embedding_agreement(result.module, None, cp.loaded.preprocessor, SENTENCES, reference_embeddings=minilm_reference)
    print(f"{spec} MiniLM: {agreement}")
    assert agreement.count == len(SENTENCES) >= 32
    assert agreement.mean >= floor and agreement.min >= floor - 0.001
