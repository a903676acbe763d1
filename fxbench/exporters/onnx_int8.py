"""fxbench's CPU int8 form in ONNX: translations of the run-time quantize ops, and the rewrites that put them on ORT's int8 kernels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxscript
import torch

import fxbench.passes._quantize  # noqa: F401 - registers torch.ops.fxbench and torch.ops.quantized_decomposed

__all__ = ["DYNAMIC_QUANTIZE_OPSET", "dynamic_quantize_ops", "translations"]

qd = torch.ops.quantized_decomposed
fx_ops = torch.ops.fxbench

# Row scales reach ONNX as QuantizeLinear / DequantizeLinear blocked along the last axis (opset 21),
# and at 23 torch.onnx writes SDPA as ONNX's Attention, ORT's fastest attention on CPU.
DYNAMIC_QUANTIZE_OPSET = 23
_DYNAMIC_TARGETS = (qd.choose_qparams.tensor, fx_ops.quantize_rows.default, fx_ops.dequantize_rows.default)


def dynamic_quantize_ops(program: torch.export.ExportedProgram) -> int:
    """How many run-time quantize ops (choose_qparams, fxbench row quantization) the program holds."""
    return sum(1 for n in program.graph.nodes if n.op == "call_function" and n.target in _DYNAMIC_TARGETS)


def _zero_point(op: Any, zero_point: int, like: Any) -> Any:
    """A uint8 zero point of `like`'s shape (blocked Q/DQ take one per block)."""
    return op.Expand(op.Constant(value=ir.tensor(np.array(zero_point, dtype=np.uint8))), op.Shape(like))


def translations(opset: int) -> dict[Callable[..., Any], Callable[..., Any]]:
    """torch.onnx translations (custom_translation_table) for the run-time quantize ops, at `opset`.

    - choose_qparams.tensor (uint8, 0..255) is DynamicQuantizeLinear's scale and zero point (cast to
      the float64 / int64 that PyTorch gives them, so the graph's types hold); quantize and
      dequantize_per_tensor.tensor read them back through casts. The onnx-ort target folds the
      casts and the re-quantization away (DynamicQuantizeLinear's own output is the same codes).
    - fxbench::quantize_rows: blocked QuantizeLinear along the last axis, one block per row, with
      the fixed zero point expanded to the scale's shape; dequantize_rows: (float(q) - zero) * scale.
    """
    op = getattr(onnxscript, f"opset{opset}")

    def choose_qparams(x, quant_min: int, quant_max: int, eps: float, dtype: int):  # noqa: ANN001, ANN202
        if (quant_min, quant_max) != (0, 255):
            raise ValueError("only uint8 0..255 choose_qparams has an ONNX form (DynamicQuantizeLinear)")
        _, scale, zero_point = op.DynamicQuantizeLinear(x)
        one = op.Constant(value=ir.tensor(np.array([1], dtype=np.int64)))  # PyTorch's qparams are [1], ONNX's scalars
        return op.Reshape(op.Cast(scale, to=ir.DataType.DOUBLE), one), op.Reshape(op.Cast(zero_point, to=ir.DataType.INT64), one)

    def scalar(value, to):  # noqa: ANN001, ANN202
        return op.Reshape(op.Cast(value, to=to), op.Constant(value=ir.tensor(np.array([], dtype=np.int64))))

    def quantize_tensor(x, scale, zero_point, quant_min: int, quant_max: int, dtype: int):  # noqa: ANN001, ANN202
        return op.QuantizeLinear(x, scalar(scale, ir.DataType.FLOAT), scalar(zero_point, ir.DataType.UINT8))

    def dequantize_tensor(q, scale, zero_point, quant_min: int, quant_max: int, dtype: int, out_dtype: int = -1):  # noqa: ANN001, ANN202
        return op.DequantizeLinear(q, scalar(scale, ir.DataType.FLOAT), scalar(zero_point, ir.DataType.UINT8))

    def quantize_rows(x, scale, zero_point: int):  # noqa: ANN001, ANN202
        return op.QuantizeLinear(x, scale, _zero_point(op, zero_point, scale), axis=-1, block_size=int(x.shape[-1]))

    def dequantize_rows(q, scale, zero_point: int):  # noqa: ANN001, ANN202
        # Arithmetic, not a blocked DequantizeLinear: ORT's load-time QDQ fusion would make that a
        # MatMulIntegerToFloat with a zero point per row, which its kernel refuses at run time.
        zero = op.Constant(value=ir.tensor(np.array(zero_point, dtype=np.float32)))
        return op.Mul(op.Sub(op.Cast(q, to=ir.DataType.FLOAT), zero), scale)

    return {
        qd.choose_qparams.tensor: choose_qparams,
        qd.quantize_per_tensor.tensor: quantize_tensor,
        qd.dequantize_per_tensor.tensor: dequantize_tensor,
        fx_ops.quantize_rows.default: quantize_rows,
        fx_ops.dequantize_rows.default: dequantize_rows,
    }


