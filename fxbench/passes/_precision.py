"""Mixed precision for to-fp16 and to-bf16: which ops run low, casts at the boundaries, fp16 overflow checks."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch.fx import GraphModule, Node
from torch.fx.node import map_aggregate

from fxbench.passes._graph import ASSERTS, example_value, get_tensor, run, set_tensor, within
from fxbench.passes.base import FxbenchPass, PassOptions, PassResult, module_path

__all__ = [
    "FP32_OPS", "LOW_OPS", "MixedPrecision", "Overflow", "PrecisionOptions", "PrecisionPlan", "apply_plan", "find_overflows",
    "matches", "overflow_keepers", "convert_precision", "pending_changes", "plan_precision", "value_ranges",
]

aten = torch.ops.aten

# As torch.autocast does: matrix products and convolutions run in the low precision...
LOW_OPS = frozenset({
    "linear", "addmm", "mm", "bmm", "baddbmm", "addbmm", "matmul", "einsum",
    "conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
})
# ...normalizations, softmax, reductions and the functions whose range or precision fp16 cannot
# hold stay in fp32 (autocast's fp32 list, as far as its ops appear in export graphs)...
FP32_OPS = frozenset({
    "layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "rms_norm", "_fused_rms_norm",
    "softmax", "_softmax", "_safe_softmax", "log_softmax", "_log_softmax",
    "sum", "mean", "var", "var_mean", "std", "std_mean", "prod", "cumsum", "cumprod", "logsumexp", "norm",
    "linalg_vector_norm", "cosine_similarity", "cdist", "dist",
    "pow", "exp", "expm1", "log", "log1p", "log2", "log10", "rsqrt", "reciprocal", "softplus", "erfinv",
    "acos", "asin", "cosh", "sinh", "tan",
})
# ...and everything else runs in the widest precision of its floating inputs (type promotion).
_FP16_MAX = float(torch.finfo(torch.float16).max)


def _packet(node: Node) -> str:
    target = node.target
    packet = getattr(target, "overloadpacket", None)
    return packet.__name__ if packet is not None else getattr(target, "__name__", str(target))


def _op_names(node: Node) -> set[str]:
    packet = _packet(node)
    return {str(node.target), packet, f"aten.{packet}"}


def matches(node: Node, entries: Iterable[str]) -> bool:
    """Whether a keep-list entry names this node's op ("softmax", "aten.gelu", "aten.gelu.default")
    or a module it was traced in ("encoder.layer.3" covers everything under it; patterns such as
    "encoder.layer.*.output" as every option that names modules takes them)."""
    names, path = _op_names(node), module_path(node)
    return any(entry in names or within(path, [entry]) for entry in entries)


def _float_dtype(node: Any) -> torch.dtype | None:
    v = example_value(node)
    return v.dtype if isinstance(v, torch.Tensor) and v.dtype.is_floating_point else None


def _is_scalar_tensor(node: Node) -> bool:
    v = example_value(node)
    return isinstance(v, torch.Tensor) and v.dim() == 0


def _explicit_dtype(node: Node) -> bool:
    """Ops told their output dtype (casts, factories with dtype=): their output keeps it."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return False
    for i, arg in enumerate(schema.arguments):
        if arg.name == "dtype":
            value = node.kwargs.get("dtype", node.args[i] if i < len(node.args) and not arg.kwarg_only else None)
            return value is not None
    return False


def _float_inputs(node: Node) -> list[Node]:
    found: list[Node] = []

    def visit(a: Any) -> Any:
        if isinstance(a, Node) and _float_dtype(a) is not None and a not in found:
            found.append(a)
        return a

    map_aggregate((node.args, node.kwargs), visit)
    return found


def _is_param(node: Node) -> bool:
    return node.op == "get_attr" and _float_dtype(node) is not None


@dataclass
class PrecisionPlan:
    """What runs in which dtype: `compute[n]` for call_function nodes that compute on floats,
    `out[n]` the dtype each floating value will have, the casts each consumer needs, and the
    dtypes each parameter (get_attr) is wanted in."""

    low: torch.dtype
    compute: dict[Node, torch.dtype] = field(default_factory=dict)
    out: dict[Node, torch.dtype] = field(default_factory=dict)
    casts: list[tuple[Node, Node, torch.dtype]] = field(default_factory=list)  # (consumer, input, dtype)
    param_uses: dict[Node, set[torch.dtype]] = field(default_factory=dict)
    output_casts: list[Node] = field(default_factory=list)

    def materialized_low(self) -> set[Node]:
        """Values that will exist in the low precision (computed low, or cast down for a consumer)."""
        made = {n for n, d in self.out.items() if d == self.low and n.op == "call_function"}
        made |= {src for consumer, src, d in self.casts if d == self.low and not _is_mask_cast(consumer, src)}
        made |= {p for p, uses in self.param_uses.items() if self.low in uses}
        return made


