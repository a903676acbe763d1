"""Float8 (e4m3) quantization of linear layers, weights and activations, for Hopper-class GPUs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.fx import GraphModule, Node

from fxbench.passes._calibration import calibration_batches, observe_inputs
from fxbench.passes._quantize import (
    FP8_MAX, ActivationQuantization, CalibratedOptions, Editor, InputQuantizer, LinearSite, group_by_input, qd,
)
from fxbench.passes.registry import register_pass

aten = torch.ops.aten
FP8 = torch.float8_e4m3fn


@dataclass(frozen=True)
class QuantizeFp8Options(CalibratedOptions):
    weights: Literal["per-tensor", "per-channel"] = "per-tensor"
    activations: bool = True  # False: fp8 weights only


def _amax_observer():  # noqa: ANN202 - a torchao observer
    from torchao.quantization.pt2e.observer import MinMaxObserver

    return MinMaxObserver(dtype=torch.int8, qscheme=torch.per_tensor_symmetric)


@register_pass("quantize-fp8")
class QuantizeFp8(ActivationQuantization):
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
    precision = "fp8"

    weight_dtype = FP8

    @property
    def per_channel(self) -> bool:  # type: ignore[override]
        return self.options.weights == "per-channel"

    @property
    def fp32_activations(self) -> bool:  # type: ignore[override]
        return self.options.activations

    def input_quantizer(self, gm: GraphModule, chosen: list[LinearSite]) -> tuple[InputQuantizer | None, dict[str, Any]]:
        o = self.options
        batches: list[dict[str, torch.Tensor]] = []
        if o.activations or o.fallback:
            batches = calibration_batches(self.require_context(), path=o.calibration, samples=o.samples, seq=o.seq,
                                          batch_size=o.batch_size, label=self.name)
        record = {"weights": o.weights, "calibration_batches": len(batches)}
        if not o.activations:
            return None, record
        observers = observe_inputs(gm, group_by_input(chosen), batches, _amax_observer)
        scales = {x: max(max(abs(float(obs.min_val)), abs(float(obs.max_val))) / FP8_MAX, torch.finfo(torch.float32).eps)
                  for x, obs in observers.items()}

        def quantize_input(editor: Editor, x: Node, before: Node) -> Node:
            scale = scales[x]
            scaled = editor.call(aten.div.Tensor, (x, scale), before=before)
            clamped = editor.call(aten.clamp.default, (scaled, -FP8_MAX, FP8_MAX), before=before)
            q = editor.call(aten._to_copy.default, (clamped,), {"dtype": FP8}, before=before)
            return editor.call(qd.dequantize_per_tensor.default, (q, scale, 0, -448, 448, FP8), before=before)

        return quantize_input, record
