"""The graph toolkit of the passes: weights, example values, runs with a per-node hook, module paths, shapes."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch._guards import detect_fake_mode
from torch.fx import GraphModule, Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

__all__ = [
    "ASSERTS", "add_tensor", "drop_weights", "example_tensor", "example_value", "fake_mode", "get_tensor", "in_module",
    "is_assert", "match_paths", "path_matches", "read_tensors", "refresh_values", "run", "same_shape", "set_meta",
    "set_tensor", "within",
]

aten = torch.ops.aten
# The checks export inserts on values (dtype, device): they read a value without using it, and
# pin dtypes that precision passes change on purpose.
ASSERTS = frozenset({aten._assert_tensor_metadata.default})
# What a new node inherits from the node it stands for, so module paths and source lines survive.
_INHERITED = ("nn_module_stack", "stack_trace", "source_fn_stack", "from_node")


def is_assert(node: Any) -> bool:
    """Whether `node` is one of export's dtype / device checks."""
    return isinstance(node, Node) and node.target in ASSERTS


# ----- weights -------------------------------------------------------------------------------


def _owner(gm: torch.nn.Module, qualname: str, create: bool = False) -> tuple[torch.nn.Module | None, str]:
    path, _, attr = qualname.rpartition(".")
    owner: torch.nn.Module | None = gm
    for part in filter(None, path.split(".")):
        if not hasattr(owner, part) and create:
            owner.add_module(part, torch.nn.Module())
        owner = getattr(owner, part, None)
        if owner is None:
            break
    return owner, attr


def get_tensor(gm: GraphModule | None, ref: Any, *, plain: bool = True) -> torch.Tensor | None:
    """The tensor a get_attr node (or an attribute name) reads: parameter, buffer or constant, else
    None. With `plain`, a tensor subclass (a quantized layout, which rewriting its values would
    lose) is None too."""
    if isinstance(ref, Node):
        if ref.op != "get_attr":
            return None
        ref = ref.target
    if gm is None or not isinstance(ref, str):
        return None
    owner, attr = _owner(gm, ref)
    tensor = getattr(owner, attr, None)
    if not isinstance(tensor, torch.Tensor):
        return None
    return tensor if not plain or type(tensor) in (torch.Tensor, torch.nn.Parameter) else None


def read_tensors(gm: GraphModule) -> dict[str, torch.Tensor]:
    """Every tensor the graph's get_attr nodes read, by attribute name, of any type (parameters
    are `torch.nn.Parameter`s); what `fxbench inspect` counts."""
    found = {}
    for node in gm.graph.find_nodes(op="get_attr"):
        tensor = get_tensor(gm, node, plain=False)
        if tensor is not None:
            found[str(node.target)] = tensor
    return found


def set_tensor(gm: GraphModule, target: str, value: torch.Tensor) -> None:
    """Replace the weight at `target` by a new tensor (a parameter stays a parameter), never in
    place: the captured program may share the old one. Its get_attr nodes' example values are the
    caller's to refresh (refresh_values)."""
    owner, attr = _owner(gm, target)
    if isinstance(getattr(owner, attr), torch.nn.Parameter):
        value = torch.nn.Parameter(value, requires_grad=False)
    setattr(owner, attr, value)


def add_tensor(gm: GraphModule, qualname: str, tensor: torch.Tensor, *, parameter: bool) -> str:
    """Register `tensor` as a parameter (weights) or buffer (derived constants) at `qualname`, or
    at `qualname_1`, `_2`, ... if that is taken; return the name used."""
    name, i = qualname, 0
    while True:
        owner, attr = _owner(gm, name, create=True)
        if not hasattr(owner, attr):
            break
        i += 1
        name = f"{qualname}_{i}"
    if parameter:
        owner.register_parameter(attr, torch.nn.Parameter(tensor, requires_grad=False))
    else:
        owner.register_buffer(attr, tensor)
    return name


def _empty(module: torch.nn.Module) -> bool:
    state = (*module._parameters.values(), *module._buffers.values(), *module._modules.values())
    return all(v is None for v in state) and not any(isinstance(v, torch.Tensor) for v in vars(module).values())


