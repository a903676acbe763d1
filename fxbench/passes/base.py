"""The base of every fxbench pass: torch.fx's PassBase with typed options and declared behaviour."""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch.fx import GraphModule
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxbench.errors import PassOptionError

__all__ = [
    "FxbenchPass", "NoOptions", "PassContext", "PassOptions", "PassResult", "module_path", "output_names", "replace_outputs",
    "set_output_names",
]

_OUTPUT_NAMES = "fxbench_output_names"
# True while run_pipeline's PassManager runs the passes: it recompiles the module after every
# pass, so the pass itself does not (one recompile per pass).
MANAGED: contextvars.ContextVar[bool] = contextvars.ContextVar("fxbench_managed", default=False)


@dataclass(frozen=True)
class PassOptions:
    """Base of pass options, a frozen dataclass whose fields are the options. A subclass checks its
    values in `validate()`, raising ValueError with what is wrong and how to fix it; construction
    turns that into a one-line PassOptionError naming the pass (set by register_pass)."""

    pass_name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        try:
            self.validate()
        except ValueError as exc:
            raise PassOptionError(f"pass {self.pass_name or type(self).__name__}: {exc}") from None

    def validate(self) -> None:
        """Raise ValueError if the options cannot work together."""


@dataclass(frozen=True)
class NoOptions(PassOptions):
    """A pass without options."""


