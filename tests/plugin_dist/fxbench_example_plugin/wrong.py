"""A deliberately wrong pass: fxbench must roll it back (or, with --strict, refuse it)."""

import torch

from fxbench.passes import FxbenchPass, PassResult, register_pass

aten = torch.ops.aten


@register_pass("gelu-to-relu")
class GeluToRelu(FxbenchPass):
    """Replace GELU by ReLU: cheaper, and wrong, which the verification must catch."""

    def call(self, gm):
        nodes = gm.graph.find_nodes(op="call_function", target=aten.gelu.default)
        for node in nodes:
            node.target, node.args, node.kwargs = aten.relu.default, (node.args[0],), {}
        return PassResult(gm, bool(nodes))