def drop_weights(gm: GraphModule, candidates: Iterable[Node | str] | None = None) -> int:
    """Delete the weights that no get_attr node reads any more, and the submodules left empty by
    that; return how many tensors went. The weights looked at are `candidates` (get_attr nodes,
    erased first when nothing uses them, or attribute names), or with None every parameter,
    buffer and tensor constant of the module. A weight still read elsewhere (tied) stays."""
    if candidates is None:
        called = [str(n.target) for n in gm.graph.find_nodes(op="call_module")]
        names = [n for n, _ in gm.named_parameters(remove_duplicate=False)]
        names += [n for n, _ in gm.named_buffers(remove_duplicate=False)]
        names += [n for n, v in vars(gm).items() if isinstance(v, torch.Tensor)]
        targets = [n for n in names if not any(in_module(n, m) for m in called)]
    else:
        targets = []
        for c in dict.fromkeys(candidates):
            if not isinstance(c, Node):
                targets.append(str(c))
            elif c.op == "get_attr" and not c._erased and c.graph is gm.graph:
                targets.append(str(c.target))
                if not c.users:
                    gm.graph.erase_node(c)
    read = {str(n.target) for n in gm.graph.find_nodes(op="get_attr")}
    dropped = 0
    for qualname in dict.fromkeys(t for t in targets if t not in read):
        owner, attr = _owner(gm, qualname)
        if owner is None or not hasattr(owner, attr):
            continue
        delattr(owner, attr)
        dropped += 1
        path = qualname.rpartition(".")[0]
        while path and _empty(owner):
            parent, child = _owner(gm, path)
            delattr(parent, child)
            owner, path = parent, path.rpartition(".")[0]
    return dropped


# ----- example values (the FakeTensors export records in node.meta["val"]) ---------------------


def example_value(node: Any) -> Any:
    """The example value export recorded for a node (a FakeTensor, a tuple of them, a SymInt),
    else None."""
    return node.meta.get("val") if isinstance(node, Node) else None


def example_tensor(node: Any) -> torch.Tensor | None:
    """The node's example value if it is a tensor, else None."""
    v = example_value(node)
    return v if isinstance(v, torch.Tensor) else None


def fake_mode(gm: GraphModule | None) -> Any:
    """The capture's fake-tensor mode (the one its example values live in), or None."""
    if gm is None:
        return None
    vals = [v for n in gm.graph.find_nodes(op="placeholder") if isinstance(v := n.meta.get("val"), torch.Tensor)]
    if not vals:  # a graph without inputs, or built by hand: any example value will do
        vals = [v for n in gm.graph.nodes if isinstance(v := n.meta.get("val"), torch.Tensor)]
    return detect_fake_mode(vals) if vals else None


def set_meta(node: Node, like: Node | None = None, *, drop_modules: int = 0, propagate: bool = True) -> None:
    """Give a new node the module stack and source of `like` (less its `drop_modules` innermost
    modules) and, if `propagate`, an example value as export's nodes have: a get_attr's from its
    tensor, a call's computed from its inputs' values in the graph's fake mode (none where the op
    has no fake kernel). Later passes read dtypes and shapes from these values: a node without one
    is invisible to quantization and fusion."""
    if like is not None:
        for key in _INHERITED:
            if key in like.meta:
                node.meta[key] = like.meta[key]
        stack = like.meta.get("nn_module_stack")
        if stack and drop_modules:
            node.meta["nn_module_stack"] = dict(list(stack.items())[:-drop_modules])
    if not propagate:
        return
    # One op in the fake mode, not Inductor's FakeTensorUpdater (refresh_values): a pass reads its
    # new nodes' values before it ends (a later match's input), and the updater, which does follow
    # dynamic shapes, costs tens of milliseconds a node in its aliasing checks (tiny BERT, 2 cores).
    args = () if node.op == "get_attr" else tuple(node.all_input_nodes)
    for arg in args:
        if arg.op == "get_attr" and "val" not in arg.meta:
            set_meta(arg)
    mode = detect_fake_mode([a.meta.get("val") for a in args]) if args else None
    mode = mode or fake_mode(node.graph.owning_module)
    if node.op == "get_attr":
        tensor = get_tensor(node.graph.owning_module, node)
        if mode is not None and tensor is not None:
            node.meta["val"] = mode.from_tensor(tensor, static_shapes=True)
        return
    if mode is None or not callable(node.target):
        return
    fake = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: n.meta.get("val"))
    try:
        with mode:
            node.meta["val"] = node.target(*fake[0], **fake[1])
    except Exception:  # noqa: BLE001 - meta is advisory; an op without a fake kernel leaves none
        node.meta.pop("val", None)


