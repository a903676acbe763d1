"""Every named pipeline's pass order, in one place, and how `--passes` edits a pipeline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fxbench.errors import PassOptionError
from fxbench.passes.base import FxbenchPass
from fxbench.passes.registry import create_pass, get_pass, parse_pass_spec

__all__ = ["CLEANUP", "DEFAULT_PIPELINE", "PIPELINES", "Pipeline", "build_passes", "effective_pipeline", "native_bf16_cpu", "search_space"]

# Passes that tidy up: no-op removal leads every preset (patterns then see clean graphs), common
# subexpressions and dead code close it (sweeping what the passes before left behind).
_CLEANUP_HEAD = ("remove-noops",)
_CLEANUP_TAIL = ("eliminate-common-subexpressions", "eliminate-dead-code")
CLEANUP = _CLEANUP_HEAD + _CLEANUP_TAIL


@dataclass(frozen=True)
class Pipeline:
    name: str
    summary: str
    passes: tuple[str, ...]  # pass specs: "name" or "name:option=value,..."
    device: str = "any"  # "any", "cpu" or "cuda": where its artifacts are meant to run
    # The export targets worth making when none are named (empty: all that fit the device).
    targets: tuple[str, ...] = ()
    # What the machine must have for the search to try it (None: any machine of its device).
    fits: Callable[[], bool] | None = None


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX-512 BF16), as oneDNN's bf16
    GEMMs need to beat fp32: elsewhere bf16 is emulated and slower than fp32."""
    cpu = torch.cpu
    try:
        return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())
    except AttributeError:  # a torch without the probes: do not guess
        return False


# Order matters, and is the same in every preset:
#   1. remove-noops first, so the patterns after it see graphs without dropout and identity casts;
#   2. fusions (fuse-attention, fold-batchnorm, merge-qkv) before fold-constants, which then
#      precomputes what they leave constant (concatenated weights, masks);
#   3. precision and quantization after fold-constants (folding never undoes a quantized weight,
#      but running it first keeps it from folding float weights that are about to be quantized);
#   4. common subexpressions and dead code last, to sweep what every pass before left behind.
_FUSIONS = ("fuse-attention", "fold-batchnorm", "fold-constants")
# For GPUs, q/k/v (and gate/up) merged into one GEMM too; ONNX Runtime on CPU fuses them itself.
_MERGED = ("fuse-attention", "fold-batchnorm", "merge-qkv", "fold-constants")


def _preset(*middle: str) -> tuple[str, ...]:
    return (*_CLEANUP_HEAD, *middle, *_CLEANUP_TAIL)


_LOW = "(norms, softmax, reductions kept fp32), for GPUs"
PIPELINES: dict[str, Pipeline] = {p.name: p for p in (
    Pipeline("O1", "clean-up: no-op removal, common subexpressions, dead code", _preset()),
    Pipeline("O2", "O1 + fusions: eager attention to SDPA, batch norms into convs, constants precomputed "
                   "(q/k/v stay separate linears: ONNX Runtime fuses them into its Attention kernel)", _preset(*_FUSIONS)),
    Pipeline("O3", f"O2 + q/k/v and gate/up merged + fp16 {_LOW}", _preset(*_MERGED, "to-fp16"), device="cuda"),
    Pipeline("bf16", f"O2 + q/k/v and gate/up merged + bf16 {_LOW}", _preset(*_MERGED, "to-bf16"), device="cuda"),
    # Run-time activation scales (nothing to calibrate) beat calibrated ones on ORT's CPU kernels:
    # the onnx-ort target puts them on DynamicQuantizeMatMul / MatMulIntegerToFloat (issue 10).
    Pipeline("int8-cpu", "O2 + dynamic int8 linears (per-channel int8 weights, uint8 activations quantized per tensor at run "
                         "time, GELU outputs per row), for ONNX Runtime's CPU int8 kernels",
             _preset(*_FUSIONS, "quantize-int8-dynamic:granularity=tensor"), device="cpu",
             # Its speed is ORT's integer kernels; in AOTInductor the run-time Q/DQ stay elementwise
             # code (slower than fp32) and the compile costs minutes: not made unless asked for.
             targets=("onnx", "onnx-ort")),
    # On CPUs with AMX or AVX-512 BF16, oneDNN's bf16 GEMMs in an AOTInductor package beat ORT's
    # int8 kernels at fp32-like accuracy (MiniLM: benchmarks/cpu_minilm.py). ORT's CPU provider has
    # no bf16 kernels, so the package is its artifact.
    Pipeline("bf16-cpu", "O2 + q/k/v merged + bf16 matmuls (norms, softmax, reductions kept fp32), as an AOTInductor package "
                         "for CPUs that multiply bf16 in hardware (AMX, AVX-512 BF16)",
             _preset(*_MERGED, "to-bf16"), device="cpu", targets=("aoti",), fits=native_bf16_cpu),
    Pipeline("int8-cpu-static", "O2 + static int8 linears (calibrated per-tensor uint8 activations, per-channel int8 weights)",
             _preset(*_FUSIONS, "quantize-int8-static")),
    Pipeline("int8-gpu", "O2 + q/k/v merged + static int8 linears with symmetric int8 activations (TensorRT's Q/DQ form)",
             _preset(*_MERGED, "quantize-int8-static:activation_dtype=int8"), device="cuda"),
    Pipeline("fp8", "O2 + q/k/v merged + float8 e4m3 weights and activations, for Hopper-class GPUs",
             _preset(*_MERGED, "quantize-fp8"), device="cuda"),
    Pipeline("none", "no passes: exactly those that --passes adds, in the order given", ()),
)}

