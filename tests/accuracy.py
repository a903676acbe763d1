"""Sentence-embedding agreement of a transformed program with eager fp32, on real sentences."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fxbench.runtime.agreement import mean_pool

__all__ = ["EmbeddingAgreement", "as_callable", "embedding_agreement", "mean_pool", "onnx_callable", "sentence_embeddings"]

Program = Callable[..., Any]


@dataclass(frozen=True)
class EmbeddingAgreement:
    """Cosine between each sentence's embedding from the program and from the reference."""

    mean: float
    min: float
    count: int

    def __str__(self) -> str:
        return f"mean cos {self.mean:.5f}, min {self.min:.5f} over {self.count} sentences"


def _first_tensor(out: Any) -> torch.Tensor:
    """last_hidden_state: the first output, whatever the program returns (tuple, ModelOutput, array)."""
    if isinstance(out, Mapping):
        out = next(iter(out.values()))
    elif isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the program returned {type(out).__name__}, not tensors")
    return out


def sentence_embeddings(
    program: Program, tokenizer: Any, sentences: Sequence[str], *, batch_size: int = 16, max_length: int = 128,
    input_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Mean-pooled last_hidden_state of `program` for each sentence, float64, [len(sentences), hidden].

    `program` takes the tokenizer's tensors as keyword arguments (a GraphModule, an eager model, or
    an ONNX Runtime session wrapped by `onnx_callable`); `input_names` limits which it is given.
    """
    rows = []
    for start in range(0, len(sentences), batch_size):
        enc = tokenizer(list(sentences[start:start + batch_size]), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        tensors = {k: v for k, v in enc.items() if isinstance(v, torch.Tensor) and (input_names is None or k in input_names)}
        with torch.no_grad():
            hidden = _first_tensor(program(**tensors))
        rows.append(mean_pool(hidden, enc["attention_mask"]))
    return torch.cat(rows)


def embedding_agreement(
    program: Program, reference: Program, tokenizer: Any, sentences: Sequence[str], *, batch_size: int = 16,
    max_length: int = 128, input_names: Sequence[str] | None = None, reference_embeddings: torch.Tensor | None = None,
) -> EmbeddingAgreement:
    """Mean and min cosine between the sentence embeddings of `program` and of `reference`
    (eager fp32), over `sentences`. Pass `reference_embeddings` to reuse the reference's."""
    if len(sentences) == 0:
        raise ValueError("no sentences to compare on")
    got = sentence_embeddings(program, tokenizer, sentences, batch_size=batch_size, max_length=max_length, input_names=input_names)
    want = reference_embeddings if reference_embeddings is not None else sentence_embeddings(
        reference, tokenizer, sentences, batch_size=batch_size, max_length=max_length, input_names=input_names
    )
    cos = torch.nn.functional.cosine_similarity(got, want.to(torch.float64), dim=1)
    if not torch.isfinite(cos).all():
        return EmbeddingAgreement(float("nan"), float("nan"), len(sentences))
    return EmbeddingAgreement(float(cos.mean()), float(cos.min()), len(sentences))


def as_callable(module: torch.nn.Module) -> Program:
    """A module called with keyword tensors (GraphModules from export take them that way)."""
    return lambda **tensors: module(**tensors)


def onnx_callable(session: Any) -> Program:
    """An onnxruntime.InferenceSession as a program of keyword tensors returning numpy outputs."""
    names = {i.name for i in session.get_inputs()}

    def run(**tensors: torch.Tensor) -> list[np.ndarray]:
        return session.run(None, {k: v.numpy() for k, v in tensors.items() if k in names})

    return run
