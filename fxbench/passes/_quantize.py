"""Shared pieces of the quantization passes: which linears, weight quantization, Q/DQ nodes, calibration.

Quantization is written in PyTorch's export-quantization vocabulary, `quantized_decomposed`
quantize/dequantize ops (what torchao's `convert_pt2e` emits), which the ONNX exporter turns into
QuantizeLinear / DequantizeLinear. The nodes are placed here rather than by prepare/convert_pt2e,
which on export-unlifted modules keeps fp32 weights with a run-time quantize_per_channel, makes
`.eval()` raise and drops `nn_module_stack` from the new nodes; calibration uses torchao's observers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers torch.ops.quantized_decomposed
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg

from fxbench.errors import PassOptionError
from fxbench.passes.base import PassContext, module_path

__all__ = [
    "calibration_batches",
    "CALIBRATION_SUFFIXES",
    "check_calibration_file",
    "choose_fallback",
    "drop_unused_weights",
    "Editor",
    "Fallback",
    "find_linears",
    "FP8_MAX",
    "group_by_input",
    "InputQuantizer",
    "LinearSite",
    "observe_inputs",
    "percentile_observer_class",
    "quantize_sites",
    "quantize_weight",
    "select_sites",
    "SKIP_KEYWORDS",
    "skip_summary",
    "use_input",
]

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed
FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
SKIP_KEYWORDS = ("first", "last", "head")
CALIBRATION_SUFFIXES = (".txt", ".pt", ".safetensors")


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
    v = node.meta.get("val") if isinstance(node, Node) else None
    return (isinstance(node, Node) and node.op == "get_attr" and isinstance(v, torch.Tensor) and v.dim() == 2
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
    the head; head: linears nothing else depends on) and module paths (prefixes) or node names.
    With `fp32_activations`, sites whose input is not fp32 (after to-fp16) are skipped too."""
    skip = tuple(skip)
    skipped: dict[str, str] = {}
    if fp32_activations:
        for s in sites:
            val = s.input.meta.get("val") if isinstance(s.input, Node) else None
            if not (isinstance(val, torch.Tensor) and val.dtype == torch.float32):
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
        p = s.path
        for entry in paths:
            if s.node.name == entry or (p and (p == entry or p.startswith(entry + "."))):
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
        vals = [n.meta["val"] for n in gm.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)]
        self.fake_mode = torch._guards.detect_fake_mode(tuple(vals))
        # False for trial edits that are undone before anyone reads the graph (and for graphs
        # without export's fake values).
        self.meta = meta and self.fake_mode is not None
        self._dequantized: dict[tuple[str, torch.dtype, bool], Node] = {}
        self.replaced: list[Node] = []  # float weight get_attr nodes that lost a user
        self.inserted: list[Node] = []
        self.buffers: list[str] = []

    def buffer(self, owner_path: str, name: str, value: torch.Tensor, before: Node) -> Node:
        """Register `value` as a buffer of the module at `owner_path`; read it with a get_attr node."""
        owner = self.gm.get_submodule(owner_path) if owner_path else self.gm
        owner.register_buffer(name, value)
        target = f"{owner_path}.{name}" if owner_path else name
        with self.gm.graph.inserting_before(before):
            node = self.gm.graph.get_attr(target)
        if self.meta:
            node.meta["val"] = self.fake_mode.from_tensor(value, static_shapes=True)
        self.inserted.append(node)
        self.buffers.append(target)
        return node

    def call(self, target: Any, args: tuple, kwargs: dict | None = None, *, before: Node) -> Node:
        """Insert `target(*args, **kwargs)` before `before`, in `before`'s module, with its fake value."""
        with self.gm.graph.inserting_before(before):
            node = self.gm.graph.call_function(target, args, kwargs or {})
        self.inserted.append(node)
        if not self.meta:
            return node
        if "nn_module_stack" in before.meta:
            node.meta["nn_module_stack"] = before.meta["nn_module_stack"]
        fake_args, fake_kwargs = map_arg((node.args, node.kwargs), lambda n: n.meta["val"])
        with self.fake_mode:
            node.meta["val"] = node.target(*fake_args, **fake_kwargs)
        return node

    def undo(self) -> None:
        """Take out every node and buffer this editor added (the caller restores the args it changed)."""
        for node in reversed(self.inserted):
            self.gm.graph.erase_node(node)
        for target in self.buffers:
            owner_path, _, attr = target.rpartition(".")
            delattr(self.gm.get_submodule(owner_path) if owner_path else self.gm, attr)
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
                self.weights[(target, dtype, axis)] = quantize_weight(_get(self.gm, target), axis, dtype)
            q, scale = self.weights[(target, dtype, axis)]
            # A weight a precision pass made fp16 / bf16 dequantizes to that dtype (int8 weights, fp16 math).
            stored = weight.meta["val"].dtype
            out = {"out_dtype": stored} if stored != torch.float32 else {}
            first = site.node  # sites come in graph order: the first reader of this weight
            qn = self.buffer(owner_path, f"{attr}_{_short(dtype)}", q, first)
            if dtype == torch.int8:
                sn = self.buffer(owner_path, f"{attr}_scale", scale, first)
                zn = self.buffer(owner_path, f"{attr}_zero_point", torch.zeros(scale.shape, dtype=torch.int64), first)
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
        return drop_unused_weights(self.gm, dict.fromkeys(self.replaced))


