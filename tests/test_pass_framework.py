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
from fxbench.passes import registry
from fxbench.passes.registry import ENTRY_POINT_GROUP, _convert, builtin_modules, parse_options, register_pass

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


# One pass per file, named verb_object after the pass (STYLE.md): the whole built-in library, as
# the registry finds it (a new pass is a new file and nothing else).
PASS_MODULES = tuple(builtin_modules())


def test_one_pass_per_file_named_after_its_module():
    import pkgutil

    import fxbench.passes as package

    modules = sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                     if not m.name.startswith("_") and m.name not in ("base", "registry", "pipelines", "runner", "patterns"))
    assert tuple(modules) == PASS_MODULES and len(PASS_MODULES) >= 17
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


# ----- a new pass touches one file; plugins load by name ---------------------------------------

_THROWAWAY = '''"""A pass that exists only in a test: tanh(x) as 2 * sigmoid(2x) - 1."""

import torch

from fxbench.passes import FxbenchPass, PassResult, register_pass
from fxbench.passes.patterns import find, inline

aten = torch.ops.aten


def _tanh(x):
    return aten.tanh.default(x)


def _via_sigmoid(x):
    return aten.sub.Tensor(aten.mul.Tensor(aten.sigmoid.default(aten.mul.Tensor(x, 2.0)), 2.0), 1.0)


@register_pass("expand-tanh")
class ExpandTanh(FxbenchPass):
    """Rewrite tanh(x) as 2 * sigmoid(2x) - 1."""

    def call(self, gm):
        matches = find(gm, _tanh)
        for match in matches:
            inline(gm, _via_sigmoid, match.values, match)
        return PassResult(gm, bool(matches))
'''


def test_a_new_pass_is_one_file_that_pipelines_find_and_verify(tmp_path, monkeypatch, captured):
    import sys

    import fxbench.passes as package

    (tmp_path / "expand_tanh.py").write_text(_THROWAWAY, encoding="utf-8")
    # The file is all there is: put its folder beside fxbench/passes/ and forget it afterwards.
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
    monkeypatch.setattr(package, "expand_tanh", None, raising=False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_tried", set(registry._tried))
    monkeypatch.setitem(sys.modules, "fxbench.passes.expand_tanh", None)  # so that its import is undone after the test
    del sys.modules["fxbench.passes.expand_tanh"]

    assert "expand_tanh" in builtin_modules()
    assert get_pass("expand-tanh").__module__ == "fxbench.passes.expand_tanh"
    assert available_passes()["expand-tanh"].origin == "built-in"
    passes = build_passes("O1", ["expand-tanh"])  # an fp32 transform: after remove-noops, before the clean-up
    assert [p.name for p in passes] == ["remove-noops", "expand-tanh", "eliminate-common-subexpressions", "eliminate-dead-code"]
    cp = captured("bert")
    result = _run(cp.graph_module(), cp, passes)
    rec = result.records[1]
    assert rec.status == "applied", rec.message
    assert rec.op_delta["aten.tanh.default"] == -1 and rec.op_delta["aten.sigmoid.default"] == 1
    assert rec.parity.cosine > 0.99999
    # The pattern route gives new nodes example values, which the passes after them read.
    new = [n for n in result.module.graph.nodes if n.op == "call_function" and n.target == aten.sigmoid.default]
    assert new and all(isinstance(n.meta.get("val"), torch.Tensor) for n in new)
    assert not create_pass("expand-tanh")(result.module).modified


def test_plugins_are_imported_by_entry_point_name(tmp_path, monkeypatch):
    import importlib.metadata
    import sys

    (tmp_path / "fxbench_test_plugin_a.py").write_text(
        "from fxbench.passes import FxbenchPass, PassResult\n\n\n"
        "class PlugA(FxbenchPass):\n    \"\"\"Does nothing.\"\"\"\n\n    def call(self, gm):\n        return PassResult(gm, False)\n",
        encoding="utf-8",
    )
    (tmp_path / "fxbench_test_plugin_b.py").write_text("raise RuntimeError('plugin b is broken')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = {name: importlib.metadata.EntryPoint(name, f"fxbench_test_plugin_{name[-1]}:Plug{name[-1].upper()}", ENTRY_POINT_GROUP)
           for name in ("plug-a", "plug-b")}
    monkeypatch.setattr(registry, "_entry_points", lambda: eps)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_tried", set(registry._tried))
    monkeypatch.setattr(registry, "_plugin_errors", {})
    monkeypatch.setattr(registry, "_loaded", False)
    for name in ("fxbench_test_plugin_a", "fxbench_test_plugin_b"):
        monkeypatch.setitem(sys.modules, name, None)  # so that the imports below are undone after the test
        del sys.modules[name]

    assert get_pass("plug-a").name == "plug-a"
    assert "fxbench_test_plugin_b" not in sys.modules  # looking one up imports that one only
    with pytest.raises(UnknownPassError, match=r"unknown pass 'plug-b' \(its plugin failed to load: RuntimeError: plugin b is broken\)"):
        get_pass("plug-b")
    with pytest.raises(UnknownPassError, match="did you mean plug-a, plug-b"):
        get_pass("plug-c")
    listing = available_passes()  # `passes list`: everything
    assert listing["plug-a"].origin == "plugin (unknown distribution)" and "plug-b" not in listing
    assert registry.plugin_errors() == {"plug-b": "RuntimeError: plugin b is broken"}
