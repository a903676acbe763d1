"""ONNX Runtime sessions: the CPU provider, the CUDA provider with IO binding (CUDA graphs on or
off), and the TensorRT execution provider."""

from __future__ import annotations

import os

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from fxbench.models import CapturedProgram
from fxbench.models.decoder import onnx_name
from fxbench.errors import BackendUnavailableError
from fxbench.runtime.sessions.base import Bound, Session, SessionOptions, flat_float32, require_device, require_file

__all__ = ["NO_SPIN_ENV", "OrtSession", "session_options", "spinning"]

# ONNX type strings -> (torch dtype, numpy dtype)
_ORT_TYPES: dict[str, tuple[torch.dtype, type]] = {
    "tensor(float)": (torch.float32, np.float32),
    "tensor(float16)": (torch.float16, np.float16),
    "tensor(double)": (torch.float64, np.float64),
    "tensor(int64)": (torch.int64, np.int64),
    "tensor(int32)": (torch.int32, np.int32),
    "tensor(int8)": (torch.int8, np.int8),
    "tensor(uint8)": (torch.uint8, np.uint8),
    "tensor(bool)": (torch.bool, np.bool_),
}
_PROVIDER = {"ort": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}


def _types(type_str: str, name: str) -> tuple[torch.dtype, type]:
    try:
        return _ORT_TYPES[type_str]
    except KeyError:
        raise BackendUnavailableError(f"ONNX tensor {name!r} has type {type_str}, which fxbench does not feed") from None


NO_SPIN_ENV = "FXBENCH_ORT_NO_SPIN"  # "1": ORT sessions' intra-op threads do not spin (benchmarks' --no-spin)


def spinning() -> bool:
    """Whether fxbench's ORT sessions let their intra-op threads spin-wait (ORT's default)."""
    return os.environ.get(NO_SPIN_ENV) != "1"


