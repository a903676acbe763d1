"""Transformer fusions for ONNX Runtime on fxbench's exports: onnxscript's ORT fusions plus EmbedLayerNormalization."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
import onnx_ir as ir
import onnxscript.rewriter.ort_fusions._core as _ort_fusions_core
from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions import optimize_for_ort

__all__ = [
    "CONTRIB_OPS",
    "EmbedLayerNormFusion",
    "contrib_op_counts",
    "embed_layer_norm_rules",
    "fold_dequantized_weight_transposes",
    "fuse_for_ort",
    "fuse_group_query_attention",
    "has_dequantized_weights",
]

# The com.microsoft ops that the fusions produce, counted in the fused graph for the report.
CONTRIB_OPS = (
    "Attention",
    "MultiHeadAttention",
    "GroupQueryAttention",
    "EmbedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "RotaryEmbedding",
    "FusedMatMul",
)


class EmbedLayerNormFusion(pattern.RewriteRuleClassBase):
    """Word + position (+ segment) embedding lookups, summed and layer-normalized, into ORT's
    EmbedLayerNormalization.

    Rules:
    1. The three lookups are Gathers on axis 0 of constant [vocab, hidden] tables; the sum may add
       them in any order ((word + segment) + position, (word + position) + segment, commuted).
    2. The position ids are passed to the fused op as they are (cast to int32), so positions that
       a model computes (offsets, padding-aware ids) stay exact; they must be [batch, seq] or
       [1, seq] over the same sequence as the input ids.
    3. The embedding sum stays available (the op's `embedding_sum` output) for models whose first
       block also takes it as a residual (GPT-2 style).
    4. LayerNormalization over the last axis, gamma and beta [hidden], fp32 statistics.

    onnxscript's ORT fusions have no rule for this op, and ORT's own transformer optimizer matches
    only the TorchScript exporter's embedding subgraph, so neither fires on a dynamo export.
    """

    def __init__(self, name: str, *, segment: bool, position_last: bool = True):
        super().__init__(name)
        self._segment = segment
        self._position_last = position_last

    def pattern(self, op, input_ids, segment_ids, position_ids, word_embedding, segment_embedding, position_embedding, gamma, beta):
        word = op.Gather(word_embedding, input_ids, axis=0)
        position = op.Gather(position_embedding, position_ids, axis=0)
        if self._segment:
            segment = op.Gather(segment_embedding, segment_ids, axis=0)
            if self._position_last:
                total = op.Add(op.Add(word, segment), position)
            else:
                total = op.Add(op.Add(word, position), segment)
        else:
            total = op.Add(word, position)
        normalized = op.LayerNormalization(total, gamma, beta, axis=-1, _allow_other_attributes=True, _outputs=["layer_norm"])
        return normalized, total

    def check(self, context, input_ids, position_ids, word_embedding, position_embedding, gamma, beta, layer_norm,
              segment_ids=None, segment_embedding=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        tables = [word_embedding, position_embedding] + ([segment_embedding] if self._segment else [])
        for table in tables:
            if table.const_value is None or table.shape is None or table.shape.rank() != 2:
                return result.fail("an embedding table is not a constant [vocab, hidden] tensor", table)
        hidden = word_embedding.shape[1]
        if any(t.shape[1] != hidden for t in tables):
            return result.fail("the embedding tables differ in hidden size")
        for vec in (gamma, beta):
            if vec.const_value is None or vec.shape is None or vec.shape.rank() != 1 or vec.shape[0] != hidden:
                return result.fail("gamma / beta are not constant [hidden] vectors", vec)
        if word_embedding.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
            return result.fail("EmbedLayerNormalization takes fp32 or fp16 tables", word_embedding)
        ids = [input_ids, position_ids] + ([segment_ids] if self._segment else [])
        if any(v.dtype not in (ir.DataType.INT64, ir.DataType.INT32) or v.shape is None or v.shape.rank() != 2 for v in ids):
            return result.fail("the ids are not rank-2 integer tensors")
        batch, seq = input_ids.shape[0], input_ids.shape[1]
        if self._segment and (segment_ids.shape[0] != batch or segment_ids.shape[1] != seq):
            return result.fail("segment ids and input ids differ in shape", segment_ids)
        if position_ids.shape[1] != seq or position_ids.shape[0] not in (1, batch):
            return result.fail("position ids are neither [batch, seq] nor [1, seq]", position_ids)
        norm = layer_norm.producer()
        if norm.attributes.get_int("stash_type", 1) != 1:
            return result.fail("LayerNormalization keeps statistics in another type than fp32")
        return result

    def rewrite(self, op, input_ids, position_ids, word_embedding, position_embedding, gamma, beta, layer_norm,
                segment_ids=None, segment_embedding=None, **_):
        epsilon = layer_norm.producer().attributes.get_float("epsilon", 1e-5)
        as_int32 = lambda v: op.Cast(v, to=ir.DataType.INT32)  # noqa: E731 - the contrib op takes int32 ids only
        normalized, _mask_index, embedding_sum = op.EmbedLayerNormalization(
            as_int32(input_ids),
            as_int32(segment_ids) if self._segment else None,
            word_embedding,
            position_embedding,
            segment_embedding if self._segment else None,
            gamma,
            beta,
            None,  # mask: the fused attention takes the model's own additive mask
            as_int32(position_ids),
            epsilon=epsilon,
            _domain="com.microsoft",
            _outputs=3,
        )
        return normalized, embedding_sum


def embed_layer_norm_rules() -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet(
        [
            EmbedLayerNormFusion.rule("EmbedLayerNormSegment", segment=True, position_last=True),
            EmbedLayerNormFusion.rule("EmbedLayerNormSegmentLast", segment=True, position_last=False),
            EmbedLayerNormFusion.rule("EmbedLayerNorm", segment=False),
        ],
        commute=True,
    )


def _reflatten_attention_outputs(model: ir.Model) -> int:
    """Put back the flattening that onnxscript's attention fusions drop.

    Their pattern ends at the Reshape after the attention's head transpose without checking its
    target: when a model feeds the attention output to a 2-D Gemm (GPT-2's Conv1D views it as
    [batch * seq, hidden]), the fused op's [batch, seq, hidden] result replaces a 2-D value and the
    graph no longer loads. A Reshape to [-1, hidden] restores the value the Gemm expects.
    """
    fixed = 0
    for node in list(model.graph):
        if node.domain != "com.microsoft" or node.op_type not in ("MultiHeadAttention", "Attention"):
            continue
        out, query = node.outputs[0], node.inputs[0]
        if out.shape is None or out.shape.rank() != 2 or query.shape is None or query.shape.rank() != 3:
            continue
        hidden = out.shape[1]
        if not isinstance(hidden, int):
            continue
        target = ir.Value(name=f"{out.name}_flat_shape", const_value=ir.tensor(np.array([-1, hidden], dtype=np.int64)))
        model.graph.register_initializer(target)
        flat = ir.Value(name=out.name, shape=out.shape, type=out.type)
        out.name = f"{out.name}_bsd"
        out.replace_all_uses_with(flat, replace_graph_outputs=True)
        model.graph.insert_after(node, ir.node("Reshape", [out, target], outputs=[flat]))
        out.shape = ir.Shape([query.shape[0], query.shape[1], hidden])
        fixed += 1
    return fixed


def contrib_op_counts(model: ir.Model) -> dict[str, int]:
    """How many of each fused com.microsoft op the model holds."""
    counts = Counter(n.op_type for n in model.graph.all_nodes() if n.domain == "com.microsoft" and n.op_type in CONTRIB_OPS)
    return dict(sorted(counts.items()))


def _dequantized_constant(value: ir.Value | None) -> ir.Node | None:
    """The DequantizeLinear that produces `value` from a constant (a stored quantized weight)."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    return node if node.inputs[0] is not None and node.inputs[0].const_value is not None else None


def fold_dequantized_weight_transposes(model: ir.Model) -> int:
    """Rewrite Transpose(DequantizeLinear(W)) of a stored 2-D weight as DequantizeLinear(W^T).

    Rules:
    1. W is a constant [out, in] tensor read by this DequantizeLinear alone, whose output only the
       Transpose (perm [1, 0]) reads (and is no graph output); a blocked DequantizeLinear
       (block_size) is left alone.
    2. Per-channel scales follow the transpose: axis 0 becomes axis 1 (and back); per-tensor
       scales need nothing. The result is bit for bit the same.
    3. Why: torch.onnx writes a quantized linear as MatMul(x, Transpose(DQ(W))). ONNX Runtime turns
       only DQ -> MatMul into its int8 kernels (MatMulIntegerToFloat, QLinearMatMul); with the
       Transpose between them the weight is dequantized to fp32 on every run, and the MatMul is fp32.
    """
    folded = 0
    for node in list(model.graph):
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
            continue
        dq = _dequantized_constant(node.inputs[0])
        if dq is None or dq.attributes.get_int("block_size", 0):
            continue
        weight = dq.inputs[0]
        perm = node.attributes.get_ints("perm", None)
        array = weight.const_value.numpy()
        if array.ndim != 2 or (perm is not None and list(perm) != [1, 0]):
            continue
        if len(weight.uses()) != 1 or len(dq.outputs[0].uses()) != 1 or dq.outputs[0].is_graph_output():
            continue
        scale = dq.inputs[1]
        per_channel = scale is not None and scale.shape is not None and scale.shape.rank() == 1 and scale.shape[0] != 1
        tensor = ir.tensor(np.ascontiguousarray(array.T))
        transposed = ir.Value(name=f"{weight.name}_transposed", shape=tensor.shape, type=ir.TensorType(tensor.dtype), const_value=tensor)
        model.graph.register_initializer(transposed)
        attributes = {"axis": 1 - dq.attributes.get_int("axis", 1) % 2} if per_channel else {}
        replacement = ir.node("DequantizeLinear", [transposed, *dq.inputs[1:]], attributes=attributes)
        model.graph.insert_before(node, replacement)
        replacement.outputs[0].shape, replacement.outputs[0].type = node.outputs[0].shape, node.outputs[0].type
        node.outputs[0].replace_all_uses_with(replacement.outputs[0], replace_graph_outputs=True)
        model.graph.remove([node, dq], safe=True)
        if not weight.uses() and weight.name in model.graph.initializers:
            del model.graph.initializers[weight.name]
        folded += 1
    return folded


def has_dequantized_weights(model: ir.Model) -> bool:
    """Whether a MatMul or Gemm reads a stored quantized weight (a Q/DQ graph's linears)."""
    return any(
        node.op_type in ("MatMul", "Gemm") and any(_dequantized_constant(v) is not None for v in node.inputs[:2])
        for node in model.graph.all_nodes()
    )


def _op(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx") else None


def _cached_heads(value: ir.Value) -> tuple[ir.Node, int] | None:
    """The Concat(past, new) on the sequence axis that `value`, MultiHeadAttention's key or value
    input ([batch, total, heads * head size]), was made from, and the number of kv heads: the
    chain Reshape(Transpose(present, perm 0,2,1,3)) of a model whose kv heads are its heads, or
    with transformers' repeat_kv between them (Unsqueeze, Expand, Reshape) for grouped-query
    attention. The Concat's output must be a graph output (the present) and its past a graph input."""
    reshape = _op(value, "Reshape")
    transpose = _op(reshape.inputs[0] if reshape else None, "Transpose")
    if transpose is None or list(transpose.attributes.get_ints("perm", ())) != [0, 2, 1, 3]:
        return None
    heads_in = transpose.inputs[0]
    repeat = _op(heads_in, "Reshape")
    if repeat is not None:
        expand = _op(repeat.inputs[0], "Expand")
        unsqueeze = _op(expand.inputs[0] if expand else None, "Unsqueeze")
        if unsqueeze is None:
            return None
        heads_in = unsqueeze.inputs[0]
    concat = _op(heads_in, "Concat")
    if concat is None or len(concat.inputs) != 2 or concat.attributes.get_int("axis", 0) not in (2, -2):
        return None
    past, present = concat.inputs[0], concat.outputs[0]
    if not (past.is_graph_input() and present.is_graph_output()) or present.shape is None or present.shape.rank() != 4:
        return None
    kv_heads = present.shape[1]
    return (concat, kv_heads) if isinstance(kv_heads, int) else None


def fuse_group_query_attention(model: ir.Model) -> int:
    """MultiHeadAttention over a cache concatenated in the graph into ORT's GroupQueryAttention
    that takes the past itself and returns the presents (the with-past form of a decoder).

    Rules:
    1. MultiHeadAttention(q, K, V) with no past of its own and an attention bias [batch or 1, 1,
       seq, total], where K and V are the presents (Concat of a past graph input and the new
       keys / values, BNSH, a graph output), transposed to [batch, total, hidden], with or without
       repeat_kv (`_cached_heads`); GQA takes kv_num_heads = the presents' heads.
    2. The new keys and values go in as [batch, seq, kv heads * head size]; the rotary embedding
       stays where the model applies it (do_rotary=0), and the bias keeps the model's own mask:
       causal, padding (left padding included) and a sliding window, so no mask is derived from
       positions.
    3. seqlens_k is total - 1 for every row and total_sequence_length is total (the bias's last
       axis): the kernel's causal rule then runs over the padded positions, as the model's does,
       and the bias masks the padding.
    4. GroupQueryAttention's present_key / present_value become the graph's presents.
    Why: onnxscript's GQA fusion expects rotary as a MatMul/Transpose and an additive mask from
    positions; on transformers 5 graphs it never fires, and its seqlens from position ids break
    left padding.
    """
    fused = 0
    for node in list(model.graph):
        if node.domain != "com.microsoft" or node.op_type != "MultiHeadAttention":
            continue
        inputs = list(node.inputs) + [None] * (8 - len(node.inputs))
        query, key, value, _bias_qkv, _padding, bias, past_k, past_v = inputs[:8]
        if past_k is not None or past_v is not None or bias is None or bias.shape is None or bias.shape.rank() != 4:
            continue
        if len(node.outputs) > 1 and any(o.uses() for o in node.outputs[1:]):
            continue
        found_k, found_v = _cached_heads(key), _cached_heads(value)
        if found_k is None or found_v is None or found_k[1] != found_v[1]:
            continue
        (concat_k, kv_heads), (concat_v, _) = found_k, found_v
        heads = node.attributes.get_int("num_heads")
        head_size = concat_k.outputs[0].shape[3]
        if not isinstance(head_size, int) or heads % kv_heads or (query.shape is not None and query.shape.rank() != 3):
            continue
        new: list[ir.Node] = []

        def add(op: str, args: list, **attributes: object) -> ir.Value:
            n = ir.node(op, args, attributes=attributes)
            new.append(n)
            return n.outputs[0]

        def const(values: list[int]) -> ir.Value:
            return add("Constant", [], value=ir.tensor(np.array(values, dtype=np.int64)))

        def as_bsd(bnsh: ir.Value) -> ir.Value:
            return add("Reshape", [add("Transpose", [bnsh], perm=[0, 2, 1, 3]), const([0, 0, kv_heads * head_size])])

        total = add("Shape", [bias], start=3, end=4)  # [total]
        batch = add("Shape", [query], start=0, end=1)  # [batch]
        seqlens = add("Cast", [add("Expand", [add("Sub", [total, const([1])]), batch])], to=ir.DataType.INT32)
        total_scalar = add("Cast", [add("Squeeze", [total])], to=ir.DataType.INT32)
        # Every new token is valid: query_seqlens = seq per row lets the kernel take a chunk after a
        # past at any batch (without it, the CPU kernel takes seq > 1 after a past at batch 1 only).
        chunk = add("Cast", [add("Expand", [add("Shape", [query], start=1, end=2), batch])], to=ir.DataType.INT32)
        gqa = ir.node(
            "GroupQueryAttention",
            [query, as_bsd(concat_k.inputs[1]), as_bsd(concat_v.inputs[1]), concat_k.inputs[0], concat_v.inputs[0], seqlens,
             total_scalar, None, None, None, bias, None, None, None, None, None, chunk],
            attributes={"num_heads": heads, "kv_num_heads": kv_heads}, domain="com.microsoft", num_outputs=3,
        )
        model.graph.insert_before(node, [*new, gqa])
        for old, out in ((node.outputs[0], gqa.outputs[0]), (concat_k.outputs[0], gqa.outputs[1]), (concat_v.outputs[0], gqa.outputs[2])):
            out.shape, out.type, name = old.shape, old.type, old.name
            old.replace_all_uses_with(out, replace_graph_outputs=True)
            old.name, out.name = f"{name}_unfused", name  # the presents keep their names (present.0.key)
        model.graph.remove(node, safe=True)
        fused += 1
    if fused:
        ir.passes.common.RemoveUnusedNodesPass()(model)
    return fused


@contextlib.contextmanager
def _without_packed_attention() -> Iterator[None]:
    """onnxscript's last attention fusion packs the q, k and v projections into one Attention op
    with their weights concatenated. In a Q/DQ graph those weights are DequantizeLinear outputs: the
    pack would dequantize them to fp32 on every run and take the projections off ORT's int8
    kernels. Without it, the attention core still fuses (MultiHeadAttention) and the projections stay
    int8. onnxscript has no switch for one fusion, so its entry point is swapped for a no-op here."""
    original = _ort_fusions_core.fuse_attention
    _ort_fusions_core.fuse_attention = lambda model, **_: 0
    try:
        yield
    finally:
        _ort_fusions_core.fuse_attention = original


def fuse_for_ort(model: ir.Model, *, skip: Sequence[str] = ()) -> tuple[ir.Model, dict[str, int]]:
    """Apply the transformer fusions in place; returns the model and how often each rule fired.

    Embedding fusion runs first: afterwards SkipLayerNormalization could take the embedding's
    LayerNormalization when position ids are [batch, seq] (the Adds would match as a skip sum).
    Quantized weights have their transposes folded, and a graph with them keeps its projections
    apart (their int8 kernels are the point of it); a graph with run-time activation quantization
    takes fxbench's CPU int8 rules instead of onnxscript's (onnx_int8.py). `skip` names fusions to
    leave out ("embed_layer_normalization", "dequantized_weight_transposes", "int8_cpu", "xformers").
    """
    from fxbench.exporters import onnx_int8

    counts: dict[str, int] = {}
    if "embed_layer_normalization" not in skip:
        counts["embed_layer_normalization"] = embed_layer_norm_rules().apply_to_model(model)
    if "dequantized_weight_transposes" not in skip:
        counts["dequantized_weight_transposes"] = fold_dequantized_weight_transposes(model)
    if onnx_int8.is_dynamic_int8(model) and "int8_cpu" not in skip:
        # fxbench's CPU int8 form has rules of its own: integer GEMMs with their biases inside, plain
        # LayerNormalization after a Sum, ONNX Attention; onnxscript's fusions would undo them
        # (SkipLayerNormalization, BiasGelu and MultiHeadAttention are all slower here).
        counts["requantization"] = onnx_int8.fold_requantization(model)
        counts.update(onnx_int8.integer_matmuls(model))
        counts["sum_residuals"] = onnx_int8.sum_residuals(model)
        counts["attention_3d"] = onnx_int8.attention_3d(model)
        return model, counts
    quantized = has_dequantized_weights(model)
    if "xformers" not in skip:
        with _without_packed_attention() if quantized else contextlib.nullcontext():
            model, more = optimize_for_ort(model)
        counts.update(more)
        counts["attention_reflatten"] = _reflatten_attention_outputs(model)
    if "group_query_attention" not in skip:
        counts["group_query_attention_with_past"] = fuse_group_query_attention(model)
    return model, counts
