"""The task's own agreement between a backend's outputs and eager fp32: what a user of the model
would see change (top-1 class, next token, sentence embedding), beside the raw error figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["Agreement", "mean_pool", "mean_pooled_cosine", "task_agreement"]

_CLASSIFICATION = ("text-classification", "image-classification", "audio-classification")
_PER_TOKEN = ("fill-mask", "token-classification")
_NEXT_TOKEN = ("text-generation", "text2text-generation")


@dataclass(frozen=True)
class Agreement:
    """`metric` names what was compared; `value` is in [0, 1] (a fraction, or a mean cosine)."""

    metric: str
    value: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pick(names: Sequence[str], outputs: Sequence[torch.Tensor], *wanted: str) -> torch.Tensor:
    for name in wanted:
        if name in names:
            return outputs[list(names).index(name)]
    return outputs[0]


def _argmax_agreement(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    same = got.argmax(-1) == want.argmax(-1)
    if mask is not None:
        mask = mask.bool()
        return float(same[mask].float().mean().item()) if mask.any() else 1.0
    return float(same.float().mean().item())


def _last_positions(mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor:
    """Index of each row's last real token: right padding leaves it at mask.sum - 1."""
    if mask is None:
        return torch.full((batch,), length - 1, dtype=torch.long)
    return (mask.long().sum(1) - 1).clamp(min=0)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers makes them: hidden states [batch, tokens, dim]
    averaged over real tokens (attention mask 1), in float64."""
    weights = (mask.double() if mask is not None else torch.ones(hidden.shape[:2], dtype=torch.float64)).unsqueeze(-1)
    return (hidden.double() * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def mean_pooled_cosine(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean over samples of the cosine between sentence embeddings: hidden states mean-pooled over
    real tokens (sentence-transformers' pooling); 2-D outputs are embeddings already."""
    got, want = got.double(), want.double()
    if got.dim() == 3:
        got, want = mean_pool(got, mask), mean_pool(want, mask)
    elif got.dim() > 3:
        got, want = got.flatten(2).mean(-1), want.flatten(2).mean(-1)
    return float(torch.nn.functional.cosine_similarity(got, want, dim=-1).mean().item())


def task_agreement(
    task: str, output_names: Sequence[str], outputs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor],
    inputs: Mapping[str, torch.Tensor],
) -> Agreement | None:
    """The agreement that matters for `task`:

    - classification: top-1, the fraction of samples whose argmax class matches;
    - fill-mask, token classification: the fraction of real tokens whose argmax matches;
    - language models (causal, seq2seq, speech seq2seq): next-token argmax at each row's last real position;
    - CTC speech recognition: per-frame argmax;
    - question answering: both span ends' argmax match;
    - feature extraction: mean cosine of mean-pooled sentence embeddings.
    """
    mask = inputs.get("attention_mask")
    if task in _CLASSIFICATION:
        return Agreement("top-1", _argmax_agreement(_pick(output_names, outputs, "logits"), _pick(output_names, reference, "logits")))
    if task in _PER_TOKEN:
        return Agreement("token argmax", _argmax_agreement(_pick(output_names, outputs, "logits"), _pick(output_names, reference, "logits"), mask))
    if task in _NEXT_TOKEN or (task == "automatic-speech-recognition" and "decoder_input_ids" in inputs):
        got, want = _pick(output_names, outputs, "logits"), _pick(output_names, reference, "logits")
        if got.dim() != 3:
            return Agreement("next-token argmax", _argmax_agreement(got, want))
        dec_mask = inputs.get("decoder_attention_mask") if "decoder_input_ids" in inputs else mask
        if dec_mask is not None and dec_mask.shape[-1] != got.shape[1]:
            dec_mask = None  # a with-past step: the mask covers the past too, and the new tokens end each row
        rows = torch.arange(got.shape[0])
        last = _last_positions(dec_mask, got.shape[0], got.shape[1])
        return Agreement("next-token argmax", _argmax_agreement(got[rows, last], want[rows, last]))
    if task == "automatic-speech-recognition":
        return Agreement("frame argmax", _argmax_agreement(_pick(output_names, outputs, "logits"), _pick(output_names, reference, "logits")))
    if task == "question-answering":
        s_got, s_want = _pick(output_names, outputs, "start_logits"), _pick(output_names, reference, "start_logits")
        e_got, e_want = _pick(output_names, outputs, "end_logits"), _pick(output_names, reference, "end_logits")
        same = (s_got.argmax(-1) == s_want.argmax(-1)) & (e_got.argmax(-1) == e_want.argmax(-1))
        return Agreement("span argmax", float(same.float().mean().item()))
    if task == "feature-extraction":
        got, want = _pick(output_names, outputs, "last_hidden_state"), _pick(output_names, reference, "last_hidden_state")
        return Agreement("embedding cosine", mean_pooled_cosine(got, want, mask if got.dim() == 3 and mask is not None and mask.shape == got.shape[:2] else None))
    return None
