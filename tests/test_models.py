"""Loading, task inference and sample inputs for every modality."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from fxbench.errors import CaptureError, ModelLoadError
from fxbench.models import DEMO_MODEL_ID, SENTENCES, DynamicDims, load_model, make_inputs
from fxbench.models.inputs import dynamic_shapes_for

EXPECTED = {
    # family: (task, modality, input origin, input names)
    "bert": ("feature-extraction", "text", "tokenizer", {"input_ids", "attention_mask", "token_type_ids"}),
    "gpt2": ("text-generation", "text", "config", {"input_ids", "attention_mask"}),
    "llama": ("text-generation", "text", "config", {"input_ids", "attention_mask"}),
    "vit": ("image-classification", "vision", "image processor", {"pixel_values"}),
    "resnet": ("image-classification", "vision", "image processor", {"pixel_values"}),
    "whisper": ("automatic-speech-recognition", "audio", "feature extractor", {"input_features", "decoder_input_ids"}),
}


@pytest.mark.parametrize("family", list(EXPECTED))
def test_load_infers_task_modality_and_inputs(tiny_dir, family):
    task, modality, origin, names = EXPECTED[family]
    loaded = load_model(str(tiny_dir(family)))
    assert (loaded.task, loaded.modality) == (task, modality)
    assert not loaded.model.training
    assert next(loaded.model.parameters()).dtype == torch.float32
    inputs = make_inputs(loaded, batch=3, seq=10)
    assert inputs.origin == origin
    assert set(inputs.tensors) == names
    for name, t in inputs.tensors.items():
        assert t.shape[0] == 3, name
    if modality == "text":
        ids = inputs.tensors["input_ids"]
        assert ids.shape == (3, 10)
        assert 0 <= int(ids.min()) and int(ids.max()) < loaded.config.vocab_size
        assert inputs.tensors["attention_mask"].shape == (3, 10)
    if family == "whisper":
        feats = inputs.tensors["input_features"]
        assert feats.shape == (3, 80, 3000)
        dec = inputs.tensors["decoder_input_ids"]
        assert dec.shape == (3, 10) and bool((dec[:, 0] == loaded.config.decoder_start_token_id).all())
    if family == "vit":
        assert inputs.tensors["pixel_values"].shape == (3, 3, 32, 32)
        # Different synthetic images per sample, not one repeated.
        px = inputs.tensors["pixel_values"]
        assert not torch.equal(px[0], px[1])


def test_tokenizer_inputs_are_the_fixed_real_sentences(minilm_dir):
    loaded = load_model(str(minilm_dir))
    assert loaded.model_id == DEMO_MODEL_ID and loaded.name == "all-MiniLM-L6-v2"
    inputs = make_inputs(loaded, batch=4, seq=32)
    assert inputs.origin == "tokenizer"
    tok = loaded.preprocessor
    decoded = tok.decode(inputs.tensors["input_ids"][1], skip_special_tokens=True)
    assert decoded == tok.decode(tok(SENTENCES[1])["input_ids"], skip_special_tokens=True)
    assert "guitar" in decoded
    # Padding to the requested length shows in the attention mask.
    assert int(inputs.tensors["attention_mask"][0].sum()) < 32


def test_folder_without_tokenizer_files_uses_config_inputs(tiny_dir, tmp_path):
    from tiny_models import save_tiny

    folder = save_tiny("bert", tmp_path / "bare")
    loaded = load_model(str(folder))
    # transformers 5 builds an empty five-token tokenizer for such a folder: it must not be used.
    assert loaded.preprocessor is None
    assert make_inputs(loaded, 2, 8).origin == "config"


def test_task_override_and_errors(tiny_dir):
    loaded = load_model(str(tiny_dir("bert")), task="fill-mask")
    assert loaded.task == "fill-mask" and type(loaded.model).__name__ == "BertForMaskedLM"
    with pytest.raises(ModelLoadError, match="unknown task 'nonsense'"):
        load_model(str(tiny_dir("bert")), task="nonsense")
    with pytest.raises(ModelLoadError, match="has no image-classification head"):
        load_model(str(tiny_dir("bert")), task="image-classification")


def test_missing_folder_and_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no model folder"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(str(tmp_path / "empty"))


def test_hub_id_offline_is_one_fast_clear_error():
    # A subprocess, so the offline flag is read fresh by huggingface_hub.
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=os.environ.get("HF_HOME", "/tmp/fxbench-empty-hf-home"))
    code = "from fxbench.models import load_model\nload_model('bert-base-uncased')"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Hub is unreachable (offline)" in proc.stderr and "hf download bert-base-uncased" in proc.stderr
    assert time.perf_counter() - start < 60


def test_dynamic_shapes_cover_batch_and_sequence(tiny_dir):
    loaded = load_model(str(tiny_dir("whisper")))
    inputs = make_inputs(loaded, 2, 8)
    shapes = dynamic_shapes_for(loaded, inputs, DynamicDims(batch=(1, 8), seq=(2, 1000)))
    assert set(shapes) == {"input_features", "decoder_input_ids"}
    assert set(shapes["input_features"]) == {0}  # the encoder needs exactly 3000 frames
    dec = shapes["decoder_input_ids"][1]
    assert dec.max == 64  # capped at max_target_positions
    assert dynamic_shapes_for(loaded, inputs, DynamicDims(static=True)) is None
    with pytest.raises(CaptureError, match="sample batch of at least 2"):
        dynamic_shapes_for(loaded, make_inputs(loaded, 1, 8), DynamicDims())
    with pytest.raises(CaptureError, match="bad batch range"):
        DynamicDims(batch=(8, 2))