def session_options(threads: int | None) -> "onnxruntime.SessionOptions":
    """The options of every ONNX Runtime session fxbench times: `threads` intra-op threads (None:
    ORT's default), sequential execution, warnings off. Without spinning (NO_SPIN_ENV), a
    measurement aid for oversubscribed hosts (more runnable threads than cores), where ORT's
    spin-waiting pool loses several times its speed; the artifacts are untouched."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # ORT warns about every node it leaves on the CPU; errors still raise
    if not spinning():
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OrtSession(Session):
    """An ONNX file in ONNX Runtime.

    CPU: numpy feeds made once at bind, `InferenceSession.run`. CUDA and TensorRT providers: IO
    binding to torch-allocated device buffers, so host<->device copies stay out of the timed loop,
    on torch's current stream (`user_compute_stream`) so that CUDA events bracket ORT's kernels.
    `cuda_graph` (CUDA provider) turns on ORT's own graph capture (`enable_cuda_graph`), which needs
    every input and output at a fixed device address, as IO binding gives.
    """

    torch_allocator = False

    def __init__(self, captured: CapturedProgram, options: SessionOptions, *, provider: str = "ort", cuda_graph: bool = False):
        import onnxruntime as ort

        self.backend = provider + ("-graph" if cuda_graph else "")
        self.device = "cpu" if provider == "ort" else "cuda"
        self.precision = options.precision
        self.cuda_graphs = cuda_graph
        require_device(self.device)
        wanted = _PROVIDER[provider]
        if wanted not in ort.get_available_providers():
            hint = "install onnxruntime-gpu built for this CUDA" if provider != "ort" else "reinstall onnxruntime"
            raise BackendUnavailableError(f"onnxruntime {ort.__version__} has no {wanted} ({hint})")
        path = require_file(options.artifact, self.backend)

        so = session_options(options.threads)
        self.spinning = spinning()
        self.threads = so.intra_op_num_threads
        providers: list[object] = []
        if self.device == "cuda":
            stream = str(torch.cuda.current_stream().cuda_stream)
            cuda_opts = {"device_id": "0", "user_compute_stream": stream}
            if cuda_graph:
                cuda_opts["enable_cuda_graph"] = "1"
            if provider == "ort-trt":
                cache = Path(path).with_suffix(".trt-cache")
                trt_opts = {
                    "device_id": "0",
                    "user_compute_stream": stream,
                    "trt_engine_cache_enable": "True",
                    "trt_engine_cache_path": str(cache),
                    "trt_fp16_enable": "True" if options.precision == "fp16" else "False",
                }
                providers.append(("TensorrtExecutionProvider", trt_opts))
            providers.append(("CUDAExecutionProvider", cuda_opts))
        providers.append("CPUExecutionProvider")
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        if self.session.get_providers()[0] != wanted:
            raise BackendUnavailableError(f"ONNX Runtime fell back to {self.session.get_providers()[0]} for {Path(path).name}")

        ort_inputs = self.session.get_inputs()
        # A with-past file names its past as Optimum did (past_key_values.0.key); the capture, as a
        # Python identifier (past_key_values_0_key).
        by_onnx_name = {onnx_name(n): n for n in captured.input_names}
        missing = [i.name for i in ort_inputs if i.name not in by_onnx_name]
        if missing:
            raise BackendUnavailableError(f"{Path(path).name} wants inputs {missing} that the capture does not make")
        self.sources = {i.name: by_onnx_name[i.name] for i in ort_inputs}
        self.feeds = [(i.name, _types(i.type, i.name)) for i in ort_inputs]
        self.outputs = [(o.name, _types(o.type, o.name)) for o in self.session.get_outputs()]
        if len(self.outputs) != len(captured.output_names):
            raise BackendUnavailableError(
                f"{Path(path).name} has {len(self.outputs)} outputs; the capture has {len(captured.output_names)} ({', '.join(captured.output_names)})"
            )
        super().__init__(captured.input_names, captured.output_names)
        self.io = (
            "numpy inputs made before timing; ORT allocates the outputs each run"
            if self.device == "cpu"
            else "IO binding: inputs and outputs in torch device buffers; no host<->device copies timed"
        )

    def bind(self, inputs: Mapping[str, torch.Tensor]) -> Bound:
        if self.device == "cpu":
            return self._bind_cpu(inputs)
        return self._bind_cuda(inputs)

    def _bind_cpu(self, inputs: Mapping[str, torch.Tensor]) -> Bound:
        feeds = {name: np.ascontiguousarray(inputs[self.sources[name]].numpy().astype(np_type, copy=False)) for name, (_, np_type) in self.feeds}
        session = self.session
        last: list[object] = [None]

        def step() -> object:
            last[0] = session.run(None, feeds)
            return last[0]

        def fetch() -> tuple[torch.Tensor, ...]:
            if last[0] is None:
                step()
            return flat_float32([torch.from_numpy(np.asarray(a)) for a in last[0]])  # type: ignore[union-attr]

        return Bound(step, fetch)

    def _bind_cuda(self, inputs: Mapping[str, torch.Tensor]) -> Bound:
        placed = {name: inputs[self.sources[name]].to("cuda", dtype=t_type).contiguous() for name, (t_type, _) in self.feeds}
        # Output shapes depend on the inputs: one run with ORT-allocated outputs tells them; then
        # outputs go to torch buffers at fixed addresses (what ORT's CUDA graphs replay into).
        probe = self.session.io_binding()
        self._bind_inputs(probe, placed)
        for name, _ in self.outputs:
            probe.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(probe)
        shapes = [tuple(v.shape()) for v in probe.get_outputs()]
        buffers = [torch.empty(shape, dtype=t_type, device="cuda") for shape, (_, (t_type, _)) in zip(shapes, self.outputs)]
        binding = self.session.io_binding()
        self._bind_inputs(binding, placed)
        for (name, (_, np_type)), buf in zip(self.outputs, buffers):
            binding.bind_output(name, "cuda", 0, np_type, tuple(buf.shape), buf.data_ptr())
        session = self.session

        def step() -> object:
            session.run_with_iobinding(binding)
            return buffers

        def fetch() -> tuple[torch.Tensor, ...]:
            torch.cuda.synchronize()
            return flat_float32(buffers)

        return Bound(step, fetch, keepalive=(placed, probe, buffers))

    def _bind_inputs(self, binding: object, placed: Mapping[str, torch.Tensor]) -> None:
        for name, (_, np_type) in self.feeds:
            t = placed[name]
            binding.bind_input(name, "cuda", 0, np_type, tuple(t.shape), t.data_ptr())  # type: ignore[attr-defined]

    def close(self) -> None:
        self.session = None
        super().close()
