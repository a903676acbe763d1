"""Fold inference batch norms into the convolution or linear before them: new weights and bias, one op fewer."""

from __future__ import annotations

import itertools
import operator
from typing import Any

import torch
from torch.fx import GraphModule, Node

from fxbench.passes._graph import add_tensor, drop_weights, example_tensor, get_tensor, set_meta
from fxbench.passes.base import FxbenchPass, NoOptions, PassResult
from fxbench.passes.patterns import Match, find, is_check
from fxbench.passes.registry import register_pass

aten = torch.ops.aten

# Ops whose output channels are dim 0 of the weight and dim 1 of the output; (input, weight, bias)
# come first. aten.convolution is the core-ATen form (its `transposed` flag is checked).
_PRODUCERS = (
    aten.conv1d.default, aten.conv2d.default, aten.conv3d.default,
    aten.conv1d.padding, aten.conv2d.padding, aten.conv3d.padding,
    aten.convolution.default, aten.linear.default,
)
_NORMS = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)


def _producer_bn_pattern(x, weight, bias, a0, a1, a2, a3, a4, a5, start, end, bn_weight, bn_bias, mean, var, training,
                         momentum, eps, cudnn, *, producer: Any, flatten: bool, norm: Any):  # noqa: ANN001, ANN202
    """producer(x, weight, bias, ...), flattened to 2-D for a linear (LeViT's MLPLayerWithBN), then
    an inference batch norm over its channels."""
    extra = (a0, a1, a2, a3, a4, a5)[: len(producer._schema.arguments) - 3]
    y = producer(x, weight, bias, *extra)
    if flatten:
        y = aten.flatten.using_ints(y, start, end)
    if norm is aten.batch_norm.default:
        return norm(y, bn_weight, bn_bias, mean, var, training, momentum, eps, cudnn)
    return operator.getitem(norm(y, bn_weight, bn_bias, mean, var, momentum, eps), 0)


_VARIANTS = [dict(producer=p, flatten=f, norm=n) for p, n in itertools.product(_PRODUCERS, _NORMS)
             for f in ((False, True) if p is aten.linear.default else (False,))]


# Ops that read only the shape of their second argument: the producer keeps its shape, so they may
# read it (LeViT's reshape_as(batch_norm(flatten(linear)), linear)).
_SHAPE_READERS = {aten.reshape_as.default, aten.view_as.default, aten.expand_as.default}


def _allow(user: Node, node: Node) -> bool:
    if is_check(user, node):
        return True
    reads_shape = user.target in _SHAPE_READERS and user.args[0] is not node
    return node.target in _PRODUCERS and (reads_shape or user.target == aten.sym_size.int)


def _norm(match: Match) -> Node:
    return next(n for n in match.nodes if n.target in _NORMS)


def _folded(gm: GraphModule, match: Match) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The producer's new weight and bias, computed in float64, or None if the match does not fold."""
    v, producer = match.values, match.nodes[0]
    if v.get("training", False) is not False or not isinstance(v["eps"], (int, float)):
        return None  # a training batch norm normalizes with the batch's own statistics
    if producer.target is aten.convolution.default and v["a3"] is not False:  # transposed: weight is (in, out, ...)
        return None
    normalized = _norm(match).args[0]  # the producer, or its flatten
    out = example_tensor(normalized)
    if producer.target is aten.linear.default and (out is None or out.dim() != 2):
        return None  # BatchNorm1d on (N, C, L) normalizes dim 1, which a linear's features are not
    if normalized is not producer and (v["start"] != 0 or out.shape[-1] != example_tensor(producer).shape[-1]):
        return None  # the flatten must keep the features last
    weight, mean, var = (get_tensor(gm, v[k]) for k in ("weight", "mean", "var"))
    if weight is None or mean is None or var is None or not weight.is_floating_point():
        return None
    optional = {}
    for key in ("bias", "bn_weight", "bn_bias"):
        optional[key] = get_tensor(gm, v[key])
        if optional[key] is None and v[key] is not None:  # computed at run time: not a constant
            return None
    f64 = {k: t.detach().double() for k, t in dict(optional, weight=weight, mean=mean, var=var).items() if t is not None}
    scale = f64["var"].add(float(v["eps"])).rsqrt()
    if "bn_weight" in f64:
        scale = scale * f64["bn_weight"]
    new_weight = f64["weight"] * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    new_bias = (f64.get("bias", torch.zeros_like(scale)) - f64["mean"]) * scale + f64.get("bn_bias", torch.zeros_like(scale))
    return new_weight.to(weight.dtype), new_bias.to(weight.dtype)


@register_pass("fold-batchnorm")
class FoldBatchnorm(FxbenchPass):
    """Fold inference batch norms into the convolution or linear that feeds them.

    Matches conv1d/2d/3d (or aten.convolution, not transposed), or a linear with a 2-D output (or
    flattened to 2-D with its features last), followed by batch_norm with training=False (or
    _native_batch_norm_legit_no_training). Rules:
      1. w' = w * g / sqrt(var + eps) per output channel, b' = (b - mean) * g / sqrt(var + eps) + beta
         (b, g, beta default to 0, 1, 0), computed in float64 and stored in the weight's dtype;
      2. the producer must read its weight, bias and the norm's statistics from constants, and its
         output must feed nothing but the norm, save ops that read only its shape (else it is
         needed unnormalized);
      3. the producer keeps its node and takes new parameters, named as its own `weight` / `bias`
         where those names are free; the old weights and the norm's statistics are deleted when
         nothing else reads them.
    """

    Options = NoOptions
    in_place = True

    def call(self, graph_module: GraphModule) -> PassResult:
        graph, folded = graph_module.graph, 0
        for flags in _VARIANTS:
            for match in find(graph_module, _producer_bn_pattern, allow=_allow, **flags):
                new = _folded(graph_module, match)
                if new is None:
                    continue
                producer, stale = match.nodes[0], [match.values[k] for k in ("weight", "bias", "bn_weight", "bn_bias", "mean", "var")]
                owner = str(match.values["weight"].target).rpartition(".")[0]
                norm = _norm(match)
                match.anchor.replace_all_uses_with(norm.args[0])  # the producer, or its flatten
                for node in reversed(match.nodes[match.nodes.index(norm):]):
                    graph.erase_node(node)
                # Keep the producer's arguments, except weight and bias: drop the old ones first, so
                # that the new ones can take their names.
                producer.args = (producer.args[0], None, None, *producer.args[3:])
                producer.kwargs = {k: a for k, a in producer.kwargs.items() if k not in ("weight", "bias")}
                drop_weights(graph_module, stale + _num_batches_tracked(graph, match.values["mean"]))
                names = [add_tensor(graph_module, f"{owner}.{k}" if owner else k, t, parameter=True) for k, t in zip(("weight", "bias"), new)]
                with graph.inserting_before(producer):
                    attrs = [graph.get_attr(name) for name in names]
                for attr in attrs:
                    set_meta(attr)
                producer.args = (producer.args[0], *attrs, *producer.args[3:])
                folded += 1
        return PassResult(graph_module, folded > 0)


def _num_batches_tracked(graph: torch.fx.Graph, mean: Node) -> list[Node]:
    """The norm's step counter, read by export but used by nothing at inference: it goes with the norm."""
    target = str(mean.target).rpartition(".")[0] + ".num_batches_tracked"
    return [n for n in graph.find_nodes(op="get_attr") if n.target == target and not n.users]
