"""Shared pieces of the quantization passes: which linears, weight quantization, Q/DQ nodes, fallback, the passes' common steps.

Quantization is written in PyTorch's export-quantization vocabulary, `quantized_decomposed`
quantize/dequantize ops (what torchao's `convert_pt2e` emits), which the ONNX exporter turns into
QuantizeLinear / DequantizeLinear. The nodes are placed here rather than by prepare/convert_pt2e,
which on export-unlifted modules keeps fp32 weights with a run-time quantize_per_channel, makes
`.eval()` raise and drops `nn_module_stack` from the new nodes; calibration (`_calibration.py`)
uses torchao's observers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers torch.ops.quantized_decomposed
from torch.fx import GraphModule, Node

from fxbench.passes._calibration import check_calibration_file
from fxbench.passes._graph import add_tensor, drop_weights, example_tensor, fake_mode, get_tensor, run, set_meta, within
from fxbench.passes.base import FxbenchPass, PassOptions, PassResult, module_path

__all__ = [
    "ActivationQuantization",
    "CalibratedOptions",
    "choose_fallback",
    "Editor",
    "Fallback",
    "find_linears",
    "FP8_MAX",
    "group_by_input",
    "InputQuantizer",
    "LinearSite",
    "dequantize_rows",
    "quantize_rows",
    "quantize_sites",
    "quantize_weight",
    "QuantizeOptions",
    "select_sites",
    "SKIP_KEYWORDS",
    "skip_summary",
    "use_input",
]

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed
FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
SKIP_KEYWORDS = ("first", "last", "head")


# Run-time row quantization with a per-row scale and one zero point for every row: uint8 codes of
# the last axis. quantized_decomposed has no such op (its per-token ops take a zero point per row,
# which ONNX Runtime's integer GEMMs cannot), so fxbench defines the pair; the ONNX exporter
# writes them as QuantizeLinear / DequantizeLinear blocked along the last axis (opset 21).
@torch.library.custom_op("fxbench::quantize_rows", mutates_args=())
def quantize_rows(x: torch.Tensor, scale: torch.Tensor, zero_point: int) -> torch.Tensor:
    """uint8 codes of x: round(x / scale) + zero_point, saturated to [0, 255]; scale is [..., 1]."""
    return torch.clamp(torch.round(x / scale) + zero_point, 0, 255).to(torch.uint8)


@quantize_rows.register_fake
def _(x: torch.Tensor, scale: torch.Tensor, zero_point: int) -> torch.Tensor:
    return torch.empty_like(x, dtype=torch.uint8)


@torch.library.custom_op("fxbench::dequantize_rows", mutates_args=())
def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, zero_point: int) -> torch.Tensor:
    """fp32 values of uint8 row codes: (q - zero_point) * scale."""
    return (q.to(torch.float32) - zero_point) * scale


@dequantize_rows.register_fake
def _(q: torch.Tensor, scale: torch.Tensor, zero_point: int) -> torch.Tensor:
    return torch.empty_like(q, dtype=torch.float32)


@dataclass(frozen=True)
class LinearSite:
    """A matrix product with a constant weight: linear(x, W[N,K], b), addmm(b, x, W[K,N]) or mm(x, W[K,N])."""

    node: Node
    input_index: int  # where the activation is in node.args
    weight_index: int
    axis: int  # the weight's output-channel axis (0 for linear, 1 for addmm / mm)

    @property
    def input(self) -> Node:
        return self.node.args[self.input_index]

    @property
    def weight(self) -> Node:
        return self.node.args[self.weight_index]

    @property
    def path(self) -> str:
        return module_path(self.node)


def _float_weight(node: Any) -> bool:
    v = example_tensor(node)
    return (v is not None and node.op == "get_attr" and v.dim() == 2
            and v.dtype in (torch.float32, torch.float16, torch.bfloat16))


def find_linears(gm: GraphModule) -> list[LinearSite]:
    """Every matrix product of an activation and a float weight held by the module, in graph order.
    Products whose weight is already dequantized (a call, not a get_attr) are not found again."""
    sites = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target == aten.linear.default and _float_weight(node.args[1]):
            sites.append(LinearSite(node, 0, 1, 0))
        elif (node.target == aten.addmm.default and _float_weight(node.args[2])
              and node.kwargs.get("beta", 1) == 1 and node.kwargs.get("alpha", 1) == 1):
            sites.append(LinearSite(node, 1, 2, 1))
        elif node.target == aten.mm.default and _float_weight(node.args[1]):
            sites.append(LinearSite(node, 0, 1, 1))
    return sites


def _heads(gm: GraphModule, sites: list[LinearSite]) -> set[Node]:
    """Sites no other site depends on: the LM head, classifier or pooler."""
    site_nodes = {s.node for s in sites}
    feeds_site: dict[Node, bool] = {}
    for node in reversed(gm.graph.nodes):
        feeds_site[node] = any(u in site_nodes or feeds_site.get(u, False) for u in node.users)
    return {s.node for s in sites if not feeds_site[s.node]}


def select_sites(gm: GraphModule, sites: list[LinearSite], skip: Iterable[str], *,
                 fp32_activations: bool = False) -> tuple[list[LinearSite], dict[str, str]]:
    """Split `sites` into those to quantize and those skipped (node name -> why). `skip` holds
    keywords (first: the first linear and those sharing its input; last: the last linear before
    the head; head: linears nothing else depends on), module paths (a module and all inside it;
    patterns such as encoder.layer.0-2.output) or node names.
    With `fp32_activations`, sites whose input is not fp32 (after to-fp16) are skipped too."""
    skip = tuple(skip)
    skipped: dict[str, str] = {}
    if fp32_activations:
        for s in sites:
            val = example_tensor(s.input)
            if not (val is not None and val.dtype == torch.float32):
                skipped[s.node.name] = "input not fp32"
    heads = _heads(gm, sites) if sites else set()
    if sites and "first" in skip:
        first_input = sites[0].input
        for s in sites:
            if s.input is first_input:
                skipped.setdefault(s.node.name, "first")
    body = [s for s in sites if s.node not in heads]
    if body and "last" in skip:
        skipped.setdefault(body[-1].node.name, "last")
    if "head" in skip:
        for s in sites:
            if s.node in heads:
                skipped.setdefault(s.node.name, "head")
    paths = [e for e in skip if e not in SKIP_KEYWORDS]
    for s in sites:
        for entry in paths:
            if s.node.name == entry or within(s.path, [entry]):
                skipped.setdefault(s.node.name, f"skip={entry}")
    return [s for s in sites if s.node.name not in skipped], skipped


def skip_summary(sites: list[LinearSite], skipped: dict[str, str]) -> list[str]:
    """'module path (reason)' for each skipped site, for records and notes."""
    by_name = {s.node.name: s for s in sites}
    return [f"{by_name[n].path or n} ({why})" for n, why in skipped.items() if n in by_name]


def quantize_weight(w: torch.Tensor, axis: int | None, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization of a weight, per output channel (`axis`) or per tensor (None):
    int8 in [-127, 127] (no -128, so the range is symmetric) or float8_e4m3fn in [-448, 448]."""
    w = w.detach().float()
    limit = 127.0 if dtype == torch.int8 else FP8_MAX
    if axis is None:
        amax = w.abs().amax()
    else:
        amax = w.abs().amax(dim=1 - axis)
    scale = (amax / limit).clamp(min=torch.finfo(torch.float32).eps)
    shaped = scale if axis is None else (scale[:, None] if axis == 0 else scale[None, :])
    scaled = w / shaped
    q = scaled.round().clamp(-limit, limit).to(dtype) if dtype == torch.int8 else scaled.clamp(-limit, limit).to(dtype)
    return q, scale.to(torch.float32)


