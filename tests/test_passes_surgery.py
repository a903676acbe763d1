"""Layer surgery: drop-layers, replace-op, extract, prune-heads against independently built eager references."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers.pytorch_utils import prune_linear_layer

from fxbench.errors import PassOptionError
from fxbench.models import export_graph_module, run_module, unlift
from fxbench.passes import PassContext, create_pass, get_pass, op_histogram, option_help, output_names, run_pipeline
from fxbench.passes.base import module_path
from fxbench.passes.registry import parse_options
from fxbench.jobs import inspect_program

aten = torch.ops.aten


# ----- helpers ---------------------------------------------------------------------------------


def _apply(spec: str, gm, cp=None):
    """Run one pass outside a pipeline; returns (modified, notes)."""
    p = create_pass(spec)
    p.context = PassContext(inputs=dict(cp.inputs.tensors)) if cp is not None else None
    result = p(gm)
    assert result.graph_module is gm
    return result.modified, (p.context.notes if p.context else [])


def _params(gm) -> int:
    return sum(p.numel() for p in gm.parameters())


def _eager(cp):
    """A private copy of the captured eager model (FlatOutputs wrapper), free to cut."""
    return copy.deepcopy(cp.eager)


def _run(module, cp, tensors=None):
    return run_module(module, tensors if tensors is not None else cp.inputs.tensors)


def _pipeline(gm, cp, specs):
    return run_pipeline(gm, [create_pass(s) for s in specs], inputs=dict(cp.inputs.tensors), reference=cp.reference,
                        output_names=cp.output_names)


def _export(module: torch.nn.Module, *args: torch.Tensor):
    return unlift(torch.export.export(module.eval(), args, strict=False))


def _paths(gm) -> set[str]:
    return {module_path(n) for n in gm.graph.nodes if n.op == "call_function"}


def _under(paths: set[str], prefix: str) -> bool:
    return any(p == prefix or p.startswith(prefix + ".") for p in paths)


def _roundtrip(gm, cp, tmp_path, shape=(3, 9)):
    """Re-export with the capture's dynamic shapes, save, load, and run at another shape."""
    program = export_graph_module(gm, cp)
    torch.export.save(program, tmp_path / "surgery.pt2")
    loaded = torch.export.load(tmp_path / "surgery.pt2").module()
    other = cp.make_inputs(*shape).tensors if cp.inputs.seq else cp.make_inputs(shape[0]).tensors
    torch.testing.assert_close(_run(loaded, cp, other), _run(gm, cp, other), rtol=1e-5, atol=1e-5)
    return loaded


# ----- drop-layers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, spec, stack, dropped",
    [
        ("bert", "drop-layers:layers=1-2", "encoder.layer", [1, 2]),
        ("llama", "drop-layers:layers=0,-1", "model.layers", [0, 3]),
        ("vit", "drop-layers:layers=3", "vit.layers", [3]),
    ],
)
def test_drop_layers_matches_eager_with_blocks_deleted(captured, family, spec, stack, dropped):
    cp = captured(family)
    gm = cp.graph_module()
    before = inspect_program(gm, family)
    eager = _eager(cp)
    blocks = eager.model.get_submodule(stack)
    block_params = sum(p.numel() for i in dropped for p in blocks[i].parameters())
    for i in sorted(dropped, reverse=True):
        del blocks[i]

    modified, notes = _apply(spec, gm, cp)
    assert modified and "dropped" in notes[0]
    after = inspect_program(gm, family)
    # Structure: the blocks' nodes and weights are gone, the others stay; `fxbench inspect` shows it.
    for i in range(len(blocks) + len(dropped)):
        assert (f"{stack}.{i}" in after.nodes_per_module) == (i not in dropped)
    assert after.nodes < before.nodes
    assert before.parameters - after.parameters == block_params == _params(cp.graph_module()) - _params(gm)
    # Numerics: the HF model with the same blocks deleted from its ModuleList.
    got, ref = _run(gm, cp), _run(eager, cp)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert (got[0] - cp.reference[0]).abs().max() > 1e-3  # and the model did change
    assert not _apply(spec, gm, cp)[0]  # idempotent: those blocks are gone


