"""`fxbench inspect`: what a captured or saved program holds (parameters, ops, nodes per module)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.fx import GraphModule

from fxbench.exporters import load_program
from fxbench.models import DynamicDims, unlift
from fxbench.passes import op_histogram
from fxbench.passes.base import module_path
from fxbench.runtime.steps import load_and_capture, resolve_model_source

__all__ = ["Inspection", "inspect_program", "inspect_target"]


@dataclass
class Inspection:
    source: str
    parameters: int
    buffers: int
    nodes: int
    op_histogram: dict[str, int]
    nodes_per_module: dict[str, int]
    graph: GraphModule

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "parameters": self.parameters,
            "buffers": self.buffers,
            "nodes": self.nodes,
            "op_histogram": self.op_histogram,
            "nodes_per_module": self.nodes_per_module,
        }


def _weight_counts(gm: GraphModule) -> tuple[int, int]:
    """(parameters, buffer and constant elements) the graph reads; tied weights count once."""
    seen: set[int] = set()
    params = others = 0
    for n in gm.graph.nodes:
        if n.op != "get_attr":
            continue
        target = str(n.target)
        try:
            t, is_param = gm.get_parameter(target), True
        except AttributeError:
            t, is_param = gm, False
            for part in target.split("."):
                t = getattr(t, part, None)
        if not hasattr(t, "numel") or t.device.type == "meta":
            continue
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        if is_param:
            params += t.numel()
        else:
            others += t.numel()
    return params, others


def inspect_program(gm: GraphModule, source: str, depth: int = 3) -> Inspection:
    """Count what `gm` holds; modules are grouped by the first `depth` parts of their path."""
    per_module: Counter[str] = Counter()
    for n in gm.graph.nodes:
        if n.op == "call_function":
            path = module_path(n)
            per_module[".".join(path.split(".")[:depth]) if path else "(top level)"] += 1
    params, buffers = _weight_counts(gm)
    return Inspection(
        source=source,
        parameters=params,
        buffers=buffers,
        nodes=len(gm.graph.nodes),
        op_histogram=dict(op_histogram(gm).most_common()),
        nodes_per_module=dict(sorted(per_module.items())),
        graph=gm,
    )


def inspect_target(target: str | None, *, task: str | None = None, depth: int = 3) -> Inspection:
    """Inspect a saved program (a .pt2 file, or a folder holding model.pt2) or a model to capture."""
    path = Path(target) if target else None
    if path is not None and path.is_file() and path.suffix == ".pt2":
        return inspect_program(unlift(load_program(path)), str(path), depth)
    if path is not None and (path / "model.pt2").is_file() and not (path / "config.json").is_file():
        return inspect_program(unlift(load_program(path / "model.pt2")), str(path / "model.pt2"), depth)
    source = resolve_model_source(target)
    captured = load_and_capture(source, task=task, batch=2, seq=16, dims=DynamicDims(), attn_implementation=None)
    return inspect_program(captured.graph_module(), source, depth)
