"""Shared by the rewrite passes: ATen patterns traced once and matched, new nodes' meta, weights added and released."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch._guards import detect_fake_mode
from torch.fx import Graph, GraphModule, Node
from torch.fx.passes.utils.matcher_utils import SubgraphMatcher

__all__ = ["Match", "add_tensor", "find", "get_tensor", "inline", "insert", "is_check", "release", "set_meta", "trace"]

aten = torch.ops.aten
# Checks that export inserts on values (dtype, device): they may read a matched node and go with it.
_CHECKS = {aten._assert_tensor_metadata.default}
# What a new node inherits from the node it stands for, so module paths and source lines survive.
_INHERITED = ("nn_module_stack", "stack_trace", "source_fn_stack", "from_node")


@functools.cache
def trace(fn: Callable[..., Any], **flags: Any) -> Graph:
    """`fn`'s ATen calls as a graph: one placeholder per positional parameter that the variant
    chosen by `flags` (keyword-only parameters: which optional steps it has) uses. Cached."""
    graph = Graph()
    tracer = torch.fx.proxy.GraphAppendingTracer(graph)
    names = [p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    out = fn(*(torch.fx.Proxy(graph.placeholder(n), tracer) for n in names), **flags)
    graph.output(out.node)
    for node in list(graph.find_nodes(op="placeholder")):
        if not node.users:  # a step this variant leaves out
            graph.erase_node(node)
    return graph


def is_check(user: Node, node: Node) -> bool:
    """Whether `user` only checks `node` (export's dtype asserts): it may go with a matched node."""
    return user.target in _CHECKS


class _Matcher(SubgraphMatcher):
    """torch.fx's SubgraphMatcher, except that nodes inside a match may have users outside it that
    `allow(user, node)` accepts (by default, export's dtype checks, which are erased with them)."""

    def __init__(self, pattern: Graph, allow: Callable[[Node, Node], bool]) -> None:
        super().__init__(pattern, ignore_literals=False)
        self.allow = allow

    def _is_contained(self, nodes_map: dict[Node, Node]) -> bool:
        inner = {gn for pn, gn in nodes_map.items() if pn.op != "placeholder"}
        for pn, gn in nodes_map.items():
            if pn.op == "placeholder" or pn in self.pattern_returning_nodes:
                continue
            if any(user not in inner and not self.allow(user, gn) for user in gn.users):
                return False
        return True


@dataclass
class Match:
    """One match of a pattern: its output node, what each placeholder bound (a node or a literal:
    pattern placeholders match literals too), and the graph nodes it covers, in graph order."""

    anchor: Node
    values: dict[str, Any]
    nodes: list[Node]

    def val(self, name: str) -> Any:
        """The example value (a FakeTensor) that a placeholder's node carries, else None."""
        value = self.values.get(name)
        return value.meta.get("val") if isinstance(value, Node) else None


def find(gm: GraphModule, pattern: Callable[..., Any], *, allow: Callable[[Node, Node], bool] = is_check, **flags: Any) -> list[Match]:
    """The non-overlapping matches of `pattern` (traced with `flags`) in `gm`; `allow` as in _Matcher."""
    pgraph = trace(pattern, **flags)
    out = next(iter(pgraph.find_nodes(op="output"))).args[0]
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    matches = []
    for m in _Matcher(pgraph, allow).match(gm.graph):
        values = {str(pn.target): gn for pn, gn in m.nodes_map.items() if pn.op == "placeholder"}
        nodes = sorted((gn for pn, gn in m.nodes_map.items() if pn.op not in ("placeholder", "output")), key=order.__getitem__)
        matches.append(Match(m.nodes_map[out], values, nodes))
    return matches


def insert(graph: Graph, replacement: Callable[..., Any], values: dict[str, Any], before: Node, like: Node | None = None,
           *, drop_modules: int = 0, same_value: bool = False, **flags: Any) -> Node:
    """Insert `replacement` (traced with `flags`; placeholders bound by name from `values`, nodes or
    literals) before `before`; its new nodes get their meta from `like` (see set_meta), the output
    `like`'s example value as it is if `same_value` (it computes the same thing)."""
    rgraph = trace(replacement, **flags)
    val_map: dict[Node, Any] = {p: values[str(p.target)] for p in rgraph.find_nodes(op="placeholder")}
    with graph.inserting_before(before):
        out = graph.graph_copy(rgraph, val_map)
    if not isinstance(out, Node):
        raise TypeError(f"{replacement.__name__} must return one value")
    for node in (val_map[n] for n in rgraph.nodes if n.op == "call_function"):
        if node is out and same_value and like is not None and "val" in like.meta:
            # Propagating fake values through a fused op (SDPA decomposes) costs far more than this.
            set_meta(node, like=like, drop_modules=drop_modules, propagate=False)
            node.meta["val"] = like.meta["val"]
        else:
            set_meta(node, like=like, drop_modules=drop_modules)
    return out


def inline(gm: GraphModule, replacement: Callable[..., Any], values: dict[str, Any], match: Match, **flags: Any) -> Node:
    """Put `replacement` in the place of `match` (see insert): its output takes the anchor's users;
    the matched nodes, and export's checks on them, are erased."""
    graph = gm.graph
    out = insert(graph, replacement, values, match.anchor, like=match.anchor, same_value=True, **flags)
    match.anchor.replace_all_uses_with(out)
    for node in reversed(match.nodes):
        for user in [u for u in node.users if u.target in _CHECKS]:
            graph.erase_node(user)
        graph.erase_node(node)
    return out


def set_meta(node: Node, like: Node | None = None, *, drop_modules: int = 0, propagate: bool = True) -> None:
    """Give a new node the module stack and source of `like` (less its `drop_modules` innermost
    modules) and, if `propagate`, an example value computed in the graph's fake mode, as export's
    nodes have."""
    if like is not None:
        for key in _INHERITED:
            if key in like.meta:
                node.meta[key] = like.meta[key]
        stack = like.meta.get("nn_module_stack")
        if stack and drop_modules:
            node.meta["nn_module_stack"] = dict(list(stack.items())[:-drop_modules])
    if not propagate:
        return
    if node.op == "get_attr":
        args: tuple[Any, ...] = ()
    else:
        args = tuple(node.all_input_nodes)
    for arg in args:
        if arg.op == "get_attr" and "val" not in arg.meta:
            set_meta(arg)
    mode = detect_fake_mode([a.meta.get("val") for a in args] or None)
    if node.op == "get_attr":
        tensor = get_tensor(node.graph.owning_module, node)
        mode = mode or detect_fake_mode([n.meta.get("val") for n in node.graph.nodes if n.op == "placeholder"])
        if mode is not None and tensor is not None:
            node.meta["val"] = mode.from_tensor(tensor, static_shapes=True)
        return
    if mode is None or not callable(node.target):
        return
    fake = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: n.meta.get("val"))
    try:
        with mode:
            node.meta["val"] = node.target(*fake[0], **fake[1])
    except Exception:  # noqa: BLE001 - meta is advisory; an op without a fake kernel leaves none
        node.meta.pop("val", None)