def _is_mask_cast(consumer: Node, src: Node) -> bool:
    """An attention mask (large negative values meaning 'masked') cast for SDPA: saturated, not overflowed."""
    if _packet(consumer) != "scaled_dot_product_attention":
        return False
    mask = consumer.args[3] if len(consumer.args) > 3 else consumer.kwargs.get("attn_mask")
    return mask is src


def plan_precision(gm: GraphModule, low: torch.dtype, keep: set[Node], *, keep_defaults: bool = True) -> PrecisionPlan:
    """Decide each node's compute dtype: `keep` nodes and (with keep_defaults) FP32_OPS in fp32,
    LOW_OPS in `low`, the rest the widest of their floating inputs. Parameters follow their users."""
    plan = PrecisionPlan(low)
    fp32 = torch.float32
    for node in gm.graph.nodes:
        dtype = _float_dtype(node)
        if node.op == "placeholder" and dtype is not None:
            plan.out[node] = dtype
        if node.op == "output":
            plan.output_casts = [a for a in _float_inputs(node) if plan.out.get(a) == low]
        if node.op != "call_function":
            continue
        if node.target is operator.getitem:
            parent = node.args[0]
            if dtype is not None:
                plan.out[node] = plan.compute.get(parent, dtype) if dtype == fp32 else dtype
            continue
        inputs = [a for a in _float_inputs(node) if a.op == "get_attr" or a in plan.out]
        if _explicit_dtype(node) or not inputs:
            if dtype is not None:
                plan.out[node] = dtype
            continue
        known = [a for a in inputs if not _is_param(a)]
        if any(plan.out[a] not in (fp32, low) for a in known):
            if dtype is not None:  # float64 and friends: leave the node as it is
                plan.out[node] = dtype
            continue
        packet = _packet(node)
        if node in keep or (keep_defaults and packet in FP32_OPS):
            compute = fp32
        elif packet in LOW_OPS:
            compute = low
        else:
            shaped = [a for a in known if not _is_scalar_tensor(a)] or known
            compute = fp32 if any(plan.out[a] == fp32 for a in shaped) else low
        plan.compute[node] = compute
        for a in inputs:
            if _is_param(a):
                plan.param_uses.setdefault(a, set()).add(compute)
            elif plan.out[a] != compute:
                plan.casts.append((node, a, compute))
        if dtype is not None:
            plan.out[node] = compute if dtype == fp32 else dtype
    # A parameter wanted in both dtypes stays fp32 and is cast down for its low users.
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for p, uses in plan.param_uses.items():
        plan.out[p] = low if uses == {low} else fp32
        if len(uses) > 1:
            for user in sorted(p.users, key=order.__getitem__):
                if plan.compute.get(user) == low:
                    plan.casts.append((user, p, low))
    return plan


def _retyped(plan: PrecisionPlan) -> list[tuple[Node, torch.dtype, torch.dtype]]:
    """(node, old, new) for the call_function values whose dtype the plan changes."""
    changed = []
    for node, dtype in plan.out.items():
        if node.op == "call_function":
            old = _float_dtype(node) or _first_float(example_value(node))
            if old == torch.float32 and dtype != old:
                changed.append((node, old, dtype))
    return changed


def pending_changes(plan: PrecisionPlan) -> int:
    """How many changes applying the plan would make (0: the graph already is as planned)."""
    params = sum(plan.out[p] == plan.low and _float_dtype(p) != plan.low for p in plan.param_uses)
    return params + len(plan.casts) + len(_retyped(plan)) + len(plan.output_casts)


def _retype(val: Any, old: torch.dtype, new: torch.dtype) -> Any:
    def one(v: Any) -> Any:
        return v.to(new) if isinstance(v, torch.Tensor) and v.dtype == old else v

    return map_aggregate(val, one) if isinstance(val, (tuple, list)) else one(val)


