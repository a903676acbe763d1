"""Cast a program to bf16 with fp32 islands where accuracy needs them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fxbench.passes._precision import MixedPrecision, PrecisionOptions
from fxbench.passes.registry import register_pass


@dataclass(frozen=True)
class ToBf16Options(PrecisionOptions):
    """to-bf16 has to-fp16's options but the overflow checks: bf16 has fp32's exponent range."""


@register_pass("to-bf16")
class ToBf16(MixedPrecision):
    """Run matmuls, convolutions and attention in bf16; keep norms, softmax and reductions in fp32.

    Rules: to-fp16's 1 to 5 (torch.autocast's policy, baked into the graph so that it exports),
    with bf16 for fp16: matmuls, convolutions and SDPA compute in bf16; norms, softmax,
    reductions, pow/exp/log/rsqrt and what `keep` names (ops or module paths) in fp32; any other
    op in the widest dtype of its floating inputs; parameters used only in bf16 stored in bf16;
    graph inputs keep their dtype and floating outputs come back in fp32.
    bf16 has fp32's exponent range, so there is no overflow check (to-fp16 has one).
    """

    Options = ToBf16Options
    precision = "bf16"
    low = torch.bfloat16
