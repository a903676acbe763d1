"""int4 weight-only: the pass's structure, numerics against eager at the int4 tolerance (prefill and
decode), idempotence, what stays float; its ONNX form (blocked uint4 DequantizeLinear, opset 21)
in ONNX Runtime at shapes the capture never saw, fused into MatMulNBits, against the PyTorch program."""

from __future__ import annotations

import collections

import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from tiny_decoders import captured_decoder

from fxbench.errors import PassOptionError
from fxbench.exporters.checks import ExportSubject, build_checks
from fxbench.exporters.onnx import OnnxRunner
from fxbench.exporters.onnx_int4 import ACCURACY_LEVEL_OPTION, _nibble_order, unpack_int4
from fxbench.exporters.onnx_past import export_onnx_ort_with_past, export_onnx_with_past
from fxbench.models import export_graph_module, unlift
from fxbench.numerics import Tolerance, compare
from fxbench.passes import create_pass, module_path, run_pipeline
from fxbench.passes.quantize_int4_weight_only import quantize_int4

aten = torch.ops.aten
INT4_MM = aten._weight_int4pack_mm_for_cpu.default
PASS = "quantize-int4-weight-only"
# The tiny Llama's linears: q k v o gate up down in each of 2 layers, and the LM head.
LINEARS = 2 * 7 + 1