def apply_plan(gm: GraphModule, plan: PrecisionPlan) -> tuple[int, int]:
    """Rewrite `gm` as planned; returns how many changes were made (casts, retyped nodes and
    parameters) and how many cast nodes were inserted."""
    graph, changes = gm.graph, 0
    cache: dict[tuple[Node, torch.dtype, bool], Node] = {}

    def cast(src: Node, dtype: torch.dtype, before: Node, saturate: bool) -> Node:
        key = (src, dtype, saturate)
        if key not in cache:
            with graph.inserting_before(before):
                value = src
                if saturate and dtype == torch.float16:
                    # Masks use fp32's lowest value for "masked": clamp it to fp16's, not to -inf.
                    value = graph.call_function(aten.clamp.default, (src, -_FP16_MAX, _FP16_MAX))
                    value.meta["val"] = example_value(src)
                node = graph.call_function(aten._to_copy.default, (value,), {"dtype": dtype})
            node.meta["val"] = _retype(example_value(src), _float_dtype(src), dtype)
            node.meta["nn_module_stack"] = before.meta.get("nn_module_stack", src.meta.get("nn_module_stack", {}))
            cache[key] = node
        return cache[key]

    # Parameters first: their new dtype decides which casts remain. New tensors, never in-place
    # changes: the captured program may share them.
    for p in plan.param_uses:
        if plan.out[p] == plan.low and _float_dtype(p) != plan.low:
            set_tensor(gm, p.target, get_tensor(gm, p, plain=False).detach().to(plan.low))
            p.meta["val"] = _retype(example_value(p), _float_dtype(p), plan.low)
            changes += 1
    for consumer, src, dtype in plan.casts:
        new = cast(src, dtype, consumer, _is_mask_cast(consumer, src))
        consumer.args = map_aggregate(consumer.args, lambda a: new if a is src else a)
        consumer.kwargs = map_aggregate(consumer.kwargs, lambda a: new if a is src else a)
        changes += 1
    for node, old, dtype in _retyped(plan):
        node.meta["val"] = _retype(example_value(node), old, dtype)
        node.meta.pop("tensor_meta", None)
        changes += 1
    # Export's dtype asserts pin the capture's dtypes; keep them true.
    for node in (n for target in ASSERTS for n in graph.find_nodes(op="call_function", target=target)):
        now = _float_dtype(node.args[0])
        if now is not None and node.kwargs.get("dtype") not in (None, now):
            node.kwargs = {**node.kwargs, "dtype": now}
    out = next(iter(graph.find_nodes(op="output")))
    for src in plan.output_casts:
        new = cast(src, torch.float32, out, False)
        out.args = map_aggregate(out.args, lambda a: new if a is src else a)
        changes += 1
    return changes, len(cache)


def _first_float(val: Any) -> torch.dtype | None:
    if isinstance(val, (tuple, list)):
        for v in val:
            if isinstance(v, torch.Tensor) and v.dtype.is_floating_point:
                return v.dtype
    return None


@dataclass(frozen=True)
class Overflow:
    """A value beyond fp16's range on the sample inputs, where fp16 would hold it."""

    node: str
    module: str
    op: str
    max_abs: float

    def describe(self) -> str:
        return f"{self.module or '<top>'} ({self.op}, max |x| {self.max_abs:.3g})"


def value_ranges(gm: GraphModule, inputs: dict[str, torch.Tensor]) -> dict[Node, float]:
    """Largest finite |value| of every floating node (and parameter) when the fp32 program runs on `inputs`."""
    ranges: dict[Node, float] = {}

    def record(node: Node, result: Any) -> None:
        tensors = [t for t in (result if isinstance(result, (tuple, list)) else [result])
                   if isinstance(t, torch.Tensor) and t.dtype.is_floating_point and t.numel()]
        if tensors:
            finite = [t.detach().abs().nan_to_num(0.0, posinf=0.0, neginf=0.0).max().item() for t in tensors]
            ranges[node] = max(finite)

    run(gm, inputs, lambda n, result: record(n, result) if n.op in ("call_function", "get_attr") else None)
    return ranges


def find_overflows(ranges: dict[Node, float], plan: PrecisionPlan, limit: float = _FP16_MAX) -> list[Overflow]:
    """Nodes whose fp32 values exceed `limit` and that the plan would hold in fp16."""
    found = []
    for node in plan.materialized_low():
        peak = ranges.get(node, 0.0)
        if peak > limit:
            op = str(node.target) if node.op == "call_function" else "parameter"
            found.append(Overflow(node.name, module_path(node), op, peak))
    return sorted(found, key=lambda o: -o.max_abs)


