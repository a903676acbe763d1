"""Common-subexpression elimination: one node for each distinct pure computation."""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node

from fxbench.passes.base import FxbenchPass, NoOptions, PassResult
from fxbench.passes.registry import register_pass


def _freeze(value: Any) -> Any:
    """A hashable key for an argument: nodes by identity, containers by content."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _freeze(v)) for k, v in value.items())))
    if isinstance(value, slice):
        return ("slice", _freeze(value.start), _freeze(value.stop), _freeze(value.step))
    if isinstance(value, float) and value != value:  # NaN never equals itself
        return ("nan",)
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return (type(value).__name__, value)


def _is_random(node: Node) -> bool:
    tags = getattr(node.target, "tags", ())
    return torch.Tag.nondeterministic_seeded in tags


@register_pass("eliminate-common-subexpressions")
class EliminateCommonSubexpressions(FxbenchPass):
    """Merge nodes that compute the same thing from the same inputs.

    Rules:
      1. two call_function nodes with the same target, args and kwargs (after earlier merges) are
         one: later uses point at the first, and the duplicate is erased;
      2. two get_attr nodes of the same attribute are one;
      3. impure nodes (side effects, in-place ops) and random ops are never merged.
    Works in place, unlike torch.fx's CSEPass, which rebuilds the graph and drops the pytree
    code generator that lets the exported module take named inputs.
    """

    Options = NoOptions
    in_place = True

    def call(self, graph_module: GraphModule) -> PassResult:
        graph = graph_module.graph
        seen: dict[Any, Node] = {}
        merged = 0
        for node in list(graph.nodes):
            if node.op == "get_attr":
                key: Any = ("get_attr", node.target)
            elif node.op == "call_function" and not node.is_impure() and not _is_random(node):
                key = (node.target, _freeze(node.args), _freeze(node.kwargs))
            else:
                continue
            first = seen.get(key)
            if first is None:
                seen[key] = node
                continue
            node.replace_all_uses_with(first)
            graph.erase_node(node)
            merged += 1
        return PassResult(graph_module, merged > 0)
