"""Rewrite eager attention (matmul, scale, mask, softmax, dropout, matmul) as one scaled_dot_product_attention."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch.fx import GraphModule, Node

from fxbench.passes._graph import example_tensor, same_shape
from fxbench.passes.base import FxbenchPass, NoOptions, PassResult
from fxbench.passes.patterns import Match, find, inline
from fxbench.passes.registry import register_pass

aten = torch.ops.aten


def _sdpa_pattern(query, key, value, attn_mask, scale, key_dim0, key_dim1, softmax_dim, softmax_dtype, cast_dtype,
                  dropout_p, train, *, divide: bool, masked: bool, cast: bool, dropout: bool):  # noqa: ANN001, ANN202
    """transformers' eager_attention_forward, as export records it; literals are placeholders, so
    that one pattern covers every scale, dim spelling and dtype, and the filter judges them."""
    scores = aten.matmul.default(query, aten.transpose.int(key, key_dim0, key_dim1))
    scores = aten.div.Tensor(scores, scale) if divide else aten.mul.Tensor(scores, scale)
    if masked:
        scores = aten.add.Tensor(scores, attn_mask)
    probs = aten.softmax.int(scores, softmax_dim, softmax_dtype)
    if cast:
        probs = aten.to.dtype(probs, cast_dtype)
    if dropout:
        probs = aten.dropout.default(probs, dropout_p, train)
    return aten.matmul.default(probs, value)


def _sdpa_replacement(query, key, value, attn_mask, scale, *, divide: bool, masked: bool, cast: bool, dropout: bool):  # noqa: ANN001, ANN202
    return aten.scaled_dot_product_attention.default(query, key, value, attn_mask if masked else None, scale=scale)


# Scale by division or multiplication, with or without an additive mask, a dtype cast of the
# probabilities, and inference dropout: the forms transformers' models take before and after
# remove-noops. Every variant is traced once (patterns.trace caches them).
_VARIANTS = [dict(zip(("divide", "masked", "cast", "dropout"), flags)) for flags in itertools.product((False, True), repeat=4)]


def _is_last_two(dims: tuple[Any, ...], ndim: int) -> bool:
    return all(isinstance(d, int) for d in dims) and sorted(d % ndim for d in dims) == [ndim - 2, ndim - 1]


def _bindings(match: Match, divide: bool, masked: bool, cast: bool, dropout: bool) -> dict[str, Any] | None:
    """The replacement's inputs if `match` is attention SDPA computes exactly, else None."""
    v = match.values
    q, k, val = match.val("query"), match.val("key"), match.val("value")
    if not all(isinstance(t, torch.Tensor) for t in (q, k, val)):
        return None
    dtype = q.dtype
    if not (dtype.is_floating_point and k.dtype == dtype and val.dtype == dtype and q.dim() == k.dim() == val.dim() == 4):
        return None
    if not _is_last_two((v["key_dim0"], v["key_dim1"]), 4) or v["softmax_dim"] not in (-1, 3):
        return None
    if v["softmax_dtype"] not in (None, dtype) or (cast and v["cast_dtype"] != dtype):
        return None
    if dropout and v["train"] is not False:  # training dropout draws random numbers: not ours to move
        return None
    scale = v["scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale == 0:
        return None
    if masked:
        mask, summed = match.val("attn_mask"), _add_node(match)
        if not isinstance(mask, torch.Tensor) or mask.dtype != dtype or summed is None:
            return None
        # The mask must broadcast into the scores, not widen them.
        if mask.dim() > 4 or not same_shape(example_tensor(summed), example_tensor(summed.args[0])):
            return None
    return {"query": v["query"], "key": v["key"], "value": v["value"], "attn_mask": v.get("attn_mask"),
            "scale": 1.0 / scale if divide else float(scale)}


def _add_node(match: Match) -> Node | None:
    adds = [n for n in match.nodes if n.target == aten.add.Tensor]
    found = adds[0] if len(adds) == 1 else None
    return found if example_tensor(found) is not None and example_tensor(found.args[0]) is not None else None


@register_pass("fuse-attention")
class FuseAttention(FxbenchPass):
    """Rewrite eager attention (matmul, scale, mask, softmax, matmul) as scaled_dot_product_attention.

    Matches softmax(q @ k.transpose(-2, -1) * s [+ mask]) [.to(dtype)] [dropout] @ v, the form of
    transformers' eager attention (BERT, GPT-2, Llama, ViT, Whisper, ...). Rules:
      1. q, k, v are 4-D and of one floating dtype; the transpose swaps k's last two dims and the
         softmax runs over the last dim, in that dtype (a cast after it must be to the same dtype);
      2. the scale is a Python number, by multiplication or division (SDPA gets s or 1/s);
      3. an additive mask must have the scores' dtype and broadcast into them (it is passed as
         SDPA's float attn_mask); boolean or widening masks are left alone;
      4. dropout must be the inference kind (train=False); training dropout is never moved;
      5. intermediate results used outside the pattern block the match (dtype checks that export
         inserts on them excepted: they go with it).
    """

    Options = NoOptions
    in_place = True

    def call(self, graph_module: GraphModule) -> PassResult:
        replaced: dict[Node, Node] = {}  # an earlier match's output may be a later one's input
        for flags in _VARIANTS:
            for match in find(graph_module, _sdpa_pattern, **flags):
                match.values = {k: replaced.get(v, v) if isinstance(v, Node) else v for k, v in match.values.items()}
                values = _bindings(match, **flags)
                if values is not None:
                    replaced[match.anchor] = inline(graph_module, _sdpa_replacement, values, match, **flags)
        return PassResult(graph_module, bool(replaced))
