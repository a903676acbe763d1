"""TensorRT engines from the ONNX export (TensorRT 10.x and 11.x): profiles, timing cache, precision, and a JSON sidecar."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
import torch

import fxbench
from fxbench.errors import BackendUnavailableError, ExportError
from fxbench.exporters.base import Artifact
from fxbench.exporters.checks import Check, ExportSubject, verify
from fxbench.exporters.onnx import onnx_files
from fxbench.exporters.targets import target_file
from fxbench.numerics import Tolerance

__all__ = [
    "DEFAULT_WORKSPACE_GIB",
    "EngineCompatibility",
    "EngineHost",
    "EngineMismatchError",
    "OnnxInput",
    "PrecisionPlan",
    "ShapeRange",
    "TensorRTCapabilities",
    "build_profile",
    "default_dim_ranges",
    "default_timing_cache",
    "engine_compatibility",
    "export_tensorrt",
    "onnx_inputs",
    "parse_shapes",
    "plan_precision",
    "require_compatible_engine",
    "require_tensorrt",
    "sidecar_record",
]

SIDECAR_FORMAT = "fxbench.tensorrt-engine/1"
DEFAULT_WORKSPACE_GIB = 4.0
_SHAPES_EXAMPLE = "input_ids:1x16,8x128,32x512"
# Builder flags per lowered precision (TensorRT 10.x weakly typed networks). TensorRT 11 removed
# them: its networks are strongly typed, the graph's own dtypes and Q/DQ nodes set precision.
_FLAG_FOR = {"fp16": "FP16", "bf16": "BF16", "int8": "INT8", "fp8": "FP8"}


class EngineMismatchError(BackendUnavailableError):
    """An engine built for another TensorRT version or GPU than this machine's."""


# ---------------------------------------------------------------- availability


def require_tensorrt() -> Any:
    """The `tensorrt` module, or one line saying what is missing (the package, or a GPU)."""
    if importlib.util.find_spec("tensorrt") is None:
        raise BackendUnavailableError(
            "--to tensorrt needs TensorRT 10.x or 11.x: pip install 'fxbench[tensorrt]' on a machine with an NVIDIA GPU"
        )
    try:
        trt = importlib.import_module("tensorrt")
    except (ImportError, OSError) as exc:
        raise BackendUnavailableError(f"tensorrt is installed but does not load: {' '.join(str(exc).split())[:200]}") from exc
    if not torch.cuda.is_available():
        raise BackendUnavailableError("--to tensorrt needs an NVIDIA GPU; torch sees none (torch.cuda.is_available() is False)")
    return trt


# ---------------------------------------------------------------- shapes and profiles


@dataclass(frozen=True)
class ShapeRange:
    """One input's optimization-profile shapes."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ExportError(f"profile shapes {self.text()} differ in rank")
        if any(not 0 < lo <= mid <= hi for lo, mid, hi in zip(self.min, self.opt, self.max)):
            raise ExportError(f"profile shapes {self.text()} must satisfy 0 < min <= opt <= max on every axis")

    def text(self) -> str:
        return ",".join("x".join(map(str, s)) for s in (self.min, self.opt, self.max))

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def parse_shapes(text: str | None) -> dict[str, ShapeRange]:
    """`--shapes`: `NAME:MIN,OPT,MAX` per input (each shape `AxBx...`), or `NAME:SHAPE` for a fixed
    shape; inputs separated by `;` or spaces. Example: `input_ids:1x16,8x128,32x512`."""
    if not text or not text.strip():
        return {}
    ranges: dict[str, ShapeRange] = {}
    for entry in re.split(r"[;\s]+", text.strip()):
        if not entry:
            continue
        name, sep, spec = entry.rpartition(":")
        shapes_text = spec.split(",")
        if not sep or not name or len(shapes_text) not in (1, 3) or not all(re.fullmatch(r"\d+(x\d+)*", s) for s in shapes_text):
            raise ExportError(f"bad --shapes entry {entry!r}: expected NAME:MIN,OPT,MAX such as {_SHAPES_EXAMPLE}")
        shapes = [tuple(int(d) for d in s.split("x")) for s in shapes_text]
        if name in ranges:
            raise ExportError(f"bad --shapes: input {name} is given twice")
        ranges[name] = ShapeRange(shapes[0], shapes[len(shapes) // 2], shapes[-1])
    return ranges


@dataclass(frozen=True)
class OnnxInput:
    """A graph input as TensorRT will see it: fixed sizes as ints, dynamic axes by their names."""

    name: str
    dims: tuple[int | str, ...]
    dtype: str


def onnx_inputs(onnx_path: Path) -> list[OnnxInput]:
    """The ONNX model's graph inputs (read without its weights)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    found = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)
        found.append(OnnxInput(value.name, dims, onnx.TensorProto.DataType.Name(tensor.elem_type).lower()))
    return found


