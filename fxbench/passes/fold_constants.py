"""Compute once, at build time, what depends only on weights and constants, and keep the result as a buffer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node

from fxbench.passes._graph import add_tensor, drop_weights, example_value, get_tensor, is_assert, set_meta
from fxbench.passes.base import FxbenchPass, PassOptions, PassResult
from fxbench.passes.registry import register_pass

aten = torch.ops.aten

# Ops that only broadcast or create: storing their result costs memory and saves next to nothing,
# so they are computed at build time only as a step toward something else.
_NOT_STORED = {
    aten.expand.default, aten.expand_as.default, aten.broadcast_to.default,
    aten.zeros.default, aten.ones.default, aten.full.default, aten.empty.memory_format, aten.arange.default,
    aten.arange.start, aten.arange.start_step, aten.scalar_tensor.default, aten.zeros_like.default,
    aten.ones_like.default, aten.full_like.default, aten.lift_fresh_copy.default, aten.detach.default,
}


@dataclass(frozen=True)
class FoldConstantsOptions(PassOptions):
    max_mib: float = 64.0  # results (and intermediates) larger than this stay computed at run time

    def validate(self) -> None:
        if self.max_mib < 0:
            raise ValueError(f"max_mib must be >= 0, got {self.max_mib}")


def _pure(node: Node) -> bool:
    """A call_function fit to run at build time: deterministic, without side effects or mutation."""
    if node.op != "call_function" or node.is_impure():
        return False
    target = node.target
    if isinstance(target, torch._ops.OpOverload) and target.namespace == "quantized_decomposed" and "dequantize" in target.__name__:
        return False  # rule 5
    if isinstance(target, torch._ops.OpOverload):
        schema = target._schema
        return not schema.is_mutable and torch.Tag.nondeterministic_seeded not in target.tags and bool(schema.returns)
    return target.__module__ == "_operator" and target.__name__ == "getitem"


def _written(graph: torch.fx.Graph) -> tuple[set[Node], set[str]]:
    """Values written in place somewhere in the graph (a step counter, a cache, an activation
    updated in place), and the attributes they view: their value at build time is not their
    value at run time, and a stored result would carry one call's writes into the next. Found by
    walking back from each written argument through the ops that produced it (views included)."""
    nodes: set[Node] = set()
    for node in graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload) or not node.target._schema.is_mutable:
            continue
        schema = node.target._schema
        args = [node.kwargs.get(a.name) if a.kwarg_only or i >= len(node.args) else node.args[i] for i, a in enumerate(schema.arguments)
                if a.alias_info is not None and a.alias_info.is_write]
        stack = [a for a in args if isinstance(a, Node)]
        while stack:
            n = stack.pop()
            if n in nodes:
                continue
            nodes.add(n)
            if n.op == "call_function" and n.args and isinstance(n.args[0], Node):
                stack.append(n.args[0])
    return nodes, {str(n.target) for n in nodes if n.op == "get_attr"}


def _nbytes(value: Any) -> int | None:
    """The size of a node's example value if every dim is a number (no symbolic size), else None."""
    values = value if isinstance(value, (tuple, list)) else (value,)
    total = 0
    for v in values:
        if not isinstance(v, torch.Tensor) or not all(isinstance(d, int) for d in v.shape):
            return None
        total += v.numel() * v.element_size()
    return total


@register_pass("fold-constants")
class FoldConstants(FxbenchPass):
    """Precompute subgraphs that depend only on weights and constants (transposed or scaled weights, masks).

    Rules:
      1. a node is constant if it is a pure op (no side effects, no mutation, not random) whose
         inputs are all constants: get_attr tensors, literals, or constant nodes; a graph input or
         a symbolic size anywhere upstream makes it run-time work, and so does being written in
         place (or viewing an attribute that is);
      2. nothing larger than max_mib (by the node's example value) is computed, so huge
         intermediates are never materialized;
      3. only constants that feed run-time work are stored, as contiguous buffers; broadcasts,
         factories and detach are not stored on their own (memory for no compute saved), but are
         folded into what consumes them;
      4. export's dtype checks on folded values go with them; the weights the folded ops read are
         deleted when nothing else reads them;
      5. a dequantize of stored quantized weights is never folded (torchao's convention): folding
         it would turn int8 / fp8 weights back into fp32 ones and undo the quantization passes.
    """

    Options = FoldConstantsOptions
    in_place = True

    def call(self, graph_module: GraphModule) -> PassResult:
        graph, limit = graph_module.graph, self.options.max_mib * 2**20
        constant: set[Node] = set()
        written, written_attrs = _written(graph)
        for node in graph.nodes:
            if node in written:
                continue
            if node.op == "get_attr" and get_tensor(graph_module, node) is not None and str(node.target) not in written_attrs:
                constant.add(node)
            elif _pure(node) and all(n in constant for n in node.all_input_nodes):
                size = _nbytes(example_value(node))
                if size is not None and size <= limit:
                    constant.add(node)
        # Stored: constant nodes, not get_attr, with a run-time user; a kind not worth storing
        # gives up its constancy (and makes its inputs the frontier), until nothing changes.
        while True:
            frontier = [n for n in constant if n.op != "get_attr" and any(u not in constant and not is_assert(u) for u in n.users)]
            dropped = [n for n in frontier if n.target in _NOT_STORED or not isinstance(example_value(n), torch.Tensor)]
            if not dropped:
                break
            constant.difference_update(dropped)
        if not frontier:
            return PassResult(graph_module, False)
        values = self._evaluate(graph_module, constant)
        inputs: list[Node] = []
        order = {n: i for i, n in enumerate(graph.nodes)}
        for node in sorted(frontier, key=order.__getitem__):
            tensor = values[node].detach().clone(memory_format=torch.contiguous_format)
            name = add_tensor(graph_module, f"folded_{node.name}", tensor, parameter=False)
            with graph.inserting_before(node):
                attr = graph.get_attr(name)
            set_meta(attr)
            node.replace_all_uses_with(attr)
        # Erase the folded nodes (now without users) from the last back, then the weights they read.
        for node in reversed(list(graph.nodes)):
            if node in constant and node.op != "get_attr" and all(is_assert(u) for u in node.users):
                for check in list(node.users):  # a dtype check of a value computed at build time
                    graph.erase_node(check)
                inputs.extend(node.all_input_nodes)
                graph.erase_node(node)
        for node in inputs:  # weights that only checks read any more
            if node.op == "get_attr" and not node._erased and node.users and all(is_assert(u) for u in node.users):
                for check in list(node.users):
                    graph.erase_node(check)
        drop_weights(graph_module, inputs)
        return PassResult(graph_module, True)

    @staticmethod
    def _evaluate(gm: GraphModule, constant: set[Node]) -> dict[Node, Any]:
        env: dict[Node, Any] = {}
        with torch.no_grad():
            for node in gm.graph.nodes:
                if node not in constant:
                    continue
                if node.op == "get_attr":
                    env[node] = get_tensor(gm, node)
                    continue
                args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), env.__getitem__)
                env[node] = node.target(*args, **kwargs)
        return env
