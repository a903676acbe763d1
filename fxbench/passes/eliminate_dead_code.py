"""Dead-code elimination: drop nodes whose results nobody uses, and the weights only they read."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import GraphModule

from fxbench.passes.base import FxbenchPass, PassResult
from fxbench.passes.registry import register_pass


@dataclass(frozen=True)
class EliminateDeadCodeOptions:
    prune_weights: bool = True


def _delete_attr(root: torch.nn.Module, qualified: str) -> None:
    owner_path, _, attr = qualified.rpartition(".")
    owner = root.get_submodule(owner_path) if owner_path else root
    delattr(owner, attr)


def prune_unused_weights(gm: GraphModule) -> int:
    """Delete parameters, buffers and tensor constants that no get_attr node reads; return how many."""
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    used_modules = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    names = [name for name, _ in gm.named_parameters(remove_duplicate=False)]
    names += [name for name, _ in gm.named_buffers(remove_duplicate=False)]
    names += [name for name, value in vars(gm).items() if isinstance(value, torch.Tensor)]
    removed = 0
    for name in dict.fromkeys(names):
        if name in used or any(name.startswith(m + ".") for m in used_modules):
            continue
        _delete_attr(gm, name)
        removed += 1
    if removed:
        gm.delete_all_unused_submodules()
    return removed


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
        pruned = prune_unused_weights(graph_module) if self.options.prune_weights else 0
        return PassResult(graph_module, bool(changed) or pruned > 0)
