"""Int8 dynamic quantization of linear layers: int8 weights, activations quantized per token at run time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node

from fxbench.passes._quantize import ActivationQuantization, Editor, InputQuantizer, LinearSite, QuantizeOptions, qd
from fxbench.passes.registry import register_pass

aten = torch.ops.aten


@dataclass(frozen=True)
class QuantizeInt8DynamicOptions(QuantizeOptions):
    """skip, fallback and target: nothing to calibrate."""


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


@register_pass("quantize-int8-dynamic")
class QuantizeInt8Dynamic(ActivationQuantization):
    """Int8 weights per channel and int8 activations per token, quantized at run time, for linear layers.

    Rules:
      1. matches linear(x, W, b), addmm(b, x, W) and mm(x, W) whose W is a 2-D float weight of the
         module and whose x is fp32, minus `skip` (default: the head, which sees the final features);
      2. W becomes int8 per output channel as in quantize-int8-weight-only;
      3. x is quantized symmetrically per token (each row of its last dimension, scale
         max |row| / 127 computed at run time) with quantized_decomposed quantize/dequantize_per_channel
         on x viewed as rows; one Q/DQ serves all the sites reading the same x (Q, K and V);
      4. accuracy-aware fallback as in quantize-int8-static (`fallback`, `target`).
    Nothing to calibrate. ONNX: QuantizeLinear / DequantizeLinear with axis 0 and run-time scales;
    ONNX Runtime has no per-row activation scale in its integer kernels, so on CPU the weights land
    on MatMulNBits and the activation Q/DQ run as they are.
    """

    Options = QuantizeInt8DynamicOptions
    precision = "int8"

    def input_quantizer(self, gm: GraphModule, chosen: list[LinearSite]) -> tuple[InputQuantizer, dict[str, Any]]:
        return _per_token, {}
