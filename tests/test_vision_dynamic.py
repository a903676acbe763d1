"""Vision models captured with dynamic height and width: every artifact keeps them and is checked at an unseen, non-square size."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
import transformers as T

from fxbench.errors import FxbenchError
from fxbench.jobs import OptimizeRequest, optimize_captured
from fxbench.jobs.bench import workload
from fxbench.models import DynamicDims, capture, load_model
from fxbench.models.axes import HEIGHT, WIDTH
from fxbench.numerics import Tolerance, compare
from fxbench.runtime.bench import Shape, parse_image_sizes


def _resnet() -> T.PreTrainedModel:
    return T.ResNetForImageClassification(T.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], num_labels=5, image_size=64))


def _convnext() -> T.PreTrainedModel:
    return T.ConvNextForImageClassification(T.ConvNextConfig(hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], num_labels=5, image_size=64))


def _mobilevit() -> T.PreTrainedModel:
    return T.MobileViTForImageClassification(T.MobileViTConfig(
        image_size=64, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_labels=5))


def _swin() -> T.PreTrainedModel:
    return T.SwinForImageClassification(T.SwinConfig(
        image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=5))


def _detr() -> T.PreTrainedModel:
    backbone = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], out_features=["stage4"])
    return T.DetrForObjectDetection(T.DetrConfig(
        use_timm_backbone=False, backbone_config=backbone, backbone=None, use_pretrained_backbone=False, d_model=32,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, num_queries=10, num_labels=5, image_size=64))


def _segformer() -> T.PreTrainedModel:
    return T.SegformerForSemanticSegmentation(T.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
        patch_sizes=[7, 3], strides=[4, 2], decoder_hidden_size=32, num_labels=5, image_size=64))


# family -> (builder, task fxbench must infer, output names, the multiple of the image sides)
FAMILIES: dict[str, tuple[Callable[[], T.PreTrainedModel], str, tuple[str, ...], int]] = {
    "resnet": (_resnet, "image-classification", ("logits",), 1),
    "convnext": (_convnext, "image-classification", ("logits",), 1),
    "mobilevit": (_mobilevit, "image-classification", ("logits",), 64),
    "swin": (_swin, "image-classification", ("logits",), 16),
    "detr": (_detr, "object-detection", ("logits", "pred_boxes"), 1),
    "segformer": (_segformer, "semantic-segmentation", ("logits",), 1),
}


def save_vision(family: str, folder: Path) -> Path:
    torch.manual_seed(0)
    model = FAMILIES[family][0]().eval()
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vision_capture(tmp_path_factory):
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = capture(load_model(str(save_vision(family, tmp_path_factory.mktemp(family)))))
        return cache[family]

    return get


def _onnx_dims(path: Path) -> list:
    model = onnx.load(str(path), load_external_data=False)
    return [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_vision_model_optimizes_and_exports_with_dynamic_image_sizes(vision_capture, family, tmp_path):
    _, task, outputs, multiple = FAMILIES[family]
    cp = vision_capture(family)
    assert cp.loaded.task == task
    assert cp.output_names[: len(outputs)] == outputs
    height, width = cp.axis_range(HEIGHT), cp.axis_range(WIDTH)
    assert height is not None and width is not None, cp.static_axes
    assert height.multiple == width.multiple == multiple
    assert height.max == 2048 and height.min <= min(cp.inputs.image)

    targets = ("onnx", "onnx-ort", "aoti") if family == "resnet" else ("onnx", "onnx-ort")
    result = optimize_captured(cp, OptimizeRequest(output=tmp_path / "o", pipeline="O1", targets=targets, bench=False))
    result.raise_for_failures()
    unseen = cp.unseen_sizes()["image"]
    assert unseen[0] != unseen[1] and unseen != cp.inputs.image and all(side % multiple == 0 for side in unseen)
    check = f"batch3_{unseen[0]}x{unseen[1]}"
    kinds = {a.kind: a for a in result.report.artifacts}
    assert set(kinds) == {"program", *targets}
    for art in kinds.values():
        assert set(art.parity) == {"sample", check}, (art.kind, art.parity)
    for name in ("model.onnx", "model.ort.onnx"):
        assert _onnx_dims(result.output_dir / name) == ["batch", 3, "height", "width"]
    assert "height" in result.report.capture.axes

    # A server's view: the ORT-fused file, opened afresh, at yet another non-square size.
    up = -(-(cp.inputs.image[0] + 40) // multiple) * multiple
    size = (up + multiple, up)
    inputs = cp.make_inputs(1, seed=5, image=size).tensors
    session = ort.InferenceSession(str(result.output_dir / "model.ort.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    parity = compare([torch.from_numpy(g) for g in got], cp.run_eager(inputs), cp.output_names)
    assert Tolerance.for_precision("fp32").accepts(parity), (size, parity.brief())


def test_model_with_a_position_table_stays_static_and_says_why(captured):
    cp = captured("vit")
    assert cp.axis_range(HEIGHT) is None
    assert "position table" in cp.static_axes["image"] and "\n" not in cp.static_axes["image"]
    assert "image static" in cp.describe_axes()
    assert cp.unseen_sizes() == {}


def test_image_range_bounds_the_captured_sides(tmp_path):
    cp = capture(load_model(str(save_vision("convnext", tmp_path / "m"))), dims=DynamicDims(image=(48, 320)))
    rec = cp.axis_range(WIDTH)
    assert rec is not None and (rec.min, rec.max) == (64, 320)  # ConvNeXt's stride-32 stem needs 64 here
    with pytest.raises(FxbenchError, match="takes width 64..320"):
        workload(cp, [Shape(1, None, (128, 640))])
    work = workload(cp, [Shape(1, None, (128, 96)), Shape(2, None, (64, 64))])
    assert [tuple(t["pixel_values"].shape) for t in work.inputs.values()] == [(1, 3, 128, 96), (2, 3, 64, 64)]


def test_image_size_option_parses_sides_and_rectangles():
    assert parse_image_sizes("224,384,640x480") == [(224, 224), (384, 384), (640, 480)]
    with pytest.raises(FxbenchError, match="expected N or HxW"):
        parse_image_sizes("224,big")