def _opt_between(lo: int, hi: int) -> int:
    """The power of two nearest the geometric middle of [lo, hi]: a shape to tune for when the
    user names none (batch 1..64 -> 8, sequence 2..512 -> 32)."""
    middle = math.sqrt(lo * hi)
    return min(max(2 ** round(math.log2(middle)), lo), hi)


def default_dim_ranges(dynamic_shapes: Mapping[str, Mapping[int, Any]] | None) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) per named dynamic dimension, from the capture's torch.export Dims."""
    ranges: dict[str, tuple[int, int, int]] = {}
    for spec in (dynamic_shapes or {}).values():
        for dim in spec.values():
            lo, hi = int(dim.min), int(dim.max)
            ranges[dim.__name__] = (lo, _opt_between(lo, hi), hi)
    return ranges


def build_profile(
    inputs: Sequence[OnnxInput],
    dim_ranges: Mapping[str, tuple[int, int, int]],
    shapes: Mapping[str, ShapeRange] | None = None,
) -> dict[str, ShapeRange]:
    """One optimization profile: every input's min/opt/max.

    Shapes given for one input (`--shapes`) set its named dynamic dimensions for every input
    that shares them (input_ids' batch and seq also size attention_mask); the rest come from the
    capture's ranges. A range wider than the capture's is refused: the program is only proven
    inside it.
    """
    shapes = dict(shapes or {})
    by_name = {i.name: i for i in inputs}
    unknown = sorted(set(shapes) - set(by_name))
    if unknown:
        raise ExportError(f"--shapes names {', '.join(unknown)}, which model.onnx does not take; its inputs: {', '.join(by_name)}")
    chosen: dict[str, tuple[int, int, int]] = {}
    chosen_by: dict[str, str] = {}
    for name, given in shapes.items():
        dims = by_name[name].dims
        if len(given.min) != len(dims):
            raise ExportError(f"--shapes {name}: {len(given.min)} axes given, the input has {len(dims)} ({'x'.join(map(str, dims))})")
        for axis, dim in enumerate(dims):
            value = (given.min[axis], given.opt[axis], given.max[axis])
            if isinstance(dim, int):
                if value != (dim, dim, dim):
                    raise ExportError(f"--shapes {name}: axis {axis} is fixed at {dim} in model.onnx")
                continue
            if dim in dim_ranges:
                lo, _, hi = dim_ranges[dim]
                if value[0] < lo or value[2] > hi:
                    raise ExportError(f"--shapes {name}: axis {axis} ({dim}) {value[0]}..{value[2]} is outside the captured range {lo}..{hi}")
            if dim in chosen and chosen[dim] != value:
                raise ExportError(f"--shapes: {dim} is {chosen[dim]} for {chosen_by[dim]} but {value} for {name}")
            chosen[dim], chosen_by[dim] = value, name
    ranges = {**dim_ranges, **chosen}
    profile: dict[str, ShapeRange] = {}
    for value in inputs:
        lo, mid, hi = [], [], []
        for axis, dim in enumerate(value.dims):
            if isinstance(dim, int):
                lo.append(dim), mid.append(dim), hi.append(dim)
            elif dim in ranges:
                a, b, c = ranges[dim]
                lo.append(a), mid.append(b), hi.append(c)
            else:
                raise ExportError(f"input {value.name} axis {axis} ({dim}) is dynamic with no known range; give it in --shapes ({_SHAPES_EXAMPLE})")
        profile[value.name] = ShapeRange(tuple(lo), tuple(mid), tuple(hi))
    return profile


# ---------------------------------------------------------------- precision