def overflow_keepers(overflows: list[Overflow], plan: PrecisionPlan, gm: GraphModule) -> set[Node]:
    """Nodes to keep in fp32 so that no overflowing value is held in fp16: the overflowing nodes
    and the consumers that would cast them down."""
    names = {o.node for o in overflows}
    nodes = {n for n in gm.graph.nodes if n.name in names}
    keepers = {n for n in nodes if n.op == "call_function"}
    keepers |= {consumer for consumer, src, d in plan.casts if src in nodes and d == plan.low}
    keepers |= {u for n in nodes if n.op == "get_attr" for u in n.users if plan.compute.get(u) == plan.low}
    return keepers


def convert_precision(
    gm: GraphModule, low: torch.dtype, context: Any | None, *, keep: tuple[str, ...], keep_defaults: bool,
    check_overflow: bool, keep_overflow: bool, label: str,
) -> tuple[int, dict[str, Any]]:
    """Plan and apply a mixed-precision rewrite of `gm`; returns (changes, details for the record).
    Overflow findings also go to `context.notes`."""
    kept = {n for n in gm.graph.nodes if n.op == "call_function" and matches(n, keep)}
    plan = plan_precision(gm, low, kept, keep_defaults=keep_defaults)
    if pending_changes(plan) == 0:
        return 0, {}
    overflows: list[Overflow] = []
    kept_for_overflow: set[Node] = set()
    if check_overflow and context is not None:
        ranges = value_ranges(gm, context.inputs)
        overflows = find_overflows(ranges, plan)
        first = overflows
        for _ in range(8 if keep_overflow else 0):  # keeping a node in fp32 can move the boundary
            extra = overflow_keepers(overflows, plan, gm) - kept
            if not extra:
                break
            kept |= extra
            kept_for_overflow |= extra
            plan = plan_precision(gm, low, kept, keep_defaults=keep_defaults)
            overflows = find_overflows(ranges, plan)
        if first:
            shown = ", ".join(o.describe() for o in first[:5]) + (f" and {len(first) - 5} more" if len(first) > 5 else "")
            if keep_overflow and not overflows:
                action = f"kept {len(kept_for_overflow)} nodes in fp32"
            elif keep_overflow:
                action = f"{len(overflows)} still overflow"
            else:
                action = f"they become inf in fp16; rerun with {label}:keep_overflow=true to keep them in fp32"
            context.notes.append(f"{label}: {len(first)} values exceed fp16's range (|x| > 65504) on the sample inputs: {shown}; {action}")
        overflows = first
    changes, casts = apply_plan(gm, plan)
    low_nodes = sum(d == low for d in plan.compute.values())
    details = {
        "dtype": str(low).removeprefix("torch."),
        "nodes_low": low_nodes,
        "nodes_fp32": len(plan.compute) - low_nodes,
        "casts": casts,
        "parameters_low": sum(plan.out[p] == low for p in plan.param_uses),
        "kept_by_option": sorted(n.name for n in plan.compute if n in kept and n not in kept_for_overflow),
    }
    if check_overflow:
        details["overflow"] = [dataclasses.asdict(o) for o in overflows]
        details["kept_for_overflow"] = sorted(n.name for n in kept_for_overflow)
    return changes, details


@dataclass(frozen=True)
class PrecisionOptions(PassOptions):
    """Options to-fp16 and to-bf16 share."""

    keep: tuple[str, ...] = ()  # ops ("gelu", "aten.gelu.default") or module paths ("lm_head", "encoder.layer.0-1") kept in fp32
    keep_defaults: bool = True  # keep layer norms, softmax, reductions, pow/exp/log in fp32


class MixedPrecision(FxbenchPass):
    """What to-fp16 and to-bf16 share: plan which node computes in which dtype, and apply the plan."""

    in_place = True
    low: ClassVar[torch.dtype]

    def overflow(self) -> tuple[bool, bool]:
        """(check for values beyond the low precision's range, keep them in fp32)."""
        return False, False

    def call(self, graph_module: GraphModule) -> PassResult:
        check, keep = self.overflow()
        changes, self.details = convert_precision(graph_module, self.low, self.context, keep=self.options.keep,
                                                  keep_defaults=self.options.keep_defaults, check_overflow=check,
                                                  keep_overflow=keep, label=self.name)
        return PassResult(graph_module, changes > 0)
