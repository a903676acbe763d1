"""Float8 (e4m3) quantization of linear layers, weights and activations, for Hopper-class GPUs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.fx import GraphModule, Node

from fxbench.passes._quantize import (
    FP8_MAX, Editor, calibration_batches, check_calibration_file, choose_fallback, find_linears, group_by_input,
    observe_inputs, qd, quantize_sites, select_sites, skip_summary,
)
from fxbench.passes.base import FxbenchPass, PassResult
from fxbench.passes.registry import register_pass

aten = torch.ops.aten
FP8 = torch.float8_e4m3fn


@dataclass(frozen=True)
class QuantizeFp8Options:
    # Linears left in higher precision: keywords first / last / head, module paths or node names.
    skip: tuple[str, ...] = ("head",)
    weights: Literal["per-tensor", "per-channel"] = "per-tensor"
    activations: bool = True  # False: fp8 weights only
    calibration: str = ""  # a .txt of sentences (one a line), or a .pt / .safetensors dict of inputs
    samples: int = 48
    seq: int = 64
    batch_size: int = 16
    fallback: int = 2  # at most this many more linears kept in higher precision, the most sensitive first, ...
    target: float = 0.99  # ... while the outputs' cosine to the float program on the sample is below this

    def __post_init__(self) -> None:
        check_calibration_file(self.calibration)
        if self.samples < 1 or self.batch_size < 1 or self.seq < 2 or self.fallback < 0:
            raise ValueError("samples and batch_size must be at least 1, seq at least 2, fallback at least 0")
        if not 0.0 < self.target <= 1.0:
            raise ValueError(f"target {self.target} must be a cosine in (0, 1]")


def _amax_observer():  # noqa: ANN202 - a torchao observer
    from torchao.quantization.pt2e.observer import MinMaxObserver

    return MinMaxObserver(dtype=torch.int8, qscheme=torch.per_tensor_symmetric)


@register_pass("quantize-fp8")
class QuantizeFp8(FxbenchPass):
    """Float8 e4m3 weights and activations for linear layers, with per-tensor scales (per-channel weights optional).

    Rules:
      1. matches linear(x, W, b), addmm(b, x, W) and mm(x, W) whose W is a 2-D float weight of the
         module (and, with activations, whose x is fp32), minus `skip` (default: the head);
      2. W is stored as float8_e4m3fn with scale max |W| / 448 (per tensor, or per output channel),
         read through quantized_decomposed.dequantize_per_tensor (ONNX DequantizeLinear from
         FLOAT8E4M3FN); per-channel weights are dequantized at scale 1, then scaled per channel;
      3. with activations, each distinct input x gets a static scale max |x| / 448 from calibration
         (as for quantize-int8-static) and is cast: x / s, clamped to +-448, to float8_e4m3fn
         (round to nearest, as the hardware does), then dequantize_per_tensor. quantize_per_tensor
         is not used for fp8 because PyTorch's version rounds to integers before the cast.
    Accuracy-aware fallback as in quantize-int8-static (`fallback`, `target`).
    On CPU this is an emulation (cast to float8 and back) that verifies accuracy; the speed is a GPU's.
    """

    Options = QuantizeFp8Options
    in_place = True
    precision = "fp8"

    def call(self, graph_module: GraphModule) -> PassResult:
        o = self.options
        sites = find_linears(graph_module)
        chosen, skipped = select_sites(graph_module, sites, o.skip, fp32_activations=o.activations)
        weights: dict = {}  # quantized weights, shared by the fallback trials and the rewrite
        self.details = {"quantized": 0, "skipped": skip_summary(sites, skipped)}
        if not chosen:
            return PassResult(graph_module, False)
        batches: list[dict[str, torch.Tensor]] = []
        quantize_input = None
        if o.activations or o.fallback:
            batches = calibration_batches(self.require_context(), path=o.calibration, samples=o.samples, seq=o.seq,
                                          batch_size=o.batch_size, label=self.name)
        if o.activations:
            observers = observe_inputs(graph_module, group_by_input(chosen), batches, _amax_observer)
            scales = {x: max(max(abs(float(obs.min_val)), abs(float(obs.max_val))) / FP8_MAX, torch.finfo(torch.float32).eps)
                      for x, obs in observers.items()}

            def quantize_input(editor: Editor, x: Node, before: Node) -> Node:
                scale = scales[x]
                scaled = editor.call(aten.div.Tensor, (x, scale), before=before)
                clamped = editor.call(aten.clamp.default, (scaled, -FP8_MAX, FP8_MAX), before=before)
                q = editor.call(aten._to_copy.default, (clamped,), {"dtype": FP8}, before=before)
                return editor.call(qd.dequantize_per_tensor.default, (q, scale, 0, -448, 448, FP8), before=before)

        per_channel = o.weights == "per-channel"
        probe = self.require_context().inputs if o.fallback else {}
        fallback = choose_fallback(graph_module, chosen, quantize_input, FP8, probe, limit=o.fallback, target=o.target,
                                   per_channel=per_channel, weights=weights)
        for site in fallback.sites:
            skipped[site.node.name] = "fallback"
        chosen = [s for s in chosen if s not in fallback.sites]
        dropped = quantize_sites(graph_module, chosen, quantize_input, FP8, per_channel=per_channel, weights=weights).finish()
        self.details = {
            "quantized": len(chosen), "activation_groups": len(group_by_input(chosen)) if o.activations else 0,
            "skipped": skip_summary(sites, skipped), "weights": o.weights, "fallback": fallback.record(),
            "calibration_batches": len(batches), "float_weights_removed": dropped,
        }
        return PassResult(graph_module, bool(chosen))