@dataclass(frozen=True)
class TensorRTCapabilities:
    """What the installed TensorRT offers: its version and the names of its builder and
    network-creation flags (which differ between 10.x and 11.x)."""

    version: str
    builder_flags: frozenset[str]
    network_flags: frozenset[str]

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def weakly_typed(self) -> bool:
        """Whether builder flags may lower precision (10.x); 11.x only builds strongly typed networks."""
        return "FP16" in self.builder_flags

    @classmethod
    def of(cls, trt: Any) -> TensorRTCapabilities:
        return cls(
            version=str(trt.__version__),
            builder_flags=frozenset(trt.BuilderFlag.__members__),
            network_flags=frozenset(trt.NetworkDefinitionCreationFlag.__members__),
        )


@dataclass(frozen=True)
class PrecisionPlan:
    """How the engine gets its precision: a strongly typed network (the graph's own dtypes and
    Q/DQ nodes decide) or builder flags that let TensorRT lower an fp32 graph (10.x)."""

    precision: str
    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()
    clear_flags: tuple[str, ...] = ()
    note: str = ""


def plan_precision(caps: TensorRTCapabilities, graph_precision: str, requested: str | None = None) -> PrecisionPlan:
    """Decide the network type and builder flags for `requested` (None: the graph's precision).

    1. A graph that carries its precision (fp16/bf16 weights, int8/fp8 Q/DQ nodes) builds as a
       strongly typed network, exactly as written, wherever TensorRT offers one.
    2. An fp32 graph stays fp32: TF32 is cleared so that TensorRT holds the fp32 tolerance.
    3. On 10.x, asking for fp16/bf16 on an fp32 graph sets that builder flag (weakly typed).
       int8 and fp8 need Q/DQ nodes in the graph: there is no calibrator here.
    4. On 11.x there are no such flags: a precision other than the graph's is refused, with the
       fix (run fxbench's fp16 or quantization passes first).
    """
    target = requested or graph_precision
    strongly = "STRONGLY_TYPED" in caps.network_flags or not caps.weakly_typed
    if target == graph_precision:
        if target == "fp32":
            return PrecisionPlan("fp32", False, (), ("TF32",) if "TF32" in caps.builder_flags else (), "fp32 as exported, TF32 off")
        if strongly:
            return PrecisionPlan(target, True, (), (), f"strongly typed: {target} from the graph")
        return PrecisionPlan(target, False, (_FLAG_FOR[target],), (), f"weakly typed with the {_FLAG_FOR[target]} flag")
    if not caps.weakly_typed:
        raise ExportError(
            f"TensorRT {caps.version} builds strongly typed networks only, so precision comes from the graph, which is "
            f"{graph_precision}: apply fxbench's {target} passes in `fxbench optimize` first, or drop --precision"
        )
    if target in ("int8", "fp8"):
        raise ExportError(
            f"{target} in TensorRT needs quantize/dequantize nodes in the graph (no calibrator is run): quantize with "
            f"`fxbench optimize` first"
        )
    flag = _FLAG_FOR.get(target)
    if flag is None or flag not in caps.builder_flags:
        raise ExportError(f"TensorRT {caps.version} has no builder flag for {target}")
    return PrecisionPlan(target, False, (flag,), (), f"weakly typed: TensorRT may run layers in {target} ({flag} flag)")


# ---------------------------------------------------------------- sidecar and compatibility


