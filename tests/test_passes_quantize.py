"""int8 weight-only / dynamic / static and fp8 passes: structure, numerics, idempotence, skips,
calibration, fallback, and on the real MiniLM: sentence accuracy, re-export, ONNX and ONNX Runtime."""

from __future__ import annotations

import collections

import pytest
import torch
from accuracy import embedding_agreement, onnx_callable, sentence_embeddings

from fxbench.errors import PassOptionError
from fxbench.models import SENTENCES, export_graph_module, unlift
from fxbench.numerics import Tolerance
from fxbench.passes import create_pass, module_path, op_histogram, run_pipeline
from fxbench.passes.base import PassContext
from fxbench.jobs import pass_context

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed
FP8 = torch.float8_e4m3fn
WEIGHT_ONLY, DYNAMIC, STATIC, FP8_PASS = "quantize-int8-weight-only", "quantize-int8-dynamic", "quantize-int8-static", "quantize-fp8"
PASSES = [WEIGHT_ONLY, DYNAMIC, STATIC, FP8_PASS]
PRODUCTS = (aten.linear.default, aten.addmm.default, aten.mm.default)

# What the default skip list of quantize-int8-static leaves in float, per family.
STATIC_SKIPS = {
    "bert": {"encoder.layer.0.attention.self.query": "first", "encoder.layer.0.attention.self.key": "first",
             "encoder.layer.0.attention.self.value": "first", "encoder.layer.3.output.dense": "last", "pooler.dense": "head"},
    "gpt2": {"transformer.h.0.attn.c_attn": "first", "transformer.h.3.mlp.c_proj": "last", "lm_head": "head"},
    "llama": {"model.layers.0.self_attn.q_proj": "first", "model.layers.0.self_attn.k_proj": "first",
              "model.layers.0.self_attn.v_proj": "first", "model.layers.3.mlp.down_proj": "last", "lm_head": "head"},
    "vit": {"vit.layers.0.attention.q_proj": "first", "vit.layers.0.attention.k_proj": "first",
            "vit.layers.0.attention.v_proj": "first", "vit.layers.3.mlp.fc2": "last", "classifier": "head"},
}
HEADS = {"bert": "pooler.dense", "gpt2": "lm_head", "llama": "lm_head", "vit": "classifier"}


def _run(cp, gm, spec, context=None):
    return run_pipeline(gm, [create_pass(spec)], inputs=dict(cp.inputs.tensors), reference=cp.reference,
                        output_names=cp.output_names, context=context or pass_context(cp))


def _weight_arg(node):
    return node.args[1] if node.target == aten.linear.default or node.target == aten.mm.default else node.args[2]


def _stored(gm, node) -> torch.Tensor:
    """The tensor a get_attr reads."""
    owner, _, attr = str(node.target).rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, attr)


