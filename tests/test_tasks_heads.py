"""Every head a model ships with: depth, detection, segmentation, CLIP, vision-language models, forecasting, multiple choice; inputs from the processor; never a silent downgrade."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T
from typer.testing import CliRunner

from fxbench.cli import app
from fxbench.errors import CaptureError, ModelLoadError
from fxbench.jobs import OptimizeRequest, optimize_captured
from fxbench.models import TASKS, capture, load_model
from fxbench.models.inputs import SampleInputs, make_inputs
from fxbench.models.sentences import SENTENCES
from fxbench.models.tasks import canonical_task
from fxbench.task_names import TASK_NAMES


def _dpt() -> T.PreTrainedModel:
    return T.DPTForDepthEstimation(T.DPTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
        backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 16, 32], fusion_hidden_size=16,
        reassemble_factors=[4, 2, 1, 0.5], head_in_index=-1))


# The processors' normalization is not the default one, so the sample's pixels show whose they are.
_MEAN, _STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
_CHARS = sorted(set("".join(SENTENCES)) - {" "})


def _clip_processor() -> T.CLIPProcessor:
    """CLIP's own byte-level BPE (lower-cased, `</w>` word ends) over the sentences' characters, a few merges."""
    chars = sorted({c.lower() for c in _CHARS})
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = [("t", "h"), ("th", "e</w>"), ("i", "n"), ("in", "g</w>")]
    vocab.update({a + b: len(vocab) + i for i, (a, b) in enumerate(merges)})
    images = T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=_MEAN, image_std=_STD)
    return T.CLIPProcessor(image_processor=images, tokenizer=T.CLIPTokenizer(vocab=vocab, merges=merges))


def _clip() -> tuple[T.PreTrainedModel, T.ProcessorMixin]:
    processor = _clip_processor()
    tok = processor.tokenizer
    model = T.CLIPModel(T.CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         max_position_embeddings=64, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=37),
        projection_dim=16))
    return model, processor


def _llava() -> tuple[T.PreTrainedModel, T.ProcessorMixin]:
    """llava-hf's layout: a Llama tokenizer with `<image>` and `<pad>` added, CLIP's image processor, and
    a processor whose patch size and CLS count make (32 / 8)^2 = 16 tokens per image, as the tower does."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}
    for c in _CHARS:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault("▁" + c, len(vocab))
    tok = T.LlamaTokenizer(vocab=vocab, merges=[("▁", c) for c in _CHARS], add_bos_token=True)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"], "pad_token": "<pad>"})
    images = T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=_MEAN, image_std=_STD)
    processor = T.LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                                 num_additional_image_tokens=1)
    vision = T.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=37, projection_dim=16)
    text = T.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=128, pad_token_id=tok.pad_token_id, bos_token_id=1, eos_token_id=2)
    model = T.LlavaForConditionalGeneration(T.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=processor.image_token_id, vision_feature_layer=-1,
        projector_hidden_act="gelu"))
    return model, processor


def _aya_vision() -> tuple[T.PreTrainedModel, T.ProcessorMixin]:
    """As transformers' own tests build Aya Vision (SigLIP tower, Cohere2 text, pixel shuffle by 2), at 32 px:
    (32 / 8 / 2)^2 = 4 tokens per tile, which the processor wraps in its image and tile markers."""
    specials = ["<PAD>", "<UNK>", "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", "<CLS>", "<SEP>", "<MASK_TOKEN>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for c in [*_CHARS, "Ġ"]:  # byte-level BPE: Ġ is the space
        vocab.setdefault(c, len(vocab))
    tok = T.CohereTokenizer(vocab=vocab, merges=[])
    tok.add_special_tokens({"additional_special_tokens": [
        "<image>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>", "TILE", "TILE_GLOBAL"]})
    images = T.GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=True, image_mean=_MEAN, image_std=_STD)
    processor = T.AyaVisionProcessor(image_processor=images, tokenizer=tok, patch_size=8, img_size=32, downsample_factor=2)
    vision = T.SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=37, vision_use_head=False)
    text = T.Cohere2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    model = T.AyaVisionForConditionalGeneration(T.AyaVisionConfig(
        vision_config=vision, text_config=text, image_token_index=processor.image_token_id, downsample_factor=2))
    return model, processor


