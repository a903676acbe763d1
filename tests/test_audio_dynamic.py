"""Audio models captured with a dynamic time axis: speech of any length, checked at a length the capture never saw."""

from __future__ import annotations

from collections.abc import Callable

import onnx
import pytest
import torch
import transformers as T

from fxbench.jobs import OptimizeRequest, optimize_captured
from fxbench.models import DynamicDims, capture, load_model
from fxbench.models.axes import SAMPLES, time_plan

_FRONT_END = dict(conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
                  num_conv_pos_embedding_groups=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


def _wav2vec2() -> T.PreTrainedModel:
    return T.Wav2Vec2ForCTC(T.Wav2Vec2Config(vocab_size=32, **_FRONT_END))


def _hubert() -> T.PreTrainedModel:
    return T.HubertForSequenceClassification(T.HubertConfig(num_labels=3, **_FRONT_END))


AUDIO: dict[str, tuple[Callable[[], T.PreTrainedModel], str]] = {
    "wav2vec2": (_wav2vec2, "automatic-speech-recognition"),
    "hubert": (_hubert, "audio-classification"),
}


@pytest.mark.parametrize("name", list(AUDIO))
def test_audio_model_exports_with_a_dynamic_time_axis(name, tmp_path):
    builder, task = AUDIO[name]
    torch.manual_seed(0)
    model = builder().eval()
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(tmp_path / "m")
    cp = capture(load_model(str(tmp_path / "m")))
    assert cp.loaded.task == task
    samples = cp.axis_range(SAMPLES)
    assert samples is not None and samples.max == 30 * 16_000 and samples.min < cp.inputs.audio, cp.static_axes
    length = cp.unseen_sizes()["audio"]
    assert length != cp.inputs.audio and length % 2 == 1
    result = optimize_captured(cp, OptimizeRequest(output=tmp_path / "o", pipeline="O1", targets=("onnx", "onnx-ort"), bench=False))
    result.raise_for_failures()
    for art in result.report.artifacts:
        assert set(art.parity) == {"sample", f"batch3_len{length}"}, (art.kind, art.parity)
    onnx_input = onnx.load(str(result.output_dir / "model.onnx")).graph.input[0]
    assert [d.dim_param or d.dim_value for d in onnx_input.type.tensor_type.shape.dim] == ["batch", "samples"]


def test_whisper_encoder_stays_static_and_says_why(tiny_dir):
    loaded = load_model(str(tiny_dir("whisper")))
    plan = time_plan(loaded, DynamicDims())
    assert plan is not None and not plan.dynamic
    assert "3000 mel frames" in plan.reason and "\n" not in plan.reason