def _quantized_weight(gm, product) -> torch.Tensor | None:
    """The int8 / fp8 tensor behind a product's dequantized weight, or None for a float weight."""
    w = _weight_arg(product)
    while w.op == "call_function":
        w = w.args[0]
    stored = _stored(gm, w)
    return stored if stored.dtype in (torch.int8, FP8) else None


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "vit"])
@pytest.mark.parametrize("spec", PASSES)
def test_quantize_structure_numerics_idempotence(captured, spec, family):
    cp = captured(family)
    result = _run(cp, cp.graph_module(), spec)
    (rec,) = result.records
    assert rec.status == "applied", rec.message
    assert Tolerance.for_precision(rec.precision).accepts(rec.parity)
    gm, d, delta = result.module, rec.details, rec.op_delta
    products = [n for n in gm.graph.nodes if n.target in PRODUCTS]
    quantized = [n for n in products if _quantized_weight(gm, n) is not None]
    assert len(quantized) == d["quantized"] > 0
    floats = {module_path(n) for n in products if _quantized_weight(gm, n) is None}
    assert {s.rsplit(" (", 1)[0] for s in d["skipped"]} == floats

    groups = d.get("activation_groups", 0)
    if spec == WEIGHT_ONLY:
        assert delta == {"quantized_decomposed.dequantize_per_channel.default": d["quantized"]}
        assert not floats
    elif spec == DYNAMIC:
        assert delta["quantized_decomposed.quantize_per_channel.default"] == groups > 0
        assert delta["quantized_decomposed.dequantize_per_channel.default"] == d["quantized"] + groups
        assert floats == {HEADS[family]}
    elif spec == STATIC:
        assert delta["quantized_decomposed.quantize_per_tensor.default"] == groups == delta["quantized_decomposed.dequantize_per_tensor.default"]
        assert delta["quantized_decomposed.dequantize_per_channel.default"] == d["quantized"]
        assert dict(s.rsplit(" (", 1) for s in d["skipped"]) == {k: v + ")" for k, v in STATIC_SKIPS[family].items()}
        for q in gm.graph.find_nodes(op="call_function", target=qd.quantize_per_tensor.default):
            assert q.args[3:] == (0, 255, torch.uint8) and q.args[1] > 0  # uint8 activations, a real scale
    else:
        assert delta["aten._to_copy.default"] == groups > 0
        assert delta["quantized_decomposed.dequantize_per_tensor.default"] == d["quantized"] + groups
    dtype = FP8 if spec == FP8_PASS else torch.int8
    assert all(_quantized_weight(gm, n).dtype == dtype for n in quantized)
    # The float weights are gone from the module, not just from the graph.
    assert d["float_weights_removed"] >= d["quantized"] - 1  # a tied LM head stays, read by the embedding
    params = dict(gm.named_parameters(remove_duplicate=False))
    assert not any(f"model.{module_path(n)}.weight" in params for n in quantized if module_path(n) != "lm_head")
    assert all(f"model.{path}.weight" in params for path in floats)

    before = op_histogram(gm)
    again = create_pass(spec)
    again.context = pass_context(cp)
    assert not again(gm).modified
    assert op_histogram(gm) == before


def test_skip_by_module_path_and_nothing_left_to_quantize(captured):
    cp = captured("gpt2")
    result = _run(cp, cp.graph_module(), f"{WEIGHT_ONLY}:skip=transformer.h.1,lm_head")
    gm = result.module
    for n in gm.graph.nodes:
        if n.target in PRODUCTS:
            path = module_path(n)
            assert (_quantized_weight(gm, n) is None) == (path.startswith("transformer.h.1.") or path == "lm_head")
    # Negative: every linear skipped, so nothing happens.
    gm = cp.graph_module()
    before = op_histogram(gm)
    p = create_pass(f"{STATIC}:skip=transformer,lm_head")
    p.context = pass_context(cp)
    assert not p(gm).modified and op_histogram(gm) == before
    assert len(p.details["skipped"]) == 17


def test_int8_weights_under_fp16_math(captured):
    cp = captured("llama")

    def pipeline(*specs):
        return run_pipeline(cp.graph_module(), [create_pass(s) for s in specs], inputs=dict(cp.inputs.tensors),
                            reference=cp.reference, output_names=cp.output_names, context=pass_context(cp))

    result = pipeline("to-fp16", WEIGHT_ONLY)
    fp16, weights = result.records
    assert fp16.status == weights.status == "applied" and weights.details["quantized"] == 29
    dequantized = list(result.module.graph.find_nodes(op="call_function", target=qd.dequantize_per_channel.default))
    assert len(dequantized) == 29 and all(n.meta["val"].dtype == torch.float16 for n in dequantized)  # W8A16
    assert Tolerance.for_precision("int8").accepts(result.parity)
    # Activation quantization needs fp32 activations: after to-fp16 nothing is left for it.
    static = pipeline("to-fp16", STATIC).records[1]
    assert static.status == "unchanged" and static.details["quantized"] == 0
    assert len(static.details["skipped"]) == 29 and all(s.endswith("(input not fp32)") for s in static.details["skipped"])