class _TwoLinears(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden, self.head = torch.nn.Linear(32, 32), torch.nn.Linear(32, 1000)

    def forward(self, x):
        return self.head(self.hidden(x))


def _run(cap, spec):
    return run_pipeline(cap.graph_module(), [create_pass(spec)], inputs=dict(cap.inputs.tensors), reference=cap.reference,
                        output_names=cap.output_names, strict=True)


def _ops(gm) -> collections.Counter:
    return collections.Counter(n.target for n in gm.graph.nodes if n.op == "call_function")


def test_quantize_int4_is_the_groupwise_asymmetric_rule():
    w = torch.randn(8, 64)
    q, scale, zero = quantize_int4(w, 32)
    assert q.dtype == torch.uint8 and int(q.min()) >= 0 and int(q.max()) <= 15
    assert scale.shape == zero.shape == (8, 2)
    dequantized = (q.float().reshape(8, 2, 32) - zero[..., None].float()) * scale[..., None]
    # Each weight within half a step of its group's scale; the group's zero is exact.
    assert ((dequantized.reshape(8, 64) - w).abs() <= scale.repeat_interleave(32, dim=1) / 2 + 1e-6).all()


@pytest.mark.parametrize("group_size", [32, 64])
def test_int4_pass_structure_numerics_at_prefill_and_decode_and_idempotence(group_size):
    cap = captured_decoder("llama")
    result = _run(cap, f"{PASS}:group_size={group_size}")
    record, gm = result.records[0], result.module
    assert record.status == "applied" and record.precision == "int4" and result.precision == "int4"
    assert record.details["quantized"] == LINEARS and record.details["group_size"] == group_size
    ops = _ops(gm)
    assert ops[INT4_MM] == LINEARS and ops[aten.linear.default] == 0
    # The float linear weights went (the tied embedding table stays: the lookup still reads it).
    weights = {name for name, _ in gm.named_parameters()}
    assert not any(name.endswith("proj.weight") for name in weights)
    packed = [n for n in gm.graph.nodes if n.op == "get_attr" and str(n.target).endswith("_int4_packed")]
    assert len(packed) == LINEARS and all(getattr(gm.get_submodule(str(p.target).rpartition(".")[0]), str(p.target).rpartition(".")[2]).dtype
                                           == torch.uint8 for p in packed)

    # Numerics against eager with the same cache, at the int4 tolerance: the sample, a prefill and a decode.
    tolerance = Tolerance.for_precision("int4")
    assert tolerance.accepts(result.parity)
    for batch, seq, past in ((1, 11, 0), (3, 1, 9)):
        inputs = cap.step_inputs(batch, seq, past, seed=5)
        with torch.no_grad():
            got = tuple(gm(**inputs))
        parity = compare(got, cap.run_eager(inputs), cap.output_names)
        assert tolerance.accepts(parity) and parity.cosine < 0.99999, (batch, seq, past, parity.brief())  # quantized, not fp32
        assert torch.equal(got[1][:, :, :past], inputs["past_key_values_0_key"])  # the past passes through

    # Idempotence: nothing left to quantize.
    again = create_pass(f"{PASS}:group_size={group_size}")(gm)
    assert again is not None and not again.modified


def test_int4_leaves_named_linears_float_and_refuses_a_group_size():
    cap = captured_decoder("llama")
    result = _run(cap, f"{PASS}:group_size=32,skip=lm_head")
    gm = result.module
    assert result.records[0].details["quantized"] == LINEARS - 1
    assert result.records[0].details["skipped"] == ["lm_head (skip=lm_head)"]
    linears = [n for n in gm.graph.nodes if n.target == aten.linear.default]
    assert len(linears) == 1 and str(linears[0].args[1].target).endswith("lm_head.weight")
    # A group that does not divide a linear's input channels is skipped there, not approximated:
    # at 128, only the down projections (128 inputs) are quantized; the rest take 64.
    wide = _run(cap, f"{PASS}:group_size=128")
    details = wide.records[0].details
    assert details["quantized"] == 2 and len(details["skipped"]) == LINEARS - 2
    assert all("K=64 not a multiple of 128" in s for s in details["skipped"])
    assert sorted(module_path(n) for n in wide.module.graph.nodes if n.target == INT4_MM) == [
        "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    # PyTorch's CPU kernel packs output channels by 16: a head over 1000 tokens stays float.
    small = unlift(torch.export.export(_TwoLinears().eval(), (torch.randn(2, 3, 32),)))
    int4 = create_pass(f"{PASS}:group_size=32")
    assert int4(small).modified
    assert [module_path(n) for n in small.graph.nodes if n.target == INT4_MM] == ["hidden"]
    assert [module_path(n) for n in small.graph.nodes if n.target == aten.linear.default] == ["head"]
    assert int4.details["quantized"] == 1 and any("N=1000 not a multiple of 16" in s for s in int4.details["skipped"])
    # 48 is no power of two; 16 is one for ONNX Runtime, but PyTorch's kernel refuses it.
    for refused in (48, 16):
        with pytest.raises(PassOptionError, match=f"group_size {refused} must be one of 32, 64, 128, 256"):
            create_pass(f"{PASS}:group_size={refused}")


def test_int4_onnx_is_blocked_dequantize_linear_that_ort_fuses_into_matmulnbits(tmp_path):
    """The with-past int4 program to ONNX (opset 21, DequantizeLinear uint4 [K, N] blocked on K),
    checked in ONNX Runtime at a prefill and a decode the capture never saw; offline-optimized into
    MatMulNBits; at accuracy level 0 (fp32 activations) ORT gives the PyTorch program's numbers."""
    cap = captured_decoder("llama")
    result = _run(cap, f"{PASS}:group_size=32")
    program = export_graph_module(result.module, cap)
    subject = ExportSubject(program, cap, cap.output_names, "int4", result.tolerance)
    checks = build_checks(subject)
    plain = export_onnx_with_past(subject, tmp_path, checks)
    assert plain.details["opset"] == 21 and plain.details["int4"]["opset_raised_from"] == 18
    assert plain.details["int4"]["dequantize_linear"] == LINEARS and plain.details["int4"]["block_size"] == [32]
    model = ir.load(tmp_path / plain.file)
    dqs = [n for n in model.graph.all_nodes() if n.op_type == "DequantizeLinear"]
    assert len(dqs) == LINEARS and all(n.inputs[0].dtype == ir.DataType.UINT4 and n.attributes.get_int("block_size") == 32
                                       and n.attributes.get_int("axis") == 0 for n in dqs)
    assert not any(n.domain == "com.fxbench" for n in model.graph.all_nodes())
    assert {c.name for c in checks} == set(plain.parity) == {"sample", "prefill_batch1_seq11", "decode_batch3_past9"}

    fused = export_onnx_ort_with_past(subject, tmp_path / plain.file, tmp_path, checks, nbits_accuracy_level=0)
    assert fused.details["matmul_nbits"]["count"] == LINEARS and fused.details["matmul_nbits"]["accuracy_level"] == [0]
    assert fused.details["fused_ops"].get("GroupQueryAttention") == 2

    # ORT at a past length and batch the checks never used, against the PyTorch int4 program.
    inputs = cap.step_inputs(2, 1, 17, seed=9)
    with torch.no_grad():
        ours = tuple(result.module(**inputs))
    options = ort.SessionOptions()
    options.add_session_config_entry(ACCURACY_LEVEL_OPTION, "0")
    for path, opts in ((tmp_path / plain.file, options), (tmp_path / fused.file, None)):
        got = OnnxRunner(path, ["CPUExecutionProvider"], opts)(inputs)
        parity = compare(got, ours, cap.output_names)
        assert parity.cosine > 0.99999 and parity.max_rel_error < 1e-4, (path.name, parity.brief())
    # At ORT's default level 4 (int8 activations in the kernel) it stays within the int4 tolerance of eager.
    got = OnnxRunner(tmp_path / plain.file, ["CPUExecutionProvider"])(inputs)
    assert Tolerance.for_precision("int4").accepts(compare(got, cap.run_eager(inputs), cap.output_names))


@pytest.mark.parametrize("n, k", [(16, 64), (48, 96), (2048, 768)])
def test_unpack_int4_recovers_what_was_packed(n, k):
    q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=torch.Generator().manual_seed(n))
    packed = aten._convert_weight_to_int4pack_for_cpu(q, 1)
    groups = k // 32
    scale, zero = torch.rand(groups, n) + 0.1, torch.randint(0, 16, (groups, n)).float()
    sz = torch.stack([scale, (8 - zero) * scale], dim=-1)
    # The packing's own arrangement is read (no K-row product through the kernel) ...
    assert _nibble_order(n, k) is not None
    unpacked, scales, zeros = unpack_int4(packed, sz, 32)
    assert unpacked.shape == (k, n) and (unpacked == q.t().numpy()).all() and (zeros == zero.numpy()).all()
    assert torch.allclose(torch.from_numpy(scales), scale)
    # ... and agrees with what the kernel itself computes from the packed weight.
    unit = torch.stack([torch.ones(groups, n), torch.zeros(groups, n)], dim=-1)
    assert torch.equal(aten._weight_int4pack_mm_for_cpu(torch.eye(k), packed, 32, unit), torch.from_numpy(unpacked.astype("float32")) - 8)


def test_a_tolerance_floor_holds_the_passes_and_artifacts_to_it(tmp_path):
    from fxbench.jobs import OptimizeRequest, optimize_captured

    cap = captured_decoder("llama")
    spec = f"{PASS}:group_size=32"
    default = optimize_captured(cap, OptimizeRequest(output=tmp_path / "a", pipeline="none", passes=(spec,), targets=(), bench=False))
    assert default.pipeline.tolerance == Tolerance.for_precision("int4")
    # A looser floor is what the passes and the artifacts' checks are held to; a tighter one loosens nothing.
    floor = Tolerance(0.5, float("inf"))
    loose = optimize_captured(cap, OptimizeRequest(output=tmp_path / "b", pipeline="none", passes=(spec,), targets=("onnx",), bench=False,
                                                   tolerance=floor))
    assert loose.pipeline.tolerance == floor and loose.pipeline.records[-1].tolerance == floor
    assert [a.kind for a in loose.artifacts] == ["program", "onnx"]
    tight = optimize_captured(cap, OptimizeRequest(output=tmp_path / "c", pipeline="none", passes=(spec,), targets=(), bench=False,
                                                   tolerance=Tolerance.for_precision("fp32")))
    assert tight.pipeline.tolerance == Tolerance.for_precision("int4")
