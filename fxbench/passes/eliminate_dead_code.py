"""Dead-code elimination: drop nodes whose results nobody uses, and the weights only they read."""

from __future__ import annotations

from dataclasses import dataclass

from torch.fx import GraphModule

from fxbench.passes._graph import drop_weights
from fxbench.passes.base import FxbenchPass, PassOptions, PassResult
from fxbench.passes.registry import register_pass


@dataclass(frozen=True)
class EliminateDeadCodeOptions(PassOptions):
    prune_weights: bool = True


@register_pass("eliminate-dead-code")
class EliminateDeadCode(FxbenchPass):
    """Remove nodes whose results are never used, then the weights nothing reads any more.

    Rules:
      1. a pure node (no side effects, not random) without users is erased, repeatedly, from the
         output backwards (torch.fx's `Graph.eliminate_dead_code`); graph inputs are kept, since
         they are the program's signature;
      2. with prune_weights, parameters, buffers and constants that no get_attr reads are deleted,
         and submodules left empty with them, so the parameter count falls with the graph.
    """

    Options = EliminateDeadCodeOptions
    in_place = True

    def call(self, graph_module: GraphModule) -> PassResult:
        changed = graph_module.graph.eliminate_dead_code()
        pruned = drop_weights(graph_module) if self.options.prune_weights else 0
        return PassResult(graph_module, bool(changed) or pruned > 0)