class Editor:
    """Inserts nodes into a graph with fake-tensor metadata (later passes and re-export read
    dtypes and shapes from node.meta['val']), and quantizes weights into buffers, once per weight."""

    def __init__(self, gm: GraphModule, *, meta: bool = True, weights: dict | None = None):
        self.gm = gm
        self.weights = weights if weights is not None else {}  # (target, dtype, axis) -> (q, scale), reusable across editors
        # False for trial edits that are undone before anyone reads the graph (and for graphs
        # without export's fake values).
        self.meta = meta and fake_mode(gm) is not None
        self._dequantized: dict[tuple[str, torch.dtype, bool], Node] = {}
        self.replaced: list[Node] = []  # float weight get_attr nodes that lost a user
        self.inserted: list[Node] = []
        self.buffers: list[str] = []

    def buffer(self, owner_path: str, name: str, value: torch.Tensor, before: Node) -> Node:
        """Register `value` as a buffer of the module at `owner_path`; read it with a get_attr node."""
        target = add_tensor(self.gm, f"{owner_path}.{name}" if owner_path else name, value, parameter=False)
        with self.gm.graph.inserting_before(before):
            node = self.gm.graph.get_attr(target)
        if self.meta:
            set_meta(node)
        self.inserted.append(node)
        self.buffers.append(target)
        return node

    def call(self, target: Any, args: tuple, kwargs: dict | None = None, *, before: Node) -> Node:
        """Insert `target(*args, **kwargs)` before `before`, in `before`'s module, with its fake value."""
        with self.gm.graph.inserting_before(before):
            node = self.gm.graph.call_function(target, args, kwargs or {})
        self.inserted.append(node)
        if self.meta:
            set_meta(node, like=before)
        return node

    def undo(self) -> None:
        """Take out every node and buffer this editor added (the caller restores the args it changed)."""
        for node in reversed(self.inserted):
            self.gm.graph.erase_node(node)
        drop_weights(self.gm, self.buffers)
        self.inserted, self.buffers, self.replaced, self._dequantized = [], [], [], {}

    def quantize_weight(self, site: LinearSite, dtype: torch.dtype, *, per_channel: bool = True) -> Node:
        """Replace the site's weight by int8 / fp8 buffers and a dequantize node (shared by every
        site reading the same weight)."""
        weight = site.weight
        target = str(weight.target)
        key = (target, dtype, per_channel)
        if key not in self._dequantized:
            owner_path, _, attr = target.rpartition(".")
            axis = site.axis if per_channel else None
            if (target, dtype, axis) not in self.weights:
                self.weights[(target, dtype, axis)] = quantize_weight(get_tensor(self.gm, target, plain=False), axis, dtype)
            q, scale = self.weights[(target, dtype, axis)]
            # A weight a precision pass made fp16 / bf16 dequantizes to that dtype (int8 weights, fp16 math).
            stored = weight.meta["val"].dtype
            out = {"out_dtype": stored} if stored != torch.float32 else {}
            first = site.node  # sites come in graph order: the first reader of this weight
            qn = self.buffer(owner_path, f"{attr}_{_short(dtype)}", q, first)
            if dtype == torch.int8:
                sn = self.buffer(owner_path, f"{attr}_scale", scale, first)
                # int8 zeros, not PT2E's int64: an int64 zero point makes every eager run subtract
                # it in int64 over the whole weight (17x the time of the dequantization itself).
                # The ONNX form is the same (the translation casts the zero point to int8).
                zn = self.buffer(owner_path, f"{attr}_zero_point", torch.zeros(scale.shape, dtype=torch.int8), first)
                dq = self.call(qd.dequantize_per_channel.default, (qn, sn, zn, axis, -127, 127, torch.int8), out, before=first)
            elif axis is None:
                dq = self.call(qd.dequantize_per_tensor.default, (qn, float(scale), 0, -448, 448, dtype), out, before=first)
            else:
                # dequantize_per_channel cannot take float8 input in eager PyTorch: dequantize at
                # scale 1, then scale each channel.
                shape = (-1, 1) if axis == 0 else (1, -1)
                sn = self.buffer(owner_path, f"{attr}_scale", scale.reshape(shape), first)
                unit = self.call(qd.dequantize_per_tensor.default, (qn, 1.0, 0, -448, 448, dtype), out, before=first)
                dq = self.call(aten.mul.Tensor, (unit, sn), before=first)
            self._dequantized[key] = dq
        dq = self._dequantized[key]
        args = list(site.node.args)
        args[site.weight_index] = dq
        site.node.args = tuple(args)
        self.replaced.append(weight)
        return dq

    def finish(self) -> int:
        """Erase the float weights nothing reads any more; returns how many attributes went."""
        return drop_weights(self.gm, self.replaced)


