"""ONNX of a with-past decoder: Optimum's past/present names and axes, checked in ONNX Runtime at unseen prefill and decode shapes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir
import torch

from fxbench.errors import ExportError
from fxbench.exporters.base import Artifact
from fxbench.exporters.checks import Check, ExportSubject, decoder_checks
from fxbench.exporters.onnx import OnnxRunner, _shape_text, export_onnx
from fxbench.exporters.onnx_fusions import contrib_op_counts
from fxbench.exporters.onnx_ort import export_onnx_ort
from fxbench.models.decoder import PAST, SEQ, TOTAL, DecoderCapture, onnx_name

__all__ = [
    "TOTAL_AXIS",
    "PastOnnxRunner",
    "decoder_checks",
    "export_onnx_ort_with_past",
    "export_onnx_with_past",
    "onnx_checks",
]

# Optimum's name for the mask's and the present's length ("past_sequence_length + sequence_length").
TOTAL_AXIS = f"{PAST} + {SEQ}"


def _decoder(subject: ExportSubject) -> DecoderCapture:
    if not isinstance(subject.captured, DecoderCapture):
        raise ExportError("the with-past ONNX export takes a with-past capture (fxbench.models.decoder.capture_with_past)")
    return subject.captured


def onnx_checks(checks: Sequence[Check]) -> tuple[Check, ...]:
    """The same checks with their inputs under the ONNX names, for runners that feed by name."""
    return tuple(dataclasses.replace(c, inputs={onnx_name(k): v for k, v in c.inputs.items()}) for c in checks)


class PastOnnxRunner(OnnxRunner):
    """An ONNX Runtime session of a with-past model, fed from tensors under the program's names
    (OnnxRunner maps them to Optimum's itself; the name stays for callers that say what they run)."""


def _rename(model: ir.Model) -> dict[str, str]:
    """Graph inputs and outputs to Optimum's names; the total length axis to `past_seq + seq`."""
    renamed = {}
    for value in (*model.graph.inputs, *model.graph.outputs):
        new = onnx_name(value.name)
        if new != value.name:
            renamed[value.name] = new
            value.name = new
    values = [*model.graph.inputs, *(o for n in model.graph.all_nodes() for o in n.outputs)]
    for value in values:
        if value.shape is not None and any(not isinstance(d, int) and str(d) == TOTAL for d in value.shape):
            value.shape = ir.Shape([TOTAL_AXIS if not isinstance(d, int) and str(d) == TOTAL else d for d in value.shape])
    return renamed


def _check_io(model: ir.Model, captured: DecoderCapture) -> None:
    expected_in = [onnx_name(n) for n in captured.input_names]
    expected_out = [onnx_name(n) for n in captured.output_names]
    got_in, got_out = [v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs]
    if got_in != expected_in or got_out != expected_out:
        raise ExportError(f"with-past ONNX I/O {got_in} -> {got_out} differ from {expected_in} -> {expected_out}")
    for value in model.graph.outputs[1:]:
        if _shape_text(value)[2:3] != [TOTAL_AXIS]:
            raise ExportError(f"ONNX output {value.name} has length axis {_shape_text(value)[2:3]}, not {TOTAL_AXIS}")


def export_onnx_with_past(subject: ExportSubject, folder: Path, checks: Sequence[Check], **options: Any) -> Artifact:
    """Export a with-past program to `folder/model.onnx` (fxbench's ONNX export, `options` as
    `export_onnx` takes them), named as Optimum's exporter named it: inputs input_ids,
    attention_mask, position_ids, past_key_values.{i}.key|value; outputs logits,
    present.{i}.key|value; axes batch, seq, past_seq and `past_seq + seq` (the mask and the
    presents). Then onnx.checker and ONNX Runtime on every check (`decoder_checks`: a prefill and a
    decode the capture never saw)."""
    captured = _decoder(subject)

    def rename(model: ir.Model) -> dict[str, Any]:
        renamed = _rename(model)
        _check_io(model, captured)
        return renamed

    artifact = export_onnx(subject, Path(folder), onnx_checks(checks), rename=rename, **options)
    return dataclasses.replace(artifact, details={"form": "with-past", "cache": dataclasses.asdict(captured.layout), **artifact.details})


def export_onnx_ort_with_past(subject: ExportSubject, onnx_path: Path, folder: Path, checks: Sequence[Check], **options: Any) -> Artifact:
    """`model.ort.onnx` of a with-past model: fxbench's ONNX Runtime target (onnxscript's ORT
    fusions, ORT's offline optimization, fusions rolled back if they break the numerics; `options`
    as `export_onnx_ort` takes them) fed under the ONNX names. `details["attention"]` says which
    attention ops fired (MultiHeadAttention, GroupQueryAttention) and how many take the past."""
    _decoder(subject)
    artifact = export_onnx_ort(subject, Path(onnx_path), Path(folder), onnx_checks(checks), **options)
    model = ir.load(Path(folder) / artifact.file)
    details: dict[str, Any] = dict(artifact.details, form="with-past", attention=_attention_summary(model))
    return dataclasses.replace(
        artifact,
        input_names=tuple(v.name for v in model.graph.inputs),
        output_names=tuple(v.name for v in model.graph.outputs),
        details=details,
    )


def _attention_summary(model: ir.Model) -> dict[str, Any]:
    """Which fused attention ops the file holds, and whether they take the past themselves
    (past_key / past_value inputs of MultiHeadAttention, GroupQueryAttention) or the graph
    concatenates it before them."""
    counts = contrib_op_counts(model)
    with_past = 0
    for node in model.graph.all_nodes():
        if node.domain == "com.microsoft" and node.op_type in ("MultiHeadAttention", "GroupQueryAttention"):
            past_slots = (6, 7) if node.op_type == "MultiHeadAttention" else (3, 4)
            if all(i < len(node.inputs) and node.inputs[i] is not None for i in past_slots):
                with_past += 1
    return {
        "MultiHeadAttention": counts.get("MultiHeadAttention", 0),
        "GroupQueryAttention": counts.get("GroupQueryAttention", 0),
        "Attention": counts.get("Attention", 0),
        "taking_past": with_past,
    }
