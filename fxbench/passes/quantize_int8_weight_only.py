"""Int8 weight-only quantization of linear layers: per-channel symmetric weights, dequantized before the matmul."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import GraphModule

from fxbench.passes._quantize import Editor, find_linears, select_sites, skip_summary
from fxbench.passes.base import FxbenchPass, PassOptions, PassResult
from fxbench.passes.registry import register_pass


@dataclass(frozen=True)
class QuantizeInt8WeightOnlyOptions(PassOptions):
    # Linears left in float: keywords first / last / head, module paths ("lm_head") or node names.
    skip: tuple[str, ...] = ()


@register_pass("quantize-int8-weight-only")
class QuantizeInt8WeightOnly(FxbenchPass):
    """Store linear weights in int8 (per output channel, symmetric) and dequantize them before the matmul.

    Rules:
      1. matches linear(x, W, b), addmm(b, x, W) and mm(x, W) whose W is a 2-D float weight of the
         module (not one already dequantized), minus those `skip` names;
      2. W becomes int8 in [-127, 127] with one fp32 scale per output channel (max |w| / 127),
         stored as buffers beside it; the matmul reads quantized_decomposed.dequantize_per_channel
         of them (ONNX DequantizeLinear, axis = the output channel);
      3. activations stay float (fp16 / bf16 after a precision pass: the weight dequantizes to its
         dtype, W8A16); a weight read by several sites is quantized once, and the float weight is
         deleted once nothing reads it.
    ONNX Runtime's CPU provider fuses DequantizeLinear + MatMul into MatMulNBits (8 bits).
    """

    Options = QuantizeInt8WeightOnlyOptions
    in_place = True
    precision = "int8"

    def call(self, graph_module: GraphModule) -> PassResult:
        sites = find_linears(graph_module)
        chosen, skipped = select_sites(graph_module, sites, self.options.skip)
        editor = Editor(graph_module)
        for site in chosen:
            editor.quantize_weight(site, torch.int8)
        dropped = editor.finish()
        self.details = {"quantized": len(chosen), "skipped": skip_summary(sites, skipped), "float_weights_removed": dropped}
        return PassResult(graph_module, bool(chosen))
