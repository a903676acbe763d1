"""ONNX Runtime's offline graph optimization, after transformer fusions, saved per execution provider."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir
import onnxruntime as ort

from fxbench.errors import ExportError, VerificationError
from fxbench.exporters.base import Artifact
from fxbench.exporters.checks import Check, ExportSubject, verify
from fxbench.exporters.onnx import EXTERNAL_DATA_THRESHOLD, OnnxRunner, onnx_files, ort_providers, save_onnx, stored_details
from fxbench.exporters.storage import ensure_space
from fxbench.exporters.onnx_fusions import contrib_op_counts, fuse_for_ort
from fxbench.exporters.onnx_int4 import ACCURACY_LEVEL_OPTION
from fxbench.exporters.targets import target_file

__all__ = ["DEFAULT_LEVEL", "ORT_LEVELS", "OrtOptimization", "export_onnx_ort", "optimize_offline"]

ORT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# Above "extended", ORT writes layout transforms (NCHWc) for this very CPU into the file; the
# saved model is then only valid where it was made. "extended" keeps it portable across machines.
DEFAULT_LEVEL = "extended"


# What a user of the CPU int8 form needs to know when loading it (measured, issue 10): nothing is
# required beyond a plain InferenceSession; spinning threads are what collapses on a loaded host.
_INT8_SESSION = {
    "required": "none: onnxruntime.InferenceSession(path) with intra_op_num_threads set to the cores to use",
    "shared_host": "with more runnable threads than cores, add session config session.intra_op.allow_spinning=0 "
                   "(ORT's spinning pool otherwise loses several times its speed)",
}


@dataclass(frozen=True)
class OrtOptimization:
    """What an offline optimization did: the fusions that fired and the fused ops in the result."""

    path: Path
    provider: str
    level: str
    fusions: dict[str, int] = field(default_factory=dict)  # rule -> times it fired (nonzero only)
    contrib_ops: dict[str, int] = field(default_factory=dict)  # com.microsoft op -> count in the saved file


def _fuse(source: Path, fused: Path, threshold: int) -> dict[str, int]:
    model = ir.load(source)
    model, counts = fuse_for_ort(model)
    save_onnx(model, fused, threshold)
    return {k: v for k, v in counts.items() if v}


def optimize_offline(
    source: Path,
    destination: Path,
    *,
    provider: str = "CPUExecutionProvider",
    level: str = DEFAULT_LEVEL,
    fusions: bool = True,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    nbits_accuracy_level: int | None = None,
) -> OrtOptimization:
    """Transformer fusions (onnxscript's ORT rules plus fxbench's), then ONNX Runtime's graph
    optimizations at `level` for `provider`, written by ORT itself to `destination`."""
    if level not in ORT_LEVELS:
        raise ExportError(f"unknown ONNX Runtime optimization level {level!r}; expected one of {', '.join(ORT_LEVELS)}")
    destination = Path(destination)
    applied: dict[str, int] = {}
    start_from = Path(source)
    if fusions:
        start_from = destination.with_name(f".fused.{destination.name}")
        applied = _fuse(Path(source), start_from, external_data_threshold)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ORT_LEVELS[level]
    options.optimized_model_filepath = str(destination)
    if nbits_accuracy_level is not None:
        # The MatMulNBits that ORT fuses from int4 DequantizeLinear + MatMul takes this level.
        options.add_session_config_entry(ACCURACY_LEVEL_OPTION, str(nbits_accuracy_level))
    ensure_space(destination.parent, sum(f.stat().st_size for f in onnx_files(start_from)) + 2**20, destination.name)
    if len(onnx_files(Path(source))) > 1:
        # Keep large weights out of the protobuf, as in the source model.
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{destination.name}.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(start_from), sess_options=options, providers=[provider])
    finally:
        if start_from != Path(source):
            for f in onnx_files(start_from):
                f.unlink(missing_ok=True)
    model = ir.load(destination)
    return OrtOptimization(destination, provider, level, applied, contrib_op_counts(model))


def _nbits_details(model: ir.Model) -> dict[str, Any]:
    """The MatMulNBits ORT fused from int4 weights, and the accuracy level each runs at."""
    levels = [n.attributes.get_int("accuracy_level", 0) for n in model.graph.all_nodes() if n.op_type == "MatMulNBits"]
    if not levels:
        return {}
    return {"matmul_nbits": {"count": len(levels), "accuracy_level": sorted(set(levels)),
                             "note": f"accuracy_level 4 quantizes activations to int8 in the kernel; {ACCURACY_LEVEL_OPTION}=0 "
                                     "(ExportOptions.nbits_accuracy_level) keeps them fp32"}}


def export_onnx_ort(
    subject: ExportSubject,
    onnx_path: Path,
    folder: Path,
    checks: Sequence[Check],
    *,
    device: str = "cpu",
    level: str = DEFAULT_LEVEL,
    fusions: bool = True,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    nbits_accuracy_level: int | None = None,
) -> Artifact:
    """The onnx-ort target's file (model.ort.onnx; model.ort-cuda.onnx): the ONNX export fused and
    optimized offline for one execution provider, checked against eager with ORT's own optimizations
    off, so the file as stored is what is proven.

    If the fused graph fails to load or misses the tolerance, the fusions are rolled back (as a
    pass would be) and the file is ORT's optimization alone; the reason is in the details.
    """
    start = time.perf_counter()
    providers = ort_providers(device)
    destination = Path(folder) / target_file("onnx-ort", device)
    as_stored = ort.SessionOptions()
    as_stored.graph_optimization_level = ORT_LEVELS["disable"]
    rolled_back = None
    for fuse in ([True, False] if fusions else [False]):
        try:
            result = optimize_offline(onnx_path, destination, provider=providers[0], level=level, fusions=fuse,
                                      external_data_threshold=external_data_threshold, nbits_accuracy_level=nbits_accuracy_level)
            runner = OnnxRunner(destination, providers, as_stored)
            parity = verify(runner, checks, subject, f"{destination.name} in ONNX Runtime")
            break
        except Exception as exc:  # noqa: BLE001 - a fusion that breaks the graph is rolled back, whatever it raised
            for f in onnx_files(destination) if destination.exists() else []:
                f.unlink()
            if fuse:
                rolled_back = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                continue
            if isinstance(exc, VerificationError):
                raise
            raise ExportError(f"ONNX Runtime's offline optimization failed: {' '.join(str(exc).split())[:240]}") from exc
    stored = ir.load(destination)
    details: dict[str, Any] = {
        "source": Path(onnx_path).name,
        "provider": result.provider,
        "level": level,
        "fusions": result.fusions,
        "fused_ops": result.contrib_ops,
        "fusions_rolled_back": rolled_back,
        **({"session_options": _INT8_SESSION} if result.fusions.get("DynamicQuantizeMatMul") or result.fusions.get("MatMulIntegerToFloat") else {}),
        **_nbits_details(stored),
        **stored_details(destination, stored),
        "onnxruntime": ort.__version__,
    }
    return subject.artifact("onnx-ort", destination, device, parity, details, started=start)
