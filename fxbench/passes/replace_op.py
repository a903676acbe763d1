"""Swap one op for another: exact GELU for its tanh form, one activation for another, or your own function."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node

from fxbench.errors import PassOptionError
from fxbench.passes._graph import example_tensor, set_meta, within
from fxbench.passes.base import FxbenchPass, PassOptions, PassResult, module_path
from fxbench.passes.patterns import Match, find, insert, replace, trace_torch
from fxbench.passes.registry import register_pass

aten = torch.ops.aten
_MARK = "fxbench_replaced"


def _gelu_tanh_pattern(x):  # noqa: ANN001, ANN202
    # transformers' NewGELUActivation ("gelu_new", GPT-2) spells the tanh GELU out in this order.
    inner = aten.mul.Tensor(aten.add.Tensor(x, aten.mul.Tensor(aten.pow.Tensor_Scalar(x, 3.0), 0.044715)), math.sqrt(2.0 / math.pi))
    return aten.mul.Tensor(aten.mul.Tensor(x, 0.5), aten.add.Tensor(aten.tanh.default(inner), 1.0))


# Friendly names: the ATen ops that compute them, as export records them (with the op's default
# parameters). The first is also the replacement; every one is a pattern that `op=` matches.
_NAMED: dict[str, tuple[Callable[[Any], Any], ...]] = {
    "gelu": (lambda x: aten.gelu.default(x),),
    "gelu-tanh": (lambda x: aten.gelu.default(x, approximate="tanh"), _gelu_tanh_pattern),
    "relu": (lambda x: aten.relu.default(x),),
    "relu2": (lambda x: aten.pow.Tensor_Scalar(aten.relu.default(x), 2),),  # squared ReLU (Primer)
    "silu": (lambda x: aten.silu.default(x),),
    "sigmoid": (lambda x: aten.sigmoid.default(x),),
    "tanh": (lambda x: aten.tanh.default(x),),
    "mish": (lambda x: aten.mish.default(x),),
    "hardswish": (lambda x: aten.hardswish.default(x),),
    "hardsigmoid": (lambda x: aten.hardsigmoid.default(x),),
    "softplus": (lambda x: aten.softplus.default(x),),
    "elu": (lambda x: aten.elu.default(x, 1.0),),
    "leaky-relu": (lambda x: aten.leaky_relu.default(x),),
    "quick-gelu": (lambda x: aten.mul.Tensor(x, aten.sigmoid.default(aten.mul.Tensor(x, 1.702))),),
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
        raise ValueError(f"{option}={name!r} is no ATen op; give a name such as aten.gelu.default")
    return op


def _user_function(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {spec!r} ({exc}); give an importable package.module:function") from None
    if not callable(fn):
        raise ValueError(f"{spec!r} is not callable; give a function of the op's arguments")
    return fn


@dataclass(frozen=True)
class ReplaceOpOptions(PassOptions):
    op: str = ""  # what to replace: a friendly name (gelu) or an ATen op (aten.gelu.default)
    with_: str = ""  # a friendly name, an ATen op, or package.module:function
    modules: tuple[str, ...] = ()  # only inside these module paths (patterns: encoder.layer.*, encoder.layer.0-3)

    def validate(self) -> None:
        if not self.op or not self.with_:
            raise ValueError(f"needs op= and with=, e.g. replace-op:op=gelu,with=gelu-tanh; names: {_choices()}")
        if self.op == self.with_:
            raise ValueError(f"op and with are both {self.op!r}; nothing would change")
        if self.op.startswith(("aten.", "torch.ops.")):
            _aten(self.op, "op")
        elif self.op not in _NAMED:
            raise ValueError(f"unknown op {self.op!r}; choose one of {', '.join(_NAMED)}, aten.NAME[.OVERLOAD]")
        if self.with_.startswith(("aten.", "torch.ops.")):
            _aten(self.with_, "with")
        elif ":" in self.with_:
            _user_function(self.with_)
        elif self.with_ not in _NAMED and self.with_ not in _REPLACEMENT_ONLY:
            raise ValueError(f"unknown with={self.with_!r}; choose one of {_choices()}, or package.module:function")


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

    def _matches(self, gm: GraphModule) -> list[Match]:
        o = self.options
        if o.op.startswith(("aten.", "torch.ops.")):
            op = _aten(o.op, "op")
            targets = {getattr(op, name) for name in op.overloads()} if hasattr(op, "overloads") else {op}
            found = [Match(n, {}, [n]) for n in gm.graph.nodes if n.op == "call_function" and n.target in targets]
        else:
            found, seen = [], set()
            for fn in _NAMED[o.op]:
                for m in find(gm, fn):
                    if not seen & set(m.nodes):
                        seen |= set(m.nodes)
                        found.append(m)
        if o.modules:
            found = [m for m in found if within(module_path(m.anchor), o.modules)]
        return [m for m in found if not any(n.meta.get(_MARK) == self._mark for n in m.nodes)]

    @property
    def _mark(self) -> str:
        return f"{self.options.op}->{self.options.with_}"

    def _replacement(self, gm: GraphModule, match: Match, x: Node | None) -> Node:
        """Build the replacement of `match` (whose input is `x` for a friendly op=) before it."""
        o, out, mark = self.options, match.anchor, {_MARK: self._mark}
        args = (x,) if x is not None else tuple(out.args)
        if o.with_.startswith(("aten.", "torch.ops.")):
            with gm.graph.inserting_before(out):
                new = gm.graph.call_function(_aten(o.with_, "with"), args, {} if x is not None else dict(out.kwargs))
            new.meta.update(mark)
            set_meta(new, like=out)
            return new
        if ":" not in o.with_:
            fn = (_NAMED.get(o.with_) or (_REPLACEMENT_ONLY[o.with_],))[0]
            return insert(gm.graph, fn, {"x": args[0]}, out, like=out, meta=mark)
        values = tuple(example_tensor(a) if isinstance(a, Node) else a for a in args)
        if any(isinstance(a, Node) and v is None for a, v in zip(args, values)):
            raise PassOptionError(f"replace-op: {out.name} reads a value without a recorded shape; run replace-op earlier")
        nodes = [a for a in args if isinstance(a, Node)]
        graph = trace_torch(_user_function(o.with_), values)
        return insert(gm.graph, graph, {f"arg{i}": a for i, a in enumerate(nodes)}, out, like=out, meta=mark)

    def call(self, graph_module: GraphModule) -> PassResult:
        gm, o = graph_module, self.options
        matches = self._matches(gm)
        replaced: dict[Node, Node] = {}  # an earlier match's output may be a later one's input
        for m in matches:
            x = replaced.get(m.values["x"], m.values["x"]) if "x" in m.values else None
            new = self._replacement(gm, m, x)
            if "val" not in new.meta and "val" in m.anchor.meta:  # an op without a fake kernel
                new.meta["val"] = m.anchor.meta["val"]
            replace(m, new)
            replaced[m.anchor] = new
        if matches:
            where = sorted({module_path(m.anchor) or "(top level)" for m in matches})
            self.note(f"replaced {len(matches)} {o.op} with {o.with_} in {len(where)} modules ({where[0]}{', ...' if len(where) > 1 else ''})")
        return PassResult(gm, bool(matches))
