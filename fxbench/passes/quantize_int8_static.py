"""Int8 static quantization of linear layers: per-channel weights, per-tensor activations calibrated on real inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.fx import GraphModule, Node

from fxbench.passes._calibration import calibration_batches, observe_inputs, percentile_observer_class
from fxbench.passes._quantize import (
    ActivationQuantization, CalibratedOptions, Editor, InputQuantizer, LinearSite, group_by_input, qd,
)
from fxbench.passes.registry import register_pass


@dataclass(frozen=True)
class QuantizeInt8StaticOptions(CalibratedOptions):
    skip: tuple[str, ...] = ("first", "last", "head")
    method: Literal["min-max", "percentile", "histogram"] = "min-max"
    percentile: float = 99.99  # for method=percentile
    activation_dtype: Literal["uint8", "int8"] = "uint8"

    def validate(self) -> None:
        super().validate()
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile {self.percentile} must be in (50, 100]")


def _observer(options: QuantizeInt8StaticOptions):  # noqa: ANN202 - a torchao observer constructor
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    dtype = torch.uint8 if options.activation_dtype == "uint8" else torch.int8
    lo, hi = (0, 255) if dtype == torch.uint8 else (-128, 127)
    kwargs = {"dtype": dtype, "qscheme": torch.per_tensor_affine, "quant_min": lo, "quant_max": hi}
    if options.method == "histogram":
        return lambda: HistogramObserver(**kwargs)
    if options.method == "percentile":
        cls = percentile_observer_class()
        return lambda: cls(percentile=options.percentile, **kwargs)
    return lambda: MinMaxObserver(**kwargs)


@register_pass("quantize-int8-static")
class QuantizeInt8Static(ActivationQuantization):
    """Int8 linears with activation scales calibrated ahead of time: per-channel weights, per-tensor activations.

    Rules:
      1. matches linear(x, W, b), addmm(b, x, W) and mm(x, W) whose W is a 2-D float weight of the
         module and whose x is fp32, minus `skip`: by default the first linear (and those sharing
         its input), the last one before the head, and the head (LM head, classifier, pooler);
      2. W becomes int8 per output channel as in quantize-int8-weight-only;
      3. each distinct input x of the matched sites is observed on calibration batches (torchao
         MinMax, Histogram, or a percentile observer) and gets one quantize_per_tensor /
         dequantize_per_tensor pair with the observed scale and zero point (uint8 asymmetric by
         default: ONNX Runtime's preferred U8S8 on x86);
      4. accuracy-aware fallback: while, quantized, the outputs' cosine to the float program on the
         sample inputs (every position, as the pipeline verifies) is below `target`, the most
         harmful site (found by bisection) stays float, up to `fallback` sites (in MiniLM, the
         first layer's FFN output projection, where BERT's outlier features appear);
      5. calibration batches come from `calibration` (a text file of sentences or a tensor file),
         else the inputs the user gave, else `samples` of the model's own sample inputs.
    ONNX Runtime's CPU provider fuses the Q/DQ + MatMul into MatMulIntegerToFloat (int8 GEMM).
    """

    Options = QuantizeInt8StaticOptions
    precision = "int8"

    def input_quantizer(self, gm: GraphModule, chosen: list[LinearSite]) -> tuple[InputQuantizer, dict[str, Any]]:
        o = self.options
        batches = calibration_batches(self.require_context(), path=o.calibration, samples=o.samples, seq=o.seq,
                                      batch_size=o.batch_size, label=self.name)
        observers = observe_inputs(gm, group_by_input(chosen), batches, _observer(o))
        dtype = torch.uint8 if o.activation_dtype == "uint8" else torch.int8
        lo, hi = (0, 255) if dtype == torch.uint8 else (-128, 127)
        qparams = {x: (float(obs.calculate_qparams()[0].flatten()[0]), int(obs.calculate_qparams()[1].flatten()[0]))
                   for x, obs in observers.items()}

        def quantize_input(editor: Editor, x: Node, before: Node) -> Node:
            scale, zero_point = qparams[x]
            q = editor.call(qd.quantize_per_tensor.default, (x, scale, zero_point, lo, hi, dtype), before=before)
            return editor.call(qd.dequantize_per_tensor.default, (q, scale, zero_point, lo, hi, dtype), before=before)

        rows = sum(int(next(iter(b.values())).shape[0]) for b in batches)
        calibration = {"source": o.calibration or "sample inputs", "batches": len(batches), "rows": rows, "method": o.method}
        return quantize_input, {"calibration": calibration}
