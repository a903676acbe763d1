"""Greedy generation through any with-past step (eager, exported program, AOTInductor, ONNX Runtime): prefill, then one token at a time."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fxbench.models.decoder import CacheLayout, DecoderCapture, position_ids_from_mask

__all__ = ["Generation", "Step", "capture_steps", "greedy_generate", "stop_tokens"]

# One call of a with-past program: named inputs (the program's names) in, (logits, presents...) out.
Step = Callable[[Mapping[str, torch.Tensor]], Sequence[Any]]


@dataclass(frozen=True)
class Generation:
    """Greedy tokens and the time of each call: `step_seconds[0]` is the prefill (time to first
    token), the rest one decode step each."""

    tokens: torch.Tensor  # [batch, prompt + new], the prompt included (as generate() returns)
    prompt_length: int
    step_seconds: tuple[float, ...]
    # Last-position logits of each call ([batch, vocab] each), kept on request for agreement metrics.
    logits: tuple[torch.Tensor, ...] = field(default=(), repr=False)

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_length:]

    @property
    def time_to_first_token(self) -> float:
        return self.step_seconds[0]

    @property
    def time_per_output_token(self) -> tuple[float, ...]:
        return self.step_seconds[1:]


def stop_tokens(config: Any) -> tuple[tuple[int, ...], int | None]:
    """(eos ids, pad id) as generate() reads them from a generation config; the pad falls back to
    the first eos, as generate() does."""
    eos = getattr(config, "eos_token_id", None)
    eos_ids = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
    pad = getattr(config, "pad_token_id", None)
    return eos_ids, (pad if pad is not None else (eos_ids[0] if eos_ids else None))


def _as_tensor(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def greedy_generate(
    step: Step,
    layout: CacheLayout,
    token_names: Sequence[str],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 16,
    eos_token_ids: Sequence[int] = (),
    pad_token_id: int | None = None,
    cache_dtype: torch.dtype = torch.float32,
    keep_logits: bool = False,
    synchronize: Callable[[], None] | None = None,
) -> Generation:
    """Greedy decoding as `model.generate(do_sample=False)` does it, through `step`: the prompt
    with an empty past (length 0), then each new token with the presents fed back as the past.

    Positions come from the attention mask as generate() makes them (left padding allowed); a
    sequence that has produced an eos token continues with `pad_token_id`; the loop ends when all
    have, or after `max_new_tokens`. `synchronize` (e.g. torch.cuda.synchronize) runs before each
    time stamp, for backends that return before the device is done.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    batch = input_ids.shape[0]
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    tokens = input_ids
    past = layout.past(batch, 0, dtype=cache_dtype)
    new = input_ids
    unfinished = torch.ones(batch, dtype=torch.bool)
    eos = torch.tensor(list(eos_token_ids), dtype=input_ids.dtype) if eos_token_ids else None
    seconds: list[float] = []
    kept: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        available = {"input_ids": new, "attention_mask": mask, "position_ids": position_ids_from_mask(mask, new.shape[1])}
        feeds = {name: available[name] for name in token_names}
        feeds.update(past)
        start = time.perf_counter()
        outputs = step(feeds)
        logits = _as_tensor(outputs[0])[:, -1, :]
        next_tokens = logits.argmax(dim=-1).to(input_ids.dtype)
        if synchronize is not None:
            synchronize()
        seconds.append(time.perf_counter() - start)
        if keep_logits:
            kept.append(logits.float().clone())
        if eos is not None:
            if pad_token_id is None:
                raise ValueError("an eos token needs a pad token for finished sequences")
            next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad_token_id))
        tokens = torch.cat([tokens, next_tokens[:, None]], dim=-1)
        if eos is not None:
            unfinished &= ~torch.isin(next_tokens, eos)
            if not bool(unfinished.any()):
                break
        past = dict(zip(layout.past_names(), (_as_tensor(t) for t in outputs[1:])))
        new = next_tokens[:, None]
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=-1)
    return Generation(tokens=tokens, prompt_length=input_ids.shape[1], step_seconds=tuple(seconds), logits=tuple(kept))


def capture_steps(captured: DecoderCapture) -> dict[str, Step]:
    """The in-process steps of a capture: the eager wrapper and the exported program."""
    program = captured.exported.module()

    def run(module: torch.nn.Module) -> Step:
        def call(feeds: Mapping[str, torch.Tensor]) -> Sequence[Any]:
            with torch.no_grad():
                return module(**feeds)

        return call

    return {"eager": run(captured.eager), "program": run(program)}
