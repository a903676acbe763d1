"""Int4 weight-only products in ONNX: PyTorch's packed int4 matmul written as a blocked int4
DequantizeLinear and a MatMul (opset 21), which ONNX Runtime fuses into MatMulNBits."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import torch
from onnxscript.values import Op, Opset

__all__ = [
    "ACCURACY_LEVEL_OPTION",
    "INT4_OPSET",
    "has_int4",
    "int4_translations",
    "lower_int4_matmuls",
    "unpack_int4",
]

aten = torch.ops.aten
# Blocked quantization (DequantizeLinear's block_size) and the 4-bit types came in opset 21.
INT4_OPSET = 21
# The session option that sets the MatMulNBits ONNX Runtime fuses from DequantizeLinear + MatMul:
# 4 (its default) quantizes the activations to int8 inside the kernel; 0 keeps them fp32, so the
# product is PyTorch's up to float rounding.
ACCURACY_LEVEL_OPTION = "session.qdq_matmulnbits_accuracy_level"
_DOMAIN = Opset("com.fxbench", 1)
_PLACEHOLDER = "Int4PackedMatMul"


def has_int4(program: Any) -> bool:
    """Whether an exported program multiplies by packed int4 weights (quantize-int4-weight-only)."""
    return any(n.target == aten._weight_int4pack_mm_for_cpu.default for n in program.graph.nodes)


def _placeholder_schema() -> onnx.defs.OpSchema:
    """The placeholder's schema, registered once: torch.onnx's tracer types every op by one."""
    if not onnx.defs.has(_PLACEHOLDER, _DOMAIN.domain):
        param = onnx.defs.OpSchema.FormalParameter
        onnx.defs.register_schema(onnx.defs.OpSchema(
            _PLACEHOLDER, _DOMAIN.domain, 1,
            doc="fxbench's stand-in for aten._weight_int4pack_mm_for_cpu until lower_int4_matmuls rewrites it",
            inputs=[param("x", "T"), param("packed", "tensor(uint8)"), param("scales_and_zeros", "T")],
            outputs=[param("y", "T")],
            type_constraints=[("T", ["tensor(float)"], "fp32 activations")],
            attributes=[onnx.defs.OpSchema.Attribute("group_size", onnx.defs.OpSchema.AttrType.INT, "input channels per scale")],
        ))
    return onnx.defs.get_schema(_PLACEHOLDER, 1, _DOMAIN.domain)


def _int4_mm(x: Any, packed: Any, group_size: int, scales_and_zeros: Any) -> Any:
    # The packed weight is PyTorch's per-CPU layout, and a translation sees no constants: a
    # placeholder of fxbench's domain carries the product until lower_int4_matmuls rewrites it.
    return Op(_DOMAIN, _PLACEHOLDER, _placeholder_schema())(x, packed, scales_and_zeros, group_size=group_size)


def int4_translations() -> dict[Callable[..., Any], Callable[..., Any]]:
    """torch.onnx's custom_translation_table entry for the packed int4 product."""
    return {aten._weight_int4pack_mm_for_cpu.default: _int4_mm}


def _nibbles(packed: torch.Tensor) -> np.ndarray:
    flat = packed.contiguous().numpy().reshape(-1)
    return np.stack([flat & 15, flat >> 4], axis=-1).reshape(-1)


@functools.lru_cache(maxsize=8)  # a decoder repeats a handful of shapes over its layers
def _nibble_order(n: int, k: int) -> np.ndarray | None:
    """Where the CPU packing puts each weight: order[i] is the flat [N, K] index of packed nibble i.

    The layout is the kernel's own (blocked per ISA), so it is read off the packing itself: packing
    weights whose values are their index's 4-bit digits, digit by digit, and reading each nibble
    back spells the index that landed there. None if the packing is not a plain rearrangement."""
    index = np.arange(n * k, dtype=np.int64)
    order = np.zeros(n * k, dtype=np.int64)
    for digit in range(max(1, math.ceil(math.log2(max(n * k, 2)) / 4))):
        probe = torch.from_numpy(((index >> (4 * digit)) & 15).astype(np.int32).reshape(n, k))
        nib = _nibbles(torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1))
        if nib.size != n * k:
            return None
        order |= nib.astype(np.int64) << (4 * digit)
    if not np.array_equal(np.sort(order), index):
        return None
    order = order.astype(np.int32 if n * k < 2**31 else np.int64)
    order.flags.writeable = False
    return order