@dataclass
class PassContext:
    """What a pass may need beyond the graph: the sample inputs, the model's config and task, and a
    way to make more inputs (calibration, overflow checks). Set by the pipeline runner."""

    inputs: dict[str, torch.Tensor]
    task: str = "feature-extraction"
    modality: str = "text"
    config: Any | None = None
    make_inputs: Callable[[int, int | None, int], dict[str, torch.Tensor]] | None = None
    calibration_inputs: list[dict[str, torch.Tensor]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    preprocessor: Any | None = None  # the model's tokenizer, for inputs from a user's text (calibration files)

    def more_inputs(self, count: int, batch: int | None = None, seq: int | None = None) -> list[dict[str, torch.Tensor]]:
        """`count` input batches unlike the sample (other seeds / sentences); the sample alone
        when no maker was given."""
        if self.calibration_inputs:
            return self.calibration_inputs[:count] if count else list(self.calibration_inputs)
        if self.make_inputs is None:
            return [self.inputs]
        first = next(iter(self.inputs.values()))
        b = batch or int(first.shape[0])
        s = seq if seq is not None else (int(first.shape[1]) if first.dim() > 1 else None)
        return [self.make_inputs(b, s, i) for i in range(count)]

    def inputs_from_texts(self, texts: Sequence[str], seq: int) -> dict[str, torch.Tensor]:
        """The model's inputs for `texts`, tokenized as the sample was (padded to `seq` tokens),
        keeping only the inputs the program takes."""
        tok = self.preprocessor
        if tok is None or not callable(tok):
            raise ValueError("no tokenizer in the pass context to encode text with")
        if getattr(tok, "pad_token", "") is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        enc = tok(list(texts), padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
        return {k: v for k, v in enc.items() if k in self.inputs}


def module_path(node: torch.fx.Node) -> str:
    """The dotted path of the model module a node was traced in ("encoder.layer.3.attention"),
    from the `nn_module_stack` that export records; "" for the top level.

    The capture wraps the model in a module whose attribute is `model`, so that prefix is dropped
    and paths read as in the Hugging Face model.
    """
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = str(list(stack.values())[-1][0])
    # "model" is the capture's wrapper itself; torch names nodes it could not place "_empty_nn_module_stack...".
    if path == "model" or path.startswith("_empty_nn_module_stack"):
        return ""
    return path.removeprefix("model.")


def replace_outputs(gm: GraphModule, nodes: list[torch.fx.Node], names: list[str] | tuple[str, ...]) -> None:
    """Make `nodes` the graph's outputs, named `names`: the output node, the pytree spec the
    exported module returns its flat tuple through, and the names kept in meta. Nodes left
    without users are not removed here (dead-code elimination does that); the module runs the new
    outputs once recompiled, as a pass's result is (see FxbenchPass)."""
    if len(nodes) != len(names):
        raise ValueError(f"{len(nodes)} output nodes but {len(names)} names")
    out = next(iter(gm.graph.find_nodes(op="output")))
    out.args = (tuple(nodes),)
    spec = torch.utils._pytree.tree_structure(tuple(range(len(nodes))))
    codegen = gm.graph._codegen
    if getattr(codegen, "pytree_info", None) is not None:
        codegen.pytree_info = codegen.pytree_info._replace(out_spec=spec)
    if hasattr(gm, "_out_spec"):
        gm._out_spec = spec
    set_output_names(gm, names)


def output_names(gm: GraphModule) -> tuple[str, ...] | None:
    """The names of the graph's outputs, as the capture named them (kept in the module's meta)."""
    names = getattr(gm, "meta", {}).get(_OUTPUT_NAMES)
    return tuple(names) if names is not None else None


def set_output_names(gm: GraphModule, names: tuple[str, ...] | list[str]) -> None:
    gm.meta[_OUTPUT_NAMES] = tuple(names)


class FxbenchPass(PassBase):
    """Base class of fxbench passes.

    A subclass sets:
      name       the registry name, verb-object in kebab case ("fold-batchnorm");
      Options    a frozen dataclass of typed options (the CLI parses `name:field=value`);
      in_place   True if `call` mutates and returns the module it was given, False if it builds a
                 new one; `__call__` enforces the declaration;
      precision  the precision its output is verified at ("fp32", "fp16", "bf16", "int8", "fp8");
      exact      False for passes that change the model on purpose (layer surgery): their
                 deviation from eager is reported, not held against a tolerance, and the passes
                 after them are checked against the changed model.
    and implements `call(graph_module) -> PassResult(graph_module, modified)`, where `modified`
    says whether the graph actually changed. `self.context` (a PassContext) is set by the runner;
    `self.details` (counts, names) and `self.note(...)` (a sentence) go into the pass's record.
    The module a pass hands back is recompiled once: by `__call__` when the pass changed it, or,
    under run_pipeline, by torch's PassManager after the pass.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    in_place: ClassVar[bool] = True
    precision: ClassVar[str] = "fp32"
    exact: ClassVar[bool] = True

    def __init__(self, options: Any | None = None, **kwargs: Any) -> None:
        if options is not None and kwargs:
            raise TypeError("give either an Options instance or keyword options, not both")
        self.options = options if options is not None else self.Options(**kwargs)
        if not isinstance(self.options, self.Options):
            raise TypeError(f"{self.name} takes {self.Options.__name__}, got {type(self.options).__name__}")
        self.context: PassContext | None = None
        # Facts about the last run that belong in the report (JSON-able: counts, names, numbers);
        # the runner copies them into the pass's record.
        self.details: dict[str, Any] = {}

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def options_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)

    def note(self, text: str) -> None:
        """Tell the run what the pass did, in a sentence (the runner puts notes in the pass record)."""
        if self.context is not None:
            self.context.notes.append(f"{self.name}: {text}")

    def require_context(self) -> PassContext:
        if self.context is None:
            raise RuntimeError(f"pass {self.name} needs a PassContext (sample inputs); run it through run_pipeline")
        return self.context

    def __call__(self, graph_module: GraphModule) -> PassResult:
        result = super().__call__(graph_module)
        if result is None:
            raise TypeError(f"pass {self.name} returned None instead of a PassResult")
        same = result.graph_module is graph_module
        if self.in_place and not same:
            raise RuntimeError(f"pass {self.name} is declared in-place but returned a new module")
        if not self.in_place and same:
            raise RuntimeError(f"pass {self.name} is declared functional but returned the module it was given")
        if result.modified and isinstance(result.graph_module, GraphModule) and not MANAGED.get():
            # A pass hands back a module that runs, however it is called.
            result.graph_module.recompile()
        return result

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options_dict().items())
        return f"{type(self).__name__}({opts})"