def _short(dtype: torch.dtype) -> str:
    return {torch.int8: "int8", torch.float8_e4m3fn: "fp8"}[dtype]


def group_by_input(sites: Sequence[LinearSite]) -> dict[Node, list[LinearSite]]:
    """Sites grouped by their activation, so that one Q/DQ serves all the sites reading it (Q/K/V)."""
    groups: dict[Node, list[LinearSite]] = {}
    for s in sites:
        groups.setdefault(s.input, []).append(s)
    return groups


def use_input(site: LinearSite, new: Node) -> None:
    args = list(site.node.args)
    args[site.input_index] = new
    site.node.args = tuple(args)


InputQuantizer = Callable[[Editor, Node, Node], Node]  # (editor, x, before) -> x quantized and dequantized


def quantize_sites(gm: GraphModule, sites: Sequence[LinearSite], quantize_input: InputQuantizer | None,
                   weight_dtype: torch.dtype, *, per_channel: bool = True, meta: bool = True, weights: dict | None = None) -> Editor:
    """Quantize the sites' weights and (with `quantize_input`) their activations, one Q/DQ per
    distinct activation; returns the editor, which can undo it all."""
    editor = Editor(gm, meta=meta, weights=weights)
    for x, group in group_by_input(sites).items():
        if quantize_input is not None:
            dq = quantize_input(editor, x, group[0].node)
            for site in group:
                use_input(site, dq)
        for site in group:
            editor.quantize_weight(site, weight_dtype, per_channel=per_channel)
    return editor


