"""The pass framework: registry, options, pipelines, verification, rollback and records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest
import torch
from torch.fx import GraphModule

from fxbench.errors import PassOptionError, UnknownPassError, VerificationError
from fxbench.passes import (
    FxbenchPass,
    PassResult,
    available_passes,
    build_passes,
    create_pass,
    get_pass,
    output_names,
    replace_outputs,
    run_pipeline,
)
from fxbench.passes.registry import _convert, parse_options, register_pass

aten = torch.ops.aten


# ----- passes made for these tests (registered under test-only names) -------------------------


class GeluToRelu(FxbenchPass):
    """Deliberately wrong: replaces GELU by ReLU, which changes the model's answers."""

    def call(self, gm: GraphModule) -> PassResult:
        nodes = list(gm.graph.find_nodes(op="call_function", target=aten.gelu.default))
        for n in nodes:
            n.target, n.args, n.kwargs = aten.relu.default, (n.args[0],), {}
        return PassResult(gm, bool(nodes))


class Explodes(FxbenchPass):
    """Raises mid-way, after having changed the graph: the change must be undone."""

    def call(self, gm: GraphModule) -> PassResult:
        for n in list(gm.graph.find_nodes(op="call_function", target=aten.gelu.default)):
            n.target, n.args, n.kwargs = aten.relu.default, (n.args[0],), {}
        raise RuntimeError("unsupported op: aten.frobnicate")


class ClaimsInPlaceButCopies(FxbenchPass):
    """Declared in-place, returns a new module: the declaration is enforced."""

    in_place = True

    def call(self, gm: GraphModule) -> PassResult:
        return PassResult(GraphModule(gm, gm.graph), False)


class DropsLastOutput(FxbenchPass):
    """Changes which outputs the graph has (as extract does): the reference must follow."""

    exact = False

    def call(self, gm: GraphModule) -> PassResult:
        values = next(iter(gm.graph.find_nodes(op="output"))).args[0]
        if len(values) < 2:
            return PassResult(gm, False)
        replace_outputs(gm, list(values[:1]), output_names(gm)[:1])
        return PassResult(gm, True)


def _run(gm, cp, passes, **kw):
    return run_pipeline(
        gm, passes, inputs=dict(cp.inputs.tensors), reference=cp.reference, output_names=cp.output_names, **kw
    )


# ----- registry and options ------------------------------------------------------------------


def test_builtin_passes_are_registered_with_summaries():
    passes = available_passes()
    for name in ("remove-noops", "eliminate-dead-code", "eliminate-common-subexpressions"):
        assert name in passes and passes[name].origin == "built-in"
        assert passes[name].cls.summary()
    with pytest.raises(UnknownPassError, match="unknown pass 'remove-noop'.*did you mean remove-noops"):
        get_pass("remove-noop")


# One pass per file, named verb_object after the pass (STYLE.md): the whole built-in library.
PASS_MODULES = (
    "drop_layers", "eliminate_common_subexpressions", "eliminate_dead_code", "extract", "fold_batchnorm", "fold_constants",
    "fuse_attention", "merge_qkv", "prune_heads", "quantize_fp8", "quantize_int8_dynamic", "quantize_int8_static",
    "quantize_int8_weight_only", "remove_noops", "replace_op", "to_bf16", "to_fp16",
)


def test_one_pass_per_file_named_after_its_module():
    import pkgutil

    import fxbench.passes as package

    modules = sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                     if not m.name.startswith("_") and m.name not in ("base", "registry", "pipelines", "runner", "patterns"))
    assert tuple(modules) == PASS_MODULES
    builtins = {name: info for name, info in available_passes().items() if info.origin == "built-in"}
    by_module = {info.cls.__module__.rsplit(".", 1)[-1]: name for name, info in builtins.items()}
    assert len(by_module) == len(builtins)  # no module registers two passes
    assert by_module == {m: m.replace("_", "-") for m in PASS_MODULES}
    assert all(builtins[name].cls.summary() for name in by_module.values())


@dataclass(frozen=True)
class _Opts:
    layers: tuple[int, ...] = ()
    keep: tuple[str, ...] = ()
    mode: Literal["min-max", "percentile"] = "min-max"
    ratio: float = 0.5
    count: int | None = None
    flag: bool = False


class _WithOptions(FxbenchPass):
    """Options of every supported type."""

    Options = _Opts
    name = "with-options"

    def call(self, gm):
        return PassResult(gm, False)


def test_options_parse_every_type_and_list_syntax():
    opts = parse_options(_WithOptions, "layers=1,3-5,keep=layer_norm,softmax,mode=percentile,ratio=0.25,count=7,flag=yes")
    assert opts == _Opts(layers=(1, 3, 4, 5), keep=("layer_norm", "softmax"), mode="percentile", ratio=0.25, count=7, flag=True)
    assert parse_options(_WithOptions, "count=none").count is None
    assert hash(opts)  # frozen dataclasses are hashable, as PassManager constraints need


