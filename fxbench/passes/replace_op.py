"""Swap one op for another: exact GELU for its tanh form, one activation for another, or your own function."""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.fx import GraphModule, Node
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.utils.matcher_utils import SubgraphMatcher

from fxbench.errors import PassOptionError
from fxbench.passes._surgery import node_val, note, within
from fxbench.passes.base import FxbenchPass, PassResult, module_path
from fxbench.passes.registry import register_pass

aten = torch.ops.aten
_MARK = "fxbench_replaced"


def _gelu_tanh_pattern(x: torch.Tensor) -> torch.Tensor:
    # transformers' NewGELUActivation ("gelu_new", GPT-2) spells the tanh GELU out in this order.
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


# Friendly names: the functions that compute them. The first is also the replacement; every one is
# a pattern, traced to ATen, that `op=` matches (with the op's default parameters).
_NAMED: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], ...]] = {
    "gelu": (F.gelu,),
    "gelu-tanh": (functools.partial(F.gelu, approximate="tanh"), _gelu_tanh_pattern),
    "relu": (F.relu,),
    "relu2": (lambda x: F.relu(x) ** 2,),  # squared ReLU (Primer)
    "silu": (F.silu,),
    "sigmoid": (torch.sigmoid,),
    "tanh": (torch.tanh,),
    "mish": (F.mish,),
    "hardswish": (F.hardswish,),
    "hardsigmoid": (F.hardsigmoid,),
    "softplus": (F.softplus,),
    "elu": (F.elu,),
    "leaky-relu": (F.leaky_relu,),
    "quick-gelu": (lambda x: x * torch.sigmoid(1.702 * x),),
}
_REPLACEMENT_ONLY = {"identity": lambda x: x}


def _choices() -> str:
    return ", ".join([*_NAMED, *_REPLACEMENT_ONLY]) + ", aten.NAME[.OVERLOAD]"


def _aten(name: str, option: str) -> Any:
    """aten.gelu.default -> that overload; aten.gelu -> the packet (every overload)."""
    parts = name.removeprefix("torch.ops.").split(".")
    packet = getattr(aten, parts[1], None) if len(parts) in (2, 3) and parts[0] == "aten" else None
    op = getattr(packet, parts[2], None) if packet is not None and len(parts) == 3 else packet
    if op is None:
        raise PassOptionError(f"replace-op: {option}={name!r} is no ATen op; give a name such as aten.gelu.default")
    return op