def _short(dtype: torch.dtype) -> str:
    return {torch.int8: "int8", torch.float8_e4m3fn: "fp8"}[dtype]


def _get(gm: GraphModule, target: str) -> torch.Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


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


def _outputs(gm: GraphModule, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Run the graph as it stands, without recompiling it (an Interpreter reads the nodes)."""
    names = [p.target for p in gm.graph.find_nodes(op="placeholder")]
    with torch.no_grad():
        out = torch.fx.Interpreter(gm).run(*[batch[n] for n in names])
    return tuple(torch.utils._pytree.tree_leaves(out))


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
            return compare(_outputs(gm, batch), reference).cosine
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
    reference = _outputs(gm, batch)
    everything = cosine = cosine_with(sites)
    kept: list[LinearSite] = []
    while cosine < target and len(kept) < min(limit, len(sites)):
        kept.append(most_harmful([s for s in sites if s not in kept]))
        remaining = [s for s in sites if s not in kept]
        cosine = cosine_with(remaining) if remaining else 1.0
    return Fallback(tuple(kept), everything, cosine, trials)


def drop_unused_weights(gm: GraphModule, weights: Iterable[Node]) -> int:
    """Erase the float weights' get_attr nodes left without users, and the attributes no get_attr
    reads any more (a tied weight read elsewhere stays)."""
    dropped = 0
    for node in weights:
        if node.users:
            continue
        target = str(node.target)
        gm.graph.erase_node(node)
        if not any(n.op == "get_attr" and n.target == target for n in gm.graph.nodes):
            owner_path, _, attr = target.rpartition(".")
            owner = gm.get_submodule(owner_path) if owner_path else gm
            delattr(owner, attr)
            dropped += 1
    return dropped


# ----- calibration -------------------------------------------------------------------------------


def check_calibration_file(path: str) -> None:
    """Options-time check of a calibration file name (raises ValueError, which option parsing turns
    into a one-line PassOptionError)."""
    if not path:
        return
    if not path.endswith(CALIBRATION_SUFFIXES):
        raise ValueError(f"calibration file {path!r} must end in {', '.join(CALIBRATION_SUFFIXES)}")
    if not Path(path).is_file():
        raise ValueError(f"calibration file {path!r} does not exist")


def _split(tensors: dict[str, torch.Tensor], batch_size: int) -> list[dict[str, torch.Tensor]]:
    count = min(int(t.shape[0]) for t in tensors.values())
    return [{k: v[i:i + batch_size] for k, v in tensors.items()} for i in range(0, count, batch_size)]


def _max_positions(config: Any) -> int | None:
    for attr in ("max_position_embeddings", "n_positions", "max_target_positions"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def calibration_batches(context: PassContext, *, path: str, samples: int, seq: int, batch_size: int, label: str) -> list[dict[str, torch.Tensor]]:
    """Input batches to calibrate on: from `path` (a .txt file of sentences, one a line, tokenized
    as the sample was; or a .pt / .safetensors dict of input tensors, batched along axis 0), else
    the inputs the user gave the context, else `samples` of the model's own sample inputs
    (for text, its real sentences at `seq` tokens)."""
    wanted = set(context.inputs)
    limit = _max_positions(context.config)
    seq = min(seq, limit) if limit else seq
    if path:
        check = Path(path)
        if not check.is_file():
            raise PassOptionError(f"{label}: calibration file {path} does not exist; give a .txt, .pt or .safetensors file")
        if path.endswith(".txt"):
            texts = [line.strip() for line in check.read_text(encoding="utf-8").splitlines() if line.strip()]
            if not texts:
                raise PassOptionError(f"{label}: calibration file {path} has no sentences; write one a line")
            if context.preprocessor is None:
                raise PassOptionError(f"{label}: a text calibration file needs the model's tokenizer; give a .pt or .safetensors dict of inputs")
            return [context.inputs_from_texts(texts[i:i + batch_size], seq) for i in range(0, len(texts), batch_size)]
        if path.endswith(".safetensors"):
            import safetensors.torch

            loaded: Any = safetensors.torch.load_file(path)
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        batches = loaded if isinstance(loaded, list) else [loaded]
        if not all(isinstance(b, dict) and all(isinstance(v, torch.Tensor) for v in b.values()) for b in batches):
            raise PassOptionError(f"{label}: {path} must hold a dict (or list of dicts) of input name -> tensor")
        missing = wanted - set(batches[0])
        if missing:
            raise PassOptionError(f"{label}: {path} lacks the inputs {', '.join(sorted(missing))}; the program takes {', '.join(sorted(wanted))}")
        return [piece for b in batches for piece in _split({k: b[k] for k in wanted}, batch_size)]
    if context.calibration_inputs:
        return list(context.calibration_inputs)
    if context.modality == "text" and context.make_inputs is not None:
        return _split(context.more_inputs(1, batch=samples, seq=seq)[0], batch_size)
    # Sequence lengths come from token inputs (a decoder's ids), never from audio features' axis 1.
    seq_hint = next((int(t.shape[1]) for k, t in context.inputs.items() if k.endswith("input_ids") and t.dim() > 1), None)
    return _split(context.more_inputs(1, batch=samples, seq=seq_hint)[0], batch_size)


def observe_inputs(gm: GraphModule, nodes: Iterable[Node], batches: list[dict[str, torch.Tensor]], make_observer: Any) -> dict[Node, Any]:
    """Run `gm` on each batch and feed every value in `nodes` to an observer of its own."""
    observers = {n: make_observer() for n in nodes}

    class _Observe(torch.fx.Interpreter):
        def run_node(self, n: Node) -> Any:
            result = super().run_node(n)
            if n in observers:
                observers[n](result.detach().float())
            return result

    names = [p.target for p in gm.graph.find_nodes(op="placeholder")]
    with torch.no_grad():
        for batch in batches:
            _Observe(gm).run(*[batch[n] for n in names])
    return observers


def percentile_observer_class() -> type:
    """A torchao MinMaxObserver that tracks the `percentile`-th and (100 - percentile)-th values of
    each batch instead of its extremes (the widest over batches), clipping rare outliers."""
    from torchao.quantization.pt2e.observer import MinMaxObserver

    class PercentileObserver(MinMaxObserver):
        def __init__(self, percentile: float = 99.99, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.percentile = percentile

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.detach().float().flatten()
            n = flat.numel()
            if n == 0:
                return x
            k = min(n, max(1, math.ceil(self.percentile / 100.0 * n)))
            hi, lo = flat.kthvalue(k).values, flat.kthvalue(n - k + 1).values
            self.min_val.copy_(torch.minimum(self.min_val, lo))
            self.max_val.copy_(torch.maximum(self.max_val, hi))
            return x

    return PercentileObserver