class _Convs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.w = torch.nn.Parameter(torch.randn(4, 8))

    def forward(self, x):
        y = self.conv(x).relu().mean((2, 3))
        return y @ y.t(), y.sum()  # an activation-by-activation product: no weight to quantize


@pytest.mark.parametrize("spec", PASSES)
def test_programs_without_linear_weights_are_left_alone(spec):
    x = torch.randn(2, 3, 8, 8)
    gm = unlift(torch.export.export(_Convs().eval(), (x,), strict=False))
    before = op_histogram(gm)
    p = create_pass(spec)
    p.context = PassContext(inputs={"x": x})
    assert not p(gm).modified and op_histogram(gm) == before


def _activation_scales(gm) -> list[float]:
    return [n.args[1] for n in gm.graph.find_nodes(op="call_function", target=qd.quantize_per_tensor.default)]


CALIBRATION_TEXT = [
    "Fresh snow covered the mountain pass overnight.",
    "Can you send me the invoice by Friday?",
    "The orchestra rehearsed the symphony for three hours.",
    "Solar panels convert sunlight directly into electricity.",
    "He forgot his umbrella and got soaked on the way home.",
    "The new phone has a larger battery and a brighter screen.",
    "Which train goes to the airport?",
    "Bees communicate the location of flowers with a dance.",
    "The committee postponed the vote until next week.",
    "Add two tablespoons of olive oil to the pan.",
]


def test_static_calibration_sources(captured, tmp_path):
    cp = captured("bert")
    default = _run(cp, cp.graph_module(), STATIC)
    assert default.records[0].details["calibration"]["source"] == "sample inputs"
    assert default.records[0].details["calibration"]["rows"] == 48

    text = tmp_path / "calibration.txt"
    text.write_text("\n".join(CALIBRATION_TEXT) + "\n\n", encoding="utf-8")
    from_text = _run(cp, cp.graph_module(), f"{STATIC}:calibration={text},batch_size=4,seq=32")
    rec = from_text.records[0]
    assert rec.status == "applied" and rec.details["calibration"] == {"source": str(text), "batches": 3, "rows": 10, "method": "min-max"}
    assert _activation_scales(from_text.module) != _activation_scales(default.module)

    tensors = dict(cp.make_inputs(6, 16, seed=1).tensors)
    torch.save(tensors, tmp_path / "calibration.pt")
    import safetensors.torch

    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "calibration.safetensors"))
    for name in ("calibration.pt", "calibration.safetensors"):
        rec = _run(cp, cp.graph_module(), f"{STATIC}:calibration={tmp_path / name},batch_size=4").records[0]
        assert rec.status == "applied" and rec.details["calibration"]["batches"] == 2 and rec.details["calibration"]["rows"] == 6

    # The user's own batches in the context come before the model's sample inputs.
    ctx = pass_context(cp)
    ctx.calibration_inputs = [dict(cp.make_inputs(3, 16, seed=2).tensors)]
    assert _run(cp, cp.graph_module(), STATIC, context=ctx).records[0].details["calibration"]["rows"] == 3

    # Errors a user can make are one line naming the fix.
    with pytest.raises(PassOptionError, match=r"must end in .txt, .pt, .safetensors") as info:
        create_pass(f"{STATIC}:calibration=inputs.csv")
    assert "\n" not in str(info.value)
    with pytest.raises(PassOptionError, match="does not exist"):
        create_pass(f"{STATIC}:calibration={tmp_path / 'missing.txt'}")
    torch.save({"input_ids": tensors["input_ids"]}, tmp_path / "partial.pt")
    p = create_pass(f"{STATIC}:calibration={tmp_path / 'partial.pt'}")
    p.context = pass_context(cp)
    with pytest.raises(PassOptionError, match="lacks the inputs attention_mask, token_type_ids"):
        p(cp.graph_module())
    p = create_pass(f"{STATIC}:calibration={text}")
    p.context = pass_context(cp)
    p.context.preprocessor = None  # a model folder without a tokenizer
    with pytest.raises(PassOptionError, match="needs the model's tokenizer"):
        p(cp.graph_module())


