"""Tiny random-weight causal LMs of each family the with-past tests cover, and ones whose cache cannot be captured."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import transformers

from fxbench.models import LoadedModel
from fxbench.models.decoder import DecoderCapture, capture_with_past

__all__ = ["DECODERS", "UNSUPPORTED", "captured_decoder", "prompts", "tiny_decoder"]

# Two layers, 64 wide, vocab 512: enough for GQA, rotary and tied heads to show, fast to export.
_COMMON = dict(vocab_size=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _gpt2() -> transformers.PretrainedConfig:
    return transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, **_COMMON)


def _llama() -> transformers.PretrainedConfig:
    return transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, max_position_embeddings=128, **_COMMON)


def _qwen2() -> transformers.PretrainedConfig:
    return transformers.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, max_position_embeddings=128, **_COMMON)


def _mistral() -> transformers.PretrainedConfig:
    # A window of 8: the 16-token greedy runs go past it, so the sliding mask is exercised.
    return transformers.MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=128, sliding_window=8, **_COMMON)


def _phi3() -> transformers.PretrainedConfig:
    return transformers.Phi3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=128, original_max_position_embeddings=128,
                                   **_COMMON)


def _gpt_neox() -> transformers.PretrainedConfig:
    return transformers.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      max_position_embeddings=128, rotary_pct=0.25, **_COMMON)


def _opt() -> transformers.PretrainedConfig:
    return transformers.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                                  max_position_embeddings=128, word_embed_proj_dim=64, **_COMMON)


def _gemma2() -> transformers.PretrainedConfig:
    # Hybrid: sliding-window (8) and full layers alternate.
    return transformers.Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, head_dim=16, max_position_embeddings=128, sliding_window=8,
                                     **_COMMON)


DECODERS: dict[str, Callable[[], transformers.PretrainedConfig]] = {
    "gpt2": _gpt2,
    "llama": _llama,
    "qwen2": _qwen2,
    "mistral": _mistral,
    "phi3": _phi3,
    "gpt_neox": _gpt_neox,
    "opt": _opt,
    "gemma2": _gemma2,
}

# Caches the with-past form refuses: recurrent state, alone (Mamba) or beside sliding-window attention (RecurrentGemma).
UNSUPPORTED: dict[str, Callable[[], transformers.PretrainedConfig]] = {
    "mamba": lambda: transformers.MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=512),
    "recurrent_gemma": lambda: transformers.RecurrentGemmaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        lru_width=64, attention_window_size=8, vocab_size=512,
    ),
}


def tiny_decoder(family: str) -> LoadedModel:
    """The family's tiny causal LM (seed 0, fp32, eval) as fxbench loads models."""
    config = (DECODERS.get(family) or UNSUPPORTED[family])()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    return LoadedModel(source=f"tiny-{family}", task="text-generation", config=model.config, model=model, modality="text")


@functools.lru_cache(maxsize=None)
def captured_decoder(family: str) -> DecoderCapture:
    """The family's with-past capture, made once per test process (tests must not mutate it)."""
    return capture_with_past(tiny_decoder(family))


def prompts(*, left_padded: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts of 6 tokens (input_ids, attention_mask); the second left-padded by 2, as a
    batch is for generate()."""
    ids = torch.randint(3, 512, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    if left_padded:
        ids[1, :2], mask[1, :2] = 0, 0
    return ids, mask