DEFAULT_PIPELINE = "O2"


def search_space(device: str) -> tuple[str, ...]:
    """The presets `fxbench optimize --search` tries on `device` (and a plain `fxbench optimize` on
    a CPU): O2 (exact) and those built for it."""
    return (DEFAULT_PIPELINE, *(p.name for p in PIPELINES.values() if p.device == device and (p.fits is None or p.fits())))


def _name(spec: str) -> str:
    return parse_pass_spec(spec)[0]


def _stage(name: str) -> int:
    cls = get_pass(name)
    return 0 if not cls.exact else (1 if cls.precision == "fp32" else 2)


def _insertion_point(specs: list[str], name: str) -> int:
    """After the last pass of the same or an earlier stage, inside the clean-up passes."""
    head, tail = 0, len(specs)
    while head < tail and _name(specs[head]) in _CLEANUP_HEAD:
        head += 1
    while tail > head and _name(specs[tail - 1]) in _CLEANUP_TAIL:
        tail -= 1
    stage = _stage(name)
    at = head
    for i in range(head, tail):
        if _stage(_name(specs[i])) <= stage:
            at = i + 1
    return at


def effective_pipeline(pipeline: str | None, edits: Sequence[str] = ()) -> str:
    """The pipeline the edits apply to: the one named, else the default (O2): `--passes X` adds X
    to it, as its help says; `--pipeline none --passes X` runs X alone."""
    return pipeline if pipeline is not None else DEFAULT_PIPELINE


def build_passes(pipeline: str | None = None, edits: Sequence[str] = ()) -> list[FxbenchPass]:
    """The passes of `pipeline` (default O2; "none": no passes), edited by `edits`:

    - `name` or `+name[:opts]`: a pass of that name in the pipeline takes these options; a new one
      goes at the end of its stage, between the pipeline's leading and trailing clean-up passes.
      The stages, in order: deliberate model changes (layer surgery, exact=False), fp32
      transforms, then precision and quantization, so that fusions work on the changed model and
      calibration on the fused one;
    - `-name`: every pass of that name is removed.
    With the empty pipeline "none", the passes are exactly those the edits add, in their order.
    """
    chosen = effective_pipeline(pipeline, edits)
    if chosen not in PIPELINES:
        raise PassOptionError(f"unknown pipeline {chosen!r}; choose one of: {', '.join(PIPELINES)}")
    specs: list[str] = list(PIPELINES[chosen].passes)
    exact = chosen == "none"  # the edits are the pipeline, in their order

    for edit in edits:
        edit = edit.strip()
        if not edit:
            continue
        if edit.startswith("-"):
            name = edit[1:].strip()
            get_pass(name)  # an unknown name is an error, not a silent no-op
            specs = [s for s in specs if _name(s) != name]
            continue
        spec = edit.removeprefix("+").strip()
        name = _name(spec)
        get_pass(name)
        same = [i for i, s in enumerate(specs) if _name(s) == name]
        if same and not exact:
            for i in same:
                specs[i] = spec
            continue
        specs.insert(len(specs) if exact else _insertion_point(specs, name), spec)
    return [create_pass(s) for s in specs]
