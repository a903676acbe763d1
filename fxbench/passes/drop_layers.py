"""Remove transformer blocks by index, rewiring the residual stream past them."""

from __future__ import annotations

from dataclasses import dataclass

from torch.fx import GraphModule, Node

from fxbench.errors import PassOptionError
from fxbench.passes._graph import drop_weights, example_tensor, same_shape
from fxbench.passes._surgery import StackSurgery, block_nodes, erase_block, module_outputs, resolve_indices
from fxbench.passes.base import PassOptions, PassResult
from fxbench.passes.registry import register_pass


@dataclass(frozen=True)
class DropLayersOptions(PassOptions):
    layers: tuple[int, ...] = ()  # block indices and ranges: 6-11, or 0,2; negatives count from the end
    stack: str = ""  # which stack when the model has several ("decoder", "model.encoder.layers")

    def validate(self) -> None:
        if not self.layers:
            raise ValueError("needs the blocks to drop, e.g. drop-layers:layers=6-11")


def _hidden_input(block: list[Node], out: Node, prefix: str) -> Node:
    """The block's residual-stream input: the outside tensor of the output's shape and dtype that
    the block reads; of several, the one it reads first (a decoder block reads its hidden state
    before the encoder states of cross-attention)."""
    inside, ref = set(block), example_tensor(out)
    first_use: dict[Node, int] = {}
    for i, n in enumerate(block):
        for a in n.all_input_nodes:
            v = example_tensor(a)
            if a not in inside and a.op != "get_attr" and v is not None and v.dtype == ref.dtype and same_shape(v, ref):
                first_use.setdefault(a, i)
    if not first_use:
        raise PassOptionError(f"drop-layers: {prefix} reads no input of its output's shape {list(ref.shape)}; "
                              "it is not a residual block and cannot be skipped")
    return min(first_use, key=first_use.__getitem__)


@register_pass("drop-layers")
class DropLayers(StackSurgery):
    """Remove transformer blocks (layers=6-11) from an encoder or decoder stack.

    Rules:
      1. the stack is found from the module paths export records: a path followed by a block index
         (encoder.layer.N, model.layers.N, transformer.h.N, vit.layers.N, model.decoder.layers.N);
         with several stacks (Whisper's encoder and decoder), stack= picks one;
      2. indices are those of the captured model (negatives count from the end); a block already
         dropped is skipped, so a second run changes nothing; dropping every block is an error;
      3. a block's output (the one value it returns) is replaced, in all its uses, by the block's
         hidden-state input: the outside tensor of the same shape and dtype it reads first;
      4. the block's nodes, the outside nodes only they used and the weights only they read are
         deleted, so parameter and node counts fall at once (no eliminate-dead-code needed);
      5. the model changes on purpose (exact=False): its deviation from eager is reported.
    """

    Options = DropLayersOptions

    def call(self, graph_module: GraphModule) -> PassResult:
        gm, o = graph_module, self.options
        prefix, present, count = self.stack(gm)
        todo = [i for i in resolve_indices(o.layers, count, prefix, self.name) if i in present]
        if len(set(present) - set(todo)) == 0:
            raise PassOptionError(f"drop-layers: dropping {len(todo)} of the {len(present)} remaining blocks of {prefix} "
                                  "would leave none; keep at least one")
        if not todo:
            return PassResult(gm, False)

        # Every block is checked before any is cut, so a refusal leaves the graph as it was.
        plans: list[tuple[list[Node], Node, Node]] = []
        for i in todo:
            path = f"{prefix}.{i}"
            block = block_nodes(gm, path)
            outs = module_outputs(block)
            if len(outs) != 1:
                names = ", ".join(n.name for n in outs) or "nothing"
                raise PassOptionError(f"drop-layers: {path} returns {names}, not one hidden state; it cannot be skipped")
            plans.append((block, outs[0], _hidden_input(block, outs[0], path)))

        read_before = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
        params_before = sum(p.numel() for p in gm.parameters())
        erased, skipped_to = 0, {}
        for block, out, hidden in plans:
            while hidden in skipped_to:  # the block before was dropped too: its own input goes on
                hidden = skipped_to[hidden]
            inside = set(block)
            out.replace_all_uses_with(hidden, delete_user_cb=lambda user: user not in inside)
            skipped_to[out] = hidden
            erased += erase_block(gm, block)
        weights = drop_weights(gm, read_before)
        gm.graph.lint()
        removed = params_before - sum(p.numel() for p in gm.parameters())
        self.note(f"dropped {', '.join(f'{prefix}.{i}' for i in todo)}: {erased} nodes, {weights} weights, "
                   f"{removed:,} parameters")
        return PassResult(gm, True)
