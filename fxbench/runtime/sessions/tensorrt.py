"""A serialized TensorRT engine run with torch tensors as its I/O buffers (execute_async_v3)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fxbench.models import CapturedProgram
from fxbench.errors import BackendUnavailableError
from fxbench.runtime.sessions.base import Bound, Session, SessionOptions, flat_float32, require_device, require_file

__all__ = ["TensorRTSession", "sidecar_path"]


def sidecar_path(engine: Path) -> Path:
    """`model.engine` -> `model.engine.json`, the exporter's record of where the engine was built."""
    return engine.with_name(engine.name + ".json")


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32, "INT64": torch.int64,
             "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}
    for name, t in table.items():
        if hasattr(trt.DataType, name) and dtype == getattr(trt.DataType, name):
            return t
    raise BackendUnavailableError(f"the engine has a tensor of type {dtype}, which fxbench does not bind")


class TensorRTSession(Session):
    """`model.engine` deserialized with TensorRT's runtime; inputs and outputs are torch CUDA tensors
    whose addresses go to `set_tensor_address`, and `execute_async_v3` runs on torch's current
    stream. `cuda_graph` captures that launch in a CUDA graph (as trtexec's --useCudaGraph)."""

    torch_allocator = False
    io = "torch CUDA tensors as the engine's I/O buffers; no host<->device copies timed"

    def __init__(self, captured: CapturedProgram, options: SessionOptions, *, cuda_graph: bool = False):
        self.backend = "tensorrt" + ("-graph" if cuda_graph else "")
        self.device = "cuda"
        self.precision = options.precision
        self.cuda_graphs = cuda_graph
        path = require_file(options.artifact, self.backend)
        require_file(sidecar_path(path), f"{self.backend} (the engine's JSON sidecar)")
        require_device(self.device)
        try:
            import tensorrt as trt  # type: ignore[import-not-found]
        except ImportError:
            raise BackendUnavailableError("tensorrt is not installed (pip install 'fxbench[tensorrt]' on a machine with an NVIDIA GPU)") from None
        # The exporter that wrote the sidecar owns the rule for where its engines load.
        from fxbench.exporters.tensorrt import EngineMismatchError, require_compatible_engine

        try:
            require_compatible_engine(path)
        except EngineMismatchError as exc:
            raise BackendUnavailableError(str(exc)) from None
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendUnavailableError(f"TensorRT {trt.__version__} could not deserialize {path.name}; rebuild it here")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.in_names = [n for n in names if is_input[n]]
        self.out_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        missing = [n for n in self.in_names if n not in captured.input_names]
        if missing:
            raise BackendUnavailableError(f"{path.name} wants inputs {missing} that the capture does not make")
        if len(self.out_names) != len(captured.output_names):
            raise BackendUnavailableError(f"{path.name} has {len(self.out_names)} outputs; the capture has {len(captured.output_names)}")
        super().__init__(captured.input_names, captured.output_names)

    def bind(self, inputs: Mapping[str, torch.Tensor]) -> Bound:
        ctx = self.context
        placed = {n: inputs[n].to("cuda", dtype=self.dtypes[n]).contiguous() for n in self.in_names}
        for name, t in placed.items():
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise RuntimeError(f"the engine's optimization profile does not admit {name} of shape {tuple(t.shape)}")
            ctx.set_tensor_address(name, t.data_ptr())
        buffers = []
        for name in self.out_names:
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"TensorRT could not infer the shape of output {name} ({shape})")
            buf = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            ctx.set_tensor_address(name, buf.data_ptr())
            buffers.append(buf)

        def launch() -> None:
            if not ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream):
                raise RuntimeError("execute_async_v3 failed; TensorRT's log says why")

        step = launch
        graph = None
        if self.cuda_graphs:
            # TensorRT finishes its lazy set-up on the first enqueue; capture after it (as its docs say).
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                launch()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                launch()
            step = graph.replay

        def fetch() -> tuple[torch.Tensor, ...]:
            torch.cuda.synchronize()
            return flat_float32(buffers)

        return Bound(step, fetch, keepalive=(placed, buffers, graph))

    def close(self) -> None:
        self.context = None
        self.engine = None
        super().close()
