"""ONNX from the optimized program with torch.onnx (dynamo), named dynamic axes, checked by onnx.checker and ONNX Runtime."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch

from fxbench.environment import package_version
from fxbench.errors import BackendUnavailableError, ExportError
from fxbench.exporters.base import Artifact
from fxbench.exporters.checks import Check, ExportSubject, verify
from fxbench.exporters.onnx_int4 import ACCURACY_LEVEL_OPTION, INT4_OPSET, has_int4, int4_translations, lower_int4_matmuls
from fxbench.exporters.storage import ensure_space
from fxbench.exporters.targets import target_file
from fxbench.models.decoder import onnx_name

__all__ = [
    "DEFAULT_OPSET",
    "EXTERNAL_DATA_THRESHOLD",
    "MAX_OPSET",
    "MIN_OPSET",
    "OnnxRunner",
    "export_onnx",
    "onnx_files",
    "ort_providers",
    "save_onnx",
    "stored_details",
    "validate_opset",
]

# torch.onnx's dynamo exporter translates to opset 18 (its torchlib) and converts upward; lower
# opsets come out of its version converter unconverted or broken, so they are refused up front.
MIN_OPSET = 18
MAX_OPSET = 23  # torch.onnx's ONNX_MAX_OPSET for torch 2.9-2.13; ONNX Runtime 1.22+ runs it
DEFAULT_OPSET = 18
# Protobuf cannot serialize a message over 2 GiB; weights beyond 2 GB go to model.onnx.data.
EXTERNAL_DATA_THRESHOLD = 2_000_000_000

_NUMPY_BY_ORT_TYPE = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def validate_opset(opset: int) -> int:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--opset {opset} is not supported: torch.onnx exports opsets {MIN_OPSET} to {MAX_OPSET}")
    return opset


def ort_providers(device: str) -> list[str]:
    """The ONNX Runtime execution providers for `device`: CUDA (with CPU fallback) or CPU."""
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailableError(
                "--device cuda needs ONNX Runtime's CUDA execution provider: pip install 'fxbench[gpu]' (onnxruntime-gpu) on a machine with a CUDA GPU"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def onnx_files(path: Path) -> list[Path]:
    """The model file and its external-data file (`<file>.data`, as fxbench writes it), if any."""
    data = path.with_name(f"{path.name}.data")
    return [path, data] if data.is_file() else [path]


def stored_details(path: Path, model: ir.Model | None = None) -> dict[str, Any]:
    """An artifact's details about how it is stored: its files and bytes and, given its graph, the
    node count and op types (domain-qualified for contrib ops), most frequent first."""
    files = onnx_files(path)
    details: dict[str, Any] = {"files": [f.name for f in files], "bytes": sum(f.stat().st_size for f in files)}
    if model is not None:
        ops = Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph.all_nodes())
        details.update(nodes=sum(ops.values()), op_types=dict(ops.most_common()))
    return details


class OnnxRunner:
    """An ONNX Runtime session fed from named torch tensors; outputs come back as torch tensors."""

    def __init__(self, path: Path, providers: Sequence[str], options: ort.SessionOptions | None = None):
        options = options or ort.SessionOptions()
        options.log_severity_level = 3  # shape-merge warnings on fused graphs are ORT's own chatter
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        except Exception as exc:  # noqa: BLE001 - ORT's exception types are generated per status code
            raise ExportError(f"ONNX Runtime cannot load {self.path.name}: {' '.join(str(exc).split())[:240]}") from exc
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def feeds(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        # A with-past program names its past past_key_values_0_key; its ONNX file, past_key_values.0.key.
        tensors = {onnx_name(k): v for k, v in tensors.items()}
        missing = [name for name in self.inputs if name not in tensors]
        if missing:
            raise ExportError(f"{self.path.name} wants inputs {', '.join(missing)} that the capture does not have")
        feeds = {}
        for name, meta in self.inputs.items():
            array = tensors[name].detach().cpu().numpy()
            dtype = _NUMPY_BY_ORT_TYPE.get(meta.type)
            feeds[name] = array.astype(dtype) if dtype is not None and array.dtype != dtype else array
        return feeds

    def __call__(self, tensors: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        try:
            outputs = self.session.run(self.output_names, self.feeds(tensors))
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"ONNX Runtime fails running {self.path.name}: {' '.join(str(exc).split())[:240]}") from exc
        return tuple(torch.from_numpy(np.asarray(o)) for o in outputs)


def _conversion_error(exc: BaseException) -> ExportError:
    """One line from torch.onnx's multi-page error: the op without a translation, if that is it."""
    chain, seen, e = [], set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        text = str(e)
        found = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>", text)
        if found:
            return ExportError(
                f"ONNX export failed: {found.group(1)}.{found.group(2)} has no ONNX translation; drop the pass that "
                f"introduced it or give torch.onnx a translation (custom_translation_table)"
            )
    deepest = chain[-1]
    line = next((ln.strip() for ln in str(deepest).splitlines() if ln.strip()), type(deepest).__name__)
    return ExportError(f"ONNX export failed: {type(deepest).__name__}: {line[:240]}")