@pytest.mark.parametrize(
    "text, message",
    [
        ("mode=fast", r"option mode='fast' is invalid: 'fast' is not one of min-max, percentile"),
        ("ratio=half", r"option ratio='half' is invalid"),
        ("layers=5-1", r"runs backwards"),
        ("colour=red", r"has no option 'colour'; its options: layers, keep, mode, ratio, count, flag"),
        ("flag=maybe", r"'maybe' is not true or false"),
        ("justtext", r"'justtext' is not key=value"),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_option(text, message):
    with pytest.raises(PassOptionError, match=message) as info:
        parse_options(_WithOptions, text)
    assert "\n" not in str(info.value)


def test_register_pass_validates_name_and_options():
    with pytest.raises(ValueError, match="kebab case"):
        register_pass("Bad_Name")(_WithOptions)

    class Mutable(FxbenchPass):
        @dataclass
        class Options:
            x: int = 1

    with pytest.raises(TypeError, match="frozen dataclass"):
        register_pass("mutable-options")(Mutable)
    available_passes()
    with pytest.raises(ValueError, match="registered twice"):
        register_pass("remove-noops")(_WithOptions)


def test_convert_int_list_errors():
    with pytest.raises(ValueError):
        _convert("a-b", tuple[int, ...])


def test_pipeline_edits_add_replace_remove():
    names = [p.name for p in build_passes("O1")]
    assert names == ["remove-noops", "eliminate-common-subexpressions", "eliminate-dead-code"]
    assert [p.name for p in build_passes("O1", ["-eliminate-common-subexpressions"])] == ["remove-noops", "eliminate-dead-code"]
    edited = build_passes("O1", ["remove-noops:dropout=false"])
    assert len(edited) == 3 and edited[0].options.dropout is False
    # --passes X adds X to the default pipeline (as its help says); the empty pipeline runs X alone.
    added = [p.name for p in build_passes(None, ["merge-qkv"])]
    assert added == [p.name for p in build_passes("O2", ["merge-qkv"])] and "merge-qkv" in added and "fuse-attention" in added
    only = build_passes("none", ["eliminate-dead-code", "remove-noops"])
    assert [p.name for p in only] == ["eliminate-dead-code", "remove-noops"]
    assert [p.name for p in build_passes(None, [])] == [p.name for p in build_passes("O2")]  # the default pipeline
    with pytest.raises(PassOptionError, match="unknown pipeline 'O9'"):
        build_passes("O9")
    with pytest.raises(UnknownPassError):
        build_passes("O1", ["-no-such-pass"])


# ----- verification and rollback -------------------------------------------------------------


def test_wrong_pass_is_rolled_back_and_reported(captured):
    cp = captured("bert")
    gm = cp.graph_module()
    before = [n.target for n in gm.graph.nodes]
    result = _run(gm, cp, [GeluToRelu(), create_pass("eliminate-dead-code")])
    wrong, dce = result.records
    assert wrong.status == "rolled-back" and wrong.modified
    assert "cosine" in wrong.message and wrong.parity.cosine < wrong.tolerance.min_cosine
    # The graph is as it was: GELU is still there, ReLU is not.
    hist = [str(n.target) for n in result.module.graph.nodes]
    assert "aten.gelu.default" in hist and "aten.relu.default" not in hist
    assert dce.status in ("applied", "unchanged")
    assert result.tolerance.accepts(result.parity)
    assert [n.target for n in result.module.graph.nodes if n.op == "placeholder"] == [t for t in before if t in cp.input_names]


def test_strict_makes_a_broken_tolerance_an_error(captured):
    cp = captured("bert")
    with pytest.raises(VerificationError, match="pass .* broke the tolerance"):
        _run(cp.graph_module(), cp, [GeluToRelu()], strict=True)


def test_pass_that_raises_is_rolled_back_with_its_message(captured):
    cp = captured("bert")
    result = _run(cp.graph_module(), cp, [Explodes()])
    (rec,) = result.records
    assert rec.status == "failed" and "unsupported op: aten.frobnicate" in rec.message
    assert "aten.gelu.default" in [str(n.target) for n in result.module.graph.nodes]
    with pytest.raises(VerificationError, match="frobnicate"):
        _run(cp.graph_module(), cp, [Explodes()], strict=True)


def test_in_place_declaration_is_enforced(captured):
    cp = captured("bert")
    result = _run(cp.graph_module(), cp, [ClaimsInPlaceButCopies()])
    assert result.records[0].status == "failed"
    assert "declared in-place but returned a new module" in result.records[0].message


def test_records_carry_counts_histogram_delta_parity_and_time(captured):
    cp = captured("minilm")
    result = _run(cp.graph_module(), cp, build_passes("O1"))
    noops = result.records[0]
    assert noops.name == "remove-noops" and noops.status == "applied"
    assert noops.nodes_after < noops.nodes_before
    assert noops.op_delta["aten.dropout.default"] == -13  # 6 layers x 2 + embeddings
    assert noops.parity.max_abs_error == 0.0 and noops.seconds > 0
    assert noops.options == {"dropout": True, "casts": True, "arithmetic": True, "asserts": True}
    d = noops.to_dict()
    assert d["tolerance"]["min_cosine"] == pytest.approx(0.99999)
    # Idempotent pipeline: nothing left to do on a second run.
    again = _run(result.module, cp, build_passes("O1"))
    assert [r.status for r in again.records] == ["unchanged"] * 3


def test_surgery_rebases_the_reference_for_later_passes(captured):
    cp = captured("bert")
    result = _run(cp.graph_module(), cp, [DropsLastOutput(), create_pass("eliminate-dead-code")])
    surgery, dce = result.records
    assert surgery.status == "applied" and surgery.rebased
    assert result.output_names == ("last_hidden_state",)
    assert dce.status == "applied"  # the pooler became dead code
    assert result.rebased and result.parity.max_abs_error == 0.0
    assert len(result.module(**cp.inputs.tensors)) == 1
