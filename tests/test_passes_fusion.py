"""fold-batchnorm, merge-qkv, fuse-attention, fold-constants: structure, numerics, idempotence, negatives, re-export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from fxbench.errors import PassOptionError
from fxbench.models import capture, export_graph_module, load_model, unlift
from fxbench.numerics import Tolerance, compare
from fxbench.passes import available_passes, create_pass, op_histogram, run_pipeline
from fxbench.passes.registry import parse_options

aten = torch.ops.aten
FP32 = Tolerance.for_precision("fp32")
SDPA, MATMUL, SOFTMAX = "aten.scaled_dot_product_attention.default", "aten.matmul.default", "aten.softmax.int"
LINEAR, BATCH_NORM, SPLIT = "aten.linear.default", "aten.batch_norm.default", "aten.split_with_sizes.default"


def _export(module: nn.Module, *args: torch.Tensor):
    return unlift(torch.export.export(module.eval(), args, strict=False))


def _assert_parity(outputs, reference) -> None:
    """fp32 parity: the runner's tolerance (cosine, error relative to the output's scale) and
    an element-wise check."""
    parity = compare(outputs, reference)
    assert FP32.accepts(parity), parity.brief()
    torch.testing.assert_close(tuple(outputs), tuple(reference), rtol=1e-4, atol=1e-5)


def _params(gm) -> dict[str, int]:
    return {name: p.numel() for name, p in gm.named_parameters()}


def _apply(spec: str, gm):
    return create_pass(spec)(gm)


@pytest.fixture(scope="module")
def eager(tiny_dir):
    """family -> its tiny model captured with eager attention (the matmul/softmax form)."""
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = capture(load_model(str(tiny_dir(family)), attn_implementation="eager"))
        return cache[family]

    return get


@pytest.fixture(scope="module")
def levit(tmp_path_factory):
    """A tiny LeViT: conv + batch norm in its stem, linear + flatten + BatchNorm1d in every block,
    and a batch norm *before* its classifier's linear (not a foldable order)."""
    torch.manual_seed(0)
    cfg = transformers.LevitConfig(
        image_size=64, patch_size=16, hidden_sizes=[32, 48, 64], num_attention_heads=[1, 2, 2], depths=[1, 1, 1],
        key_dim=[8, 8, 8], num_labels=10, architectures=["LevitForImageClassification"],
    )
    model = transformers.LevitForImageClassification(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
    folder = tmp_path_factory.mktemp("levit")
    model.save_pretrained(folder)
    return capture(load_model(str(folder)))


def test_fusion_passes_are_registered_with_summaries_and_options():
    passes = available_passes()
    for name in ("fold-batchnorm", "merge-qkv", "fuse-attention", "fold-constants"):
        assert passes[name].origin == "built-in" and passes[name].cls.summary()
        assert passes[name].cls.precision == "fp32" and passes[name].cls.exact and passes[name].cls.in_place
    assert parse_options(passes["fold-constants"].cls, "max_mib=0.5").max_mib == 0.5
    assert create_pass("merge-qkv:across_modules=true,min_linears=3").options.min_linears == 3
    with pytest.raises(PassOptionError, match="max_mib must be >= 0"):
        create_pass("fold-constants:max_mib=-1")


# ----- fold-batchnorm ------------------------------------------------------------------------


def test_fold_batchnorm_on_resnet(captured):
    cp = captured("resnet")
    gm = cp.graph_module()
    before, params = op_histogram(gm), _params(gm)
    assert before[BATCH_NORM] == 16
    assert _apply("fold-batchnorm", gm).modified
    after = op_histogram(gm)
    assert after[BATCH_NORM] == 0 and after["aten.conv2d.default"] == 16
    assert not any("normalization" in n for n in _params(gm)) and not list(gm.buffers())  # stats and counters gone
    # Each BN's weight and bias (2C) went; each conv gained a bias (C).
    bn = sum(n for name, n in params.items() if "normalization" in name)
    assert sum(_params(gm).values()) == sum(params.values()) - bn // 2
    assert _params(gm)["model.resnet.embedder.embedder.convolution.bias"] == 16  # the conv's own names
    _assert_parity(gm(**cp.inputs.tensors), cp.reference)
    assert not _apply("fold-batchnorm", gm).modified
    ep = export_graph_module(gm, cp)
    _assert_parity(ep.module()(**cp.inputs.tensors), cp.reference)


def test_fold_batchnorm_on_levit_folds_conv_and_flattened_linear(levit):
    gm = levit.graph_module()
    before = op_histogram(gm)
    assert before[BATCH_NORM] == 27
    assert _apply("fold-batchnorm", gm).modified
    after = op_histogram(gm)
    # 4 stem convs and 22 linears (flattened to 2-D for BatchNorm1d); the classifier's norm comes
    # before its linear and stays.
    assert after[BATCH_NORM] == 1 and after["aten.flatten.using_ints"] == before["aten.flatten.using_ints"]
    assert [n for n in _params(gm) if "batch_norm" in n] == ["model.classifier.batch_norm.weight", "model.classifier.batch_norm.bias"]
    _assert_parity(gm(**levit.inputs.tensors), levit.reference)
    assert not _apply("fold-batchnorm", gm).modified


class _ConvForms(nn.Module):
    """Every producer form: biasless conv + non-affine norm, grouped conv with bias, conv1d,
    conv3d, padding='same', and a 2-D linear + BatchNorm1d."""

    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8, affine=False)
        self.c2, self.n2 = nn.Conv2d(8, 8, 3, groups=4, padding="same"), nn.BatchNorm2d(8)
        self.c3, self.n3 = nn.Conv1d(3, 4, 2), nn.BatchNorm1d(4)
        self.c4, self.n4 = nn.Conv3d(2, 4, 1), nn.BatchNorm3d(4)
        self.l5, self.n5 = nn.Linear(6, 5), nn.BatchNorm1d(5)
        gen = torch.Generator().manual_seed(1)
        for bn in (self.n1, self.n2, self.n3, self.n4, self.n5):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.3)

    def forward(self, img, seq, vol, vec):
        return self.n2(self.c2(self.n1(self.c1(img)))), self.n3(self.c3(seq)), self.n4(self.c4(vol)), self.n5(self.l5(vec))