@dataclass(frozen=True)
class Fallback:
    """Which sites stay float so that the quantized outputs keep `target` cosine on the probe."""

    sites: tuple[LinearSite, ...]
    cosine_all: float  # every chosen site quantized
    cosine: float  # after the fallback
    trials: int  # quantized runs it took

    def record(self) -> dict[str, Any]:
        return {"cosine_all_quantized": self.cosine_all, "cosine": self.cosine,
                "kept_float": [s.path or s.node.name for s in self.sites], "trials": self.trials}


def choose_fallback(gm: GraphModule, sites: Sequence[LinearSite], quantize_input: InputQuantizer | None,
                    weight_dtype: torch.dtype, batch: dict[str, torch.Tensor], *, limit: int, target: float,
                    per_channel: bool = True, weights: dict | None = None) -> Fallback:
    """Accuracy-aware fallback: while quantizing the sites leaves the worst output's cosine (over
    every position, as the pipeline's verification measures it) on `batch` below `target`, keep
    the most harmful site in float, up to `limit` sites. The most harmful site is found by
    bisection: quantize each half of the candidates alone, follow the half that hurts more (2 log2 n
    runs, not n; quantization harm is dominated by a few layers). Every trial is undone."""
    from fxbench.numerics import compare

    trials = 0

    def cosine_with(quantized: Sequence[LinearSite]) -> float:
        nonlocal trials
        trials += 1
        saved = {s.node: s.node.args for s in quantized}
        editor = quantize_sites(gm, quantized, quantize_input, weight_dtype, per_channel=per_channel, meta=False, weights=weights)
        try:
            return compare(run(gm, batch), reference).cosine
        finally:
            for node, args in saved.items():
                node.args = args
            editor.undo()

    def most_harmful(candidates: list[LinearSite]) -> LinearSite:
        while len(candidates) > 1:
            half = len(candidates) // 2
            first, second = candidates[:half], candidates[half:]
            candidates = first if cosine_with(first) < cosine_with(second) else second
        return candidates[0]

    if limit <= 0 or not sites or not batch:
        return Fallback((), math.nan, math.nan, 0)
    reference = run(gm, batch)
    everything = cosine = cosine_with(sites)
    kept: list[LinearSite] = []
    while cosine < target and len(kept) < min(limit, len(sites)):
        kept.append(most_harmful([s for s in sites if s not in kept]))
        remaining = [s for s in sites if s not in kept]
        cosine = cosine_with(remaining) if remaining else 1.0
    return Fallback(tuple(kept), everything, cosine, trials)