def _sha256(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineHost:
    """The TensorRT version and GPU an engine is built on or loaded on."""

    tensorrt_version: str | None
    gpu_name: str | None
    compute_capability: str | None

    @classmethod
    def current(cls) -> EngineHost:
        version = None
        if importlib.util.find_spec("tensorrt") is not None:
            try:
                version = str(importlib.import_module("tensorrt").__version__)
            except (ImportError, OSError):
                version = None
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            return cls(version, props.name, f"{props.major}.{props.minor}")
        return cls(version, None, None)


def sidecar_record(
    *,
    engine: Path,
    onnx_path: Path,
    host: EngineHost,
    profile: Mapping[str, ShapeRange],
    plan: PrecisionPlan,
    workspace_bytes: int,
    timing_cache: Mapping[str, Any],
    outputs: Sequence[str],
) -> dict[str, Any]:
    """What `model.engine.json` says about `model.engine`: where and from what it was built."""
    sources = onnx_files(onnx_path)
    return {
        "format": SIDECAR_FORMAT,
        "engine": {"file": engine.name, "bytes": engine.stat().st_size, "sha256": _sha256([engine])},
        "tensorrt_version": host.tensorrt_version,
        "gpu": {"name": host.gpu_name, "compute_capability": host.compute_capability},
        # Flat copies for readers that look for top-level keys (fxbench.runtime's TensorRT session).
        "gpu_name": host.gpu_name,
        "compute_capability": host.compute_capability,
        "cuda": torch.version.cuda,
        "onnx": {"file": onnx_path.name, "files": [f.name for f in sources], "bytes": sum(f.stat().st_size for f in sources),
                 "sha256": _sha256(sources)},
        "profiles": [{name: r.to_dict() for name, r in profile.items()}],
        "precision": plan.precision,
        "strongly_typed": plan.strongly_typed,
        "builder_flags": list(plan.builder_flags),
        "cleared_flags": list(plan.clear_flags),
        "workspace_bytes": workspace_bytes,
        "timing_cache": dict(timing_cache),
        "inputs": list(profile),
        "outputs": list(outputs),
        "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "fxbench_version": fxbench.__version__,
    }


@dataclass(frozen=True)
class EngineCompatibility:
    """Whether an engine loads here; `problems` stop it, `warnings` do not."""

    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def _release(version: str | None) -> tuple[str, ...]:
    return tuple((version or "").split(".")[:3])


def engine_compatibility(sidecar: Path | Mapping[str, Any], host: EngineHost | None = None) -> EngineCompatibility:
    """Compare an engine's sidecar with `host` (default: this machine).

    TensorRT deserializes an engine only with the release that built it (major.minor.patch) and
    on a GPU of the same compute capability; another GPU model of that capability loads it but
    was not what the kernels were timed on.
    """
    record = json.loads(Path(sidecar).read_text(encoding="utf-8")) if isinstance(sidecar, (str, Path)) else dict(sidecar)
    host = host or EngineHost.current()
    problems, warnings = [], []
    built_trt, gpu = record.get("tensorrt_version"), record.get("gpu") or {}
    if host.tensorrt_version is None:
        problems.append("tensorrt is not installed here")
    elif _release(built_trt) != _release(host.tensorrt_version):
        problems.append(f"built with TensorRT {built_trt}, this machine has {host.tensorrt_version}")
    elif built_trt != host.tensorrt_version:
        warnings.append(f"built with TensorRT {built_trt}, this machine has build {host.tensorrt_version}")
    if host.compute_capability is None:
        problems.append("no CUDA GPU is visible here")
    elif gpu.get("compute_capability") != host.compute_capability:
        problems.append(
            f"built for {gpu.get('name')} (compute capability {gpu.get('compute_capability')}), this GPU is "
            f"{host.gpu_name} ({host.compute_capability})"
        )
    elif gpu.get("name") != host.gpu_name:
        warnings.append(f"built on {gpu.get('name')}, running on {host.gpu_name} (same compute capability): kernels were timed on the other GPU")
    return EngineCompatibility(tuple(problems), tuple(warnings))


def _sidecar(engine: Path) -> Path:
    """`model.engine` -> `model.engine.json` (the TensorRT session finds it by the same rule)."""
    return engine.with_name(f"{engine.name}.json")


def require_compatible_engine(engine: Path, host: EngineHost | None = None) -> dict[str, Any]:
    """The sidecar of `engine` if the engine can load here; otherwise EngineMismatchError in one
    line that names the difference and the fix (the runtime calls this before deserializing)."""
    engine = Path(engine)
    sidecar = _sidecar(engine)
    if not sidecar.is_file():
        raise EngineMismatchError(f"{engine.name} has no {sidecar.name} beside it: rebuild it with `fxbench export DIR --to tensorrt --force`")
    record = json.loads(sidecar.read_text(encoding="utf-8"))
    verdict = engine_compatibility(record, host)
    if not verdict.ok:
        raise EngineMismatchError(f"{engine.name} cannot load here: {'; '.join(verdict.problems)}; rebuild it on this machine with `fxbench export DIR --to tensorrt --force`")
    return record


def default_timing_cache(host: EngineHost) -> Path:
    """Where builds on this TensorRT release and GPU keep and reuse their timing cache."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fxbench" / "tensorrt"
    cc = (host.compute_capability or "unknown").replace(".", "")
    return root / f"timing-trt{host.tensorrt_version}-sm{cc}.cache"


# ---------------------------------------------------------------- build and run


_TORCH_DTYPE = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
    "FP8": torch.float8_e4m3fn,
}


def _build(trt: Any, onnx_path: Path, profile: Mapping[str, ShapeRange], plan: PrecisionPlan, workspace_bytes: int,
           cache_path: Path) -> tuple[bytes, dict[str, Any], list[str]]:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if plan.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external data beside the file
        first = str(parser.get_error(0)) if parser.num_errors else "no detail"
        raise ExportError(f"TensorRT cannot parse {onnx_path.name}: {' '.join(first.split())[:240]}")
    network_inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in plan.clear_flags:
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    opt_profile = builder.create_optimization_profile()
    for name in network_inputs:  # the parser drops inputs the graph never reads
        shape = profile[name]
        opt_profile.set_shape(name, shape.min, shape.opt, shape.max)
    config.add_optimization_profile(opt_profile)

    previous = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(previous)
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path.name} (see TensorRT's log above); try --shapes with smaller maxima")
    data = config.get_timing_cache().serialize()
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_path.with_name(f".{cache_path.name}.{os.getpid()}")
    partial.write_bytes(bytes(data))
    os.replace(partial, cache_path)
    cache_info = {"path": str(cache_path), "reused_bytes": len(previous), "saved_bytes": len(bytes(data))}
    return bytes(serialized), cache_info, outputs


class _EngineRunner:
    """Run a deserialized engine on CUDA tensors (execute_async_v3 on torch's current stream)."""

    def __init__(self, trt: Any, data: bytes, output_names: Sequence[str]):
        self.trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ExportError("TensorRT built an engine it cannot deserialize")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = list(output_names)

    def _dtype(self, name: str) -> torch.dtype:
        return _TORCH_DTYPE[self.engine.get_tensor_dtype(name).name]

    def __call__(self, tensors: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        keep = []
        for name in self.inputs:
            t = tensors[name].to("cuda", self._dtype(name)).contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        results = []
        for name in self.outputs:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtype(name), device="cuda")
            results.append(out)
            self.context.set_tensor_address(name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT failed to run the engine")
        stream.synchronize()
        return tuple(r.cpu() for r in results)


def export_tensorrt(
    subject: ExportSubject,
    onnx_path: Path,
    folder: Path,
    checks: Sequence[Check],
    *,
    shapes: str | None = None,
    precision: str | None = None,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    timing_cache: Path | None = None,
) -> Artifact:
    """Build the tensorrt target's file (model.engine) in `folder` from `onnx_path` with TensorRT's
    Python API, write its sidecar (model.engine.json) beside it, and check the engine against eager
    on the checks that fit its profile."""
    trt = require_tensorrt()
    start = time.perf_counter()
    onnx_path = Path(onnx_path)
    requested = parse_shapes(shapes)
    profile = build_profile(onnx_inputs(onnx_path), default_dim_ranges(subject.captured.dynamic_shapes), requested)
    caps = TensorRTCapabilities.of(trt)
    plan = plan_precision(caps, subject.precision, precision)
    host = EngineHost.current()
    cache_path = Path(timing_cache) if timing_cache else default_timing_cache(host)
    workspace = int(workspace_gib * 2**30)
    data, cache_info, outputs = _build(trt, onnx_path, profile, plan, workspace, cache_path)
    engine = Path(folder) / target_file("tensorrt", "cuda")
    engine.write_bytes(data)

    runnable = [c for c in checks if all(profile[n].contains(tuple(t.shape)) for n, t in c.inputs.items() if n in profile)]
    if not runnable:
        raise ExportError(f"the profile ({'; '.join(f'{n}:{r.text()}' for n, r in profile.items())}) excludes every check shape; widen --shapes")
    runner = _EngineRunner(trt, data, subject.output_names)
    tolerance = subject.held_to.loosest(Tolerance.for_precision(plan.precision))
    parity = verify(runner, runnable, subject, f"{engine.name} in TensorRT", tolerance)
    record = sidecar_record(engine=engine, onnx_path=onnx_path, host=host, profile=profile, plan=plan,
                            workspace_bytes=workspace, timing_cache=cache_info, outputs=outputs)
    sidecar = _sidecar(engine)
    sidecar.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    details = {
        "sidecar": sidecar.name,
        "tensorrt_version": caps.version,
        "gpu": asdict(host),
        "profiles": record["profiles"],
        "plan": asdict(plan),
        "timing_cache": cache_info,
        "skipped_checks": sorted({c.name for c in checks} - {c.name for c in runnable}),
        "bytes": engine.stat().st_size,
    }
    return subject.artifact("tensorrt", engine, "cuda", parity, details, started=start, precision=plan.precision)
