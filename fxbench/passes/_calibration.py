"""Calibration of the static quantization passes: input batches from a file or the model's samples, observers run on them."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.fx import GraphModule, Node

from fxbench.errors import PassOptionError
from fxbench.passes._graph import run
from fxbench.passes.base import PassContext

__all__ = ["CALIBRATION_SUFFIXES", "calibration_batches", "check_calibration_file", "observe_inputs", "percentile_observer_class"]

CALIBRATION_SUFFIXES = (".txt", ".pt", ".safetensors")


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


def calibration_batches(context: PassContext, *, path: str, samples: int, seq: int, batch_size: int, label: str) -> list[dict[str, torch.Tensor]]:
    """Input batches to calibrate on: from `path` (a .txt file of sentences, one a line, tokenized
    as the sample was; or a .pt / .safetensors dict of input tensors, batched along axis 0), else
    the inputs the user gave the context, else `samples` of the model's own sample inputs
    (for text, its real sentences at `seq` tokens)."""
    from fxbench.models import max_positions  # here: importing fxbench.models loads transformers

    wanted = set(context.inputs)
    limit = max_positions(context.config)
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

    def observe(node: Node, value: Any) -> None:
        if node in observers:
            observers[node](value.detach().float())

    for batch in batches:
        run(gm, batch, observe)
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
