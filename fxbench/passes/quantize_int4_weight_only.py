"""Int4 weight-only quantization of linear layers: group-wise asymmetric 4-bit weights, PyTorch's int4 CPU kernel."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import GraphModule

from fxbench.passes._graph import get_tensor
from fxbench.passes._quantize import Editor, LinearSite, find_linears, select_sites, skip_summary
from fxbench.passes.base import FxbenchPass, PassOptions, PassResult
from fxbench.passes.registry import register_pass

__all__ = ["GROUP_SIZES", "QuantizeInt4WeightOnly", "QuantizeInt4WeightOnlyOptions", "quantize_int4"]

aten = torch.ops.aten
# What both run: ONNX Runtime's MatMulNBits takes a power of two >= 16, PyTorch's CPU int4 kernel
# only 32, 64, 128 or 256 (it raises on 16); K must hold whole groups.
GROUP_SIZES = (32, 64, 128, 256)
# PyTorch's CPU int4 packing takes output channels in tiles of 16 (an LM head over a vocabulary of
# 1000 does not fit; it stays float).
_N_MULTIPLE = 16


@dataclass(frozen=True)
class QuantizeInt4WeightOnlyOptions(PassOptions):
    group_size: int = 128  # input channels sharing one scale and zero point
    # Linears left in float: keywords first / last / head, module paths ("lm_head") or node names.
    skip: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"group_size {self.group_size} must be one of {', '.join(map(str, GROUP_SIZES))}")


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit quantization of a [N, K] weight in groups of `group_size` input channels,
    as ONNX Runtime's MatMulNBits quantizer does it: each group's range, widened to hold 0, over
    15 steps; returns q (uint8 in [0, 15], [N, K]), scales and integer zero points ([N, K / g])."""
    n, k = w.shape
    groups = w.detach().float().reshape(n, k // group_size, group_size)
    low, high = groups.amin(-1).clamp(max=0.0), groups.amax(-1).clamp(min=0.0)
    scale = ((high - low) / 15.0).clamp(min=torch.finfo(torch.float32).eps)
    zero = (-low / scale).round().clamp(0, 15)
    q = (groups / scale[..., None]).round().add(zero[..., None]).clamp(0, 15)
    return q.reshape(n, k).to(torch.uint8), scale, zero.to(torch.uint8)


def _as_nk(site: LinearSite, w: torch.Tensor) -> torch.Tensor:
    return w if site.axis == 0 else w.t()


@register_pass("quantize-int4-weight-only")
class QuantizeInt4WeightOnly(FxbenchPass):
    """Store linear weights in 4 bits (group-wise, asymmetric) and multiply with PyTorch's int4 CPU kernel.

    Rules:
      1. matches linear(x, W, b), addmm(b, x, W) and mm(x, W) whose W is a 2-D float weight of the
         module with K input channels a multiple of `group_size` and N output channels a multiple
         of 16 (the CPU kernel's tile), minus those `skip` names;
      2. W becomes q in [0, 15] with an fp32 scale and an integer zero point per output channel and
         group of `group_size` input channels (`quantize_int4`), packed by
         aten._convert_weight_to_int4pack_for_cpu; the product is
         aten._weight_int4pack_mm_for_cpu(x as [M, K], packed, group_size, scales_and_zeros),
         the kernel torchao's int4 CPU layout calls, which computes (q - 8) * scale + zero with
         zero = (8 - zero point) * scale: exactly the dequantization of ONNX's DequantizeLinear;
      3. activations stay fp32 (a weight read by several sites is quantized once per site); the
         bias is added after; the float weight goes once nothing reads it.
    The ONNX export writes each product as a blocked int4 DequantizeLinear (opset 21) and a MatMul,
    which ONNX Runtime fuses into MatMulNBits (fxbench.exporters.onnx_int4).
    """

    Options = QuantizeInt4WeightOnlyOptions
    in_place = True
    precision = "int4"

    def call(self, graph_module: GraphModule) -> PassResult:
        gm, g = graph_module, self.options.group_size
        sites = find_linears(gm)
        chosen, skipped = select_sites(gm, sites, self.options.skip)
        for site in list(chosen):
            val = site.input.meta.get("val")
            shape = site.weight.meta["val"].shape
            n, k = shape[site.axis], shape[1 - site.axis]
            why = (f"K={k} not a multiple of {g}" if k % g else f"N={n} not a multiple of {_N_MULTIPLE}" if n % _N_MULTIPLE
                   else "input not fp32" if val is None or val.dtype != torch.float32 else None)
            if why is not None:
                skipped[site.node.name] = why
                chosen.remove(site)
        editor = Editor(gm)
        for site in chosen:
            self._rewrite(gm, editor, site, g)
        dropped = editor.finish()
        self.details = {"quantized": len(chosen), "group_size": g, "skipped": skip_summary(sites, skipped), "float_weights_removed": dropped}
        return PassResult(gm, bool(chosen))

    @staticmethod
    def _rewrite(gm: GraphModule, editor: Editor, site: LinearSite, g: int) -> None:
        node, weight = site.node, site.weight
        w = _as_nk(site, get_tensor(gm, weight.target, plain=False))
        n, k = w.shape
        q, scale, zero = quantize_int4(w, g)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        scales_and_zeros = torch.stack([scale.t(), ((8.0 - zero.float()) * scale).t()], dim=-1).contiguous()  # [K/g, N, 2]
        owner, _, attr = str(weight.target).rpartition(".")
        pn = editor.buffer(owner, f"{attr}_int4_packed", packed, node)
        sn = editor.buffer(owner, f"{attr}_int4_scales_and_zeros", scales_and_zeros, node)
        x = site.input
        rank = x.meta["val"].dim()
        flat = editor.call(aten.reshape.default, (x, [-1, k]), before=node)
        mm = editor.call(aten._weight_int4pack_mm_for_cpu.default, (flat, pn, g, sn), before=node)
        lead = [editor.call(aten.sym_size.int, (x, d), before=node) for d in range(rank - 1)]
        out = editor.call(aten.reshape.default, (mm, [*lead, n]), before=node)
        bias = node.args[0] if node.target == aten.addmm.default else (node.args[2] if len(node.args) > 2 else None)
        if bias is not None:
            out = editor.call(aten.add.Tensor, (out, bias), before=node)
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
        editor.replaced.append(weight)
