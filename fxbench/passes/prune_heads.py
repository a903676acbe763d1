"""Structured removal of attention heads: by index per layer, or the lowest-norm share of each layer."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch.fx import GraphModule

from fxbench.errors import PassOptionError
from fxbench.passes._attention import AttentionSite, attention_sites, head_axes, projection_weight, rescale_sizes
from fxbench.passes._graph import get_tensor, refresh_values, set_tensor, within
from fxbench.passes._surgery import StackSurgery, resolve_indices, surgery_meta
from fxbench.passes.base import PassOptions, PassResult
from fxbench.passes.registry import register_pass

_ITEM = re.compile(r"^(\*|\d+(?:-\d+)?):(\d+(?:-\d+)?(?:\+\d+(?:-\d+)?)*)$")


def _span(text: str) -> range:
    lo, _, hi = text.partition("-")
    return range(int(lo), int(hi or lo) + 1)


@dataclass(frozen=True)
class PruneHeadsOptions(PassOptions):
    heads: tuple[str, ...] = ()  # LAYERS:HEADS items: 0:1+3 (layer 0, heads 1 and 3), 2-5:0, *:0-1
    ratio: float = 0.0  # or: this share of each layer's heads (KV groups), lowest weight norm first
    layers: tuple[int, ...] = ()  # with ratio: only these layers (default: all)
    stack: str = ""  # which block stack when the model has several (decoder, model.encoder.layers)
    attention: str = ""  # only attention modules of this name in a block (self_attn, encoder_attn)

    def validate(self) -> None:
        if bool(self.heads) == bool(self.ratio):
            raise ValueError("needs heads=LAYER:HEAD+HEAD,... or ratio=0.25 (one of them)")
        if self.ratio and not 0 < self.ratio < 1:
            raise ValueError(f"ratio={self.ratio} must lie between 0 and 1")
        self.plan()

    def plan(self) -> dict[int | None, set[int]]:
        """Heads to remove per layer (None: every layer), from heads=."""
        out: dict[int | None, set[int]] = {}
        for item in self.heads:
            m = _ITEM.match(item.replace(" ", ""))
            if m is None:
                raise ValueError(f"{item!r} is not LAYER:HEAD+HEAD (e.g. 0:1+3, 2-5:0, *:0)")
            heads = {h for part in m[2].split("+") for h in _span(part)}
            for layer in ([None] if m[1] == "*" else _span(m[1])):
                out.setdefault(layer, set()).update(heads)
        return out


def _check_unshared(gm: GraphModule, site: AttentionSite) -> None:
    for proj in {site.q.projection, site.k.projection, site.v.projection, site.out_proj}:
        for t in projection_weight(proj)[:2]:
            users = {u for n in gm.graph.find_nodes(op="get_attr", target=t.target) for u in n.users} if t is not None else set()
            if users - {proj}:
                raise PassOptionError(f"prune-heads: {t.target} is shared with {len(users) - 1} other ops (tied across "
                                      "layers?); cannot prune it in one place")


def _slice_projections(gm: GraphModule, site: AttentionSite, keep_heads: list[int], keep_groups: list[int]) -> None:
    """Keep the q rows of `keep_heads`, the k/v rows of `keep_groups` (also inside a fused qkv
    projection, by each role's offset) and the matching input columns of the output projection."""
    keep: dict[torch.fx.Node, set[int]] = {}
    for role, kept in ((site.q, keep_heads), (site.k, keep_groups), (site.v, keep_groups)):
        w, _, axis = projection_weight(role.projection)
        dropped = {role.offset + h * role.head_dim + j for h in range(role.heads) if h not in kept for j in range(role.head_dim)}
        keep[role.projection] = keep.get(role.projection, set(range(get_tensor(gm, w.target).shape[axis]))) - dropped
    for proj, channels in keep.items():
        index = torch.tensor(sorted(channels))
        for t, axis in zip(projection_weight(proj)[:2], (projection_weight(proj)[2], 0)):
            if t is not None:
                set_tensor(gm, str(t.target), get_tensor(gm, t.target).index_select(axis, index).clone())
    w, _, axis = projection_weight(site.out_proj)
    d = site.q.head_dim
    columns = torch.tensor([h * d + j for h in keep_heads for j in range(d)])
    set_tensor(gm, str(w.target), get_tensor(gm, w.target).index_select(1 - axis, columns).clone())


def _group_norms(gm: GraphModule, site: AttentionSite) -> list[float]:
    """Squared L2 norm of each KV group's q/k/v rows and output-projection columns (a group is one
    head without grouped-query attention); the ranking is that of the plain L2 norm."""
    rep, norms = site.q.heads // site.k.heads, [0.0] * site.k.heads
    for role, per in ((site.q, rep), (site.k, 1), (site.v, 1)):
        w, _, axis = projection_weight(role.projection)
        weight = get_tensor(gm, w.target).detach()
        for h in range(role.heads):
            norms[h // per] += float(weight.narrow(axis, role.offset + h * role.head_dim, role.head_dim).pow(2).sum())
    w, _, axis = projection_weight(site.out_proj)
    weight, d = get_tensor(gm, w.target).detach(), site.q.head_dim
    for h in range(site.q.heads):
        norms[h // rep] += float(weight.narrow(1 - axis, h * d, d).pow(2).sum())
    return norms


@register_pass("prune-heads")
class PruneHeads(StackSurgery):
    """Remove attention heads (heads=0:1+3,2:0 or ratio=0.25), shrinking the projections to match.

    Rules:
      1. attention is found inside the block stack (stack= as in drop-layers) as SDPA or as a
         softmax between two matmuls; its q/k/v projections are followed back through view,
         transpose, RoPE and split ops (GPT-2's fused c_attn too), its output projection forward;
      2. heads= lists LAYER:HEAD+HEAD items (ranges a-b, '*' for every layer) in the captured
         model's numbering, applied to every attention of the layer unless attention= names one
         (Whisper's self_attn, encoder_attn); heads already pruned are skipped, so a second run
         changes nothing;
      3. ratio= removes that share (rounded, at least one head kept) of each layer's heads with the
         lowest squared L2 norm of their q/k/v rows and output-projection columns; a second run
         with the same ratio changes nothing;
      4. with grouped-query attention a KV head goes with all its query heads: heads= must list
         whole groups, ratio= counts groups;
      5. projection weights and biases are sliced (the output projection's bias stays), and sizes
         that count heads in views, expands, splits and slices shrink with them (SDPA reads
         shapes from its inputs); per-head biases (T5, ALiBi) and tied weights are refused;
      6. the model changes on purpose (exact=False): the deviation is reported.
    """

    Options = PruneHeadsOptions

    def call(self, graph_module: GraphModule) -> PassResult:
        gm, o = graph_module, self.options
        prefix, _, blocks = self.stack(gm)
        plan = o.plan() if o.heads else {}
        resolve_indices([i for i in [*plan, *o.layers] if i is not None], blocks, prefix, self.name)
        kept_by_site = surgery_meta(gm).setdefault("heads", {})
        # attention= names a module anywhere inside a block ("self", "attention.self", "encoder_attn").
        sites = [s for s in attention_sites(gm, prefix) if not o.attention or within(s.path, [f"{prefix}.*.**.{o.attention}"])]
        if not sites:
            raise PassOptionError(f"prune-heads: no attention{' named ' + o.attention if o.attention else ''} found in {prefix}")
        params_before, done, work = sum(p.numel() for p in gm.parameters()), [], []
        for site in sites:
            layer = int(site.path[len(prefix) + 1:].split(".")[0])
            info = kept_by_site.setdefault(site.path, {"heads": site.q.heads, "kv_heads": site.k.heads})
            kept: list[int] = info.setdefault("kept", list(range(info["heads"])))
            rep = info["heads"] // info["kv_heads"]
            if len(kept) != site.q.heads or site.q.heads % site.k.heads:
                raise PassOptionError(f"prune-heads: {site.path} has {site.q.heads} heads, not the {len(kept)} expected")
            if o.heads:
                wanted = plan.get(layer, set()) | plan.get(None, set())
                if bad := sorted(h for h in wanted if h >= info["heads"]):
                    raise PassOptionError(f"prune-heads: {site.path} has {info['heads']} heads (0-{info['heads'] - 1}), not {bad[0]}")
                partial = [g for g in {h // rep for h in wanted} if not set(range(g * rep, (g + 1) * rep)) <= wanted]
                if partial:
                    group = "+".join(str(h) for h in range(partial[0] * rep, (partial[0] + 1) * rep))
                    raise PassOptionError(f"prune-heads: {site.path} shares each KV head among {rep} query heads; "
                                          f"prune whole groups ({layer}:{group})")
                drop = [i for i, h in enumerate(kept) if h in wanted]
            else:
                if o.layers and layer not in o.layers:
                    continue
                target = min(math.floor(o.ratio * info["kv_heads"] + 0.5), info["kv_heads"] - 1)
                count = target - (info["kv_heads"] - site.k.heads)
                norms = _group_norms(gm, site)
                groups = sorted(range(site.k.heads), key=norms.__getitem__)[: max(count, 0)]
                drop = [i for i in range(site.q.heads) if i // rep in groups]
            if not drop:
                continue
            if len(drop) == site.q.heads:
                raise PassOptionError(f"prune-heads: that would remove every head of {site.path}; keep at least one")
            _check_unshared(gm, site)
            work.append((site, info, drop, *head_axes(site)))  # head_axes raises on what it cannot follow
        # Every attention is checked before any is cut, so a refusal leaves the graph as it was.
        for site, info, drop, region, axes in work:
            kept, rep = info["kept"], info["heads"] // info["kv_heads"]
            keep_heads = [i for i in range(site.q.heads) if i not in drop]
            keep_groups = sorted({i // rep for i in keep_heads})
            _slice_projections(gm, site, keep_heads, keep_groups)
            rescale_sizes(region, axes, len(keep_groups), site.k.heads)
            projections = {site.q.projection, site.k.projection, site.v.projection, site.out_proj}
            weights = [t for p in projections for t in projection_weight(p)[:2] if t is not None]
            refresh_values(gm, [*weights, *projections, *region])
            done.append(f"{site.path} -{'+'.join(str(kept[i]) for i in drop)} ({len(keep_heads)}/{info['heads']} left)")
            info["kept"] = [kept[i] for i in keep_heads]
        if not done:
            return PassResult(gm, False)
        gm.graph.lint()
        removed = params_before - sum(p.numel() for p in gm.parameters())
        self.note(f"pruned heads {'; '.join(done)}: {removed:,} parameters")
        return PassResult(gm, True)