def test_static_calibration_methods(captured):
    cp = captured("bert")
    scales = {}
    for method in ("min-max", "percentile", "histogram"):
        rec = _run(cp, cp.graph_module(), f"{STATIC}:method={method},percentile=99.9,samples=16")
        assert rec.records[0].status == "applied" and rec.records[0].details["calibration"]["method"] == method
        scales[method] = _activation_scales(rec.module)
    # Percentiles clip the extremes that min-max keeps; the histogram observer picks its own range.
    assert all(p <= m for p, m in zip(scales["percentile"], scales["min-max"], strict=True))
    assert sum(p < m for p, m in zip(scales["percentile"], scales["min-max"])) > len(scales["min-max"]) // 2
    assert scales["histogram"] != scales["min-max"]


def test_accuracy_aware_fallback(captured):
    cp = captured("bert")
    # An unreachable target: two linears stay float, found by bisection (2 x log2(24) runs each).
    rec = _run(cp, cp.graph_module(), f"{DYNAMIC}:target=0.9999999,fallback=2").records[0]
    fb = rec.details["fallback"]
    assert rec.status == "applied" and len(fb["kept_float"]) == 2
    assert fb["cosine"] >= fb["cosine_all_quantized"]
    assert 1 + 2 * (2 * 5 + 1) >= fb["trials"] > 2
    assert {s.rsplit(" (", 1)[0] for s in rec.details["skipped"] if s.endswith("(fallback)")} == set(fb["kept_float"])
    assert rec.details["quantized"] == 22
    # A reachable one costs one run and keeps nothing; fallback=0 costs none.
    rec = _run(cp, cp.graph_module(), f"{DYNAMIC}:target=0.5").records[0]
    assert rec.details["fallback"]["kept_float"] == [] and rec.details["fallback"]["trials"] == 1
    assert rec.details["quantized"] == 24
    rec = _run(cp, cp.graph_module(), f"{DYNAMIC}:fallback=0").records[0]
    assert rec.details["fallback"]["trials"] == 0 and rec.details["quantized"] == 24


def test_fp8_weight_granularity_and_weights_only(captured):
    cp = captured("llama")
    rec = _run(cp, cp.graph_module(), f"{FP8_PASS}:weights=per-channel")
    gm = rec.module
    scales = [b for name, b in gm.named_buffers() if name.endswith("weight_scale")]
    assert rec.records[0].status == "applied" and len(scales) == rec.records[0].details["quantized"]
    assert all(s.dim() == 2 and max(s.shape) > 1 for s in scales)  # one scale per output channel
    weights = [b for name, b in gm.named_buffers() if name.endswith("weight_fp8")]
    assert weights and all(w.dtype == FP8 and w.float().abs().max() <= 448 for w in weights)

    only = _run(cp, cp.graph_module(), f"{FP8_PASS}:activations=false").records[0]
    assert only.status == "applied" and "aten._to_copy.default" not in only.op_delta
    assert only.details["activation_groups"] == 0


# ----- the real MiniLM: accuracy over real sentences, re-export, ONNX, ONNX Runtime ------------------


@pytest.fixture(scope="module")
def minilm_reference(captured):
    cp = captured("minilm")
    return sentence_embeddings(lambda **t: cp.eager(**t), cp.loaded.preprocessor, SENTENCES)