def test_drop_layers_on_whisper_needs_a_stack_and_keeps_the_other(captured):
    cp = captured("whisper")
    gm = cp.graph_module()
    with pytest.raises(PassOptionError, match=r"several block stacks: model.decoder.layers \(2 blocks\), model.encoder.layers"):
        _apply("drop-layers:layers=1", gm)
    with pytest.raises(PassOptionError, match=r"stack='middle' matches no block stacks; choose one of: model.decoder.layers"):
        _apply("drop-layers:layers=1,stack=middle", gm)
    encoder_nodes = sum(1 for n in gm.graph.nodes if module_path(n).startswith("model.encoder"))
    assert _apply("drop-layers:layers=1,stack=decoder", gm, cp)[0]
    assert not _under(_paths(gm), "model.decoder.layers.1") and _under(_paths(gm), "model.encoder.layers.1")
    assert sum(1 for n in gm.graph.nodes if module_path(n).startswith("model.encoder")) == encoder_nodes
    eager = _eager(cp)
    del eager.model.model.decoder.layers[1]
    torch.testing.assert_close(_run(gm, cp), _run(eager, cp), rtol=1e-4, atol=1e-5)


class _Widening(torch.nn.Module):
    """Numbered blocks that change the width: not residual, so none can be skipped."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)])

    def forward(self, x):
        for b in self.blocks:
            x = torch.relu(b(x))
        return x


def test_drop_layers_errors_and_non_residual_blocks(captured):
    cp = captured("bert")
    with pytest.raises(PassOptionError, match="needs the blocks to drop"):
        create_pass("drop-layers")
    with pytest.raises(PassOptionError, match=r"block 4 is out of range; encoder.layer has 4 blocks \(0-3\)"):
        _apply("drop-layers:layers=4", cp.graph_module())
    with pytest.raises(PassOptionError, match="would leave none"):
        _apply("drop-layers:layers=0-3", cp.graph_module())
    with pytest.raises(PassOptionError, match="no stack of numbered blocks"):
        _apply("drop-layers:layers=0", _export(torch.nn.Linear(3, 3), torch.randn(2, 3)))
    m = _Widening().eval()
    x = torch.randn(2, 4)
    gm = _export(m, x)
    nodes = len(gm.graph.nodes)
    with pytest.raises(PassOptionError, match="blocks.0 reads no input of its output's shape"):
        _apply("drop-layers:layers=0", gm)
    assert len(gm.graph.nodes) == nodes  # refused before touching the graph
    assert _apply("drop-layers:layers=1", gm)[0]  # 8 -> 8 keeps the width: its input goes on
    with torch.no_grad():
        torch.testing.assert_close(gm(x), torch.relu(m.blocks[2](torch.relu(m.blocks[0](x)))), rtol=0, atol=0)


def test_drop_layers_in_pipeline_reports_deviation_and_reexports(captured, tmp_path):
    cp = captured("bert")
    result = _pipeline(cp.graph_module(), cp, ["drop-layers:layers=2-3", "eliminate-dead-code"])
    drop, dce = result.records
    assert drop.status == "applied" and drop.rebased and "dropped encoder.layer.2, encoder.layer.3" in drop.message
    assert drop.parity.cosine < 0.9999 and drop.op_delta["aten.scaled_dot_product_attention.default"] == -2
    fresh = cp.graph_module()
    count = len(fresh.graph.nodes)
    _apply("eliminate-dead-code", fresh)  # the capture's own dead code (unused mask pieces)
    assert dce.nodes_before - dce.nodes_after == count - len(fresh.graph.nodes)  # drop-layers left none of its own
    assert result.rebased and result.parity.max_abs_error == 0.0
    assert result.eager_parity is not None and result.eager_parity.cosine < 0.9999  # the change, against eager
    _roundtrip(result.module, cp, tmp_path)
    saved = inspect_program(unlift(torch.export.load(tmp_path / "surgery.pt2")), "pt2")
    assert saved.parameters == inspect_program(result.module, "gm").parameters < inspect_program(cp.graph_module(), "x").parameters
    assert not any(m.startswith(("encoder.layer.2", "encoder.layer.3")) for m in saved.nodes_per_module)


# ----- replace-op ------------------------------------------------------------------------------


def test_replace_gelu_with_its_tanh_form(captured):
    cp = captured("bert")
    gm = cp.graph_module()
    modified, notes = _apply("replace-op:op=gelu,with=gelu-tanh", gm, cp)
    gelus = list(gm.graph.find_nodes(op="call_function", target=aten.gelu.default))
    assert modified and len(gelus) == 4 and all(n.kwargs.get("approximate") == "tanh" for n in gelus)
    assert {module_path(n) for n in gelus} == {f"encoder.layer.{i}.intermediate.intermediate_act_fn" for i in range(4)}
    assert "replaced 4 gelu with gelu-tanh" in notes[0]
    eager = _eager(cp)
    for layer in eager.model.encoder.layer:
        layer.intermediate.intermediate_act_fn = torch.nn.GELU(approximate="tanh")
    got = _run(gm, cp)
    torch.testing.assert_close(got, _run(eager, cp), rtol=1e-5, atol=1e-5)
    assert 0 < (got[0] - cp.reference[0]).abs().max() < 1e-2  # a small, real change
    assert not _apply("replace-op:op=gelu,with=gelu-tanh", gm)[0]  # nothing exact left to replace
    assert not _apply("replace-op:op=silu,with=relu", gm)[0]  # BERT has no SiLU
    # Another replacement may take the inserted nodes: back to exact GELU, and to eager's answers.
    assert _apply("replace-op:op=gelu-tanh,with=gelu", gm)[0]
    torch.testing.assert_close(_run(gm, cp), cp.reference, rtol=0, atol=0)


def test_replace_decomposed_gpt2_gelu_and_llama_silu_in_some_layers(captured):
    cp = captured("gpt2")
    gm = cp.graph_module()
    before = op_histogram(gm)
    assert _apply("replace-op:op=gelu-tanh,with=relu", gm, cp)[0]
    after = op_histogram(gm)
    assert before["aten.pow.Tensor_Scalar"] == 4 and after["aten.pow.Tensor_Scalar"] == 0
    assert after["aten.relu.default"] == 4 and after["aten.tanh.default"] == 0
    eager = _eager(cp)
    for block in eager.model.transformer.h:
        block.mlp.act = torch.nn.ReLU()
    torch.testing.assert_close(_run(gm, cp), _run(eager, cp), rtol=1e-5, atol=1e-5)
    assert not _apply("replace-op:op=gelu-tanh,with=relu", gm)[0]

    cp = captured("llama")
    gm = cp.graph_module()
    assert _apply("replace-op:op=silu,with=gelu,modules=model.layers.0-1", gm, cp)[0]
    silus = list(gm.graph.find_nodes(op="call_function", target=aten.silu.default))
    assert sorted(module_path(n) for n in silus) == ["model.layers.2.mlp.act_fn", "model.layers.3.mlp.act_fn"]
    eager = _eager(cp)
    for i in (0, 1):
        eager.model.model.layers[i].mlp.act_fn = torch.nn.GELU()
    torch.testing.assert_close(_run(gm, cp), _run(eager, cp), rtol=1e-5, atol=1e-5)


_USER_MODULE = '''
import torch

def shifted_swish(x):
    # uses a shape and a tensor constant, which must stay generic in the graph
    return x * torch.sigmoid(torch.tensor(1.5) * x) + 0.01 * x.shape[-1]
'''


def test_replace_op_with_a_user_function_and_aten_names(captured, tmp_path, monkeypatch):
    (tmp_path / "fxbench_surgery_acts.py").write_text(_USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    cp = captured("bert")
    gm = cp.graph_module()
    spec = "replace-op:op=aten.gelu.default,with=fxbench_surgery_acts:shifted_swish,modules=encoder.layer.1"
    assert _apply(spec, gm, cp)[0]
    assert op_histogram(gm)["aten.gelu.default"] == 3 and op_histogram(gm)["aten.sigmoid.default"] == 1
    sigmoid = next(iter(gm.graph.find_nodes(op="call_function", target=aten.sigmoid.default)))
    assert module_path(sigmoid) == "encoder.layer.1.intermediate.intermediate_act_fn"
    assert not _apply(spec, gm)[0]

    class Hand(torch.nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(1.5 * x) + 0.01 * x.shape[-1]

    eager = _eager(cp)
    eager.model.encoder.layer[1].intermediate.intermediate_act_fn = Hand()
    torch.testing.assert_close(_run(gm, cp), _run(eager, cp), rtol=1e-5, atol=1e-5)
    # The shape read stays symbolic: another batch and length run, and the program re-exports.
    other = cp.make_inputs(3, 7).tensors
    torch.testing.assert_close(_run(gm, cp, other), _run(eager, cp, other), rtol=1e-5, atol=1e-5)
    program = export_graph_module(gm, cp)
    torch.testing.assert_close(_run(program.module(), cp, other), _run(eager, cp, other), rtol=1e-5, atol=1e-5)

    gm = cp.graph_module()
    assert _apply("replace-op:op=aten.gelu.default,with=aten.silu.default", gm)[0]
    assert op_histogram(gm)["aten.silu.default"] == 4 and op_histogram(gm)["aten.gelu.default"] == 0


@pytest.mark.parametrize(
    "options, message",
    [
        ("op=gelu", r"needs op= and with="),
        ("op=gel,with=relu", r"unknown op 'gel'; choose one of gelu, gelu-tanh, relu"),
        ("op=gelu,with=swoosh", r"unknown with='swoosh'; choose one of .*identity.*package.module:function"),
        ("op=gelu,with=no_such_pkg.acts:f", r"cannot import 'no_such_pkg.acts:f'.*package.module:function"),
        ("op=aten.frobnicate.default,with=relu", r"op='aten.frobnicate.default' is no ATen op"),
        ("op=relu,with=relu", r"op and with are both 'relu'"),
    ],
)
def test_replace_op_option_errors_are_one_line(options, message):
    with pytest.raises(PassOptionError, match=message) as info:
        parse_options(get_pass("replace-op"), options)
    assert "\n" not in str(info.value)


def test_replace_op_takes_with_as_written_and_lists_it():
    opts = parse_options(get_pass("replace-op"), "op=gelu,with=gelu-tanh,modules=encoder.layer.*")
    assert (opts.op, opts.with_, opts.modules) == ("gelu", "gelu-tanh", ("encoder.layer.*",))
    assert [row[0] for row in option_help(get_pass("replace-op"))] == ["op", "with", "modules"]


def test_replace_op_in_pipeline_reports_its_deviation(captured):
    cp = captured("bert")
    result = _pipeline(cp.graph_module(), cp, ["replace-op:op=gelu,with=relu", "eliminate-dead-code"])
    rec = result.records[0]
    assert rec.status == "applied" and rec.rebased and rec.op_delta == {"aten.gelu.default": -4, "aten.relu.default": 4}
    assert rec.parity.max_abs_error > 0 and "replaced 4 gelu with relu" in rec.message
    assert result.eager_parity.max_abs_error == rec.parity.max_abs_error


# ----- extract ---------------------------------------------------------------------------------


def _hooked(eager, paths):
    """Run eager with forward hooks on `paths`; returns a function giving each module's output."""
    seen = {}
    for path in paths:
        def hook(mod, args, out, path=path):
            seen[path] = out[0] if isinstance(out, tuple) else getattr(out, "last_hidden_state", out)
        eager.model.get_submodule(path).register_forward_hook(hook)
    return seen


