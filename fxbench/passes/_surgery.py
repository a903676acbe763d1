"""Helpers of the layer-surgery passes: module paths, block stacks, module outputs, cleanup, attention sites."""

from __future__ import annotations

import fnmatch
import operator
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node

from fxbench.errors import PassOptionError
from fxbench.passes.base import FxbenchPass, module_path

__all__ = [
    "AttentionLayoutError",
    "AttentionSite",
    "attention_sites",
    "attr_value",
    "block_nodes",
    "choose_stack",
    "erase_block",
    "find_stacks",
    "head_axes",
    "in_module",
    "match_paths",
    "module_outputs",
    "module_paths",
    "node_val",
    "note",
    "projection_weight",
    "prune_weights",
    "refresh_vals",
    "rescale_sizes",
    "resolve_indices",
    "same_shape",
    "surgery_meta",
    "within",
]

_META = "fxbench_surgery"
_INDEX = re.compile(r"^\d+$")


def node_val(node: Any) -> torch.Tensor | None:
    """The example value export recorded for a node, if it is a tensor."""
    v = node.meta.get("val") if isinstance(node, Node) else None
    return v if isinstance(v, torch.Tensor) else None


def same_shape(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Shape equality that compares symbolic sizes by expression, without adding guards."""
    return a.dim() == b.dim() and all(str(x) == str(y) for x, y in zip(a.shape, b.shape))


def note(p: FxbenchPass, text: str) -> None:
    """Tell the run what the pass did (the runner puts notes in the pass record)."""
    if p.context is not None:
        p.context.notes.append(f"{p.name}: {text}")


def surgery_meta(gm: GraphModule) -> dict[str, Any]:
    """Bookkeeping kept with the module across passes (original block counts, head indices), so a
    second run of a surgery pass knows what the first one did."""
    return gm.meta.setdefault(_META, {})


def in_module(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def module_paths(gm: GraphModule) -> set[str]:
    """Every module path that has nodes, with all its parents ("a.b.c" gives a, a.b, a.b.c)."""
    paths: set[str] = set()
    for n in gm.graph.nodes:
        parts = module_path(n).split(".") if n.op == "call_function" and module_path(n) else []
        paths.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return paths


def find_stacks(gm: GraphModule) -> dict[str, list[int]]:
    """Block stacks: module paths followed by an integer index ("encoder.layer" -> [0, 1, ...]).
    Only the outermost index of a path counts, so blocks inside blocks are not stacks of their own."""
    stacks: dict[str, set[int]] = {}
    for path in module_paths(gm):
        parts = path.split(".")
        for i, part in enumerate(parts):
            if _INDEX.match(part):
                if i > 0 and i == len(parts) - 1:
                    stacks.setdefault(".".join(parts[:i]), set()).add(int(part))
                break
    return {k: sorted(v) for k, v in sorted(stacks.items())}


def choose_stack(gm: GraphModule, wanted: str, pass_name: str) -> str:
    """The block stack named by `wanted` (a full prefix, or a part of one such as "decoder"), or the
    only stack the model has."""
    stacks = find_stacks(gm)
    listing = ", ".join(f"{k} ({len(v)} blocks)" for k, v in stacks.items()) or "none"
    if not stacks:
        raise PassOptionError(f"{pass_name}: the graph has no stack of numbered blocks (such as encoder.layer.N); nothing to operate on")
    if wanted:
        if wanted in stacks:
            return wanted
        matches = [k for k in stacks if wanted in k.split(".") or k.endswith("." + wanted)]
        if len(matches) == 1:
            return matches[0]
        raise PassOptionError(f"{pass_name}: stack={wanted!r} matches {len(matches) or 'no'} block stacks; choose one of: {listing}")
    if len(stacks) > 1:
        raise PassOptionError(f"{pass_name}: the model has several block stacks: {listing}; choose one with stack=NAME")
    return next(iter(stacks))


def resolve_indices(indices: Iterable[int], count: int, stack: str, pass_name: str) -> list[int]:
    """Block indices with Python's negative counting, checked against the stack's `count`, sorted
    and unique."""
    out = set()
    for i in indices:
        j = i + count if i < 0 else i
        if not 0 <= j < count:
            raise PassOptionError(f"{pass_name}: block {i} is out of range; {stack} has {count} blocks (0-{count - 1})")
        out.add(j)
    return sorted(out)


def block_nodes(gm: GraphModule, prefix: str) -> list[Node]:
    """The call_function nodes traced inside module `prefix` (and its submodules), in graph order."""
    return [n for n in gm.graph.nodes if n.op == "call_function" and in_module(module_path(n), prefix)]


def _ancestors(node: Node, within: set[Node]) -> set[Node]:
    seen: set[Node] = set()
    stack = [a for a in node.all_input_nodes if a in within]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(a for a in n.all_input_nodes if a in within)
    return seen


def module_outputs(nodes: list[Node]) -> list[Node]:
    """The values a module returns: tensors computed inside it and used outside it, less those the
    others were computed from (a residual read inside a norm, as Llama's cast, is not returned)."""
    inside = set(nodes)
    escaping = [n for n in nodes if node_val(n) is not None and any(u not in inside for u in n.users)]
    upstream: set[Node] = set()
    for n in escaping:
        upstream |= _ancestors(n, inside)
    return [n for n in escaping if n not in upstream]


def _erase_dead_inputs(graph: torch.fx.Graph, seeds: Iterable[Node]) -> int:
    """Erase pure nodes left without users, starting from `seeds`, walking towards the inputs."""
    erased = 0
    stack = list(seeds)
    while stack:
        n = stack.pop()
        if n.graph is not graph or n.users or n.op in ("placeholder", "output") or n.is_impure():
            continue
        inputs = list(n.all_input_nodes)
        graph.erase_node(n)
        erased += 1
        stack.extend(inputs)
    return erased


def erase_block(gm: GraphModule, nodes: list[Node]) -> int:
    """Erase a module's nodes (whose results must no longer be used outside it), then whatever
    outside nodes only they used. Returns the number of nodes erased."""
    inside = set(nodes)
    outside_inputs: list[Node] = []
    for n in reversed(nodes):
        stray = [u for u in n.users if u not in inside]
        if stray:
            raise RuntimeError(f"{n.name} of the removed module is still used by {stray[0].name}")
        outside_inputs.extend(a for a in n.all_input_nodes if a not in inside)
        gm.graph.erase_node(n)
    return len(nodes) + _erase_dead_inputs(gm.graph, outside_inputs)


def _delete_attr(root: torch.nn.Module, qualified: str) -> bool:
    owner_path, _, attr = qualified.rpartition(".")
    try:
        owner = root.get_submodule(owner_path) if owner_path else root
    except AttributeError:
        return False
    if not hasattr(owner, attr):
        return False
    delattr(owner, attr)
    return True


def prune_weights(gm: GraphModule, targets: Iterable[str]) -> int:
    """Delete the attributes in `targets` that no get_attr node reads any more, and the submodules
    left empty; returns how many tensors went (the cleanup eliminate-dead-code does, limited to
    what a surgery pass cut off)."""
    read = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    removed = sum(_delete_attr(gm, t) for t in dict.fromkeys(targets) if t not in read)
    if removed:
        gm.delete_all_unused_submodules()
    return removed


def _part_matches(part: str, pattern: str) -> bool:
    """One path component against one pattern component: shell wildcards, or an index range (0-5)."""
    if (m := re.fullmatch(r"(\d+)-(\d+)", pattern)) and part.isdigit():
        return int(m[1]) <= int(part) <= int(m[2])
    return fnmatch.fnmatchcase(part, pattern)


def match_paths(patterns: Iterable[str], paths: Iterable[str]) -> list[str]:
    """Module paths matching patterns part by part ("encoder.layer.*" or "encoder.layer.0-5"
    match the blocks, not what is inside them), in sorted order."""
    split = [pat.split(".") for pat in patterns]
    return [
        p for p in sorted(paths)
        if any(len(parts) == len(pat) and all(map(_part_matches, parts, pat)) for pat in split for parts in [p.split(".")])
    ]


def within(path: str, patterns: Iterable[str]) -> bool:
    """Whether module `path` is, or is inside, a module matching one of `patterns`."""
    parts = path.split(".") if path else []
    return bool(match_paths(patterns, {".".join(parts[: i + 1]) for i in range(len(parts))}))


# ----- attention sites (prune-heads) ---------------------------------------------------------

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
    v = node_val(node)
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
            same = [a for a in cur.args if isinstance(a, Node) and node_val(a) is not None and same_shape(node_val(a), node_val(cur))]
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
    return [u for u in n.users if u.target != aten._assert_tensor_metadata.default]


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
    needed = _ancestors(site.out_proj, set(region))
    stray = [n for n in region if node_val(n) is not None and n not in needed]
    if stray:
        raise AttentionLayoutError(f"prune-heads: {stray[0].name} of {site.path} takes heads elsewhere than its "
                                   "output projection (a KV-cache output?); capture without the cache")
    return region, axes


def _propagate(n: Node, axes: dict[Node, set[int]], path: str) -> set[int]:
    t, a = n.target, n.args
    if n.op != "call_function":
        raise AttentionLayoutError(f"prune-heads: heads of {path} reach {n.name} ({n.op})")
    if node_val(n) is None and not isinstance(n.meta.get("val"), (list, tuple)):
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


def attr_value(gm: GraphModule, target: Any) -> Any:
    """The tensor a get_attr target names ("model.encoder.layer.0.attention.self.query.weight")."""
    value: Any = gm
    for part in str(target).split("."):
        value = getattr(value, part)
    return value


def refresh_vals(gm: GraphModule, nodes: Iterable[Node]) -> None:
    """Recompute the recorded example values of `nodes` (in graph order) after their shapes
    changed, with the capture's own fake-tensor mode, so later passes read true shapes."""
    from torch._guards import detect_fake_mode

    mode = detect_fake_mode([n.meta.get("val") for n in gm.graph.find_nodes(op="placeholder")])
    if mode is None:
        return
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for n in sorted(set(nodes), key=order.__getitem__):
        if n.op == "get_attr":
            n.meta["val"] = mode.from_tensor(attr_value(gm, n.target), static_shapes=True)
        elif n.op == "call_function":
            args, kwargs = torch.fx.node.map_arg((n.args, n.kwargs), lambda a: a.meta.get("val"))
            with mode:
                n.meta["val"] = n.target(*args, **kwargs)