def _axis_names(subject: ExportSubject) -> dict[str, dict[int, str]]:
    """The capture's torch.export Dims as names per input axis ("batch", "seq", "decoder_seq")."""
    return {
        name: {axis: dim.__name__ for axis, dim in spec.items()}
        for name, spec in (subject.captured.dynamic_shapes or {}).items()
    }


def _shape_text(value: ir.Value) -> list[Any]:
    if value.shape is None:
        return []
    return [d if isinstance(d, int) else str(d) for d in value.shape]


def _initializer_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


@contextlib.contextmanager
def _quiet_registry() -> Any:
    """torch.onnx warns on every export that torchvision's ops are skipped (torchvision is not a
    dependency here) and that inputs share dynamic dims: neither is news to the user."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # Every input sharing `batch` makes torch.onnx say so once per extra input: by design here.
            warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape constraints")
            yield
    finally:
        logger.setLevel(level)


def _contiguous_as_clone(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """`program` (a copy, when it changes) with each `aten.contiguous` as the copy it stands for,
    `clone` in that memory format. torch.onnx's decomposition re-derives strides under symbolic
    shapes and may drop a `contiguous` whose input was contiguous when captured (T5: SDPA's CPU
    kernel returns a transposed layout), then fails on the `view` after it ("Cannot view a tensor
    with shape ..."). A clone is never dropped, and in ONNX it is an Identity that the optimizer removes."""
    contiguous = torch.ops.aten.contiguous.default
    if not any(n.op == "call_function" and n.target == contiguous for n in program.graph.nodes):
        return program
    gm = copy.deepcopy(program.graph_module)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target == contiguous:
            fmt = node.args[1] if len(node.args) > 1 else node.kwargs.get("memory_format", torch.contiguous_format)
            node.target, node.args, node.kwargs = torch.ops.aten.clone.default, node.args[:1], {"memory_format": fmt}
    gm.recompile()
    return program._update(gm, program.graph_signature)  # the same weights, signature and ranges


def _transformers_translations() -> dict[Any, Any]:
    """ONNX translations that transformers ships for its own custom ops (MoE experts' grouped matmul,
    `transformers.grouped_mm_fallback`, which torch.onnx has none for). Only those ops: the rest of
    its table re-translates aten ops that torch.onnx already translates, and is not ours to swap in."""
    try:
        from transformers.exporters.exporter_onnx import _ONNX_TRANSLATION_TABLE
    except Exception:  # noqa: BLE001 - a private table: absent in other transformers versions
        return {}
    return {op: fn for op, fn in _ONNX_TRANSLATION_TABLE.items() if str(op).startswith("transformers.")}


def _to_onnx(subject: ExportSubject, opset: int) -> ir.Model:
    from fxbench.exporters.onnx_int8 import translations

    # torch.onnx renames the symbolic dims (s18, s41) only when it is handed names; with an
    # ExportedProgram the names are all it uses of `dynamic_shapes`.
    axis_names = _axis_names(subject)
    int4 = has_int4(subject.program)
    try:
        with contextlib.redirect_stdout(io.StringIO()), _quiet_registry():
            program = torch.onnx.export(
                _contiguous_as_clone(subject.program),
                dynamo=True,
                input_names=list(subject.input_names),
                output_names=list(subject.output_names),
                opset_version=opset,
                dynamic_shapes=axis_names or None,
                custom_translation_table={**_transformers_translations(), **translations(opset), **(int4_translations() if int4 else {})},
                optimize=True,
                verbose=False,
                report=False,
            )
    except Exception as exc:  # noqa: BLE001 - torch.onnx raises many types; all become one line
        raise _conversion_error(exc) from exc
    model = program.model
    if int4:
        lower_int4_matmuls(model)
    got = model.opset_imports.get("", None)
    if got != opset:
        raise ExportError(f"torch.onnx produced opset {got} instead of {opset}; its version converter failed, use --opset {DEFAULT_OPSET}")
    return model


def _check_axes(model: ir.Model, subject: ExportSubject) -> dict[str, list[Any]]:
    """The exported inputs must carry the capture's names on their dynamic axes (not s18/s41)."""
    axis_names = _axis_names(subject)
    shapes = {}
    for value in model.graph.inputs:
        shape = _shape_text(value)
        for axis, name in axis_names.get(value.name, {}).items():
            if axis >= len(shape) or shape[axis] != name:
                raise ExportError(f"ONNX input {value.name} axis {axis} is {shape[axis] if axis < len(shape) else '?'}, not the dynamic {name}")
        shapes[value.name] = shape
    names = [v.name for v in model.graph.inputs]
    if tuple(names) != subject.input_names:
        raise ExportError(f"ONNX inputs {names} differ from the model's {list(subject.input_names)}")
    return shapes


def _int4_details(model: ir.Model, asked: int) -> dict[str, Any]:
    blocks = [n.attributes.get_int("block_size") for n in model.graph.all_nodes()
              if n.op_type == "DequantizeLinear" and n.inputs[0] is not None and n.inputs[0].dtype == ir.DataType.UINT4]
    return {"int4": {
        "form": "DequantizeLinear(uint4 [K, N], block_size, axis 0) + MatMul: ONNX Runtime fuses it into MatMulNBits",
        "dequantize_linear": len(blocks), "block_size": sorted(set(blocks)),
        "opset_raised_from": asked if asked < INT4_OPSET else None,
        "exact_with": {ACCURACY_LEVEL_OPTION: "0 (fp32 activations); ORT's default, 4, quantizes activations to int8"},
    }}


def save_onnx(model: ir.Model, path: Path, threshold: int = EXTERNAL_DATA_THRESHOLD) -> str | None:
    """Write `model` to `path`; weights go to `<file>.data` beside it when they exceed `threshold`
    bytes. Returns the external data file's name, if any. A disk without room for it is one error
    line before the write."""
    ensure_space(Path(path).parent, _initializer_bytes(model) + 2**20, Path(path).name)
    if _initializer_bytes(model) > threshold:
        data = f"{path.name}.data"
        ir.save(model, path, external_data=data)
        return data
    ir.save(model, path)
    return None


def export_onnx(
    subject: ExportSubject,
    folder: Path,
    checks: Sequence[Check],
    *,
    opset: int = DEFAULT_OPSET,
    device: str = "cpu",
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    rename: Callable[[ir.Model], dict[str, Any]] | None = None,
) -> Artifact:
    """Export `subject` into `folder` as the onnx target's file (model.onnx), then prove it:
    onnx.checker (full check, through the path so external data is read) and ONNX Runtime against
    the checks' eager references.

    `rename` renames the graph's inputs, outputs and axes after the export's own names are checked
    (the with-past form takes Optimum's dotted names); the checks' inputs then carry the new names,
    and what it returns goes into the details."""
    from fxbench.exporters.onnx_int8 import DYNAMIC_QUANTIZE_OPSET, dynamic_quantize_ops

    start = time.perf_counter()
    validate_opset(opset)
    providers = ort_providers(device)
    int4 = has_int4(subject.program)
    asked = opset
    if dynamic_quantize_ops(subject.program) and opset < DYNAMIC_QUANTIZE_OPSET:
        # Run-time row scales need blocked QuantizeLinear (21); 23 also brings ONNX's Attention.
        opset = DYNAMIC_QUANTIZE_OPSET
    if int4:
        opset = max(opset, INT4_OPSET)  # blocked int4 DequantizeLinear is opset 21's
    model = _to_onnx(subject, opset)
    shapes = _check_axes(model, subject)
    renamed = rename(model) if rename is not None else None
    if renamed is not None:
        shapes = {v.name: _shape_text(v) for v in model.graph.inputs}
    path = Path(folder) / target_file("onnx", device)
    external = save_onnx(model, path, external_data_threshold)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path.name} fails onnx.checker: {' '.join(str(exc).split())[:240]}") from exc
    runner = OnnxRunner(path, providers)
    parity = verify(runner, checks, subject, f"{path.name} in ONNX Runtime")
    details = {
        **({"renamed": renamed} if renamed is not None else {}),
        **(_int4_details(model, asked) if int4 else {}),
        "opset": opset,
        **({"opset_raised_from": asked, "opset_raised_for": "run-time int8 activation scales"} if opset != asked else {}),
        "ir_version": model.ir_version,
        "inputs": shapes,
        "outputs": {v.name: _shape_text(v) for v in model.graph.outputs},
        "external_data": external,
        **stored_details(path, model),
        "checked_with": {"onnx.checker": "full_check", "onnxruntime": runner.session.get_providers()},
        "exporter": f"torch.onnx dynamo (torch {torch.__version__}, onnxscript {package_version('onnxscript')})",
    }
    artifact = subject.artifact("onnx", path, "any", parity, details, started=start)
    # The file's own names: the subject's, or the with-past form's after `rename`.
    return dataclasses.replace(artifact, input_names=tuple(v.name for v in model.graph.inputs),
                               output_names=tuple(v.name for v in model.graph.outputs))