def test_extract_a_block_output_drops_what_follows(captured, tmp_path):
    cp = captured("bert")
    gm = cp.graph_module()
    params = _params(gm)
    modified, notes = _apply("extract:outputs=encoder.layer.1", gm, cp)
    assert modified and output_names(gm) == ("encoder.layer.1",)
    paths = _paths(gm)
    assert _under(paths, "encoder.layer.1") and not _under(paths, "encoder.layer.2") and not _under(paths, "pooler")
    eager = _eager(cp)
    blocks = eager.model.encoder.layer
    assert params - _params(gm) == sum(p.numel() for m in (blocks[2], blocks[3], eager.model.pooler) for p in m.parameters())
    seen = _hooked(eager, ["encoder.layer.1"])
    _run(eager, cp)
    (got,) = _run(gm, cp)
    torch.testing.assert_close(got, seen["encoder.layer.1"], rtol=0, atol=0)
    assert not _apply("extract:outputs=encoder.layer.1", gm)[0]
    _roundtrip(gm, cp, tmp_path)


def test_extract_pooler_and_glob_in_pipeline(captured):
    cp = captured("bert")
    result = _pipeline(cp.graph_module(), cp, ["extract:outputs=encoder.layer.2-3,pooler,last_hidden_state"])
    rec = result.records[0]
    assert rec.status == "applied" and rec.rebased and rec.parity.max_abs_error == 0.0
    assert result.output_names == ("encoder.layer.2", "encoder.layer.3", "pooler", "last_hidden_state")
    eager = _eager(cp)
    seen = _hooked(eager, ["encoder.layer.2", "encoder.layer.3", "pooler"])
    ref = _run(eager, cp)
    got = _run(result.module, cp)
    torch.testing.assert_close(got, (seen["encoder.layer.2"], seen["encoder.layer.3"], seen["pooler"], ref[0]), rtol=0, atol=0)