def test_fold_batchnorm_every_producer_form():
    args = (torch.randn(2, 3, 8, 8), torch.randn(2, 3, 7), torch.randn(2, 2, 3, 3, 3), torch.randn(4, 6))
    model = _ConvForms().eval()
    gm = _export(model, *args)
    assert _apply("fold-batchnorm", gm).modified
    hist = op_histogram(gm)
    assert hist[BATCH_NORM] == 0 and hist["aten.conv2d.padding"] == 1 and hist[LINEAR] == 1
    assert not list(gm.buffers())
    with torch.no_grad():
        _assert_parity(gm(*args), model(*args))


class _NotFoldable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.up, self.bn_up = nn.ConvTranspose2d(3, 4, 2), nn.BatchNorm2d(4)
        self.lin, self.bn_seq = nn.Linear(6, 4), nn.BatchNorm1d(4)

    def forward(self, x, tokens):
        y = self.conv(x)
        seq = self.bn_seq(self.lin(tokens).transpose(1, 2))  # norm over dim 1 after a transpose: not the features' layout
        return self.bn(y) + y, self.bn_up(self.up(x)), seq  # the conv output is needed unnormalized too


def test_fold_batchnorm_negatives_shared_output_transposed_and_training():
    x, tokens = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 6)
    model = _NotFoldable().eval()
    gm = _export(model, x, tokens)
    assert not _apply("fold-batchnorm", gm).modified
    assert op_histogram(gm)[BATCH_NORM] == 3
    # A training-mode batch norm normalizes with the batch's own statistics: never folded.
    train = unlift(torch.export.export(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train(), (x,), strict=False))
    assert op_histogram(train)[BATCH_NORM] == 1
    assert not _apply("fold-batchnorm", train).modified