def _informer() -> T.PreTrainedModel:
    # Full attention: ProbSparse samples its queries at random, which no artifact can be checked against.
    return T.InformerForPrediction(T.InformerConfig(
        prediction_length=4, context_length=8, lags_sequence=[1, 2, 3], num_time_features=2, d_model=16, encoder_layers=1,
        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
        attention_type="full"))


def _multiple_choice() -> T.PreTrainedModel:
    return T.BertForMultipleChoice(T.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, max_position_embeddings=64))


def _pretraining() -> T.PreTrainedModel:
    return T.BertForPreTraining(T.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, max_position_embeddings=64))


Built = T.PreTrainedModel | tuple[T.PreTrainedModel, T.ProcessorMixin]

# name -> (builder of the model and, where its checkpoints ship one, its processor; task inferred from
# the config; modality; output names the artifact must carry first)
HEADS: dict[str, tuple[Callable[[], Built], str, str, tuple[str, ...]]] = {
    "dpt": (_dpt, "depth-estimation", "vision", ("predicted_depth",)),
    "clip": (_clip, "zero-shot-image-classification", "multimodal", ("logits_per_image", "logits_per_text")),
    "llava": (_llava, "image-text-to-text", "multimodal", ("logits",)),
    "aya-vision": (_aya_vision, "image-text-to-text", "multimodal", ("logits",)),
    "informer": (_informer, "time-series-forecasting", "time-series", ("params.0", "params.1", "params.2")),
    "multiple-choice": (_multiple_choice, "multiple-choice", "text", ("logits",)),
}


def save_head(builder: Callable[[], Built], folder: Path) -> Path:
    """The model (seed 0) and its processor, saved as a checkpoint ships them."""
    torch.manual_seed(0)
    built = builder()
    model, processor = built if isinstance(built, tuple) else (built, None)
    model.eval().config.architectures = [type(model).__name__]
    model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    return folder


def _assert_made_by(inputs: SampleInputs, processor: T.ProcessorMixin) -> None:
    """The sample is the processor's: pixels at its size and normalized with its mean and std; token ids
    its tokenizer's, real text; a vision-language model's image placeholder expanded exactly as the
    processor expands it for one image of that size."""
    assert inputs.origin == "processor"
    pixels, ids = inputs.tensors["pixel_values"], inputs.tensors["input_ids"]
    crop = processor.image_processor.crop_size or processor.image_processor.size
    assert list(pixels.shape[-2:]) == [crop["height"], crop["width"]] == list(inputs.image)
    mean, std = torch.tensor(_MEAN), torch.tensor(_STD)
    torch.testing.assert_close(pixels[0].amin(dim=(1, 2)), (0 - mean) / std)  # the images span black to white
    torch.testing.assert_close(pixels[0].amax(dim=(1, 2)), (1 - mean) / std)
    start = 0
    placeholder = getattr(processor, "image_token", None)
    if placeholder is not None:
        one = processor(images=[np.zeros((*pixels.shape[-2:], 3), np.uint8)], text=[placeholder])["input_ids"][0]
        assert ids[0, : len(one)].tolist() == list(one)
        assert (ids == processor.image_token_id).sum(dim=1).tolist() == [list(one).count(processor.image_token_id)] * len(ids)
        start = len(one)
    text = "".join(processor.tokenizer.decode(ids[0, start:], skip_special_tokens=True).split()).lower()
    assert len(text) > 5 and "".join(" ".join(SENTENCES).split()).lower().startswith(text), text


def test_task_names_for_help_match_the_task_table():
    assert TASK_NAMES == tuple(TASKS)


@pytest.mark.parametrize("name", list(HEADS))
def test_head_optimizes_and_exports_checked_at_an_unseen_shape(name, tmp_path):
    builder, task, modality, outputs = HEADS[name]
    folder = save_head(builder, tmp_path / "m")
    loaded = load_model(str(folder))
    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    assert (loaded.task, loaded.modality, type(loaded.model).__name__) == (task, modality, architecture)
    cp = capture(loaded)
    if (folder / "processor_config.json").exists():
        _assert_made_by(cp.inputs, loaded.preprocessor)
    assert cp.output_names[: len(outputs)] == outputs, cp.output_names
    result = optimize_captured(cp, OptimizeRequest(output=tmp_path / "o", pipeline="O1", targets=("onnx",), bench=False))
    result.raise_for_failures()
    assert result.report_json["inputs"]["origin"] == cp.inputs.origin
    for art in result.report.artifacts:
        unseen = [k for k in art.parity if k != "sample"]
        assert len(unseen) == 1 and unseen[0].startswith("batch3"), (art.kind, art.parity)