# ----- the activation-quantizing passes (int8 static and dynamic, fp8) -------------------------


@dataclass(frozen=True)
class QuantizeOptions(PassOptions):
    """Options every activation-quantizing pass has."""

    # Linears left in float: keywords first / last / head, module paths ("encoder.layer.5", "lm_head") or node names.
    skip: tuple[str, ...] = ("head",)
    fallback: int = 2  # at most this many more linears kept float, the most sensitive first, ...
    target: float = 0.99  # ... while the outputs' cosine to the float program on the sample is below this

    def validate(self) -> None:
        if self.fallback < 0:
            raise ValueError(f"fallback {self.fallback} must be at least 0")
        if not 0.0 < self.target <= 1.0:
            raise ValueError(f"target {self.target} must be a cosine in (0, 1]")


@dataclass(frozen=True)
class CalibratedOptions(QuantizeOptions):
    """Options of the passes whose activation scales are calibrated ahead of time."""

    calibration: str = ""  # a .txt of sentences (one a line), or a .pt / .safetensors dict of inputs
    samples: int = 48  # without a file: this many of the model's own sample inputs
    seq: int = 64  # tokens per sentence when calibrating on text
    batch_size: int = 16

    def validate(self) -> None:
        super().validate()
        check_calibration_file(self.calibration)
        if self.samples < 1 or self.batch_size < 1 or self.seq < 2:
            raise ValueError("samples and batch_size must be at least 1, seq at least 2")


class ActivationQuantization(FxbenchPass):
    """The steps the activation-quantizing passes share: choose the linears (QuantizeOptions.skip),
    keep the most harmful ones float (accuracy-aware fallback), quantize the rest, record it all.
    A subclass says how activations are quantized (`input_quantizer`)."""

    in_place = True
    weight_dtype: ClassVar[torch.dtype] = torch.int8
    per_channel: ClassVar[bool] = True  # weights per output channel, else per tensor
    fp32_activations: ClassVar[bool] = True  # only linears whose input is fp32 (not after to-fp16)

    def input_quantizer(self, gm: GraphModule, chosen: list[LinearSite]) -> tuple[InputQuantizer | None, dict[str, Any]]:
        """How the chosen sites' activations are quantized (None: weights only), and what the
        pass's record says about it (calibration)."""
        raise NotImplementedError

    def call(self, graph_module: GraphModule) -> PassResult:
        o, gm = self.options, graph_module
        sites = find_linears(gm)
        chosen, skipped = select_sites(gm, sites, o.skip, fp32_activations=self.fp32_activations)
        self.details = {"quantized": 0, "skipped": skip_summary(sites, skipped)}
        if not chosen:
            return PassResult(gm, False)
        quantize_input, record = self.input_quantizer(gm, chosen)
        weights: dict = {}  # quantized weights, shared by the fallback trials and the rewrite
        probe = self.require_context().inputs if o.fallback else {}
        fallback = choose_fallback(gm, chosen, quantize_input, self.weight_dtype, probe, limit=o.fallback, target=o.target,
                                   per_channel=self.per_channel, weights=weights)
        for site in fallback.sites:
            skipped[site.node.name] = "fallback"
        chosen = [s for s in chosen if s not in fallback.sites]
        editor = quantize_sites(gm, chosen, quantize_input, self.weight_dtype, per_channel=self.per_channel, weights=weights)
        self.details = {
            "quantized": len(chosen), "activation_groups": len(group_by_input(chosen)) if quantize_input is not None else 0,
            "skipped": skip_summary(sites, skipped), **record, "fallback": fallback.record(), "float_weights_removed": editor.finish(),
        }
        return PassResult(gm, bool(chosen))
