"""Remove ops that do nothing at inference: dropout, identity copies and casts, x*1, x+0, captured dtype asserts."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node

from fxbench.passes._graph import ASSERTS, example_tensor
from fxbench.passes.base import FxbenchPass, PassOptions, PassResult
from fxbench.passes.registry import register_pass

aten = torch.ops.aten

_DROPOUTS = {aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default, aten.feature_alpha_dropout.default}
_ALIASES = {aten.detach.default, aten.alias.default, aten.lift_fresh_copy.default}
_COPIES = {aten.lift_fresh_copy.default, aten.clone.default}
_FULL = sys.maxsize


@dataclass(frozen=True)
class RemoveNoopsOptions(PassOptions):
    dropout: bool = True
    casts: bool = True
    arithmetic: bool = True
    asserts: bool = True


def _written_in_place(node: Node) -> bool:
    """Whether a user of `node` mutates it in place (`detach_`, `add_`, an out= argument): a copy
    feeding such a user is not a no-op, since removing it would mutate the copy's source instead."""
    for user in node.users:
        schema = getattr(user.target, "_schema", None)
        if schema is None or not schema.is_mutable:
            continue
        for arg, value in zip(schema.arguments, user.args):
            if value is node and arg.alias_info is not None and arg.alias_info.is_write:
                return True
        for arg in schema.arguments:
            if user.kwargs.get(arg.name) is node and arg.alias_info is not None and arg.alias_info.is_write:
                return True
    return False


def _same_tensor_type(node: Node, source: Any) -> bool:
    out, src = example_tensor(node), example_tensor(source)
    return out is not None and src is not None and out.dtype == src.dtype and out.device == src.device


@register_pass("remove-noops")
class RemoveNoops(FxbenchPass):
    """Remove ops that do nothing at inference time.

    Rules, each replacing the op by its input:
      1. dropout (and its feature / alpha forms) with train=False;
      2. detach, alias, lift_fresh_copy; clone without a new memory format, unless its input is a
         graph input (the copy then keeps the output from aliasing the caller's tensor); a copy
         (lift_fresh_copy, clone) whose result a user writes in place (DeBERTa's and T5's
         `torch.tensor(...).detach_()`) is kept, or the write would land on the copied constant;
      3. a cast (to, _to_copy) to the dtype and device its input already has, without copy=True or
         a memory format;
      4. full-range slices (start 0, end max, step 1);
      5. x * 1, x / 1, x + 0, x - 0 with a Python scalar, when the result keeps x's dtype;
      6. `_assert_tensor_metadata` checks that export inserts (erased: they pin the capture's dtypes,
         which later precision passes change on purpose).
    """

    Options = RemoveNoopsOptions
    in_place = True

    def _source(self, node: Node) -> Node | None:
        """The node that `node` can be replaced by, or None."""
        o, t, args, kwargs = self.options, node.target, node.args, node.kwargs
        if o.dropout and t in _DROPOUTS:
            train = args[2] if len(args) > 2 else kwargs.get("train", False)
            return args[0] if train is False else None
        if t in _COPIES and _written_in_place(node):
            return None
        if t in _ALIASES:
            return args[0]
        if t == aten.clone.default:
            fmt = kwargs.get("memory_format")
            src = args[0]
            keeps_format = fmt in (None, torch.preserve_format)
            return src if keeps_format and isinstance(src, Node) and src.op != "placeholder" else None
        if o.casts and t in (aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.to.device):
            if kwargs.get("copy") or kwargs.get("memory_format") not in (None, torch.preserve_format):
                return None
            if t == aten.to.dtype and (len(args) > 3 and args[3]):  # to.dtype(self, dtype, non_blocking, copy)
                return None
            return args[0] if _same_tensor_type(node, args[0]) else None
        if t == aten.slice.Tensor:
            start = args[2] if len(args) > 2 else kwargs.get("start", None)
            end = args[3] if len(args) > 3 else kwargs.get("end", None)
            step = args[4] if len(args) > 4 else kwargs.get("step", 1)
            return args[0] if start in (None, 0) and end in (None, _FULL) and step == 1 else None
        if o.arithmetic and t in (aten.mul.Tensor, aten.div.Tensor, aten.add.Tensor, aten.sub.Tensor) and len(args) == 2:
            x, other = args
            if not isinstance(other, (int, float)) or isinstance(other, bool) or kwargs.get("alpha", 1) != 1:
                return None
            neutral = 1 if t in (aten.mul.Tensor, aten.div.Tensor) else 0
            return x if other == neutral and _same_tensor_type(node, x) else None
        return None

    def call(self, graph_module: GraphModule) -> PassResult:
        graph = graph_module.graph
        removed = 0
        for node in list(graph.nodes):
            if node.op != "call_function":
                continue
            if self.options.asserts and node.target in ASSERTS and not node.users:
                graph.erase_node(node)
                removed += 1
                continue
            source = self._source(node)
            if isinstance(source, Node):
                node.replace_all_uses_with(source)
                graph.erase_node(node)
                removed += 1
        return PassResult(graph_module, removed > 0)
