"""Attention sites for prune-heads: q/k/v and output projections, the head axes between them, sizes that count heads."""

from __future__ import annotations

import operator
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node

from fxbench.errors import PassOptionError
from fxbench.passes._graph import ASSERTS, example_tensor, example_value, in_module, same_shape
from fxbench.passes._surgery import ancestors
from fxbench.passes.base import module_path

__all__ = ["AttentionLayoutError", "AttentionSite", "Role", "attention_sites", "head_axes", "is_projection", "projection_weight", "rescale_sizes"]

aten = torch.ops.aten
_SDPA = {aten.scaled_dot_product_attention.default}
_SOFTMAX = {aten.softmax.int, aten._softmax.default, aten._safe_softmax.default}
_MATMUL = {aten.matmul.default, aten.bmm.default}
_PROJECTIONS = {aten.linear.default, aten.addmm.default, aten.mm.default, aten.matmul.default}
_VIEWS = {aten.view.default, aten._unsafe_view.default, aten.reshape.default}
_SAME = {  # ops whose output axes are their first input's
    aten.contiguous.default, aten.clone.default, aten.alias.default, aten._to_copy.default, aten.to.dtype,
    aten.to.dtype_layout, aten.to.device, aten.dropout.default, aten.neg.default, aten.detach.default,
}
_BINARY = {aten.mul.Tensor, aten.div.Tensor, aten.add.Tensor, aten.sub.Tensor, aten.masked_fill.Scalar,
           aten.masked_fill.Tensor, aten.where.self}
_SPLITS = {aten.split.Tensor, aten.split_with_sizes.default}


class AttentionLayoutError(PassOptionError):
    """An attention whose layout prune-heads cannot follow (the message names the op and module)."""


def _hint(d: Any) -> int:
    return d if isinstance(d, int) else int(d.node.hint)


def _shape(node: Any) -> list[int]:
    v = example_tensor(node)
    if v is None:
        raise AttentionLayoutError(f"prune-heads: {getattr(node, 'name', node)} has no recorded shape")
    return [_hint(d) for d in v.shape]


def is_projection(node: Node) -> bool:
    """A matmul with a weight attribute: linear(x, W[out, in]), addmm(b, x, W[in, out]), mm/matmul(x, W[in, out])."""
    if node.op != "call_function" or node.target not in _PROJECTIONS:
        return False
    w = node.args[1] if node.target == aten.linear.default else node.args[2 if node.target == aten.addmm.default else 1]
    return isinstance(w, Node) and w.op == "get_attr" and len(_shape(w)) == 2


def projection_weight(node: Node) -> tuple[Node, Node | None, int]:
    """(weight, bias, axis of the weight that holds output channels)."""
    a = node.args
    if node.target == aten.linear.default:
        return a[1], (a[2] if len(a) > 2 else None), 0
    if node.target == aten.addmm.default:
        return a[2], a[0], 1
    return a[1], None, 1


@dataclass
class Role:
    """How q, k or v reaches attention: its projection, where its channels start, heads and size."""

    projection: Node
    offset: int
    heads: int
    head_dim: int


@dataclass
class AttentionSite:
    """One attention computation: its q/k/v roles and the projection its output goes through."""

    path: str  # module path of the attention computation
    core: Node  # the SDPA node, or the softmax of an eager attention
    q: Role
    k: Role
    v: Role
    out_proj: Node


def _trace_role(start: Node, what: str, path: str) -> Role:
    """Walk from an attention input back to its projection, through layout ops; note where the
    projection's output is split into (heads, head_dim) and which channels this role reads."""
    cur, offset, split = start, 0, None
    while not is_projection(cur):
        t = cur.target if cur.op == "call_function" else None
        if t in _VIEWS and split is None:
            src, out = _shape(cur.args[0]), _shape(cur)
            if len(out) == len(src) + 1 and out[-2] * out[-1] == src[-1]:
                split = (out[-2], out[-1])
        if t is operator.getitem and isinstance(cur.args[0], Node) and cur.args[0].target in _SPLITS:
            parent, i = cur.args[0], cur.args[1]
            sizes = parent.args[1]
            if split is not None:
                offset += i * sizes if isinstance(sizes, int) else sum(sizes[:i])
            cur = parent.args[0]
        elif t == aten.slice.Tensor and split is not None and cur.args[1] % len(_shape(cur)) == len(_shape(cur)) - 1:
            offset += cur.args[2] if len(cur.args) > 2 and cur.args[2] else 0
            cur = cur.args[0]
        elif t in _VIEWS or t in _SAME or t in (aten.transpose.int, aten.permute.default, aten.unsqueeze.default,
                                                 aten.expand.default, aten.slice.Tensor, aten.t.default):
            cur = cur.args[0]
        elif t in _BINARY:
            same = [a for a in cur.args if isinstance(a, Node) and example_tensor(a) is not None and same_shape(example_tensor(a), example_tensor(cur))]
            if not same:
                raise AttentionLayoutError(f"prune-heads: cannot follow {what} of {path} through {cur.name} ({t})")
            cur = same[0]
        else:
            raise AttentionLayoutError(f"prune-heads: cannot follow {what} of {path} through {cur.name} ({t}); "
                                       "its projection was not found")
    if split is None:
        raise AttentionLayoutError(f"prune-heads: {what} of {path} is never split into heads")
    return Role(cur, offset, *split)


