"""Int8 dynamic quantization of linear layers: int8 weights, activations quantized at run time (per token or per tensor)."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.fx import GraphModule, Node

from fxbench.passes._quantize import ActivationQuantization, Editor, InputQuantizer, LinearSite, QuantizeOptions, qd
from fxbench.passes.registry import register_pass

aten = torch.ops.aten
fx_ops = torch.ops.fxbench

# GELU(x) >= -0.16997 for every x (erf and tanh forms): its rows need codes below zero only down to
# there. Zero point 32 and scale max(row max / 223, 0.17 / 32) cover [-0.17, row max] in uint8.
GELU_MIN = 0.17
GELU_ZERO_POINT = 32


@dataclass(frozen=True)
class QuantizeInt8DynamicOptions(QuantizeOptions):
    """skip, fallback and target: nothing to calibrate. `granularity`: activation scales per token
    (symmetric int8) or per tensor (asymmetric uint8, ONNX's DynamicQuantizeLinear); with
    per-tensor, `gelu_rows` gives inputs that a GELU produces a scale per row instead."""

    granularity: Literal["token", "tensor"] = "token"
    gelu_rows: bool = True


def _per_token(editor: Editor, x: Node, before: Node) -> Node:
    """x quantized and dequantized per token (symmetric int8, scale max |row| / 127), computed at
    run time. quantize_per_channel on the rows of x viewed as 2-D is how per-token scales reach
    ONNX (QuantizeLinear with axis 0); the per_token ops have no ONNX translation."""
    val = x.meta["val"]
    k = int(val.shape[-1])
    rows = x if val.dim() == 2 else editor.call(aten.reshape.default, (x, [-1, k]), before=before)
    amax = editor.call(aten.amax.default, (editor.call(aten.abs.default, (rows,), before=before), [1]), before=before)
    scale = editor.call(aten.clamp.default, (editor.call(aten.div.Tensor, (amax, 127.0), before=before), 1e-12), before=before)
    zero = editor.call(aten.zeros_like.default, (scale,), {"dtype": torch.int64}, before=before)
    q = editor.call(qd.quantize_per_channel.default, (rows, scale, zero, 0, -127, 127, torch.int8), before=before)
    dq = editor.call(qd.dequantize_per_channel.default, (q, scale, zero, 0, -127, 127, torch.int8), before=before)
    if val.dim() == 2:
        return dq
    sizes = [d if isinstance(d, int) else editor.call(aten.sym_size.int, (x, i), before=before) for i, d in enumerate(val.shape[:-1])]
    return editor.call(aten.reshape.default, (dq, [*sizes, k]), before=before)


def _per_tensor(editor: Editor, x: Node, before: Node) -> Node:
    """x quantized and dequantized with one uint8 scale and zero point for the whole tensor, chosen
    at run time from its min and max (with 0 in range): PT2E's dynamic form, which is ONNX's
    DynamicQuantizeLinear exactly."""
    eps = float(torch.finfo(torch.float32).eps)
    qparams = editor.call(qd.choose_qparams.tensor, (x, 0, 255, eps, torch.uint8), before=before)
    scale = editor.call(operator.getitem, (qparams, 0), before=before)
    zero = editor.call(operator.getitem, (qparams, 1), before=before)
    q = editor.call(qd.quantize_per_tensor.tensor, (x, scale, zero, 0, 255, torch.uint8), before=before)
    return editor.call(qd.dequantize_per_tensor.tensor, (q, scale, zero, 0, 255, torch.uint8), before=before)


def _gelu_rows(editor: Editor, x: Node, before: Node) -> Node:
    """A GELU output quantized per row (its last axis) with the fixed zero point 32: only the row
    maximum is reduced (GELU is bounded below), and each row keeps its own resolution, where one
    scale for the tensor is set by a few outlier tokens (BERT's FFN output projection)."""
    amax = editor.call(aten.amax.default, (x, [-1], True), before=before)
    scale = editor.call(aten.clamp.default, (editor.call(aten.div.Tensor, (amax, 255.0 - GELU_ZERO_POINT), before=before),
                                             GELU_MIN / GELU_ZERO_POINT), before=before)
    q = editor.call(fx_ops.quantize_rows.default, (x, scale, GELU_ZERO_POINT), before=before)
    return editor.call(fx_ops.dequantize_rows.default, (q, scale, GELU_ZERO_POINT), before=before)


def _is_gelu(x: Node) -> bool:
    return x.op == "call_function" and x.target in (aten.gelu.default, aten.gelu_.default)


@register_pass("quantize-int8-dynamic")
class QuantizeInt8Dynamic(ActivationQuantization):
    """Int8 weights per channel and int8 activations quantized at run time, for linear layers.

    Rules:
      1. matches linear(x, W, b), addmm(b, x, W) and mm(x, W) whose W is a 2-D float weight of the
         module and whose x is fp32, minus `skip` (default: the head, which sees the final features);
      2. W becomes int8 per output channel as in quantize-int8-weight-only;
      3. granularity=token: x is quantized symmetrically per token (scale max |row| / 127) with
         quantize/dequantize_per_channel on x viewed as rows;
         granularity=tensor: x gets one uint8 scale and zero point chosen at run time
         (choose_qparams.tensor, quantize/dequantize_per_tensor.tensor), except (gelu_rows) an x
         produced by GELU, quantized per row with zero point 32 (fxbench::quantize_rows);
         one Q/DQ serves all the sites reading the same x (Q, K and V);
      4. accuracy-aware fallback as in quantize-int8-static (`fallback`, `target`).
    Nothing to calibrate. ONNX Runtime on CPU: per-token scales have no integer kernel (the weights
    land on MatMulNBits); per-tensor ones are DynamicQuantizeLinear, which the onnx-ort target turns
    into DynamicQuantizeMatMul / MatMulIntegerToFloat (fxbench/exporters/onnx_int8.py).
    """

    Options = QuantizeInt8DynamicOptions
    precision = "int8"

    def input_quantizer(self, gm: GraphModule, chosen: list[LinearSite]) -> tuple[InputQuantizer, dict[str, Any]]:
        o = self.options
        if o.granularity == "token":
            return _per_token, {"activations": "per-token int8"}

        def quantize_input(editor: Editor, x: Node, before: Node) -> Node:
            return (_gelu_rows if o.gelu_rows and _is_gelu(x) else _per_tensor)(editor, x, before)

        gelu = sum(1 for x in {s.input for s in chosen} if o.gelu_rows and _is_gelu(x))
        return quantize_input, {"activations": "per-tensor uint8, at run time", "gelu_row_inputs": gelu}
