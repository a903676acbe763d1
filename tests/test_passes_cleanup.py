"""remove-noops, eliminate-common-subexpressions, eliminate-dead-code: structure, numerics, idempotence, negatives."""

from __future__ import annotations

import pytest
import torch

from fxbench.models import unlift
from fxbench.passes import create_pass, op_histogram
from fxbench.passes._graph import drop_weights


def _export(module: torch.nn.Module, *args: torch.Tensor):
    return unlift(torch.export.export(module.eval(), args, strict=False))


def _apply(spec: str, gm):
    return create_pass(spec)(gm)


@pytest.mark.parametrize("family", ["bert", "gpt2", "whisper"])
def test_remove_noops_on_models(captured, family):
    cp = captured(family)
    gm = cp.graph_module()
    before = op_histogram(gm)
    assert before["aten.dropout.default"] > 0
    result = _apply("remove-noops", gm)
    after = op_histogram(gm)
    assert result.modified
    assert after["aten.dropout.default"] == 0 and after["aten._assert_tensor_metadata.default"] == 0
    torch.testing.assert_close(gm(**cp.inputs.tensors), cp.reference, rtol=0, atol=0)
    assert not _apply("remove-noops", gm).modified  # idempotent


class _NoopsAndNot(torch.nn.Module):
    def forward(self, x, i):
        a = torch.nn.functional.dropout(x, 0.5, training=False)  # removed
        b = a * 1  # removed
        c = b + 0.0  # removed
        d = x.to(torch.float32)  # removed: already fp32
        e = x.to(torch.float16)  # kept: a real cast
        f = i * 1.0  # kept: int * 1.0 promotes to float
        g = x[:, 0:]  # full slice: removed
        return c + d, e, f, g * 2


def test_remove_noops_rules_and_negatives():
    x, i = torch.randn(2, 4), torch.arange(8).reshape(2, 4)
    gm = _export(_NoopsAndNot(), x, i)
    ref = gm(x, i)
    _apply("remove-noops", gm)
    hist = op_histogram(gm)
    assert hist["aten.dropout.default"] == 0
    assert hist["aten.mul.Tensor"] == 2  # i * 1.0 (dtype-changing) and g * 2 stay
    assert hist["aten.add.Tensor"] == 1  # only c + d
    assert hist["aten.slice.Tensor"] == 0
    casts = hist["aten._to_copy.default"] + hist["aten.to.dtype"]
    assert casts == 1  # the fp16 cast stays
    torch.testing.assert_close(gm(x, i), ref, rtol=0, atol=0)


def test_remove_noops_keeps_training_dropout():
    class TrainDropout(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.dropout(x, 0.5, training=True)

    gm = _export(TrainDropout(), torch.randn(4, 4))
    assert not _apply("remove-noops", gm).modified
    # With dropout=false, even inference dropout stays.
    gm = _export(_NoopsAndNot(), torch.randn(2, 4), torch.ones(2, 4, dtype=torch.long))
    _apply("remove-noops:dropout=false", gm)
    assert op_histogram(gm)["aten.dropout.default"] == 1


class _Repeats(torch.nn.Module):
    def forward(self, x):
        a = torch.sin(x) + torch.sin(x)  # one sin after CSE
        r1 = torch.rand_like(x)  # random: never merged
        r2 = torch.rand_like(x)
        return a, r1 + r2


def test_cse_merges_pure_duplicates_but_not_random_ops():
    x = torch.randn(3, 3)
    gm = _export(_Repeats(), x)
    assert op_histogram(gm)["aten.sin.default"] == 2
    result = _apply("eliminate-common-subexpressions", gm)
    hist = op_histogram(gm)
    assert result.modified and hist["aten.sin.default"] == 1 and hist["aten.rand_like.default"] == 2
    torch.testing.assert_close(gm(x)[0], 2 * torch.sin(x))
    assert not _apply("eliminate-common-subexpressions", gm).modified


def test_cse_on_model_keeps_numerics(captured):
    cp = captured("llama")
    gm = cp.graph_module()
    n = len(gm.graph.nodes)
    assert _apply("eliminate-common-subexpressions", gm).modified
    assert len(gm.graph.nodes) < n
    torch.testing.assert_close(gm(**cp.inputs.tensors), cp.reference, rtol=0, atol=0)
    # The module still takes named inputs: CSE kept the pytree code generator.
    assert gm.graph._codegen.pytree_info is not None


class _DeadBranch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.used = torch.nn.Linear(4, 4)
        self.unused = torch.nn.Linear(4, 4)

    def forward(self, x):
        self.unused(x)  # result dropped: dead code, and its weights with it
        return self.used(x)


def test_dead_code_and_unused_weights_are_removed():
    x = torch.randn(2, 4)
    gm = _export(_DeadBranch(), x)
    ref = gm(x)
    params_before = sum(p.numel() for p in gm.parameters())
    result = _apply("eliminate-dead-code", gm)
    assert result.modified
    assert sum(p.numel() for p in gm.parameters()) == params_before - 20
    assert op_histogram(gm)["aten.linear.default"] == 1
    torch.testing.assert_close(gm(x), ref)
    assert not _apply("eliminate-dead-code", gm).modified
    assert drop_weights(gm) == 0


def test_dead_code_keeps_side_effects_and_inputs():
    class TwoInputs(torch.nn.Module):
        def forward(self, x, unused):
            return x * 2

    gm = _export(TwoInputs(), torch.randn(2, 2), torch.randn(2, 2))
    x = next(iter(gm.graph.find_nodes(op="placeholder")))
    with gm.graph.inserting_after(x):
        cond = gm.graph.call_function(torch.ops.aten.isfinite.default, (x,))
    with gm.graph.inserting_after(cond):
        check = gm.graph.call_function(torch.ops.aten._assert_async.msg, (cond, "x must be finite"))
    gm.recompile()
    assert not _apply("eliminate-dead-code", gm).modified  # the assert has no users but is a side effect
    assert check in gm.graph.nodes
    assert [n.target for n in gm.graph.nodes if n.op == "placeholder"] == ["x", "unused"]
