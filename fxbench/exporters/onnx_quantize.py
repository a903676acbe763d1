"""ONNX Runtime's dynamic int8 quantization of the ONNX export: the baseline fxbench's own int8 is compared with."""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import onnx_ir as ir
from onnxruntime.quantization import QuantType, quantize_dynamic

from fxbench.errors import ExportError, VerificationError
from fxbench.exporters.base import Artifact
from fxbench.exporters.checks import Check, ExportSubject, verify
from fxbench.exporters.onnx import OnnxRunner, onnx_files, ort_providers, stored_details
from fxbench.exporters.targets import target_file
from fxbench.numerics import Tolerance

__all__ = ["export_onnx_int8"]

_QUANTIZED_OPS = ("MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QAttention", "ConvInteger", "QGemm")


def export_onnx_int8(
    subject: ExportSubject,
    onnx_path: Path,
    folder: Path,
    checks: Sequence[Check],
    *,
    per_channel: bool = True,
    reduce_range: bool = False,
    device: str = "cpu",
) -> Artifact:
    """Quantize `onnx_path` with `onnxruntime.quantization.quantize_dynamic` (int8 weights, per output
    channel by default; activations quantized at run time) into `folder` as the onnx-int8 target's
    file (model.int8-dynamic.onnx).

    It is a baseline: its parity against eager is measured and recorded with whether it meets the
    int8 tolerance (`details["meets_tolerance"]`), but a miss does not discard it; comparing it
    with fxbench's own int8 is its purpose. It must still run and give finite outputs.

    ORT's `quant_pre_process` is not run: its symbolic shape inference cannot follow the dynamo
    exporter's shape arithmetic, and quantize_dynamic needs only the weights of MatMul / Gemm.
    """
    start = time.perf_counter()
    providers = ort_providers(device)
    destination = Path(folder) / target_file("onnx-int8", device)
    external = len(onnx_files(Path(onnx_path))) > 1
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # quantize_dynamic logs advice about pre-processing on every call
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_dynamic(
                Path(onnx_path),
                destination,
                per_channel=per_channel,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
                use_external_data_format=external,
            )
    except Exception as exc:  # noqa: BLE001 - the quantizer raises bare exceptions; report them in one line
        raise ExportError(f"onnxruntime quantize_dynamic failed: {type(exc).__name__}: {' '.join(str(exc).split())[:240]}") from exc
    finally:
        quiet.setLevel(level)
    tolerance = subject.held_to.loosest(Tolerance.for_precision("int8"))
    runner = OnnxRunner(destination, providers)
    parity = verify(runner, checks, subject, f"{destination.name} in ONNX Runtime", tolerance, strict=False)
    if not all(p["finite"] for p in parity.values()):
        raise VerificationError(f"{destination.name} gives non-finite outputs in ONNX Runtime")
    meets = all(p["cosine"] >= tolerance.min_cosine and p["max_rel_error"] <= tolerance.max_rel_error for p in parity.values())
    model = ir.load(destination)
    ops = Counter(n.op_type for n in model.graph.all_nodes())
    if not any(ops[op] for op in _QUANTIZED_OPS):
        raise ExportError(f"quantize_dynamic found no MatMul or Gemm with constant weights to quantize in {Path(onnx_path).name}")
    details = {
        "source": Path(onnx_path).name,
        "method": "onnxruntime.quantization.quantize_dynamic",
        "weight_type": "QInt8",
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "quantized_ops": {op: ops[op] for op in _QUANTIZED_OPS if ops[op]},
        "float_matmuls_left": ops["MatMul"] + ops["Gemm"],
        "tolerance": tolerance.to_dict(),
        "meets_tolerance": meets,
        **stored_details(destination),
    }
    return subject.artifact("onnx-int8", destination, device, parity, details, started=start, precision="int8")
