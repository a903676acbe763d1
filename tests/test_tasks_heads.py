"""Every head a model ships with: depth, detection, segmentation, CLIP, a vision-language model, forecasting, multiple choice; never a silent downgrade."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers as T
from typer.testing import CliRunner

from fxbench.cli import app
from fxbench.errors import ModelLoadError
from fxbench.jobs import OptimizeRequest, optimize_captured
from fxbench.models import TASKS, capture, load_model
from fxbench.models.tasks import canonical_task
from fxbench.task_names import TASK_NAMES


def _dpt() -> T.PreTrainedModel:
    return T.DPTForDepthEstimation(T.DPTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
        backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 16, 32], fusion_hidden_size=16,
        reassemble_factors=[4, 2, 1, 0.5], head_in_index=-1))


def _clip() -> T.PreTrainedModel:
    return T.CLIPModel(T.CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         max_position_embeddings=64),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=37),
        projection_dim=16))


def _llava() -> T.PreTrainedModel:
    vision = T.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=37, projection_dim=16)
    text = T.LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    return T.LlavaForConditionalGeneration(T.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=98, vision_feature_layer=-1, projector_hidden_act="gelu"))


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


# name -> (builder, task inferred from the config, modality, output names the artifact must carry first)
HEADS: dict[str, tuple[Callable[[], T.PreTrainedModel], str, str, tuple[str, ...]]] = {
    "dpt": (_dpt, "depth-estimation", "vision", ("predicted_depth",)),
    "clip": (_clip, "zero-shot-image-classification", "multimodal", ("logits_per_image", "logits_per_text")),
    "llava": (_llava, "image-text-to-text", "multimodal", ("logits",)),
    "informer": (_informer, "time-series-forecasting", "time-series", ("params.0", "params.1", "params.2")),
    "multiple-choice": (_multiple_choice, "multiple-choice", "text", ("logits",)),
}


def save_head(builder: Callable[[], T.PreTrainedModel], folder: Path) -> Path:
    torch.manual_seed(0)
    model = builder().eval()
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(folder)
    return folder


def test_task_names_for_help_match_the_task_table():
    assert TASK_NAMES == tuple(TASKS)


@pytest.mark.parametrize("name", list(HEADS))
def test_head_optimizes_and_exports_checked_at_an_unseen_shape(name, tmp_path):
    builder, task, modality, outputs = HEADS[name]
    loaded = load_model(str(save_head(builder, tmp_path / "m")))
    assert (loaded.task, loaded.modality, type(loaded.model).__name__) == (task, modality, type(builder()).__name__)
    cp = capture(loaded)
    assert cp.output_names[: len(outputs)] == outputs, cp.output_names
    result = optimize_captured(cp, OptimizeRequest(output=tmp_path / "o", pipeline="O1", targets=("onnx",), bench=False))
    result.raise_for_failures()
    for art in result.report.artifacts:
        unseen = [k for k in art.parity if k != "sample"]
        assert len(unseen) == 1 and unseen[0].startswith("batch3"), (art.kind, art.parity)


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


def test_optimize_help_lists_the_tasks_and_the_image_options():
    result = CliRunner().invoke(app, ["optimize", "--help"], env={"COLUMNS": "240", "TERMINAL_WIDTH": "240"})
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    for name in ("depth-estimation", "object-detection", "zero-shot-image-classification", "time-series-forecasting", "multiple-choice"):
        assert name in text
    assert "--image-range" in text and "--image-size" in text  # --bench-image-size is its hidden old name