def test_extract_whisper_encoder_as_a_feature_extractor(captured, tmp_path):
    cp = captured("whisper")
    gm = cp.graph_module()
    assert _apply("extract:outputs=model.encoder.layers.*", gm, cp)[0]
    assert output_names(gm) == ("model.encoder.layers.0", "model.encoder.layers.1")
    gm = cp.graph_module()
    assert _apply("extract:outputs=model.encoder", gm, cp)[0]
    assert not _under(_paths(gm), "model.decoder") and not _under(_paths(gm), "proj_out")
    eager = _eager(cp)
    seen = _hooked(eager, ["model.encoder"])
    _run(eager, cp)
    torch.testing.assert_close(_run(gm, cp), (seen["model.encoder"],), rtol=0, atol=0)
    program = export_graph_module(gm, cp)  # decoder_input_ids is now unused, and still accepted
    assert [tuple(t.shape) for t in program.module()(**cp.inputs.tensors)] == [(2, 1500, 64)]


def test_extract_errors_name_the_fix(captured):
    cp = captured("bert")
    with pytest.raises(PassOptionError, match="needs the activations"):
        create_pass("extract")
    with pytest.raises(PassOptionError, match=r"no module or output 'encoder.layr.1'.*did you mean encoder.layer.1"):
        _apply("extract:outputs=encoder.layr.1", cp.graph_module())
    with pytest.raises(PassOptionError, match="same activation twice"):
        _apply("extract:outputs=pooler,pooler", cp.graph_module())