# ----- merge-qkv -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, groups, linears_gone",
    [("bert", 4, 8), ("llama", 8, 12), ("whisper", 6, 10)],  # Llama: q/k/v and gate/up; Whisper: q/v biased, k not
)
def test_merge_qkv_on_models(captured, family, groups, linears_gone):
    cp = captured(family)
    gm = cp.graph_module()
    before, params = op_histogram(gm), _params(gm)
    assert _apply("merge-qkv", gm).modified
    after = op_histogram(gm)
    assert before[LINEAR] - after[LINEAR] == linears_gone and after[SPLIT] == groups
    assert after["aten.view.default"] <= before["aten.view.default"]  # views of pieces became reshapes
    names = _params(gm)
    merged = {"bert": "model.encoder.layer.0.attention.self.query_key_value.weight",
              "llama": "model.model.layers.0.mlp.gate_up_proj.weight",
              "whisper": "model.model.decoder.layers.0.encoder_attn.k_v_proj.weight"}[family]
    assert names[merged] == 2 * names[merged.replace("k_v_proj", "out_proj").replace("gate_up_proj", "down_proj")] \
        if family != "bert" else names[merged] == 3 * 64 * 64
    # Only Whisper's cross-attention queries, which read the decoder and not the encoder, stay apart.
    alone = [n for n in names if n.endswith(("query.weight", "q_proj.weight", "gate_proj.weight"))]
    assert alone == ([f"model.model.decoder.layers.{i}.encoder_attn.q_proj.weight" for i in (0, 1)] if family == "whisper" else [])
    extra = sum(names.values()) - sum(params.values())
    if family == "whisper":
        # k_proj has no bias: its part of the merged bias is zeros (6 groups x 64 features).
        assert extra == 6 * 64
        old, new = dict(cp.graph_module().named_parameters()), dict(gm.named_parameters())
        path = "model.model.encoder.layers.0.self_attn."
        assert torch.equal(new[path + "q_k_v_proj.weight"], torch.cat([old[path + f"{c}_proj.weight"] for c in "qkv"]))
        assert torch.equal(new[path + "q_k_v_proj.bias"], torch.cat([old[path + "q_proj.bias"], torch.zeros(64), old[path + "v_proj.bias"]]))
    else:
        assert extra == 0
    _assert_parity(gm(**cp.inputs.tensors), cp.reference)
    assert not _apply("merge-qkv", gm).modified


def test_merge_qkv_across_modules_merges_whisper_cross_attention(captured):
    cp = captured("whisper")
    gm = cp.graph_module()
    assert _apply("merge-qkv:across_modules=true", gm).modified
    # The cross-attention k/v of both decoder layers read the encoder output: one group of four.
    assert op_histogram(gm)[SPLIT] == 5
    _assert_parity(gm(**cp.inputs.tensors), cp.reference)


class _Parallel(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.tied = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x, y):
        # a and b: different inputs; b and tied share y, but tied's weight is read again.
        return self.a(x), self.b(y), self.tied(y), self.tied.weight.sum()


def test_merge_qkv_negatives_different_inputs_dtypes_and_tied_weights():
    x, y = torch.randn(2, 8), torch.randn(2, 8)
    gm = _export(_Parallel(), x, y)
    assert not _apply("merge-qkv", gm).modified
    assert op_histogram(gm)[LINEAR] == 3
    # Two linears on one input, but of different dtypes: not merged (one GEMM has one dtype).
    two = nn.ModuleDict({"q": nn.Linear(8, 4), "k": nn.Linear(8, 4)})

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = two

        def forward(self, x):
            return self.m["q"](x), self.m["k"](x)

    gm = _export(Two(), x)
    gm.m.k.weight = nn.Parameter(gm.m.k.weight.detach().half())
    assert not _apply("merge-qkv", gm).modified
    gm.m.k.weight = nn.Parameter(gm.m.k.weight.detach().float())
    assert _apply("merge-qkv", gm).modified  # the same graph merges once the dtypes agree
    assert not _apply("merge-qkv:min_linears=3", _export(Two(), x)).modified


# ----- fuse-attention ------------------------------------------------------------------------


@pytest.mark.parametrize("family, layers", [("bert", 4), ("gpt2", 4), ("llama", 4)])
def test_fuse_attention_on_eager_models(eager, family, layers):
    cp = eager(family)
    gm = cp.graph_module()
    before = op_histogram(gm)
    assert before[SDPA] == 0 and before[SOFTMAX] == layers
    assert _apply("fuse-attention", gm).modified
    after = op_histogram(gm)
    assert after[SDPA] == layers and after[SOFTMAX] == 0
    assert before[MATMUL] - after[MATMUL] == 2 * layers
    _assert_parity(gm(**cp.inputs.tensors), cp.reference)
    assert not _apply("fuse-attention", gm).modified
    if family == "gpt2":  # (Llama's fused graph is exported in the ONNX test)
        export_graph_module(gm, cp)


def test_fuse_attention_after_remove_noops(eager):
    cp = eager("gpt2")
    gm = cp.graph_module()
    _apply("remove-noops", gm)  # no dropout, no casts, no dtype checks left: a shorter variant
    assert op_histogram(gm)["aten.dropout.default"] == 0
    assert _apply("fuse-attention", gm).modified and op_histogram(gm)[SDPA] == 4
    _assert_parity(gm(**cp.inputs.tensors), cp.reference)


