"""Rewrite patterns: plain functions of ATen ops, traced once and matched; replacements put in their place."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import Graph, GraphModule, Node
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.utils.matcher_utils import SubgraphMatcher

from fxbench.passes._graph import add_tensor, example_value, get_tensor, is_assert, set_meta

__all__ = ["Match", "find", "inline", "insert", "is_check", "replace", "trace", "trace_torch"]


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


_TORCH_TRACES: dict[tuple[Any, ...], Graph] = {}


def trace_torch(fn: Callable[..., Any], args: Sequence[Any]) -> Graph:
    """`fn(*args)` written in any PyTorch code, as the ATen ops export would record (make_fx,
    pre-dispatch, symbolic sizes): each tensor argument (only its dtype and rank count) is a
    placeholder named arg0, arg1, ...; the other arguments are baked in. Cached by `fn` and the
    arguments' kinds. Tensor constants `fn` makes stay in the graph's module (insert copies them)."""
    key = (fn, tuple((a.dtype, a.dim()) if isinstance(a, torch.Tensor) else repr(a) for a in args))
    if key not in _TORCH_TRACES:
        examples = [torch.randn([2 + i for i in range(a.dim())]).to(a.dtype) if isinstance(a, torch.Tensor) else a for a in args]
        positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

        def tensors_only(*tensors: torch.Tensor) -> Any:
            full = list(examples)
            for i, t in zip(positions, tensors):
                full[i] = t
            return fn(*full)

        graph = make_fx(tensors_only, tracing_mode="symbolic", pre_dispatch=True)(*[examples[i] for i in positions]).graph
        for i, p in enumerate(graph.find_nodes(op="placeholder")):
            p.target = f"arg{i}"
        _TORCH_TRACES[key] = graph
    return _TORCH_TRACES[key]


def is_check(user: Node, node: Node) -> bool:
    """Whether `user` only checks `node` (export's dtype asserts): it may go with a matched node."""
    return is_assert(user)


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
        return example_value(self.values.get(name))


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


def insert(graph: Graph, replacement: Callable[..., Any] | Graph, values: dict[str, Any], before: Node, like: Node | None = None,
           *, drop_modules: int = 0, same_value: bool = False, meta: dict[str, Any] | None = None, **flags: Any) -> Node:
    """Insert `replacement` (a function traced with `flags`, or a graph from trace_torch;
    placeholders bound by name from `values`, nodes or literals) before `before`; return its output.
    Its new nodes get `meta` and their module stack, source and example values as set_meta gives
    them from `like`; the output takes `like`'s example value as it is if `same_value` (it computes
    the same thing)."""
    rgraph = replacement if isinstance(replacement, Graph) else trace(replacement, **flags)
    val_map: dict[Node, Any] = {p: values[str(p.target)] for p in rgraph.find_nodes(op="placeholder")}
    with graph.inserting_before(before):
        for const in rgraph.find_nodes(op="get_attr"):  # a tensor the traced code made
            tensor = get_tensor(rgraph.owning_module, const, plain=False)
            val_map[const] = graph.get_attr(add_tensor(graph.owning_module, "_fxbench_constant", tensor, parameter=False))
        out = graph.graph_copy(rgraph, val_map)
    if not isinstance(out, Node):
        raise TypeError(f"{getattr(replacement, '__name__', 'the replacement')} must return one value")
    for node in (val_map[n] for n in rgraph.nodes if n.op in ("call_function", "get_attr")):
        node.meta = dict(meta or {})  # not the traced graph's own meta
        if node is out and same_value and like is not None and "val" in like.meta:
            # Propagating fake values through a fused op (SDPA decomposes) costs far more than this.
            set_meta(node, like=like, drop_modules=drop_modules, propagate=False)
            node.meta["val"] = like.meta["val"]
        else:
            set_meta(node, like=like, drop_modules=drop_modules)
    return out


def replace(match: Match, new: Node) -> None:
    """Put `new` in the place of `match`: it takes the anchor's users; the matched nodes, and
    export's checks on them, are erased."""
    graph = match.anchor.graph
    match.anchor.replace_all_uses_with(new)
    for node in reversed(match.nodes):
        for user in [u for u in node.users if is_assert(u)]:
            graph.erase_node(user)
        graph.erase_node(node)


def inline(gm: GraphModule, replacement: Callable[..., Any] | Graph, values: dict[str, Any], match: Match, *,
           meta: dict[str, Any] | None = None, **flags: Any) -> Node:
    """Put `replacement` in the place of `match` (see insert and replace) and return its output,
    which keeps the anchor's example value; the other new nodes get theirs computed."""
    out = insert(gm.graph, replacement, values, match.anchor, like=match.anchor, same_value=True, meta=meta, **flags)
    replace(match, out)
    return out
