"""Cast a program to fp16 with fp32 islands where accuracy needs them, and report fp16 overflows."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fxbench.passes._precision import MixedPrecision, PrecisionOptions
from fxbench.passes.registry import register_pass


@dataclass(frozen=True)
class ToFp16Options(PrecisionOptions):
    check_overflow: bool = True  # run the fp32 program on the sample inputs and report |x| > 65504
    keep_overflow: bool = False  # keep the overflowing nodes (and their fp16 consumers) in fp32


@register_pass("to-fp16")
class ToFp16(MixedPrecision):
    """Run matmuls, convolutions and attention in fp16; keep norms, softmax and reductions in fp32.

    Rules (torch.autocast's policy, baked into the graph so that it exports):
      1. linear, matmul, conv and SDPA compute in fp16; their fp32 inputs are cast down;
      2. layer/group/RMS norms, softmax, reductions, pow/exp/log/rsqrt, and every node the `keep`
         option names (by op or module path) compute in fp32; their fp16 inputs are cast up;
      3. any other op computes in the widest dtype of its floating inputs (0-dim ones aside),
         as PyTorch's type promotion would; explicit casts in the model keep their dtype;
      4. parameters used only in fp16 are stored in fp16; one cast per value and dtype;
      5. graph inputs keep their dtype (float inputs are cast inside); floating outputs are cast
         back to fp32, so callers compare like with like;
      6. float attention masks are clamped to fp16's range before the cast (not -inf);
      7. with check_overflow, values beyond fp16's range (|x| > 65504) on the sample inputs that
         fp16 would hold are reported (module path and op) in the notes and in `details`;
         keep_overflow keeps them, and their fp16 consumers, in fp32.
    PyTorch runs fp16 matmuls on CPU, slowly: this is a preset for GPUs.
    """

    Options = ToFp16Options
    precision = "fp16"
    low = torch.float16

    def overflow(self) -> tuple[bool, bool]:
        return self.options.check_overflow, self.options.keep_overflow