def get_tensor(gm: GraphModule | None, value: Any) -> torch.Tensor | None:
    """The plain tensor a get_attr node reads (parameter, buffer or constant), else None."""
    if gm is None or not isinstance(value, Node) or value.op != "get_attr":
        return None
    try:
        tensor = torch.fx.graph_module._get_attr(gm, str(value.target))
    except AttributeError:
        return None
    # A tensor subclass (a quantized weight) has its own layout: rewriting its values would lose it.
    return tensor if type(tensor) in (torch.Tensor, torch.nn.Parameter) else None


def _owner(gm: torch.nn.Module, qualname: str, create: bool = False) -> tuple[torch.nn.Module, str]:
    path, _, attr = qualname.rpartition(".")
    owner = gm
    for part in filter(None, path.split(".")):
        if not hasattr(owner, part) and create:
            owner.add_module(part, torch.nn.Module())
        owner = getattr(owner, part)
    return owner, attr


def add_tensor(gm: GraphModule, qualname: str, tensor: torch.Tensor, *, parameter: bool) -> str:
    """Register `tensor` as a parameter (weights) or buffer (derived constants) at `qualname`, or
    at `qualname_1`, `_2`, ... if that is taken; return the name used."""
    name, i = qualname, 0
    while True:
        owner, attr = _owner(gm, name, create=True)
        if not hasattr(owner, attr):
            break
        i += 1
        name = f"{qualname}_{i}"
    if parameter:
        owner.register_parameter(attr, torch.nn.Parameter(tensor, requires_grad=False))
    else:
        owner.register_buffer(attr, tensor)
    return name


def _empty(module: torch.nn.Module) -> bool:
    state = (*module._parameters.values(), *module._buffers.values(), *module._modules.values())
    return all(v is None for v in state) and not any(isinstance(v, torch.Tensor) for v in vars(module).values())


def release(gm: GraphModule, nodes: Iterable[Any]) -> int:
    """Erase those of `nodes` that are get_attr nodes left without users, delete the attributes
    that no get_attr reads any more, and modules left empty by that; return how many were deleted."""
    targets = set()
    for node in dict.fromkeys(n for n in nodes if isinstance(n, Node)):
        if node.op == "get_attr" and not node.users and not node._erased and node.graph is gm.graph:
            targets.add(str(node.target))
            gm.graph.erase_node(node)
    read = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    deleted = 0
    for qualname in sorted(targets - read):
        owner, attr = _owner(gm, qualname)
        delattr(owner, attr)
        deleted += 1
        path = qualname.rpartition(".")[0]
        while path and _empty(owner):
            parent, child = _owner(gm, path)
            delattr(parent, child)
            owner, path = parent, path.rpartition(".")[0]
    return deleted