class _Attention(nn.Module):
    def __init__(self, divide=False, masked=True, train_dropout=False, softmax_dim=-1, return_probs=False):
        super().__init__()
        self.divide, self.masked, self.train_dropout = divide, masked, train_dropout
        self.softmax_dim, self.return_probs = softmax_dim, return_probs

    def forward(self, q, k, v, mask):
        scores = torch.matmul(q, k.transpose(-1, -2))
        scores = scores / 4.0 if self.divide else scores * 0.25
        probs = F.softmax(scores + mask if self.masked else scores, dim=self.softmax_dim)
        probs = F.dropout(probs, 0.1, training=self.train_dropout)
        out = torch.matmul(probs, v)
        return (out, probs) if self.return_probs else out


def _qkv(*heads: int):
    """q, k, v of shape (2, *heads, 5, 8) and an additive mask that hides about a third of the keys."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, *heads, 5, 8, generator=gen) for _ in range(3))
    mask = torch.zeros(2, *(1 for _ in heads), 5, 5).masked_fill(torch.rand(2, *(1 for _ in heads), 5, 5, generator=gen) > 0.7, -1e9)
    return q, k, v, mask


@pytest.mark.parametrize("divide, masked", [(True, True), (False, False)], ids=["divided-masked", "multiplied-unmasked"])
def test_fuse_attention_scale_and_mask_forms(divide, masked):
    args = _qkv(2)
    model = _Attention(divide=divide, masked=masked)
    gm = _export(model, *args)
    assert _apply("fuse-attention", gm).modified
    (sdpa,) = gm.graph.find_nodes(op="call_function", target=aten.scaled_dot_product_attention.default)
    assert sdpa.kwargs["scale"] == 0.25 and (sdpa.args[3] is not None) == masked
    assert op_histogram(gm)[MATMUL] == 0
    _assert_parity((gm(*args),), (model(*args),))


@pytest.mark.parametrize(
    "model, args",
    [
        (_Attention(train_dropout=True), _qkv(2)),  # training dropout: random, never moved
        (_Attention(softmax_dim=-2), _qkv(2)),  # softmax over queries: not attention
        (_Attention(return_probs=True), _qkv(2)),  # the probabilities are an output too
        (_Attention(), _qkv()),  # 3-D, without heads
    ],
    ids=["training-dropout", "softmax-dim", "probs-used", "3d"],
)
def test_fuse_attention_negatives(model, args):
    gm = _export(model, *args)
    assert not _apply("fuse-attention", gm).modified
    assert op_histogram(gm)[SOFTMAX] == 1 and op_histogram(gm)[SDPA] == 0


# ----- fold-constants ------------------------------------------------------------------------


class _Constants(nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(8, 16, generator=gen))
        self.scale = nn.Parameter(torch.rand(8, generator=gen) + 0.5)
        self.register_buffer("ones", torch.ones(6, 6))
        self.register_buffer("steps", torch.zeros(()))
        self.kept = nn.Parameter(torch.randn(8, generator=gen))

    def forward(self, x):
        w = (self.weight * self.scale[:, None]).t()  # scaled, transposed weight
        mask = (1 - torch.tril(self.ones)) * -1e4  # a precomputed causal mask
        y = x @ w
        scores = y @ y.transpose(-1, -2) + mask
        self.steps.add_(1)  # written in place: its value at build time is not its value at run time
        acc = torch.ones(8) * 2  # constant, but updated in place below: a stored copy would accumulate
        acc.add_(y.sum())
        return scores, y + self.kept * self.steps + acc, self.kept.expand(x.shape[0], 8)


def test_fold_constants_weights_masks_and_side_effects():
    x = torch.randn(2, 6, 16)
    gm = _export(_Constants(), x)
    eager = _Constants().eval()  # same weights; `steps` counts calls in both
    before = op_histogram(gm)
    assert _apply("fold-constants", gm).modified
    after = op_histogram(gm)
    for op in ("aten.t.default", "aten.tril.default", "aten.rsub.Scalar", "aten.select.int"):
        assert after[op] == 0, op
    # The side effects stay (and what they write is computed at run time); a broadcast is not stored.
    assert after["aten.add_.Tensor"] == 2 and after["aten.ones.default"] == 1 and after["aten.expand.default"] == 1
    assert before["aten.mul.Tensor"] - after["aten.mul.Tensor"] == 2  # the weight scaling and the mask's scaling
    params, buffers = _params(gm), dict(gm.named_buffers())
    assert set(params) == {"kept"}  # weight and scale were only read by folded ops
    assert "ones" not in buffers and "steps" in buffers
    assert {tuple(b.shape) for n, b in buffers.items() if n.startswith("folded_")} == {(16, 8), (6, 6)}
    for _ in range(2):  # a second call: `steps` counts on, `acc` starts again from 2
        _assert_parity(gm(x), eager(x))
    assert not _apply("fold-constants", gm).modified


def test_fold_constants_size_limit_and_random_ops():
    x = torch.randn(2, 6, 16)
    assert not _apply("fold-constants:max_mib=0", _export(_Constants(), x)).modified
    # 104 bytes: the 32-byte column view of `scale` is folded, nothing weight-sized (512 bytes) is.
    gm = _export(_Constants(), x)
    assert _apply("fold-constants:max_mib=0.0001", gm).modified
    hist = op_histogram(gm)
    assert hist["aten.t.default"] == 1 and hist["aten.tril.default"] == 1 and hist["aten.unsqueeze.default"] == 0

    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return x @ (self.w + torch.rand_like(self.w)).t()

    gm = _export(Noisy(), torch.randn(2, 4))
    assert not _apply("fold-constants", gm).modified
    assert op_histogram(gm)["aten.rand_like.default"] == 1


@pytest.mark.parametrize(
    "family, gone",
    [
        ("whisper", {"aten.embedding.default": 1, "aten.arange.default": 2}),  # encoder positions: a fixed 1500-row lookup
        ("vit", {"aten.arange.default": 3, "aten.ge.Scalar": 1}),  # the all-visible mask of a fixed 17 tokens
        ("llama", {"aten.arange.default": 1, "aten.to.device": 1}),  # rotary frequencies
    ],
)
def test_fold_constants_on_models(captured, family, gone):
    cp = captured(family)
    gm = cp.graph_module()
    before, params = op_histogram(gm), sum(_params(gm).values())
    assert _apply("fold-constants", gm).modified
    after = op_histogram(gm)
    for op, count in gone.items():
        assert before[op] - after[op] == count, op
    if family == "whisper":  # the position table was read by nothing else: the parameter is gone
        assert sum(_params(gm).values()) == params - 1500 * 64
    if family == "llama":  # only a dtype check read inv_freq besides the folded cast: both went
        assert "model.model.rotary_emb.inv_freq" not in dict(gm.named_buffers())
    _assert_parity(gm(**cp.inputs.tensors), cp.reference)
    assert not _apply("fold-constants", gm).modified
    if family == "whisper":
        export_graph_module(gm, cp)


# ----- through the verified pipeline, and on to ONNX -----------------------------------------


def _pipeline(cp, specs):
    return run_pipeline(cp.graph_module(), [create_pass(s) for s in specs], inputs=dict(cp.inputs.tensors),
                        reference=cp.reference, output_names=cp.output_names)


def test_merge_qkv_on_minilm_through_run_pipeline(captured):
    cp = captured("minilm")
    result = _pipeline(cp, ["merge-qkv", "fuse-attention", "fold-constants"])
    merge, fuse, fold = result.records
    assert merge.status == "applied" and merge.op_delta[LINEAR] == -12 and merge.op_delta[SPLIT] == 6
    assert fuse.status == "unchanged" and fold.status == "unchanged"  # MiniLM is captured with SDPA already
    assert FP32.accepts(merge.parity) and merge.parity.max_rel_error < 1e-5
    assert FP32.accepts(result.parity)
    export_graph_module(result.module, cp)


def test_fusions_through_run_pipeline_then_reexport_and_onnx(eager, captured):
    import onnxruntime  # a core dependency: exporters use it
    for cp, specs in ((eager("llama"), ["merge-qkv", "fuse-attention", "fold-constants"]), (captured("resnet"), ["fold-batchnorm"])):
        result = _pipeline(cp, specs)
        assert [r.status for r in result.records] == ["applied"] * len(specs)
        assert all(FP32.accepts(r.parity) for r in result.records) and FP32.accepts(result.parity)
        ep = export_graph_module(result.module, cp)
        onnx_program = torch.onnx.export(ep, dynamo=True, verbose=False)
        session = onnxruntime.InferenceSession(onnx_program.model_proto.SerializeToString())
        feeds = {i.name: cp.inputs.tensors[i.name].numpy() for i in session.get_inputs()}
        assert FP32.accepts(compare(session.run(None, feeds), cp.reference))
