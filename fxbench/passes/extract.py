"""Make chosen intermediate activations the graph's outputs and drop what comes after them."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from torch.fx import GraphModule, Node

from fxbench.errors import PassOptionError
from fxbench.passes._graph import drop_weights, match_paths
from fxbench.passes._surgery import block_nodes, module_outputs, module_paths
from fxbench.passes.base import FxbenchPass, PassOptions, PassResult, output_names, replace_outputs
from fxbench.passes.registry import register_pass


@dataclass(frozen=True)
class ExtractOptions(PassOptions):
    outputs: tuple[str, ...] = ()  # module paths (encoder.layer.3, pooler), patterns (encoder.layer.*) or output names

    def validate(self) -> None:
        if not self.outputs:
            raise ValueError("needs the activations to output, e.g. extract:outputs=encoder.layer.3,pooler")


def _natural(path: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path)]


def _live(outputs: list[Node]) -> set[Node]:
    seen: set[Node] = set()
    stack = list(outputs)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


@register_pass("extract")
class Extract(FxbenchPass):
    """Make intermediate activations the graph's outputs, to ship a feature extractor.

    Rules:
      1. each entry of outputs= is a module path as `fxbench inspect` shows it (encoder.layer.3,
         pooler), a pattern over them (encoder.layer.*, encoder.layer.2-5: in index order) or the
         name of a current output (last_hidden_state);
      2. a module's value is what it returns: the tensors computed inside it and used outside it,
         less those the others were computed from; a module returning several gets path[0], path[1]...;
      3. the outputs are named by those paths, in the order given, and replace the current ones;
      4. everything the new outputs do not need is erased, with its weights (checks and asserts
         only on what is kept stay), so the program re-exports and lowers as a smaller model;
      5. the outputs change on purpose (exact=False): later passes are checked against them.
    """

    Options = ExtractOptions
    in_place = True
    exact = False

    def _resolve(self, gm: GraphModule) -> list[tuple[str, Node]]:
        out_node = next(iter(gm.graph.find_nodes(op="output")))
        current = dict(zip(output_names(gm) or (), out_node.args[0]))
        paths = module_paths(gm)
        chosen: list[tuple[str, Node]] = []
        for spec in self.options.outputs:
            if spec in current and isinstance(current[spec], Node):
                chosen.append((spec, current[spec]))
                continue
            matches = [spec] if spec in paths else sorted(match_paths([spec], paths), key=_natural)
            if not matches:
                close = difflib.get_close_matches(spec, sorted(paths) + list(current), n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else "; `fxbench inspect MODEL` lists the module paths"
                raise PassOptionError(f"extract: no module or output {spec!r} in the graph{hint}")
            for path in matches:
                values = module_outputs(block_nodes(gm, path))
                if not values:
                    raise PassOptionError(f"extract: module {path} returns no tensor that the model uses; pick another")
                if len(values) == 1:
                    chosen.append((path, values[0]))
                else:
                    chosen.extend((f"{path}[{i}]", v) for i, v in enumerate(values))
        names = [n for n, _ in chosen]
        if len(set(names)) != len(names):
            raise PassOptionError(f"extract: outputs name the same activation twice: {', '.join(names)}")
        return chosen

    def call(self, graph_module: GraphModule) -> PassResult:
        gm = graph_module
        chosen = self._resolve(gm)
        names, nodes = tuple(n for n, _ in chosen), [v for _, v in chosen]
        out_node = next(iter(gm.graph.find_nodes(op="output")))
        if names == output_names(gm) and list(out_node.args[0]) == nodes:
            return PassResult(gm, False)

        read_before = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
        nodes_before = len(gm.graph.nodes)
        replace_outputs(gm, nodes, names)
        live = _live([out_node])
        for n in reversed(list(gm.graph.nodes)):
            if n in live or n.op == "placeholder":
                continue
            # A side-effecting check stays only if all it reads is still computed.
            if n.is_impure() and not n.users and all(a in live for a in n.all_input_nodes):
                continue
            if not n.users:
                gm.graph.erase_node(n)
        weights = drop_weights(gm, read_before)
        self.note(f"outputs {', '.join(names)}; {nodes_before - len(gm.graph.nodes)} nodes and {weights} weights after them removed")
        return PassResult(gm, True)