def _user_function(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise PassOptionError(f"replace-op: cannot import {spec!r} ({exc}); give an importable package.module:function") from None
    if not callable(fn):
        raise PassOptionError(f"replace-op: {spec!r} is not callable; give a function of the op's arguments")
    return fn


@dataclass(frozen=True)
class ReplaceOpOptions:
    op: str = ""  # what to replace: a friendly name (gelu) or an ATen op (aten.gelu.default)
    with_: str = ""  # a friendly name, an ATen op, or package.module:function
    modules: tuple[str, ...] = ()  # only inside these module paths (patterns: encoder.layer.*)

    def __post_init__(self) -> None:
        if not self.op or not self.with_:
            raise PassOptionError(f"replace-op needs op= and with=, e.g. replace-op:op=gelu,with=gelu-tanh; names: {_choices()}")
        if self.op == self.with_:
            raise PassOptionError(f"replace-op: op and with are both {self.op!r}; nothing would change")
        if self.op.startswith(("aten.", "torch.ops.")):
            _aten(self.op, "op")
        elif self.op not in _NAMED:
            raise PassOptionError(f"replace-op: unknown op {self.op!r}; choose one of {', '.join(_NAMED)}, aten.NAME[.OVERLOAD]")
        if self.with_.startswith(("aten.", "torch.ops.")):
            _aten(self.with_, "with")
        elif ":" in self.with_:
            _user_function(self.with_)
        elif self.with_ not in _NAMED and self.with_ not in _REPLACEMENT_ONLY:
            raise PassOptionError(f"replace-op: unknown with={self.with_!r}; choose one of {_choices()}, or package.module:function")


@functools.lru_cache(maxsize=None)
def _pattern(fn: Callable[..., Any]) -> torch.fx.Graph:
    return make_fx(lambda x: fn(x), pre_dispatch=True)(torch.randn(2, 3)).graph  # one input, whatever fn's signature


def _trace(fn: Callable[..., Any], args: tuple[Any, ...]) -> GraphModule:
    """`fn` on `args` as an ATen graph (export's pre-dispatch IR), shape-generic: each tensor
    argument is an example of its dtype and rank with symbolic sizes."""
    examples = [torch.randn([2 + i for i in range(v.dim())]).to(v.dtype) if isinstance(v, torch.Tensor) else v for v in args]
    positions = [i for i, v in enumerate(args) if isinstance(v, torch.Tensor)]

    def tensors_only(*tensors: torch.Tensor) -> Any:
        full = list(examples)
        for i, t in zip(positions, tensors):
            full[i] = t
        return fn(*full)

    return make_fx(tensors_only, tracing_mode="symbolic", pre_dispatch=True)(*[examples[i] for i in positions])


def _inline(gm: GraphModule, traced: GraphModule, inputs: list[Node], anchor: Node, mark: str) -> Node:
    """Copy `traced`'s nodes before `anchor`, its placeholders bound to `inputs`; return its output."""
    env: dict[Node, Any] = dict(zip(traced.graph.find_nodes(op="placeholder"), inputs))
    result: Any = None
    with gm.graph.inserting_before(anchor):
        for n in traced.graph.nodes:
            if n.op == "placeholder":
                continue
            if n.op == "output":
                result = torch.fx.node.map_arg(n.args[0], env.__getitem__)
                break
            if n.op == "get_attr":  # a tensor constant the function made
                name = next(f"_fxbench_replace_constant_{i}" for i in range(1 << 20) if not hasattr(gm, f"_fxbench_replace_constant_{i}"))
                gm.register_buffer(name, getattr(traced, str(n.target)))
                env[n] = gm.graph.get_attr(name)
            else:
                env[n] = gm.graph.node_copy(n, env.__getitem__)
            env[n].meta.update({k: anchor.meta[k] for k in ("nn_module_stack", "stack_trace") if k in anchor.meta})
            env[n].meta[_MARK] = mark
    if not isinstance(result, Node):
        raise PassOptionError(f"replace-op: with={mark.partition('->')[2]} must return one tensor")
    return result


@register_pass("replace-op")
class ReplaceOp(FxbenchPass):
    """Replace an op by another (op=gelu,with=gelu-tanh), everywhere or in modules=PATTERNS.

    Rules:
      1. op= is a friendly name, matched as its ATen form with default parameters (gelu-tanh also
         matches GPT-2's spelled-out tanh GELU), or an ATen op (aten.gelu.default; aten.gelu for
         every overload), matched whatever its arguments;
      2. with= is a friendly name (applied to the op's first argument), an ATen op (called with the
         same arguments) or package.module:function, called with the op's positional arguments and
         traced into the graph as ATen ops, shape-generic;
      3. inserted nodes keep the replaced node's module path and carry a mark, so a second run of
         the same replacement changes nothing (another replacement may still match them);
      4. the model changes on purpose (exact=False): the record shows the deviation it brings.
    """

    Options = ReplaceOpOptions
    in_place = True
    exact = False

    def _matches(self, gm: GraphModule) -> list[tuple[Node, list[Node], list[Node]]]:
        """(the node computing the result, the pattern's inputs, every node of the match)."""
        found = []
        if self.options.op.startswith(("aten.", "torch.ops.")):
            op = _aten(self.options.op, "op")
            targets = {getattr(op, o) for o in op.overloads()} if hasattr(op, "overloads") else {op}
            found = [(n, list(n.args), [n]) for n in gm.graph.nodes if n.op == "call_function" and n.target in targets]
        else:
            seen: set[Node] = set()
            for fn in _NAMED[self.options.op]:
                for m in SubgraphMatcher(_pattern(fn), remove_overlapping_matches=True).match(gm.graph):
                    body = [gn for pn, gn in m.nodes_map.items() if pn.op == "call_function"]
                    if not seen & set(body):
                        seen |= set(body)
                        found.append((m.returning_nodes[0], list(m.placeholder_nodes), body))
        if self.options.modules:
            found = [f for f in found if within(module_path(f[0]), self.options.modules)]
        return [f for f in found if not any(n.meta.get(_MARK) == self._mark for n in f[2])]

    @property
    def _mark(self) -> str:
        return f"{self.options.op}->{self.options.with_}"

    def _replace(self, gm: GraphModule, out: Node, inputs: list[Node], traced: dict[Any, GraphModule]) -> Node:
        """Build the replacement of the match ending at `out` before it; return its result."""
        o, named_source = self.options, self.options.op in _NAMED
        args = tuple(inputs[:1]) if named_source else tuple(out.args)
        if o.with_.startswith(("aten.", "torch.ops.")):
            with gm.graph.inserting_before(out):
                new = gm.graph.call_function(_aten(o.with_, "with"), args, {} if named_source else dict(out.kwargs))
            new.meta.update({k: out.meta[k] for k in ("nn_module_stack", "stack_trace") if k in out.meta}, **{_MARK: self._mark})
            return new
        if ":" in o.with_:
            fn = _user_function(o.with_)
        else:
            fn, args = (_NAMED.get(o.with_) or (_REPLACEMENT_ONLY[o.with_],))[0], args[:1]
        values = tuple(node_val(a) if isinstance(a, Node) else a for a in args)
        if any(isinstance(a, Node) and v is None for a, v in zip(args, values)):
            raise PassOptionError(f"replace-op: {out.name} reads a value without a recorded shape; run replace-op earlier")
        key = (fn, tuple((v.dtype, v.dim()) if isinstance(v, torch.Tensor) else repr(v) for v in values))
        if key not in traced:
            traced[key] = _trace(fn, values)
        return _inline(gm, traced[key], [a for a in args if isinstance(a, Node)], out, self._mark)

    def call(self, graph_module: GraphModule) -> PassResult:
        gm, o = graph_module, self.options
        matches = self._matches(gm)
        traced: dict[Any, GraphModule] = {}
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        for out, inputs, body in matches:
            new = self._replace(gm, out, inputs, traced)
            if "val" in out.meta:
                new.meta.setdefault("val", out.meta["val"])
            out.replace_all_uses_with(new)
            for n in sorted(body, key=lambda b: -order[b]):  # users before what they use
                gm.graph.erase_node(n)
        if matches:
            where = sorted({module_path(m[0]) or "(top level)" for m in matches})
            note(self, f"replaced {len(matches)} {o.op} with {o.with_} in {len(where)} modules ({where[0]}{', ...' if len(where) > 1 else ''})")
        return PassResult(gm, bool(matches))
