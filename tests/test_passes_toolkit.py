"""The passes' graph toolkit: one module-path syntax, weights dropped, example values, runs with a hook."""

from __future__ import annotations

import pytest
import torch

from fxbench.errors import PassOptionError
from fxbench.models import unlift
from fxbench.passes import create_pass, module_path, read_tensors
from fxbench.passes._graph import drop_weights, match_paths, path_matches, refresh_values, run, same_shape, set_tensor, within

aten = torch.ops.aten


@pytest.mark.parametrize(
    "path, pattern, expected",
    [
        ("encoder.layer.3", "encoder.layer.3", True),
        ("encoder.layer.3", "encoder.layer.*", True),
        ("encoder.layer.3.output", "encoder.layer.*", False),  # a pattern matches blocks, not what is inside them
        ("encoder.layer.3", "encoder.layer.0-3", True),
        ("encoder.layer.4", "encoder.layer.0-3", False),
        ("encoder.layer.12", "encoder.layer.1?", True),
        ("model.layers.2.self_attn", "**.self_attn", True),
        ("self_attn", "**.self_attn", True),  # ** stands for no parts too
        ("model.layers.2.self_attn.q_proj", "model.**.q_proj", True),
        ("model.layers.2.mlp", "**.self_attn", False),
        ("", "**", True),
    ],
)
def test_module_path_patterns(path, pattern, expected):
    assert path_matches(path, pattern) is expected


def test_within_takes_prefixes_and_patterns_alike():
    assert within("encoder.layer.3.output.dense", ["encoder.layer.3"])  # a plain path covers what is inside it
    assert within("encoder.layer.3.output.dense", ["encoder.layer.2-3"])
    assert within("encoder.layer.3.output.dense", ["encoder.layer.*.output"])
    assert not within("encoder.layer.3.output.dense", ["encoder.layer.0-2", "decoder"])
    assert not within("encoder.layer.30", ["encoder.layer.3"])  # a prefix is a whole part, not characters
    assert not within("", ["encoder"])  # the top level is inside no module
    assert match_paths(["encoder.layer.1-2", "pooler"], {"encoder.layer.0", "encoder.layer.1", "encoder.layer.2", "pooler", "x"}) == [
        "encoder.layer.1", "encoder.layer.2", "pooler"]


def test_options_that_name_modules_take_the_pattern_syntax(captured):
    cp = captured("bert")
    gm = cp.graph_module()
    result = create_pass("quantize-int8-weight-only:skip=encoder.layer.1-2.attention,pooler")(gm)
    assert result.modified
    for node in gm.graph.find_nodes(op="call_function", target=aten.linear.default):
        path = module_path(node)
        kept = path.startswith(("encoder.layer.1.attention.", "encoder.layer.2.attention.")) or path.startswith("pooler")
        assert (node.args[1].op == "get_attr") is kept, path

    fp16 = cp.graph_module()
    assert create_pass("to-fp16:keep=encoder.layer.*.intermediate,check_overflow=false")(fp16).modified
    for node in fp16.graph.find_nodes(op="call_function", target=aten.linear.default):
        want = torch.float32 if ".intermediate" in module_path(node) else torch.float16
        assert node.meta["val"].dtype == want, module_path(node)

    with pytest.raises(PassOptionError, match="stack='model.decoder' matches no block stacks"):
        create_pass("drop-layers:layers=0,stack=model.decoder")(cp.graph_module())
    dropped = cp.graph_module()
    assert create_pass("drop-layers:layers=0,stack=*.layer")(dropped).modified  # the stack named by a pattern


class _Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 4)
        self.head.weight = self.a.weight  # tied

    def forward(self, x):
        return self.head(self.a(x))


def test_drop_weights_keeps_what_is_read_and_removes_emptied_modules():
    gm = unlift(torch.export.export(_Tied().eval(), (torch.randn(2, 4),), strict=False))
    gm.graph.eliminate_dead_code()  # b is never called: nothing reads its weights any more
    assert not any(name.startswith("b.") for name in read_tensors(gm))
    assert set(read_tensors(gm)) == {"head.weight", "a.bias", "head.bias"}  # export reads the tied weight by one name
    tied = gm.head.weight
    assert drop_weights(gm) == 3  # b.weight, b.bias and a.weight, the name nothing reads
    assert not hasattr(gm, "b") and gm.head.weight is tied and not hasattr(gm.a, "weight")  # b held nothing else
    assert drop_weights(gm) == 0
    # A get_attr node without users is erased with its weight, unless another node reads it.
    bias = next(n for n in gm.graph.find_nodes(op="get_attr") if n.target == "head.bias")
    next(iter(bias.users)).replace_input_with(bias, next(n for n in gm.graph.find_nodes(op="get_attr") if n.target == "a.bias"))
    assert drop_weights(gm, [bias]) == 1 and not hasattr(gm.head, "bias")
    gm.recompile()
    gm(torch.randn(2, 4))


def test_run_calls_the_hook_on_every_node_and_values_refresh_after_a_weight_changes(captured):
    cp = captured("bert")
    gm = cp.graph_module()
    seen: dict[str, torch.Size] = {}
    outputs = run(gm, cp.inputs.tensors, lambda n, v: seen.update({n.name: v.shape}) if isinstance(v, torch.Tensor) else None)
    torch.testing.assert_close(outputs[0], cp.reference[0])
    linear = list(gm.graph.find_nodes(op="call_function", target=aten.linear.default))[-1]  # the pooler's
    assert module_path(linear) == "pooler.dense" and seen[linear.name][-1] == linear.meta["val"].shape[-1]

    # Half the output channels of the pooler: the weight's value and its readers' follow.
    weight, bias = linear.args[1], linear.args[2]
    for attr, half in ((weight, lambda t: t[: t.shape[0] // 2]), (bias, lambda t: t[: t.shape[0] // 2])):
        set_tensor(gm, str(attr.target), half(read_tensors(gm)[str(attr.target)]).clone())
    before = linear.meta["val"]
    assert refresh_values(gm, [weight, bias]) >= 3
    after = linear.meta["val"]
    assert after.shape[-1] == before.shape[-1] // 2 and same_shape(after[..., :1], before[..., :1])
    assert not same_shape(after, before)
    tanh = next(iter(linear.users))
    assert tanh.target == aten.tanh.default and same_shape(tanh.meta["val"], after)