def _tensor_users(n: Node) -> list[Node]:
    """Users of `n` other than the dtype asserts export leaves."""
    return [u for u in n.users if u.target not in ASSERTS]


def _eager_core(softmax: Node) -> tuple[Node, Node, Node, Node] | None:
    """(q, k, v, attention output) around an eager attention's softmax, or None."""
    cur = softmax.args[0]
    while isinstance(cur, Node) and cur.target not in _MATMUL and cur.target in (_BINARY | _SAME):
        cur = cur.args[0]
    if not isinstance(cur, Node) or cur.target not in _MATMUL:
        return None
    q, k = cur.args[0], cur.args[1]
    out = softmax
    while len(users := _tensor_users(out)) == 1 and users[0].target in _SAME:
        out = users[0]
    users = [u for u in _tensor_users(out) if u.target in _MATMUL and u.args[0] is out]
    return (q, k, users[0].args[1], users[0]) if len(users) == 1 else None


def attention_sites(gm: GraphModule, prefix: str) -> list[AttentionSite]:
    """Every attention inside stack `prefix` (SDPA, or softmax between two matmuls), with its
    q/k/v and output projections and the nodes in between."""
    sites = []
    for n in gm.graph.nodes:
        path = module_path(n)
        if n.op != "call_function" or not in_module(path, prefix):
            continue
        if n.target in _SDPA:
            q, k, v, out = n.args[0], n.args[1], n.args[2], n
        elif n.target in _SOFTMAX and (found := _eager_core(n)) is not None:
            q, k, v, out = found
        else:
            continue
        roles = [_trace_role(x, what, path) for x, what in ((q, "the query"), (k, "the key"), (v, "the value"))]
        o = out
        while not is_projection(o):
            if len(users := _tensor_users(o)) != 1:
                raise AttentionLayoutError(f"prune-heads: the output of {path} is used {len(users)} times before its projection")
            o = users[0]
            if not (is_projection(o) or o.target in _VIEWS or o.target in _SAME or o.target in (aten.transpose.int, aten.permute.default)):
                raise AttentionLayoutError(f"prune-heads: cannot follow the output of {path} through {o.name} ({o.target})")
        sites.append(AttentionSite(path, n, *roles, out_proj=o))
    return sites