# ----- prune-heads -----------------------------------------------------------------------------


def _idx(heads, d):
    return torch.tensor([h * d + j for h in heads for j in range(d)])


def _prune_eager(eager, family, path, kept, heads, kv_heads):
    """Prune the HF attention module at `path` to the `kept` query heads with transformers'
    prune_linear_layer (GPT-2's Conv1D by hand), as an independent reference."""
    mod = eager.model.get_submodule(path)
    rep = heads // kv_heads
    if family in ("bert", "minilm"):
        d = mod.attention_head_size
        for name in ("query", "key", "value"):
            setattr(mod, name, prune_linear_layer(getattr(mod, name), _idx(kept, d)))
        out = eager.model.get_submodule(path.rsplit(".", 1)[0]).output
        out.dense = prune_linear_layer(out.dense, _idx(kept, d), dim=1)
    elif family == "gpt2":
        d = mod.head_dim
        cols = torch.cat([_idx(kept, d) + i * heads * d for i in range(3)])
        mod.c_attn.weight = torch.nn.Parameter(mod.c_attn.weight[:, cols])
        mod.c_attn.bias = torch.nn.Parameter(mod.c_attn.bias[cols])
        mod.c_attn.nf = len(cols)
        mod.c_proj.weight = torch.nn.Parameter(mod.c_proj.weight[_idx(kept, d), :])
        mod.split_size = len(kept) * d
    else:  # llama (grouped KV), whisper, vit
        d, groups = mod.head_dim, sorted({h // rep for h in kept})
        mod.q_proj = prune_linear_layer(mod.q_proj, _idx(kept, d))
        mod.k_proj = prune_linear_layer(mod.k_proj, _idx(groups, d))
        mod.v_proj = prune_linear_layer(mod.v_proj, _idx(groups, d))
        name = "out_proj" if hasattr(mod, "out_proj") else "o_proj"
        setattr(mod, name, prune_linear_layer(getattr(mod, name), _idx(kept, d), dim=1))
        if hasattr(mod, "num_heads"):
            mod.num_heads = len(kept)  # Whisper's key/value views read it


@pytest.mark.parametrize(
    "family, spec, expect",
    [
        ("bert", "prune-heads:heads=0:1+3,2:0", {"encoder.layer.0.attention.self": [0, 2], "encoder.layer.2.attention.self": [1, 2, 3]}),
        ("gpt2", "prune-heads:heads=1:0+2", {"transformer.h.1.attn": [1, 3]}),  # fused c_attn
        ("llama", "prune-heads:heads=0:2+3,3:0-1", {"model.layers.0.self_attn": [0, 1], "model.layers.3.self_attn": [2, 3]}),
        ("whisper", "prune-heads:heads=1:1-2,stack=decoder,attention=encoder_attn", {"model.decoder.layers.1.encoder_attn": [0, 3]}),
        ("vit", "prune-heads:heads=*:3", {f"vit.layers.{i}.attention": [0, 1, 2] for i in range(4)}),
    ],
)
def test_prune_heads_matches_transformers_pruning(captured, family, spec, expect):
    cp = captured(family)
    gm = cp.graph_module()
    params = _params(gm)
    modified, notes = _apply(spec, gm, cp)
    assert modified and "pruned heads" in notes[0]
    eager = _eager(cp)
    for path, kept in expect.items():
        mod = eager.model.get_submodule(path)
        cfg = eager.model.config
        heads = getattr(mod, "num_heads", None) or getattr(mod, "num_attention_heads", None) or cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        _prune_eager(eager, family, path, kept, heads, kv)
    # Structure: the projections shrank by exactly what transformers' pruning removes.
    assert params - _params(gm) == _params(cp.eager) - _params(eager) > 0
    # Numerics: the same as the pruned HF model, and different from the unpruned one.
    got = _run(gm, cp)
    torch.testing.assert_close(got, _run(eager, cp), rtol=1e-4, atol=1e-5)
    assert (got[0] - cp.reference[0]).abs().max() > 1e-4
    assert not _apply(spec, gm, cp)[0]  # idempotent: heads are named in the captured numbering


def test_prune_heads_rewrites_literal_head_counts(captured):
    cp = captured("whisper")  # Whisper's key/value views carry the head count (4) as a literal
    gm = cp.graph_module()
    before = {n.name: n.args[1] for n in gm.graph.nodes if n.target == aten.view.default and module_path(n) == "model.encoder.layers.0.self_attn"}
    assert sum(4 in shape for shape in before.values()) == 2
    assert _apply("prune-heads:heads=0:0,stack=encoder", gm, cp)[0]
    after = {n.name: n.args[1] for n in gm.graph.nodes if n.name in before}
    assert sum(3 in shape for shape in after.values()) == 2 and not any(4 in shape for shape in after.values())
    # The recorded shapes follow, so a second pass reads 3 heads.
    sdpa = next(n for n in gm.graph.nodes if n.target == aten.scaled_dot_product_attention.default)
    assert sdpa.meta["val"].shape[1] == 3
    # The rewritten program re-exports with its dynamic shapes and runs at another decoder length.
    other = cp.make_inputs(3, 9).tensors
    torch.testing.assert_close(_run(export_graph_module(gm, cp).module(), cp, other), _run(gm, cp, other), rtol=1e-5, atol=1e-5)


def test_prune_heads_ratio_on_minilm_removes_the_lowest_norm_heads(captured):
    cp = captured("minilm")  # real weights: 6 layers of 12 heads of 32
    result = _pipeline(cp.graph_module(), cp, ["drop-layers:layers=4-5", "prune-heads:ratio=0.25", "eliminate-dead-code"])
    drop, prune, dce = result.records
    assert drop.status == prune.status == dce.status == "applied" and prune.rebased
    eager = _eager(cp)
    del eager.model.encoder.layer[5], eager.model.encoder.layer[4]
    for i, layer in enumerate(eager.model.encoder.layer):
        att, d = layer.attention, 32
        norms = torch.zeros(12)
        for lin in (att.self.query, att.self.key, att.self.value):
            norms += lin.weight.detach().reshape(12, d, -1).pow(2).sum((1, 2))
        norms += att.output.dense.weight.detach().reshape(-1, 12, d).pow(2).sum((0, 2))
        kept = sorted(norms.argsort()[3:].tolist())  # 25% of 12: the 3 weakest go
        assert f"encoder.layer.{i}.attention.self -" in prune.message
        _prune_eager(eager, "minilm", f"encoder.layer.{i}.attention.self", kept, 12, 12)
    got = _run(result.module, cp)
    torch.testing.assert_close(got, _run(eager, cp), rtol=1e-4, atol=1e-4)
    assert inspect_program(result.module, "minilm").parameters == _params(eager)
    again = _pipeline(result.module, cp, ["prune-heads:ratio=0.25"])
    assert again.records[0].status == "unchanged"


class _BiasedAttention(torch.nn.Module):
    """Attention whose scores get a learned bias: per head (as T5's), which prune-heads refuses,
    or shared by all heads, which it keeps."""

    def __init__(self, per_head: bool):
        super().__init__()
        self.q, self.k, self.v, self.o = (torch.nn.Linear(16, 16) for _ in range(4))
        self.bias = torch.nn.Parameter(torch.randn(1, 4 if per_head else 1, 5, 5))

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = (f(x).view(b, s, -1, 4).transpose(1, 2) for f in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)
        return x + self.o(a.transpose(1, 2).reshape(b, s, -1))


class _Stack(torch.nn.Module):
    def __init__(self, *blocks: torch.nn.Module):
        super().__init__()
        self.layers = torch.nn.ModuleList(blocks)

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return x


class _Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)

    def forward(self, x):
        return x + torch.relu(self.fc(x))


def test_prune_heads_negative_cases(captured):
    with pytest.raises(PassOptionError, match="heads=LAYER:HEAD"):
        create_pass("prune-heads")
    with pytest.raises(PassOptionError, match="one of them"):
        create_pass("prune-heads:heads=0:1,ratio=0.5")
    with pytest.raises(PassOptionError, match=r"'0-1' is not LAYER:HEAD\+HEAD"):
        create_pass("prune-heads:heads=0-1")
    with pytest.raises(PassOptionError, match="ratio=1.5 must lie between 0 and 1"):
        create_pass("prune-heads:ratio=1.5")
    cp = captured("llama")
    with pytest.raises(PassOptionError, match=r"shares each KV head among 2 query heads; prune whole groups \(0:0\+1\)"):
        _apply("prune-heads:heads=0:1", cp.graph_module())
    cp = captured("bert")
    with pytest.raises(PassOptionError, match=r"block 7 is out of range"):
        _apply("prune-heads:heads=7:0", cp.graph_module())
    with pytest.raises(PassOptionError, match=r"has 4 heads \(0-3\), not 4"):
        _apply("prune-heads:heads=0:4", cp.graph_module())
    gm = cp.graph_module()
    with pytest.raises(PassOptionError, match="every head of encoder.layer.1.attention.self"):
        _apply("prune-heads:heads=0:1,1:0-3", gm)
    assert gm.get_submodule("model.encoder.layer.0.attention.self.query").weight.shape == (64, 64)  # layer 0 untouched too
    x = torch.randn(2, 5, 16)
    with pytest.raises(PassOptionError, match="adds a per-head value"):
        _apply("prune-heads:heads=0:1", _export(_Stack(_BiasedAttention(per_head=True)), x))
    m = _Stack(_BiasedAttention(per_head=False)).eval()
    gm = _export(m, x)
    assert _apply("prune-heads:heads=0:1", gm)[0]
    assert gm.get_submodule("layers.0.q").weight.shape == (12, 16)
    # By hand: attention over heads 0, 2, 3 only, through the matching columns of o.
    blk, keep = m.layers[0], _idx([0, 2, 3], 4)
    with torch.no_grad():
        q, k, v = (F.linear(x, f.weight[keep], f.bias[keep]).view(2, 5, 3, 4).transpose(1, 2) for f in (blk.q, blk.k, blk.v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=blk.bias).transpose(1, 2).reshape(2, 5, 12)
        torch.testing.assert_close(gm(x), x + F.linear(a, blk.o.weight[:, keep], blk.o.bias), rtol=1e-5, atol=1e-6)
    with pytest.raises(PassOptionError, match="no attention found in layers"):
        _apply("prune-heads:ratio=0.5", _export(_Stack(_Mlp(), _Mlp()), x))