# ----- the rewrites of the onnx-ort target, for a graph with run-time activation quantization -----

_STD = ("", "ai.onnx")


def _std(node: ir.Node | None, *op_types: str) -> bool:
    return node is not None and node.domain in _STD and node.op_type in op_types


def _through_casts(value: ir.Value | None) -> ir.Value | None:
    """The value behind a chain of Cast / Reshape nodes (the translations' type round trips)."""
    while value is not None and _std(value.producer(), "Cast", "Reshape"):
        value = value.producer().inputs[0]
    return value


def _dynamic_source(node: ir.Node) -> ir.Node | None:
    """The DynamicQuantizeLinear whose scale and zero point a Q/DQ node reads (through casts)."""
    if len(node.inputs) < 3:
        return None
    scale, zero = _through_casts(node.inputs[1]), _through_casts(node.inputs[2])
    dql = scale.producer() if scale is not None else None
    if not _std(dql, "DynamicQuantizeLinear") or scale is not dql.outputs[1] or zero is not dql.outputs[2]:
        return None
    return dql


def fold_requantization(model: ir.Model) -> int:
    """QuantizeLinear(x, s, z) with s, z DynamicQuantizeLinear(x)'s own (through exact casts: float
    to double and back, uint8 to int64 and back) is DynamicQuantizeLinear(x)'s codes: it goes, and
    the DequantizeLinear that reads them takes the scale and zero point directly."""
    folded = 0
    for node in list(model.graph):
        if not _std(node, "QuantizeLinear", "DequantizeLinear"):
            continue
        dql = _dynamic_source(node)
        if dql is None:
            continue
        if node.op_type == "QuantizeLinear":
            if node.inputs[0] is dql.inputs[0]:
                node.outputs[0].replace_all_uses_with(dql.outputs[0], replace_graph_outputs=True)
                folded += 1
        else:
            node.replace_input_with(1, dql.outputs[1])
            node.replace_input_with(2, dql.outputs[2])
    _sweep(model)
    return folded


def _sweep(model: ir.Model) -> None:
    ir.passes.common.RemoveUnusedNodesPass()(model)


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    if _std(node, "Constant") and "value" in node.attributes:
        return node.attributes["value"].as_tensor().numpy()
    return None


def _int8_weight(value: ir.Value) -> tuple[ir.Value, ir.Value] | None:
    """(W [K, N] int8, scale [N]) of DequantizeLinear(W, scale, 0, axis=1) on a stored weight."""
    dq = value.producer()
    if not _std(dq, "DequantizeLinear") or dq.attributes.get_int("block_size", 0) or len(value.uses()) != 1:
        return None
    weight, scale = dq.inputs[0], dq.inputs[1]
    if weight.const_value is None or weight.dtype != ir.DataType.INT8 or weight.shape is None or weight.shape.rank() != 2:
        return None
    zero = _constant(dq.inputs[2]) if len(dq.inputs) > 2 else None
    if zero is not None and np.any(zero != 0):
        return None
    if scale.shape is None or scale.shape.rank() != 1 or dq.attributes.get_int("axis", 1) % 2 != 1:
        return None
    return weight, scale


def _bias_add(out: ir.Value, columns: int) -> tuple[ir.Node, ir.Value] | None:
    """The Add of a constant [N] bias that is the only reader of a matmul's output."""
    uses = out.uses()
    if len(uses) != 1 or out.is_graph_output():
        return None
    add = uses[0].node
    if not _std(add, "Add"):
        return None
    other = add.inputs[1 - uses[0].idx]
    bias = _constant(other)
    if bias is None or bias.shape != (columns,) or bias.dtype != np.float32:
        return None
    return add, other