def _groups(src: list[int], dst: list[int]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of axes with equal products, as a view/reshape regroups them."""
    groups, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        gi, gj, pi, pj = [], [], 1, 1
        if i < len(src):
            gi, pi, i = [i], src[i], i + 1
        if j < len(dst):
            gj, pj, j = [j], dst[j], j + 1
        while pi != pj:
            if i >= len(src) and j >= len(dst):
                raise AttentionLayoutError(f"prune-heads: cannot pair the axes of {src} and {dst}")
            if (pi < pj and i < len(src)) or j >= len(dst):
                gi, pi, i = gi + [i], pi * src[i], i + 1
            else:
                gj, pj, j = gj + [j], pj * dst[j], j + 1
        groups.append((gi, gj))
    return groups


def _align(axes: set[int], src_dim: int, dst_dim: int) -> set[int]:
    return {a + dst_dim - src_dim for a in axes}


def head_axes(site: AttentionSite) -> tuple[list[Node], dict[Node, set[int]]]:
    """The nodes between the q/k/v projections and the output projection, in graph order, with the
    axes of each that hold heads (and so shrink with them). Raises on ops the heads cannot be
    followed through, or on head-sized tensors that come from elsewhere (a per-head bias)."""
    projections = {r.projection for r in (site.q, site.k, site.v)}
    axes: dict[Node, set[int]] = {p: {len(_shape(p)) - 1} for p in projections}
    region: list[Node] = []
    order = {n: i for i, n in enumerate(site.core.graph.nodes)}
    frontier = sorted({u for p in projections for u in p.users}, key=order.__getitem__)
    seen = set(frontier)
    while frontier:
        n = frontier.pop(0)
        if n is site.out_proj:
            continue
        region.append(n)
        axes[n] = _propagate(n, axes, site.path)
        for u in n.users:
            if u not in seen and u not in projections:
                seen.add(u)
                frontier.append(u)
        frontier.sort(key=order.__getitem__)
    needed = ancestors(site.out_proj, set(region))
    stray = [n for n in region if example_tensor(n) is not None and n not in needed]
    if stray:
        raise AttentionLayoutError(f"prune-heads: {stray[0].name} of {site.path} takes heads elsewhere than its "
                                   "output projection (a KV-cache output?); capture without the cache")
    return region, axes


def _propagate(n: Node, axes: dict[Node, set[int]], path: str) -> set[int]:
    t, a = n.target, n.args
    if n.op != "call_function":
        raise AttentionLayoutError(f"prune-heads: heads of {path} reach {n.name} ({n.op})")
    if example_tensor(n) is None and not isinstance(example_value(n), (list, tuple)):
        return set()  # a size read, an assert: follows the tensors by itself
    src = axes.get(a[0], set()) if a and isinstance(a[0], Node) else set()
    if t in _VIEWS:
        out, result = _shape(n), set()
        for gi, gj in _groups(_shape(a[0]), out):
            held = [i for i in gi if i in src]
            if not held:
                continue
            big_in = [i for i in gi if _shape(a[0])[i] > 1]
            big_out = [j for j in gj if out[j] > 1]
            if len(held) > 1 or held[0] != big_in[0]:
                raise AttentionLayoutError(f"prune-heads: {n.name} in {path} merges heads with another axis; not supported")
            result.add(big_out[0])
        return result
    if t in _SAME or t in _SPLITS or t == aten.slice.Tensor or t is operator.getitem:
        return set(src)
    if t == aten.transpose.int:
        d0, d1 = (d % len(_shape(n)) for d in a[1:3])
        return {d1 if x == d0 else d0 if x == d1 else x for x in src}
    if t == aten.t.default:
        return {1 - x for x in src}
    if t == aten.permute.default:
        dims = [d % len(_shape(n)) for d in a[1]]
        return {dims.index(x) for x in src}
    if t == aten.unsqueeze.default:
        d = a[1] % len(_shape(n))
        return {x + 1 if x >= d else x for x in src}
    if t == aten.expand.default:
        return _align(src, len(_shape(a[0])), len(_shape(n)))
    if t in _BINARY or t == aten.cat.default or t in _SDPA or t in _MATMUL or t in _SOFTMAX:
        out = _shape(n)
        tensors = list(a[0]) if t == aten.cat.default else [x for x in a if isinstance(x, Node)]
        if t in _SDPA:
            tensors = tensors[:3]  # the mask is checked below
            if any(axes.get(x) != {len(_shape(x)) - 3} for x in tensors):
                raise AttentionLayoutError(f"prune-heads: {n.name} in {path} does not read heads on the axis SDPA takes them")
        result: set[int] = set()
        for x in tensors:
            if x in axes:
                result |= _align(axes[x], len(_shape(x)), len(out))
        if t in _MATMUL:
            result -= {len(out) - 1, len(out) - 2}
        extra = [x for x in [x for x in a if isinstance(x, Node)] + list(n.kwargs.values()) if isinstance(x, Node) and x not in axes]
        for x in extra:
            xs = _shape(x)
            if any(xs[i] > 1 for i in _align(result, len(out), len(xs)) if 0 <= i < len(xs)):
                raise AttentionLayoutError(f"prune-heads: {x.name} adds a per-head value in {path} (a position bias?); not supported")
        return result
    raise AttentionLayoutError(f"prune-heads: cannot follow the heads of {path} through {n.name} ({t})")


def _scale(value: Any, keep: int, total: int, where: str) -> Any:
    if not isinstance(value, int) or value in (-1, sys.maxsize) or value == 0:
        return value
    if value * keep % total:
        raise AttentionLayoutError(f"prune-heads: size {value} in {where} does not shrink evenly by {keep}/{total}")
    return value * keep // total


def rescale_sizes(region: list[Node], axes: dict[Node, set[int]], keep: int, total: int) -> int:
    """Shrink the literal sizes that count heads (view shapes, expand sizes, split sizes, slice
    bounds on a head axis) by keep/total; return how many arguments changed."""
    changed = 0
    for n in region:
        t, a = n.target, list(n.args)
        src = axes.get(a[0], set()) if a and isinstance(a[0], Node) else set()
        if t in _VIEWS or t == aten.expand.default:
            sizes = list(a[1])
            for i in axes[n]:
                if isinstance(sizes[i], Node):
                    raise AttentionLayoutError(f"prune-heads: {n.name} takes a computed head count; not supported")
                sizes[i] = _scale(sizes[i], keep, total, n.name)
            new = (a[0], sizes, *a[2:])
        elif t in _SPLITS and (a[2] if len(a) > 2 else 0) % len(_shape(a[0])) in src:
            new = (a[0], _scale(a[1], keep, total, n.name) if isinstance(a[1], int) else [_scale(s, keep, total, n.name) for s in a[1]], *a[2:])
        elif t == aten.slice.Tensor and a[1] % len(_shape(a[0])) in src:
            new = (a[0], a[1], *[_scale(v, keep, total, n.name) for v in a[2:4]], *a[4:])
        else:
            continue
        if tuple(new) != tuple(n.args):
            n.args = tuple(new)
            changed += 1
    return changed
