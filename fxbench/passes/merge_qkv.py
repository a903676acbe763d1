"""Merge parallel linears that read the same input (query/key/value, gate/up) into one linear and a split."""

from __future__ import annotations

import operator
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node

from fxbench.passes._graph import add_tensor, drop_weights, get_tensor, set_meta
from fxbench.passes.base import FxbenchPass, PassOptions, PassResult, module_path
from fxbench.passes.patterns import insert
from fxbench.passes.registry import register_pass

aten = torch.ops.aten


@dataclass(frozen=True)
class MergeQkvOptions(PassOptions):
    across_modules: bool = False  # also merge linears of different parent modules (Whisper's cross-attention k/v of every layer)
    min_linears: int = 2  # the smallest group merged

    def validate(self) -> None:
        if self.min_linears < 2:
            raise ValueError(f"min_linears must be >= 2 (a group of one is already one linear), got {self.min_linears}")


def _merged_linear_replacement(x, weight, bias, sizes):  # noqa: ANN001, ANN202
    """What a group of linears on x becomes: one linear, split along the features."""
    return aten.split_with_sizes.default(aten.linear.default(x, weight, bias), sizes, -1)


def _candidate(gm: GraphModule, node: Node, readers: Counter[str]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) of a linear whose weight and bias are constants that nothing else reads
    (`readers`: how many get_attr nodes read each attribute)."""
    if node.target != aten.linear.default or not isinstance(node.args[0], Node):
        return None
    w_node = node.args[1]
    b_node = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    weight, bias = get_tensor(gm, w_node), get_tensor(gm, b_node)
    if weight is None or weight.dim() != 2 or not weight.is_floating_point() or (b_node is not None and bias is None):
        return None
    # A weight read elsewhere too (tied) would be copied into the merged one: memory, not speed.
    if any(len(n.users) != 1 or readers[str(n.target)] != 1 for n in (w_node, b_node) if n is not None):
        return None
    if bias is not None and (bias.dtype != weight.dtype or bias.shape != weight.shape[:1]):
        return None
    return weight, bias


def _group_key(node: Node, weight: torch.Tensor, across_modules: bool) -> tuple[Any, ...]:
    parent = "" if across_modules else module_path(node).rpartition(".")[0]
    return (node.args[0], weight.dtype, weight.device, weight.shape[1], parent)


def _merged_name(targets: list[str]) -> str:
    """The merged linear's module path: the owners' common parent and their names joined, a shared
    suffix once (`self.query` + `self.key` -> `self.query_key`, `mlp.gate_proj` + `mlp.up_proj` ->
    `mlp.gate_up_proj`, as Phi-3 names it)."""
    owners = [t.rpartition(".")[0].split(".") for t in targets]
    common = os.path.commonprefix(owners)
    rest = ["_".join(o[len(common):]) or "linear" for o in owners]
    suffix = os.path.commonprefix([r[::-1] for r in rest])[::-1]
    suffix = suffix[suffix.find("_"):] if "_" in suffix else ""
    if any(len(r) == len(suffix) for r in rest):
        suffix = ""
    return ".".join([*common, "_".join(r[: len(r) - len(suffix)] for r in rest) + suffix])


@register_pass("merge-qkv")
class MergeQkv(FxbenchPass):
    """Merge linears that read the same input into one linear with concatenated weights and a split.

    Query/key/value projections (BERT, ViT, Whisper, Llama) and gate/up projections (Llama MLPs)
    become one GEMM each. Rules:
      1. candidates are aten.linear nodes whose weight (2-D, floating) and bias are constants read by
         that linear only (tied weights are left alone);
      2. linears group by input node, weight dtype, device and in-features, and by parent module
         unless across_modules; a group of at least min_linears is merged;
      3. the merged weight is the weights stacked in graph order; the bias is theirs, with zeros
         for members without one, and absent if none has one;
      4. each member's users read its piece of split_with_sizes(out, sizes, -1); `view` users become
         `reshape`, since a column slice of the merged output is not always viewable;
      5. the old weights are deleted; the new ones live under the members' common parent module.
    """

    Options = MergeQkvOptions
    in_place = True

    def call(self, graph_module: GraphModule) -> PassResult:
        groups: dict[tuple[Any, ...], list[tuple[Node, torch.Tensor, torch.Tensor | None]]] = defaultdict(list)
        readers = Counter(str(n.target) for n in graph_module.graph.find_nodes(op="get_attr"))
        for node in graph_module.graph.find_nodes(op="call_function", target=aten.linear.default):
            found = _candidate(graph_module, node, readers)
            if found is not None:
                groups[_group_key(node, found[0], self.options.across_modules)].append((node, *found))
        merged = 0
        for members in groups.values():
            if len(members) >= self.options.min_linears:
                self._merge(graph_module, members)
                merged += 1
        return PassResult(graph_module, merged > 0)

    def _merge(self, gm: GraphModule, members: list[tuple[Node, torch.Tensor, torch.Tensor | None]]) -> None:
        graph = gm.graph
        nodes = [m[0] for m in members]
        first = nodes[0]  # find_nodes returns graph order
        weight = torch.cat([w.detach() for _, w, _ in members])
        bias = None
        if any(b is not None for _, _, b in members):
            bias = torch.cat([b.detach() if b is not None else w.new_zeros(w.shape[0]) for _, w, b in members])
        sizes = [int(w.shape[0]) for _, w, _ in members]
        stale = [a for n in nodes for a in n.all_input_nodes if a is not n.args[0]]
        base = _merged_name([str(n.args[1].target) for n in nodes])
        with graph.inserting_before(first):
            w_attr = graph.get_attr(add_tensor(gm, f"{base}.weight", weight, parameter=True))
            b_attr = graph.get_attr(add_tensor(gm, f"{base}.bias", bias, parameter=True)) if bias is not None else None
        for attr in (w_attr, b_attr):
            if attr is not None:
                set_meta(attr)
        # The merged linear belongs to the members' parent module (attention, MLP).
        values = {"x": first.args[0], "weight": w_attr, "bias": b_attr, "sizes": sizes}
        split = insert(graph, _merged_linear_replacement, values, first, like=first, drop_modules=1)
        with graph.inserting_before(first):
            pieces = [graph.call_function(operator.getitem, (split, i)) for i in range(len(nodes))]
        for old, piece in zip(nodes, pieces):
            set_meta(piece, like=old)
            for user in list(old.users):
                if user.target == aten.view.default and user.args[0] is old:
                    user.target = aten.reshape.default
            old.replace_all_uses_with(piece)
            graph.erase_node(old)
        drop_weights(gm, stale)