def _expanded_scalar(model: ir.Model, value: ir.Value) -> ir.Value | None:
    """The constant scalar zero point a blocked Q/DQ expands to its scale's shape (one initializer per value)."""
    node = value.producer()
    if _std(node, "Expand"):
        value = node.inputs[0]
    array = _constant(value)
    if array is None or array.size != 1:
        return None
    name = f"zero_point_{array.dtype}_{int(array.reshape(()))}"
    if name not in model.graph.initializers:
        scalar = ir.tensor(array.reshape(()).astype(array.dtype))
        model.graph.register_initializer(ir.Value(name=name, shape=scalar.shape, type=ir.TensorType(scalar.dtype), const_value=scalar))
    return model.graph.initializers[name]


def _row_dequantized(model: ir.Model, value: ir.Value, k: int) -> tuple[ir.Value, ir.Value, ir.Value] | None:
    """(codes, row scale, scalar zero point) of (float(codes) - zero) * scale, with the codes from a
    QuantizeLinear blocked along the last axis (one block of `k` per row) with that zero point."""
    mul = value.producer()
    if not _std(mul, "Mul"):
        return None
    sub, scale = mul.inputs[0].producer(), mul.inputs[1]
    cast = sub.inputs[0].producer() if _std(sub, "Sub") else None
    if not _std(cast, "Cast"):
        return None
    codes = cast.inputs[0]
    quant = codes.producer()
    zero = _constant(sub.inputs[1])
    if (not _std(quant, "QuantizeLinear") or quant.attributes.get_int("block_size", 0) != k or len(quant.inputs) < 3
            or quant.inputs[1] is not scale or zero is None or zero.size != 1):
        return None
    stored = _expanded_scalar(model, quant.inputs[2])
    if stored is None or float(stored.const_value.numpy()) != float(zero.reshape(())):
        return None
    return codes, scale, stored


def _replace(model: ir.Model, old: ir.Value, new_node: ir.Node, before: ir.Node) -> None:
    model.graph.insert_before(before, new_node)
    new_node.outputs[0].shape, new_node.outputs[0].type = old.shape, old.type
    old.replace_all_uses_with(new_node.outputs[0], replace_graph_outputs=True)


def integer_matmuls(model: ir.Model) -> dict[str, int]:
    """Every MatMul of a dequantized activation and a stored int8 weight onto ORT's integer GEMMs.

    Rules:
    1. The weight is DequantizeLinear(W int8 [K, N], scale [N], zero 0, axis 1) read by this MatMul
       alone (torch.onnx's transposes folded first); the activation is DequantizeLinear of
       DynamicQuantizeLinear(x) (per tensor), or (float(codes) - zero) * scale of a QuantizeLinear
       blocked along the last axis with that constant zero point (per row).
    2. Per tensor, the only reader of x's codes: DynamicQuantizeMatMul(x, W, scale, bias), the
       bias (a constant [N] Add) inside. Codes shared by several MatMuls (Q, K, V): one
       DynamicQuantizeLinear and MatMulIntegerToFloat(codes, W, ...) each, bias inside (a fused
       QKV GEMM + Split costs more than it saves on CPU).
    3. Per row: MatMulIntegerToFloat with the [.., 1] row scale and the scalar zero point; the bias
       stays an Add (ORT scales a bias input by the row scale).
    """
    counts = {"DynamicQuantizeMatMul": 0, "MatMulIntegerToFloat": 0, "MatMulIntegerToFloat_rows": 0}
    for node in list(model.graph):
        if not _std(node, "MatMul"):
            continue
        a, b = node.inputs
        weight = _int8_weight(b)
        adq = a.producer()
        if weight is None or adq is None:
            continue
        w, w_scale = weight
        columns = int(w.shape[1])
        rows = _row_dequantized(model, a, int(w.shape[0]))
        if rows is not None:
            codes, a_scale, zero = rows
            new = ir.node("MatMulIntegerToFloat", [codes, w, a_scale, w_scale, zero], domain="com.microsoft")
            _replace(model, node.outputs[0], new, node)
            counts["MatMulIntegerToFloat_rows"] += 1
            continue
        if not _std(adq, "DequantizeLinear"):
            continue
        codes, a_scale, a_zero = adq.inputs[0], adq.inputs[1], adq.inputs[2] if len(adq.inputs) > 2 else None
        source = codes.producer()
        if not (_std(source, "DynamicQuantizeLinear") and codes is source.outputs[0] and a_scale is source.outputs[1]
                and a_zero is source.outputs[2]):
            continue
        out = node.outputs[0]
        found = _bias_add(out, columns)
        bias = found[1] if found else None
        target = found[0].outputs[0] if found else out
        if len(codes.uses()) == 1 and len(a.uses()) == 1:
            new = ir.node("DynamicQuantizeMatMul", [source.inputs[0], w, w_scale, None, bias], domain="com.microsoft")
        else:
            new = ir.node("MatMulIntegerToFloat", [codes, w, a_scale, w_scale, a_zero, None, bias], domain="com.microsoft")
        _replace(model, target, new, node)
        counts[new.op_type] += 1
    _sweep(model)
    return counts