def test_embedding_agreement_tells_programs_apart(captured, minilm_reference):
    cp = captured("minilm")
    tok = cp.loaded.preprocessor
    same = embedding_agreement(lambda **t: cp.eager(**t), None, tok, SENTENCES, reference_embeddings=minilm_reference)
    assert same.mean == pytest.approx(1.0, abs=1e-9) and same.count == len(SENTENCES)

    def half_blind(**t):  # half the features lost
        hidden = cp.eager(**t)[0].clone()
        hidden[..., : hidden.shape[-1] // 2] = 0
        return (hidden,)

    assert embedding_agreement(half_blind, None, tok, SENTENCES, reference_embeddings=minilm_reference).mean < 0.9


# ORT kernels the Q/DQ graph must land on, on the CPU provider.
ORT_KERNELS = {WEIGHT_ONLY: "MatMulNBits", DYNAMIC: "MatMulNBits", STATIC: "MatMulIntegerToFloat", FP8_PASS: None}


@pytest.mark.parametrize("spec", PASSES)
def test_minilm_accuracy_reexport_onnx_and_onnxruntime(captured, minilm_reference, spec, tmp_path):
    import onnxruntime as ort

    cp = captured("minilm")
    tok = cp.loaded.preprocessor
    result = _run(cp, cp.graph_module(), spec)
    rec = result.records[0]
    assert rec.status == "applied", rec.message
    torch_agreement = embedding_agreement(result.module, None, tok, SENTENCES, reference_embeddings=minilm_reference)
    assert torch_agreement.mean >= 0.99, torch_agreement
    if spec == STATIC:
        # BERT's outlier features appear in the first layer's FFN output: that one stays float.
        # All quantized, the sample's padded positions drift past the int8 tolerance; one float layer fixes it.
        fallback = rec.details["fallback"]
        assert fallback["kept_float"] == ["encoder.layer.0.output.dense"]
        assert fallback["cosine_all_quantized"] < Tolerance.for_precision("int8").min_cosine <= 0.99 <= fallback["cosine"]

    program = export_graph_module(result.module, cp)
    torch.testing.assert_close(program.module()(**cp.inputs.tensors), result.module(**cp.inputs.tensors), rtol=0, atol=0)

    onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
    ops = collections.Counter(n.op_type for n in onnx_program.model_proto.graph.node)
    assert ops["DequantizeLinear"] >= rec.details["quantized"]
    if spec in (DYNAMIC, STATIC):
        assert ops["QuantizeLinear"] == rec.details["activation_groups"]
    if spec == FP8_PASS:
        # FLOAT8E4M3FN weights (and the zero point DequantizeLinear reads)
        assert sum(i.data_type == 17 for i in onnx_program.model_proto.graph.initializer) >= rec.details["quantized"]
        assert ops["Cast"] >= rec.details["activation_groups"]
    path = tmp_path / "model.onnx"
    onnx_program.save(str(path))

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - what ORT says is the finding
        pytest.skip(f"onnxruntime {ort.__version__} CPU cannot run the {spec} model: {str(exc).splitlines()[0]}")
    import onnx

    kernels = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    if ORT_KERNELS[spec]:
        # Every quantized linear but the pooler (a Gemm that ORT fuses with its tanh) is an integer kernel.
        assert kernels[ORT_KERNELS[spec]] >= rec.details["quantized"] - 1, kernels
    ort_agreement = embedding_agreement(onnx_callable(session), None, tok, SENTENCES, reference_embeddings=minilm_reference)
    print(f"{spec} MiniLM: torch {torch_agreement}; onnxruntime {ort_agreement}")
    assert ort_agreement.mean >= 0.99, ort_agreement
    if spec == STATIC:
        # The transformer fusions (what `onnx-ort` stores) keep every quantized linear on the int8
        # kernel: the attention core fuses, the q/k/v projections are not packed into fp32 weights.
        from fxbench.exporters.onnx_ort import optimize_offline

        fused = optimize_offline(path, tmp_path / "model.ort.onnx")
        assert fused.contrib_ops["MultiHeadAttention"] == 6 and "Attention" not in fused.contrib_ops, fused.contrib_ops
        stored = collections.Counter(n.op_type for n in onnx.load(str(fused.path)).graph.node)
        assert stored["MatMulIntegerToFloat"] >= rec.details["quantized"] - 1 and stored["DequantizeLinear"] <= 1, stored
        as_stored = ort.SessionOptions()
        as_stored.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        fused_session = ort.InferenceSession(str(fused.path), as_stored, providers=["CPUExecutionProvider"])
        fused_agreement = embedding_agreement(onnx_callable(fused_session), None, tok, SENTENCES, reference_embeddings=minilm_reference)
        assert fused_agreement.mean >= 0.99, fused_agreement
