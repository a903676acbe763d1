"""Int8 static quantization of linear layers: per-channel weights, per-tensor activations calibrated on real inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.fx import GraphModule, Node

from fxbench.passes._quantize import (
    Editor, calibration_batches, check_calibration_file, choose_fallback, find_linears, group_by_input, observe_inputs,
    percentile_observer_class, qd, quantize_sites, select_sites, skip_summary,
)
from fxbench.passes.base import FxbenchPass, PassResult
from fxbench.passes.registry import register_pass


@dataclass(frozen=True)
class QuantizeInt8StaticOptions:
    # Linears left in float: keywords first / last / head, module paths ("encoder.layer.5") or node names.
    skip: tuple[str, ...] = ("first", "last", "head")
    method: Literal["min-max", "percentile", "histogram"] = "min-max"
    percentile: float = 99.99  # for method=percentile
    calibration: str = ""  # a .txt of sentences (one a line), or a .pt / .safetensors dict of inputs
    samples: int = 48  # without a file: this many of the model's own sample inputs
    seq: int = 64  # tokens per sentence when calibrating on text
    batch_size: int = 16
    activation_dtype: Literal["uint8", "int8"] = "uint8"
    fallback: int = 2  # at most this many more linears kept float, the most sensitive first, ...
    target: float = 0.99  # ... while the outputs' cosine to the float program on the sample is below this

    def __post_init__(self) -> None:
        check_calibration_file(self.calibration)
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile {self.percentile} must be in (50, 100]")
        if self.samples < 1 or self.batch_size < 1 or self.seq < 2 or self.fallback < 0:
            raise ValueError("samples and batch_size must be at least 1, seq at least 2, fallback at least 0")
        if not 0.0 < self.target <= 1.0:
            raise ValueError(f"target {self.target} must be a cosine in (0, 1]")


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
class QuantizeInt8Static(FxbenchPass):
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
    in_place = True
    precision = "int8"

    def call(self, graph_module: GraphModule) -> PassResult:
        o = self.options
        sites = find_linears(graph_module)
        chosen, skipped = select_sites(graph_module, sites, o.skip, fp32_activations=True)
        weights: dict = {}  # quantized weights, shared by the fallback trials and the rewrite
        self.details = {"quantized": 0, "skipped": skip_summary(sites, skipped)}
        if not chosen:
            return PassResult(graph_module, False)
        context = self.require_context()
        batches = calibration_batches(context, path=o.calibration, samples=o.samples, seq=o.seq, batch_size=o.batch_size, label=self.name)
        observers = observe_inputs(graph_module, group_by_input(chosen), batches, _observer(o))
        dtype = torch.uint8 if o.activation_dtype == "uint8" else torch.int8
        lo, hi = (0, 255) if dtype == torch.uint8 else (-128, 127)
        qparams = {x: (float(obs.calculate_qparams()[0].flatten()[0]), int(obs.calculate_qparams()[1].flatten()[0]))
                   for x, obs in observers.items()}

        def quantize_input(editor: Editor, x: Node, before: Node) -> Node:
            scale, zero_point = qparams[x]
            q = editor.call(qd.quantize_per_tensor.default, (x, scale, zero_point, lo, hi, dtype), before=before)
            return editor.call(qd.dequantize_per_tensor.default, (q, scale, zero_point, lo, hi, dtype), before=before)

        fallback = choose_fallback(graph_module, chosen, quantize_input, torch.int8, context.inputs, limit=o.fallback,
                                   target=o.target, weights=weights)
        for site in fallback.sites:
            skipped[site.node.name] = "fallback"
        chosen = [s for s in chosen if s not in fallback.sites]
        dropped = quantize_sites(graph_module, chosen, quantize_input, torch.int8, weights=weights).finish()
        self.details = {
            "quantized": len(chosen), "activation_groups": len(group_by_input(chosen)), "skipped": skip_summary(sites, skipped),
            "fallback": fallback.record(),
            "calibration": {"source": o.calibration or "sample inputs", "batches": len(batches),
                            "rows": sum(int(next(iter(b.values())).shape[0]) for b in batches), "method": o.method},
            "float_weights_removed": dropped,
        }
        return PassResult(graph_module, bool(chosen))