def sum_residuals(model: ir.Model) -> int:
    """Add(Add(y, bias), residual) or Add(y, residual) feeding a LayerNormalization as one Sum.

    ORT's SkipLayerNormalization (which its optimizer makes of Add + LayerNormalization) runs a
    scalar loop on CPU, ~4x slower than Sum + LayerNormalization; ORT does not fuse a Sum."""
    done = 0
    for node in list(model.graph):
        if not _std(node, "LayerNormalization"):
            continue
        add = node.inputs[0].producer()
        if not _std(add, "Add") or len(add.outputs[0].uses()) != 1 or any(_constant(v) is not None for v in add.inputs):
            continue
        terms: list[ir.Value] = []
        for v in add.inputs:
            inner = v.producer()
            if _std(inner, "Add") and len(v.uses()) == 1 and not v.is_graph_output():
                terms.extend(inner.inputs)
            else:
                terms.append(v)
        new = ir.node("Sum", terms)
        _replace(model, add.outputs[0], new, add)
        done += 1
    _sweep(model)
    return done


def attention_3d(model: ir.Model) -> int:
    """ONNX Attention on heads split by Reshape + Transpose (torch.onnx's SDPA) as Attention on the
    [batch, seq, hidden] projections with q_num_heads / kv_num_heads: the split and the merge
    after it go (ORT splits the heads inside its kernel)."""
    done = 0
    for node in list(model.graph):
        if not _std(node, "Attention") or len(node.outputs) != 1 or len(node.inputs) < 3:
            continue
        flat = []
        for v in node.inputs[:3]:
            t = v.producer()
            r = t.inputs[0].producer() if _std(t, "Transpose") else None
            if (r is None or not _std(r, "Reshape") or list(t.attributes.get_ints("perm", [])) != [0, 2, 1, 3]
                    or len(v.uses()) != 1 or r.inputs[0].shape is None or r.inputs[0].shape.rank() != 3
                    or r.outputs[0].shape is None or not isinstance(r.outputs[0].shape[2], int)):
                break
            flat.append((r.inputs[0], int(r.outputs[0].shape[2])))
        else:
            out = node.outputs[0]
            t = out.uses()[0].node if len(out.uses()) == 1 else None
            r = t.outputs[0].uses()[0].node if _std(t, "Transpose") and len(t.outputs[0].uses()) == 1 else None
            if (r is None or not _std(r, "Reshape") or list(t.attributes.get_ints("perm", [])) != [0, 2, 1, 3]
                    or r.outputs[0].shape is None or r.outputs[0].shape.rank() != 3 or len({h for _, h in flat}) != 1):
                continue
            heads = flat[0][1]
            attributes = {k: a for k, a in node.attributes.items()}
            new = ir.node("Attention", [flat[0][0], flat[1][0], flat[2][0], *node.inputs[3:]],
                          attributes={**{k: a.value for k, a in attributes.items()}, "q_num_heads": heads, "kv_num_heads": heads})
            _replace(model, r.outputs[0], new, node)
            done += 1
    _sweep(model)
    return done


def is_dynamic_int8(model: ir.Model) -> bool:
    """Whether the graph quantizes activations at run time (fxbench's CPU int8 form)."""
    return any(_std(n, "DynamicQuantizeLinear") for n in model.graph.all_nodes())
