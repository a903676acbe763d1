"""Helpers of the layer-surgery passes: block stacks, a module's nodes and outputs, erasing a block."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from torch.fx import Graph, GraphModule, Node

from fxbench.errors import PassOptionError
from fxbench.passes._graph import example_tensor, in_module, match_paths
from fxbench.passes.base import FxbenchPass, module_path

__all__ = [
    "StackSurgery",
    "ancestors",
    "block_nodes",
    "block_stack",
    "choose_stack",
    "erase_block",
    "find_stacks",
    "module_outputs",
    "module_paths",
    "resolve_indices",
    "surgery_meta",
]

_META = "fxbench_surgery"
_INDEX = re.compile(r"^\d+$")


def surgery_meta(gm: GraphModule) -> dict[str, Any]:
    """Bookkeeping kept with the module across passes (original block counts, head indices), so a
    second run of a surgery pass knows what the first one did."""
    return gm.meta.setdefault(_META, {})


def module_paths(gm: GraphModule) -> set[str]:
    """Every module path that has nodes, with all its parents ("a.b.c" gives a, a.b, a.b.c)."""
    paths: set[str] = set()
    for n in gm.graph.nodes:
        parts = module_path(n).split(".") if n.op == "call_function" and module_path(n) else []
        paths.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return paths


def find_stacks(gm: GraphModule) -> dict[str, list[int]]:
    """Block stacks: module paths followed by an integer index ("encoder.layer" -> [0, 1, ...]).
    Only the outermost index of a path counts, so blocks inside blocks are not stacks of their own."""
    stacks: dict[str, set[int]] = {}
    for path in module_paths(gm):
        parts = path.split(".")
        for i, part in enumerate(parts):
            if _INDEX.match(part):
                if i > 0 and i == len(parts) - 1:
                    stacks.setdefault(".".join(parts[:i]), set()).add(int(part))
                break
    return {k: sorted(v) for k, v in sorted(stacks.items())}


def choose_stack(gm: GraphModule, wanted: str, pass_name: str) -> str:
    """The block stack named by `wanted` (its path, or a module path or pattern that a part of it
    matches, such as "decoder"), or the only stack the model has."""
    stacks = find_stacks(gm)
    listing = ", ".join(f"{k} ({len(v)} blocks)" for k, v in stacks.items()) or "none"
    if not stacks:
        raise PassOptionError(f"{pass_name}: the graph has no stack of numbered blocks (such as encoder.layer.N); nothing to operate on")
    if wanted:
        if wanted in stacks:
            return wanted
        matches = match_paths([f"**.{wanted}.**"], stacks)
        if len(matches) == 1:
            return matches[0]
        raise PassOptionError(f"{pass_name}: stack={wanted!r} matches {len(matches) or 'no'} block stacks; choose one of: {listing}")
    if len(stacks) > 1:
        raise PassOptionError(f"{pass_name}: the model has several block stacks: {listing}; choose one with stack=NAME")
    return next(iter(stacks))


def block_stack(gm: GraphModule, wanted: str, pass_name: str) -> tuple[str, list[int], int]:
    """(the stack's path, the indices of the blocks it still has, how many blocks it had when
    captured): the count is kept with the module, so indices stay the captured model's."""
    prefix = choose_stack(gm, wanted, pass_name)
    present = find_stacks(gm)[prefix]
    count = surgery_meta(gm).setdefault("blocks", {}).setdefault(prefix, max(present) + 1)
    return prefix, present, count


class StackSurgery(FxbenchPass):
    """Base of the passes that cut into a block stack (drop-layers, prune-heads): in place, a
    deliberate change of the model (exact=False), the stack chosen by their `stack=` option."""

    in_place = True
    exact = False

    def stack(self, gm: GraphModule) -> tuple[str, list[int], int]:
        """The chosen stack's path, its blocks' indices, and its block count when captured (block_stack)."""
        return block_stack(gm, self.options.stack, self.name)


def resolve_indices(indices: Iterable[int], count: int, stack: str, pass_name: str) -> list[int]:
    """Block indices with Python's negative counting, checked against the stack's `count`, sorted
    and unique."""
    out = set()
    for i in indices:
        j = i + count if i < 0 else i
        if not 0 <= j < count:
            raise PassOptionError(f"{pass_name}: block {i} is out of range; {stack} has {count} blocks (0-{count - 1})")
        out.add(j)
    return sorted(out)


def block_nodes(gm: GraphModule, prefix: str) -> list[Node]:
    """The call_function nodes traced inside module `prefix` (and its submodules), in graph order."""
    return [n for n in gm.graph.nodes if n.op == "call_function" and in_module(module_path(n), prefix)]


def ancestors(node: Node, within: set[Node]) -> set[Node]:
    """The nodes of `within` that `node` is computed from."""
    seen: set[Node] = set()
    stack = [a for a in node.all_input_nodes if a in within]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(a for a in n.all_input_nodes if a in within)
    return seen


def module_outputs(nodes: list[Node]) -> list[Node]:
    """The values a module returns: tensors computed inside it and used outside it, less those the
    others were computed from (a residual read inside a norm, as Llama's cast, is not returned)."""
    inside = set(nodes)
    escaping = [n for n in nodes if example_tensor(n) is not None and any(u not in inside for u in n.users)]
    upstream: set[Node] = set()
    for n in escaping:
        upstream |= ancestors(n, inside)
    return [n for n in escaping if n not in upstream]


def _erase_dead_inputs(graph: Graph, seeds: Iterable[Node]) -> int:
    """Erase pure nodes left without users, starting from `seeds`, walking towards the inputs."""
    erased = 0
    stack = list(seeds)
    while stack:
        n = stack.pop()
        if n.graph is not graph or n.users or n.op in ("placeholder", "output") or n.is_impure():
            continue
        inputs = list(n.all_input_nodes)
        graph.erase_node(n)
        erased += 1
        stack.extend(inputs)
    return erased


def erase_block(gm: GraphModule, nodes: list[Node]) -> int:
    """Erase a module's nodes (whose results must no longer be used outside it), then whatever
    outside nodes only they used. Returns the number of nodes erased."""
    inside = set(nodes)
    outside_inputs: list[Node] = []
    for n in reversed(nodes):
        stray = [u for u in n.users if u not in inside]
        if stray:
            raise RuntimeError(f"{n.name} of the removed module is still used by {stray[0].name}")
        outside_inputs.extend(a for a in n.all_input_nodes if a not in inside)
        gm.graph.erase_node(n)
    return len(nodes) + _erase_dead_inputs(gm.graph, outside_inputs)