def test_vision_language_model_without_a_processor_draws_its_inputs_from_the_config(tmp_path):
    folder = save_head(_llava, tmp_path / "m")
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    loaded = load_model(str(folder))
    assert loaded.preprocessor is None
    inputs = make_inputs(loaded, 2, 24)
    ids, token = inputs.tensors["input_ids"], loaded.config.image_token_index
    assert inputs.origin == "config" and list(inputs.tensors["pixel_values"].shape) == [2, 3, 32, 32]
    assert (ids == token).sum(dim=1).tolist() == [16, 16] and bool((ids[:, 1:17] == token).all())


def test_processor_that_does_not_fit_the_model_is_one_line(tmp_path):
    folder = save_head(_llava, tmp_path / "m")
    processor = T.AutoProcessor.from_pretrained(folder)
    processor.patch_size = 4  # 64 tokens per 32 px image; the tower makes 16
    processor.save_pretrained(folder)
    with pytest.raises(CaptureError, match="expands one image to 64 tokens but LlavaForConditionalGeneration makes 16 image features at 32x32; its patch_size") as info:
        make_inputs(load_model(str(folder)), 2, 24)
    assert "\n" not in str(info.value)
    result = CliRunner().invoke(app, ["optimize", str(folder), "-o", str(tmp_path / "o"), "--no-bench"])
    assert result.exit_code != 0 and result.output.count("error:") == 1 and "patch_size" in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_head_without_a_task_stops_and_names_the_way_out(tmp_path):
    folder = save_head(_pretraining, tmp_path / "m")
    with pytest.raises(ModelLoadError) as info:
        load_model(str(folder))
    message = str(info.value)
    assert "\n" not in message
    assert "BertForPreTraining" in message and "--task" in message and "fill-mask" in message and "feature-extraction" in message
    # On purpose, the backbone still loads.
    assert type(load_model(str(folder), "feature-extraction").model).__name__ == "BertModel"
    # The CLI says it in one line, before any capture.
    result = CliRunner().invoke(app, ["optimize", str(folder), "-o", str(tmp_path / "o"), "--no-bench"])
    assert result.exit_code == 2
    assert result.output.count("error:") == 1 and "BertForPreTraining" in result.output
    assert not (tmp_path / "o").exists()


def test_optimum_task_names_are_synonyms(tmp_path):
    assert canonical_task("sequence-classification") == "text-classification"
    assert canonical_task("causal-lm") == "text-generation"
    assert canonical_task("audio_ctc") == "automatic-speech-recognition"
    backbone = save_head(lambda: _multiple_choice().bert, tmp_path / "backbone")
    assert type(load_model(str(backbone), "sequence-classification").model).__name__ == "BertForSequenceClassification"
    # Another head's weights of another shape are one line, not a state-dict report.
    with pytest.raises(ModelLoadError, match="weights do not fit .*BertForMultipleChoice.*pick the --task") as info:
        load_model(str(save_head(_multiple_choice, tmp_path / "mc")), "sequence-classification")
    assert "\n" not in str(info.value)
    # Optimum's with-past names: the causal LM's is fxbench's with-past task; an encoder-decoder's is refused.
    assert canonical_task("causal-lm-with-past") == canonical_task("text-generation-with-past") == "text-generation-with-past"
    with pytest.raises(ModelLoadError, match="decoder-only LMs only, --task text-generation-with-past; without one: --task text2text-generation\\)"):
        canonical_task("seq2seq-lm-with-past")
    with pytest.raises(ModelLoadError, match="unknown task 'depth'"):
        canonical_task("depth")


def test_optimize_help_and_the_readme_list_every_task_and_the_image_options():
    result = CliRunner().invoke(app, ["optimize", "--help"], env={"COLUMNS": "240", "TERMINAL_WIDTH": "240"})
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in TASKS:
        assert name in text and f"`{name}`" in readme, name
    assert "--image-range" in text and "--image-size" in text  # --bench-image-size is its hidden old name
