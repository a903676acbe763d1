"""Sessions that run in PyTorch: eager (fp32 / fp16 / bf16), the torch.export program,
torch.compile, and an AOTInductor package."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import torch

from fxbench.models import CapturedProgram
from fxbench.errors import BackendUnavailableError
from fxbench.runtime.sessions.base import Bound, Session, SessionOptions, flat_float32, require_device, require_file

__all__ = ["AotiSession", "CompileSession", "EagerSession", "ProgramSession", "TorchModuleSession"]

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def place(inputs: Mapping[str, torch.Tensor], device: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Inputs on `device`; floating ones (pixel values, audio features) in the model's dtype, token
    ids untouched."""
    return {
        name: (t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)).contiguous()
        for name, t in inputs.items()
    }


class TorchModuleSession(Session):
    """A torch.nn.Module (or compiled callable) called with the capture's inputs as keywords."""

    def __init__(self, module: object, captured_inputs: tuple[str, ...], output_names: tuple[str, ...], *, device: str, dtype: torch.dtype):
        super().__init__(captured_inputs, output_names)
        self.module = module
        self.device = device
        self.dtype = dtype

    def before_step(self) -> None:
        """Hook run before every inference (CUDA-graph trees need a step marker)."""

    def bind(self, inputs: Mapping[str, torch.Tensor]) -> Bound:
        placed = place(inputs, self.device, self.dtype)
        module = self.module
        last: list[object] = [None]
        before = self.before_step

        def step() -> object:
            before()
            # inference_mode, as a deployment runs: no autograd bookkeeping on any backend.
            with torch.inference_mode():
                last[0] = module(**placed)  # type: ignore[operator]
            return last[0]

        def fetch() -> tuple[torch.Tensor, ...]:
            if last[0] is None:
                step()
            return flat_float32(last[0])

        return Bound(step, fetch)

    def close(self) -> None:
        self.module = None
        super().close()


class EagerSession(TorchModuleSession):
    """The Hugging Face model in eager PyTorch, in fp32, fp16 or bf16."""

    backend = "eager"

    def __init__(self, captured: CapturedProgram, options: SessionOptions):
        require_device(options.device)
        if options.precision not in _DTYPES:
            raise BackendUnavailableError(f"eager runs in fp32, fp16 or bf16, not {options.precision}")
        dtype = _DTYPES[options.precision]
        if options.device == "cpu" and dtype == torch.float32:
            module = captured.eager  # the reference itself; nothing to convert
        else:
            # A copy: the capture's eager model stays the fp32 CPU reference.
            module = copy.deepcopy(captured.eager).to(device=options.device, dtype=dtype)
        super().__init__(module, captured.input_names, captured.output_names, device=options.device, dtype=dtype)
        self.backend = "eager" if options.precision == "fp32" else f"eager-{options.precision}"
        self.precision = options.precision
        self.io = "torch tensors on the device; outputs left on the device"


class ProgramSession(TorchModuleSession):
    """The torch.export program: fxbench's optimized `model.pt2` (torch.export.load), or the capture."""

    backend = "program"

    def __init__(self, captured: CapturedProgram, options: SessionOptions):
        require_device(options.device)
        if options.artifact is not None:
            program = torch.export.load(str(require_file(options.artifact, "program")))
        else:
            program = captured.exported
        if options.device != "cpu":
            # Export bakes the capture's device into factory calls (arange, zeros); this pass
            # rewrites them with the weights, which `.to()` on the module would not.
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, options.device)
        super().__init__(program.module(), captured.input_names, captured.output_names, device=options.device, dtype=torch.float32)
        self.precision = options.precision


class CompileSession(TorchModuleSession):
    """torch.compile of the eager model, in one of its modes (default, max-autotune, reduce-overhead)."""

    backend = "compile"
    # A sweep compiles one graph per shape (dynamic=False specializes, as a fixed-shape deployment
    # would); past dynamo's recompile limit it silently falls back to eager, which would time eager
    # under the compile label. A benchmark process raises the limit well past any sweep.
    _RECOMPILE_LIMIT = 256

    def __init__(self, captured: CapturedProgram, options: SessionOptions):
        require_device(options.device)
        mode = options.extra.get("mode")
        mode = None if mode in (None, "default") else str(mode)
        module = captured.eager if options.device == "cpu" else copy.deepcopy(captured.eager).to(options.device)
        import torch._dynamo

        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, self._RECOMPILE_LIMIT)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, self._RECOMPILE_LIMIT * 4)
        compiled = torch.compile(module, mode=mode, dynamic=False)
        super().__init__(compiled, captured.input_names, captured.output_names, device=options.device, dtype=torch.float32)
        self.mode = mode or "default"
        self.backend = "compile" if mode is None else f"compile-{mode}"
        # Inductor turns CUDA graphs on for reduce-overhead and max-autotune; on the CPU there are none.
        self.cuda_graphs = options.device == "cuda" and mode in ("reduce-overhead", "max-autotune")

    def before_step(self) -> None:
        if self.cuda_graphs:
            # Tells CUDA-graph trees that the previous outputs are done with (an inference loop).
            torch.compiler.cudagraph_mark_step_begin()

    def close(self) -> None:
        super().close()
        import torch._dynamo

        # Compiled graphs are cached on the model's code object; drop them so the next backend
        # starts clean and their memory is freed.
        torch._dynamo.reset()


class AotiSession(TorchModuleSession):
    """An AOTInductor package (`model.aoti.pt2` / `model.aoti-cuda.pt2`) via aoti_load_package."""

    backend = "aoti"

    def __init__(self, captured: CapturedProgram, options: SessionOptions):
        require_device(options.device)
        path = require_file(options.artifact, "aoti")
        from torch._inductor import aoti_load_package

        runner = aoti_load_package(str(path), device_index=0 if options.device == "cuda" else -1)
        meta = runner.get_metadata()
        built_for = meta.get("AOTI_DEVICE_KEY", "")
        if built_for and built_for != options.device:
            raise BackendUnavailableError(f"{Path(path).name} was compiled for {built_for}, not {options.device}")
        self._check_machine(meta, options.device)
        super().__init__(runner, captured.input_names, captured.output_names, device=options.device, dtype=torch.float32)
        self.precision = options.precision

    @staticmethod
    def _check_machine(meta: Mapping[str, str], device: str) -> None:
        """A package's kernels use the ISA / GPU architecture it was built on; running AVX-512 code on
        an AVX2 CPU dies by SIGILL, so the mismatch is found before the first call."""
        if device == "cpu":
            isa = meta.get("AOTI_CPU_ISA", "")
            have = torch.backends.cpu.get_cpu_capability()
            if "AVX512" in isa and "AVX512" not in have:
                raise BackendUnavailableError(f"the package was compiled for {isa}; this CPU supports {have}: recompile it here")
        else:
            want = meta.get("AOTI_COMPUTE_CAPABILITY", "")
            major, minor = torch.cuda.get_device_capability()
            if want and want.replace(".", "") != f"{major}{minor}":
                raise BackendUnavailableError(f"the package was compiled for compute capability {want}; this GPU is {major}.{minor}: recompile it here")