def unpack_int4(packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q ([K, N], 0..15), scales and integer zero points ([K / g, N]) from the kernel's operands.

    The nibbles are put back in [N, K] order by the packing's own arrangement (`_nibble_order`);
    should the packing ever not be a rearrangement, the kernel itself unpacks: the identity times
    the weight at scale 1 and zero 0 is q - 8, exactly (small integers), at K times the cost."""
    n, k = packed.shape[0], packed.shape[1] * 2
    order = _nibble_order(n, k)
    if order is not None:
        q_nk = np.empty(n * k, dtype=np.uint8)
        q_nk[order] = _nibbles(packed)
        q = np.ascontiguousarray(q_nk.reshape(n, k).T)
    else:
        unit = torch.stack([torch.ones(k // group_size, n), torch.zeros(k // group_size, n)], dim=-1)
        with torch.no_grad():
            shifted = aten._weight_int4pack_mm_for_cpu(torch.eye(k), packed, group_size, unit)  # [K, N]
        q = (shifted + 8).round().clamp(0, 15).to(torch.uint8).numpy()
    scale = scales_and_zeros[..., 0].float()
    zero = (8.0 - scales_and_zeros[..., 1].float() / scale).round().clamp(0, 15).to(torch.uint8).numpy()
    return q, scale.numpy().astype(np.float32), zero


def _constant(model: ir.Model, name: str, array: np.ndarray, dtype: ir.DataType | None = None) -> ir.Value:
    tensor = ir.Tensor(array, dtype=dtype) if dtype is not None else ir.tensor(array)
    value = ir.Value(name=name, shape=tensor.shape, type=ir.TensorType(tensor.dtype), const_value=tensor)
    model.graph.register_initializer(value)
    return value


def lower_int4_matmuls(model: ir.Model) -> int:
    """Rewrite each placeholder product into DequantizeLinear(W [K, N] uint4, scales [K / g, N],
    zero points [K / g, N] uint4, axis 0, block_size g) and MatMul(x, W): the form ONNX Runtime's
    DQMatMulToMatMulNBits fusion takes (weights and zero points constant, blocks along K).
    The packed weights and the kernel's scales_and_zeros leave the file. Returns the count."""
    lowered = 0
    for node in list(model.graph):
        if node.domain != _DOMAIN.domain or node.op_type != _PLACEHOLDER:
            continue
        x, packed, sz = node.inputs
        if packed.const_value is None or sz.const_value is None:
            raise ValueError(f"{node.name}: the int4 weight is not a constant")
        group = node.attributes.get_int("group_size")
        q, scale, zero = unpack_int4(torch.from_numpy(packed.const_value.numpy()), torch.from_numpy(sz.const_value.numpy()), group)
        base = packed.name.removesuffix("_int4_packed")
        weight = _constant(model, f"{base}_uint4", q.astype(ml_dtypes.uint4), ir.DataType.UINT4)
        scales = _constant(model, f"{base}_scale", scale)
        zeros = _constant(model, f"{base}_zero_point", zero.astype(ml_dtypes.uint4), ir.DataType.UINT4)
        dq = ir.node("DequantizeLinear", [weight, scales, zeros], attributes={"axis": 0, "block_size": group})
        dq.outputs[0].name = f"{base}_dequantized"
        dq.outputs[0].type, dq.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(list(q.shape))
        matmul = ir.node("MatMul", [x, dq.outputs[0]])
        out = node.outputs[0]
        matmul.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
        matmul.outputs[0].shape = out.shape if out.shape is not None else None
        model.graph.insert_before(node, [dq, matmul])
        out.replace_all_uses_with(matmul.outputs[0], replace_graph_outputs=True)
        model.graph.remove(node, safe=True)
        for value in (packed, sz):
            if not value.uses() and value.name in model.graph.initializers:
                del model.graph.initializers[value.name]
        lowered += 1
    if lowered:
        model.opset_imports.pop(_DOMAIN.domain, None)
    return lowered
