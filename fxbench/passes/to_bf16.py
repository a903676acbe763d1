"""Cast a program to bf16 with fp32 islands where accuracy needs them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import GraphModule

from fxbench.passes._precision import convert_precision
from fxbench.passes.base import FxbenchPass, PassResult
from fxbench.passes.registry import register_pass


@dataclass(frozen=True)
class ToBf16Options:
    keep: tuple[str, ...] = ()  # ops ("gelu", "aten.gelu.default") or module paths ("lm_head") kept in fp32
    keep_defaults: bool = True  # keep layer norms, softmax, reductions, pow/exp/log in fp32


@register_pass("to-bf16")
class ToBf16(FxbenchPass):
    """Run matmuls, convolutions and attention in bf16; keep norms, softmax and reductions in fp32.

    Rules (torch.autocast's policy, baked into the graph so that it exports):
      1. linear, matmul, conv and SDPA compute in bf16; their fp32 inputs are cast down;
      2. layer/group/RMS norms, softmax, reductions, pow/exp/log/rsqrt, and every node the `keep`
         option names (by op or module path) compute in fp32; their bf16 inputs are cast up;
      3. any other op computes in the widest dtype of its floating inputs (0-dim ones aside),
         as PyTorch's type promotion would; explicit casts in the model keep their dtype;
      4. parameters used only in bf16 are stored in bf16; one cast per value and dtype;
      5. graph inputs keep their dtype (float inputs are cast inside); floating outputs are cast
         back to fp32, so callers compare like with like.
    bf16 has fp32's exponent range, so there is no overflow check (to-fp16 has one).
    """

    Options = ToBf16Options
    in_place = True
    precision = "bf16"

    def call(self, graph_module: GraphModule) -> PassResult:
        o = self.options
        changes, self.details = convert_precision(
            graph_module, torch.bfloat16, self.context, keep=o.keep, keep_defaults=o.keep_defaults,
            check_overflow=False, keep_overflow=False, label=self.name,
        )
        return PassResult(graph_module, changes > 0)