def refresh_values(gm: GraphModule, nodes: Iterable[Node]) -> int:
    """Recompute the example values of `nodes`, whose shapes changed (a sliced weight, a view's
    rescaled sizes), and of what reads them, as far as values change: Inductor's FakeTensorUpdater,
    started at those nodes. Returns how many values were set."""
    mode = fake_mode(gm)
    if mode is None:
        return 0
    # Inductor takes seconds to import: only the passes that change shapes pay for it.
    from torch._inductor.fx_utils import FakeTensorUpdater
    from torch._inductor.virtualized import V

    updater, weights = FakeTensorUpdater(gm), 0
    for node in dict.fromkeys(nodes):
        starts = [node]
        if node.op == "get_attr":  # the updater runs calls only: a weight's value is made here
            set_meta(node)
            weights, starts = weights + 1, list(node.users)
        for n in starts:
            updater.processed_hashes.discard(updater.hash_node(n))
    with V.set_fake_mode(mode):
        return weights + updater.incremental_update()


# ----- running -------------------------------------------------------------------------------

Hook = Callable[[Node, Any], None]  # (node, the value it computed)


class _Hooked(torch.fx.Interpreter):
    def __init__(self, gm: GraphModule, hook: Hook | None) -> None:
        super().__init__(gm)
        self.hook = hook

    def run_node(self, n: Node) -> Any:
        result = super().run_node(n)
        if self.hook is not None:
            self.hook(n, result)
        return result


def run(gm: GraphModule, inputs: Mapping[str, torch.Tensor], hook: Hook | None = None) -> tuple[Any, ...]:
    """Run the graph as it stands (node by node, so without a recompile) on inputs named as its
    placeholders, without gradients, calling `hook(node, value)` after each node; return the outputs."""
    names = [p.target for p in gm.graph.find_nodes(op="placeholder")]
    with torch.no_grad():
        out = _Hooked(gm, hook).run(*[inputs[n] for n in names])
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


# ----- module paths: one syntax for every option that names modules ---------------------------

_RANGE = re.compile(r"(\d+)-(\d+)")


def in_module(path: str, prefix: str) -> bool:
    """Whether module `path` is module `prefix` or inside it (both literal paths)."""
    return path == prefix or path.startswith(prefix + ".")


def _part_matches(part: str, pattern: str) -> bool:
    if (m := _RANGE.fullmatch(pattern)) and part.isdigit():
        return int(m[1]) <= int(part) <= int(m[2])
    return fnmatch.fnmatchcase(part, pattern)


def _parts_match(parts: list[str], pattern: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_parts_match(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and _part_matches(parts[0], pattern[0]) and _parts_match(parts[1:], pattern[1:])


def path_matches(path: str, pattern: str) -> bool:
    """Whether module `path` matches `pattern` part by part: a part is a name, shell wildcards
    (`*`, `?`, `[ab]`) or an index range (`0-3`), and `**` stands for any number of parts. So
    "encoder.layer.*" and "encoder.layer.0-3" match blocks, not what is inside them."""
    return _parts_match(path.split(".") if path else [], pattern.split("."))


def match_paths(patterns: Iterable[str], paths: Iterable[str]) -> list[str]:
    """The `paths` that match one of `patterns` (path_matches), sorted."""
    patterns = tuple(patterns)
    return [p for p in sorted(paths) if any(path_matches(p, pat) for pat in patterns)]


def within(path: str, patterns: Iterable[str]) -> bool:
    """Whether module `path` is, or is inside, a module matching one of `patterns`: a plain path
    ("encoder.layer.3") covers everything under it, a pattern every module it matches."""
    parts = path.split(".") if path else []
    return any(path_matches(".".join(parts[:i]), pat) for pat in patterns for i in range(1, len(parts) + 1))


# ----- shapes --------------------------------------------------------------------------------


def same_shape(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two example values have the same shape as far as is known without adding guards:
    symbolic sizes are equal when their expressions provably are."""
    return a.dim() == b.dim() and all(statically_known_true(x == y) for x, y in zip(a.shape, b.shape))
