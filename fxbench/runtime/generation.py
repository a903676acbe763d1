"""Generation measurement: greedy decoding through every backend's with-past step in one loop (the
prompt with an empty past, then one token at a time with the presents fed back), beside
`model.generate()` baselines; time to first token, time per output token, tokens/s and peak memory
over interleaved rounds, and the tokens and logits of each backend against eager `generate()`."""

from __future__ import annotations

import copy
import datetime as _dt
import gc
import math
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fxbench
from fxbench.environment import collect_environment
from fxbench.errors import BackendUnavailableError, BenchOptionError, FxbenchError
from fxbench.events import EventFn, no_events
from fxbench.models import LoadedModel
from fxbench.models.decoder import CacheLayout, DecoderCapture, WithPast, onnx_name, position_ids_from_mask
from fxbench.numerics import Tolerance
from fxbench.runtime.backends import Backend
from fxbench.runtime.bench import BackendRecord
from fxbench.runtime.harness import LatencyStats, MemoryRecord, peak_memory
from fxbench.runtime.sessions.onnxruntime import session_options

__all__ = [
    "BASELINES",
    "LOOP_BACKENDS",
    "REFERENCE",
    "DecodeStep",
    "GenShape",
    "Generation",
    "GenerationChoice",
    "GenerationMeasurement",
    "GenerationResult",
    "GenerationSettings",
    "GenerationSubject",
    "OrtStep",
    "TokenParity",
    "TorchStep",
    "best_generation",
    "capture_steps",
    "greedy_generate",
    "measure_generation",
    "stop_tokens",
]

# model.generate() as a user calls it: the reference (eager, DynamicCache) and the strong baseline,
# transformers' documented static-cache compile recipe (CompileConfig; `_compile_all_devices` is
# its switch for compiling on a CPU).
BASELINES = {
    "generate": "eager model.generate(), DynamicCache (the reference and the baseline of every speedup)",
    "compile-static": "model.generate(cache_implementation='static', compile_config=CompileConfig(fullgraph=True)): torch.compile'd decode",
}
REFERENCE = "generate"
# Registered backends that run a with-past program in fxbench's loop, on the CPU.
LOOP_BACKENDS = ("eager", "program", "aoti", "ort")

Past = Any  # what a step hands back as the next call's past: torch tensors, or ONNX Runtime OrtValues


# ----- one call of a with-past program, per backend


class DecodeStep(ABC):
    """A backend's with-past program: one call takes the new tokens' inputs and the past, and gives
    the last position's logits ([batch, vocab], fp32 on the CPU) and the presents, fed back as it is
    (no conversion between calls)."""

    io: str = ""

    def __init__(self, layout: CacheLayout, token_names: Sequence[str]):
        self.layout = layout
        self.token_names = tuple(token_names)

    @abstractmethod
    def empty_past(self, batch: int) -> Past:
        """The past of a prefill: every layer's keys and values of length 0."""

    @abstractmethod
    def __call__(self, tokens: Mapping[str, torch.Tensor], past: Past) -> tuple[torch.Tensor, Past]:
        """One call: (last-position logits, presents)."""

    def close(self) -> None:
        """Release what the step holds."""


class TorchStep(DecodeStep):
    """A module called with the program's names as keywords: the eager with-past wrapper, an
    exported program's module, or an AOTInductor runner."""

    io = "torch tensors; the presents fed back as the next past"

    def __init__(self, module: Callable[..., Any], layout: CacheLayout, token_names: Sequence[str], *, cache_dtype: torch.dtype = torch.float32):
        super().__init__(layout, token_names)
        self.module = module
        self.cache_dtype = cache_dtype
        self.past_names = layout.past_names()

    def empty_past(self, batch: int) -> Past:
        return tuple(self.layout.past(batch, 0, dtype=self.cache_dtype).values())

    def __call__(self, tokens: Mapping[str, torch.Tensor], past: Past) -> tuple[torch.Tensor, Past]:
        # Contiguous: an AOTInductor runner reads its inputs with the strides it was compiled for,
        # so a strided view (a column of forced tokens) would be read as the wrong elements.
        feeds = {name: t.contiguous() for name, t in tokens.items()}
        with torch.inference_mode():
            out = self.module(**feeds, **dict(zip(self.past_names, past)))
        return out[0][:, -1, :].float(), tuple(out[1:])

    def close(self) -> None:
        self.module = None  # type: ignore[assignment]


class OrtStep(DecodeStep):
    """A with-past ONNX file in ONNX Runtime's CPU provider, through IO binding: the token inputs
    bound from numpy, the presents left as ORT's own OrtValues and bound as the next past (no copy
    between calls), only the last position's logits copied out."""

    io = "IO binding: presents stay OrtValues and are bound as the next past; logits of the last position copied out"

    def __init__(self, path: Path, layout: CacheLayout, token_names: Sequence[str], *, threads: int | None = None):
        import onnxruntime as ort

        super().__init__(layout, token_names)
        self._ort = ort
        self.session = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [onnx_name(n) for n in layout.past_names()]
        missing = [n for n in (*self.token_names, *self.past_names) if n not in inputs]
        if missing:
            raise BackendUnavailableError(f"{Path(path).name} is not a with-past ONNX of this model: no input {', '.join(missing)}")
        self.cache_np = np.float16 if inputs[self.past_names[0]].type == "tensor(float16)" else np.float32
        self.output_names = [o.name for o in self.session.get_outputs()]

    def empty_past(self, batch: int) -> Past:
        return [
            self._ort.OrtValue.ortvalue_from_numpy(np.zeros(self.layout.shape(i // 2, batch, 0), dtype=self.cache_np))
            for i in range(len(self.past_names))
        ]

    def __call__(self, tokens: Mapping[str, torch.Tensor], past: Past) -> tuple[torch.Tensor, Past]:
        binding = self.session.io_binding()
        for name in self.token_names:
            binding.bind_cpu_input(name, np.ascontiguousarray(tokens[name].numpy()))
        for name, value in zip(self.past_names, past):
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        logits = torch.from_numpy(np.array(outs[0].numpy()[:, -1, :], dtype=np.float32))
        return logits, outs[1:]

    def close(self) -> None:
        self.session = None


# ----- the loop


@dataclass(frozen=True)
class Generation:
    """Greedy tokens and the time of each call: `step_seconds[0]` is the prefill (time to first
    token), the rest one decode step each."""

    tokens: torch.Tensor  # [batch, prompt + new], the prompt included (as generate() returns)
    prompt_length: int
    step_seconds: tuple[float, ...]
    # Last-position logits of each call ([batch, vocab] each), kept on request for agreement metrics.
    logits: tuple[torch.Tensor, ...] = field(default=(), repr=False)

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_length:]

    @property
    def time_to_first_token(self) -> float:
        return self.step_seconds[0]

    @property
    def time_per_output_token(self) -> tuple[float, ...]:
        return self.step_seconds[1:]


def stop_tokens(config: Any) -> tuple[tuple[int, ...], int | None]:
    """(eos ids, pad id) as generate() reads them from a generation config; the pad falls back to
    the first eos, as generate() does."""
    eos = getattr(config, "eos_token_id", None)
    eos_ids = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
    pad = getattr(config, "pad_token_id", None)
    return eos_ids, (pad if pad is not None else (eos_ids[0] if eos_ids else None))


def greedy_generate(
    step: DecodeStep,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 16,
    eos_token_ids: Sequence[int] = (),
    pad_token_id: int | None = None,
    keep_logits: bool = False,
    forced: torch.Tensor | None = None,
) -> Generation:
    """Greedy decoding as `model.generate(do_sample=False)` does it, through `step`: the prompt
    with an empty past (length 0), then each new token with the presents fed back as the past.

    Positions come from the attention mask as generate() makes them (left padding allowed); a
    sequence that has produced an eos token continues with `pad_token_id`; the loop ends when all
    have, or after `max_new_tokens`. `forced` ([batch, max_new_tokens]) feeds those tokens instead
    of the argmax (teacher forcing: each call then sees the reference's context) while `tokens`
    still records the argmax of each call.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    batch = input_ids.shape[0]
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    tokens = input_ids
    past = step.empty_past(batch)
    new = input_ids
    unfinished = torch.ones(batch, dtype=torch.bool)
    eos = torch.tensor(list(eos_token_ids), dtype=input_ids.dtype) if eos_token_ids else None
    if eos is not None and pad_token_id is None:
        raise ValueError("an eos token needs a pad token for finished sequences")
    seconds: list[float] = []
    kept: list[torch.Tensor] = []
    for i in range(max_new_tokens):
        available = {"input_ids": new, "attention_mask": mask, "position_ids": position_ids_from_mask(mask, new.shape[1])}
        feeds = {name: available[name] for name in step.token_names}
        start = time.perf_counter()
        logits, past = step(feeds, past)
        next_tokens = logits.argmax(dim=-1).to(input_ids.dtype)
        seconds.append(time.perf_counter() - start)
        if keep_logits:
            kept.append(logits.clone())
        if eos is not None:
            next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad_token_id))
        tokens = torch.cat([tokens, next_tokens[:, None]], dim=-1)
        if eos is not None:
            unfinished &= ~torch.isin(next_tokens, eos)
            if not bool(unfinished.any()):
                break
        new = (forced[:, i] if forced is not None else next_tokens)[:, None].contiguous()
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=-1)
    return Generation(tokens=tokens, prompt_length=input_ids.shape[1], step_seconds=tuple(seconds), logits=tuple(kept))


def capture_steps(captured: DecoderCapture) -> dict[str, TorchStep]:
    """The in-process steps of a capture: the eager wrapper and the exported program."""
    names = captured.eager.token_names
    return {
        "eager": TorchStep(captured.eager, captured.layout, names, cache_dtype=captured.cache_dtype),
        "program": TorchStep(captured.exported.module(), captured.layout, names, cache_dtype=captured.cache_dtype),
    }


# ----- what is generated with: the loop's backends and generate()


@dataclass(frozen=True)
class GenerationSubject:
    """What every backend generates from: the loaded causal LM (generate() runs it), its eager
    with-past wrapper (the `eager` loop backend) and, from a capture, the exported program (the
    `program` backend when no model.pt2 is named)."""

    loaded: LoadedModel
    wrapper: WithPast
    program: Any | None = None  # torch.export.ExportedProgram

    @classmethod
    def from_capture(cls, captured: DecoderCapture) -> GenerationSubject:
        return cls(captured.loaded, captured.eager, captured.exported)  # type: ignore[arg-type]

    @property
    def layout(self) -> CacheLayout:
        return self.wrapper.layout

    @property
    def token_names(self) -> tuple[str, ...]:
        return self.wrapper.token_names

    @property
    def vocab_size(self) -> int:
        return int(self.loaded.config.get_text_config(decoder=True).vocab_size)


def _clock() -> Any:
    """A generate() streamer that stamps the time of each put: the prompt, then every new token."""
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def put(self, value: torch.Tensor) -> None:
            self.stamps.append(time.perf_counter())

        def end(self) -> None:
            pass

    return Clock()

class _Generator(ABC):
    label: str
    io: str = ""

    @abstractmethod
    def generate(self, ids: torch.Tensor, mask: torch.Tensor, new: int, *, keep_logits: bool = False,
                 forced: torch.Tensor | None = None) -> Generation: ...

    def close(self) -> None:
        pass


class _Loop(_Generator):
    def __init__(self, label: str, step: DecodeStep):
        self.label, self.step, self.io = label, step, step.io

    def generate(self, ids: torch.Tensor, mask: torch.Tensor, new: int, *, keep_logits: bool = False,
                 forced: torch.Tensor | None = None) -> Generation:
        return greedy_generate(self.step, ids, mask, max_new_tokens=new, keep_logits=keep_logits, forced=forced)

    def close(self) -> None:
        self.step.close()


class _HFGenerate(_Generator):
    """model.generate(): greedy, every sequence the same number of new tokens (eos ignored, as in
    the loop), timed by a streamer (time to first token from the call, each token after it)."""

    io = "model.generate() with a streamer stamping each token"

    def __init__(self, label: str, model: torch.nn.Module, static: bool):
        from transformers import CompileConfig

        self.label, self.model, self.static = label, model, static
        config = copy.deepcopy(model.generation_config)
        config.do_sample, config.eos_token_id, config.use_cache = False, None, True
        config.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
        config.max_length, config.min_new_tokens = None, None
        if static:
            config.cache_implementation = "static"
            compile_config = CompileConfig(fullgraph=True, mode="default")
            compile_config._compile_all_devices = True  # transformers' switch for compiling on a CPU
            config.compile_config = compile_config
            import torch._dynamo

            # One decode graph per batch and cache length; past dynamo's limit it would fall back to eager.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        self.config = config

    def generate(self, ids: torch.Tensor, mask: torch.Tensor, new: int, *, keep_logits: bool = False,
                 forced: torch.Tensor | None = None) -> Generation:
        if forced is not None:
            raise ValueError("generate() takes no forced tokens")
        config = copy.copy(self.config)
        config.max_new_tokens = new
        config.return_dict_in_generate, config.output_logits = keep_logits, keep_logits
        clock = _clock()
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=mask, generation_config=config, streamer=clock)
        stamps = clock.stamps[1:]
        seconds = (stamps[0] - start, *(b - a for a, b in zip(stamps, stamps[1:])))
        sequences = out.sequences if keep_logits else out
        logits = tuple(t.float().clone() for t in out.logits) if keep_logits else ()
        return Generation(sequences, ids.shape[1], tuple(seconds), logits)

    def close(self) -> None:
        if self.static:
            import torch._dynamo

            for attr in ("_compiled_call", "_last_compile_config"):
                if hasattr(self.model, attr):
                    delattr(self.model, attr)
            torch._dynamo.reset()


def _loop_step(backend: Backend, subject: GenerationSubject, threads: int | None) -> DecodeStep:
    layout, names = subject.layout, subject.token_names
    if backend.name == "eager":
        return TorchStep(subject.wrapper, layout, names)
    if backend.name == "program":
        if backend.artifact is not None:
            return TorchStep(torch.export.load(str(backend.artifact)).module(), layout, names)
        if subject.program is None:
            raise BackendUnavailableError("program needs model.pt2 (bench an output folder) or a capture")
        return TorchStep(subject.program.module(), layout, names)
    if backend.name == "aoti":
        from torch._inductor import aoti_load_package

        return TorchStep(aoti_load_package(str(backend.artifact)), layout, names)
    if backend.name == "ort":
        return OrtStep(Path(str(backend.artifact)), layout, names, threads=threads)
    raise BackendUnavailableError(f"backend {backend.name!r} has no generation loop; generation runs {', '.join(LOOP_BACKENDS)} and {', '.join(BASELINES)}")


# ----- records


@dataclass(frozen=True)
class GenShape:
    batch: int
    prompt: int

    @property
    def label(self) -> str:
        return f"b{self.batch} p{self.prompt}"


@dataclass(frozen=True)
class GenerationSettings:
    """The generation sweep and how it is timed: every batch with every prompt length, `new_tokens`
    greedy tokens each (eos ignored, so every backend makes the same count); one untimed first
    generation per backend and shape (compilation), `warmup` more (the last one's peak memory is
    recorded), then `rounds` interleaved rounds of one timed generation per backend."""

    batches: tuple[int, ...] = (1,)
    prompt_lengths: tuple[int, ...] = (128,)
    new_tokens: int = 64
    rounds: int = 3
    warmup: int = 1
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise BenchOptionError(f"--batch needs sizes >= 1, not {list(self.batches)}")
        if not self.prompt_lengths or min(self.prompt_lengths) < 1:
            raise BenchOptionError(f"--prompt-len needs lengths >= 1, not {list(self.prompt_lengths)}")
        if self.new_tokens < 2:
            raise BenchOptionError(f"--new-tokens must be at least 2 (a prefill and a decode step), not {self.new_tokens}")
        if self.rounds < 1 or self.warmup < 0:
            raise BenchOptionError(f"--rounds must be at least 1 and the warm-up at least 0, not {self.rounds} and {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise BenchOptionError(f"--threads must be at least 1, not {self.threads}")

    @property
    def shapes(self) -> tuple[GenShape, ...]:
        return tuple(GenShape(b, p) for b in dict.fromkeys(self.batches) for p in dict.fromkeys(self.prompt_lengths))


@dataclass(frozen=True)
class TokenParity:
    """A backend's generation against eager generate()'s on the same prompts.

    Free running: whether its greedy tokens equal the reference's, and the share of new-token
    positions that do. Teacher forced (the loop's backends: the reference's tokens fed back, so every
    call sees the same context): the share of calls whose argmax is the reference's token, and the
    cosine of each call's logits against the reference's (worst and mean over calls and rows). For
    generate() baselines the logits are compared while the tokens agree. `passed`: fp32 must give the
    same tokens and logits at fp32's tolerance; lower precisions their tolerance's cosine.
    """

    precision: str
    tokens_equal: bool
    position_agreement: float
    forced_agreement: float | None
    logits_cosine: float
    logits_cosine_mean: float
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GenerationMeasurement:
    """One backend at one shape: time to first token (one per round), time per output token (every
    decode step of every round), tokens/s, peak memory and parity."""

    backend: str
    batch: int
    prompt: int
    new_tokens: int
    status: str  # "ok" or "failed"
    reason: str = ""
    first_generation_s: float = 0.0  # the untimed first generation: compilation, autotuning, allocation
    ttft: LatencyStats | None = None
    tpot: LatencyStats | None = None
    tokens_per_s: float | None = None  # batch x new tokens / the median generation's seconds, prefill included
    decode_tokens_per_s: float | None = None  # batch / median time per output token
    memory: MemoryRecord | None = None
    parity: TokenParity | None = None

    @property
    def shape(self) -> GenShape:
        return GenShape(self.batch, self.prompt)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GenerationResult:
    model: dict[str, Any]
    device: str
    threads: int
    reference: str
    shapes: tuple[GenShape, ...]
    backends: tuple[BackendRecord, ...]
    measurements: tuple[GenerationMeasurement, ...]
    settings: dict[str, Any]
    environment: dict[str, Any]
    created: str
    seconds: float
    source: dict[str, Any] = field(default_factory=dict)

    def measurement(self, label: str, shape: GenShape) -> GenerationMeasurement | None:
        return next((m for m in self.measurements if m.backend == label and m.shape == shape), None)

    def speedup(self, label: str, shape: GenShape) -> float | None:
        """Eager generate()'s median time per output token over this backend's, at `shape`."""
        mine, base = self.measurement(label, shape), self.measurement(REFERENCE, shape)
        if not (mine and base and mine.tpot and base.tpot) or mine.tpot.median_ms <= 0:
            return None
        return base.tpot.median_ms / mine.tpot.median_ms

    def failures(self) -> list[BackendRecord | GenerationMeasurement]:
        return [b for b in self.backends if b.status == "failed"] + [m for m in self.measurements if m.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shapes"] = [{"batch": s.batch, "prompt": s.prompt, "label": s.label} for s in self.shapes]
        data["speedups"] = {b.label: {s.label: self.speedup(b.label, s) for s in self.shapes} for b in self.backends if b.status == "ok"}
        data["fxbench_version"] = fxbench.__version__
        return data


# ----- measurement


def _prompts(shape: GenShape, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 1000 * shape.batch + shape.prompt)
    ids = torch.randint(3, vocab, (shape.batch, shape.prompt), generator=gen)
    return ids, torch.ones_like(ids)


def _cosines(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> list[float]:
    """Cosine of each call's logits against the reference's, row by row."""
    out: list[float] = []
    for g, w in zip(got, want):
        out += torch.nn.functional.cosine_similarity(g.double(), w.double(), dim=-1).tolist()
    return out


def _parity(precision: str, free: Generation, forced: Generation | None, ref: Generation) -> TokenParity:
    new, want = free.new_tokens, ref.new_tokens
    same = new == want
    equal = bool(same.all())
    if forced is not None:
        agree = float((forced.new_tokens == want).float().mean())
        cos = _cosines(forced.logits, ref.logits)
    else:
        agree = None
        # While every row still agrees: afterwards the contexts differ and so must the logits.
        first_diff = next((i for i in range(new.shape[1]) if not bool(same[:, i].all())), new.shape[1])
        cos = _cosines(free.logits[:first_diff + 1], ref.logits[:first_diff + 1])
    worst, mean = (min(cos), sum(cos) / len(cos)) if cos else (math.nan, math.nan)
    tolerance = Tolerance.for_precision(precision)
    reasons = []
    if precision == "fp32" and not equal:
        reasons.append(f"greedy tokens differ from eager generate()'s at {int((~same).sum())} of {same.numel()} positions")
    if not worst >= tolerance.min_cosine:
        reasons.append(f"logits cosine {worst:.6f} < {tolerance.min_cosine}")
    return TokenParity(precision, equal, float(same.float().mean()), agree, worst, mean, not reasons, "; ".join(reasons))


@dataclass
class _Run:
    """One loaded backend's runs at one shape."""

    gen: _Generator
    precision: str
    first_s: float = 0.0
    ttft: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)
    memory: MemoryRecord | None = None
    parity: TokenParity | None = None
    error: str | None = None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _prepare(run: _Run, ids: torch.Tensor, mask: torch.Tensor, new: int, ref: Generation, warmup: int) -> None:
    """The untimed first generation, the warm-up ones (the last with its peak memory), and parity."""
    t = time.perf_counter()
    free = run.gen.generate(ids, mask, new, keep_logits=True)
    run.first_s = time.perf_counter() - t
    for i in range(warmup):
        if i == warmup - 1:
            with peak_memory("cpu") as probe:
                run.gen.generate(ids, mask, new)
            run.memory = probe.record
        else:
            run.gen.generate(ids, mask, new)
    forced = run.gen.generate(ids, mask, new, keep_logits=True, forced=ref.new_tokens) if isinstance(run.gen, _Loop) else None
    run.parity = _parity(run.precision, free, forced, ref)


def _timed(run: _Run, ids: torch.Tensor, mask: torch.Tensor, new: int) -> None:
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        g = run.gen.generate(ids, mask, new)
    finally:
        if was:
            gc.enable()
    if g.new_tokens.shape[1] != new:
        raise FxbenchError(f"{run.gen.label} generated {g.new_tokens.shape[1]} tokens, not {new}")
    run.ttft.append(g.time_to_first_token)
    run.tpot += g.time_per_output_token
    run.totals.append(sum(g.step_seconds))


def _finish(label: str, shape: GenShape, new: int, run: _Run) -> GenerationMeasurement:
    if run.error is not None or not run.totals:
        return GenerationMeasurement(label, shape.batch, shape.prompt, new, "failed", run.error or "no timed generation")
    total = float(np.median(run.totals))
    tpot = LatencyStats.from_seconds(run.tpot, shape.batch)
    parity = run.parity
    reason = "" if parity is None or parity.passed else f"parity: {parity.reason}"
    return GenerationMeasurement(
        label, shape.batch, shape.prompt, new, "ok", reason, run.first_s, LatencyStats.from_seconds(run.ttft, shape.batch), tpot,
        shape.batch * new / total, shape.batch * 1e3 / tpot.median_ms, run.memory, parity,
    )


def _load(entry: str | Backend, subject: GenerationSubject, threads: int | None, events: EventFn) -> tuple[BackendRecord, _Generator | None, str]:
    if isinstance(entry, str):
        label, name, summary, artifact, precision = entry, entry, BASELINES[entry], None, "fp32"
    else:
        label, name, summary = entry.label, entry.name, entry.spec.summary
        artifact, precision = (str(entry.artifact) if entry.artifact else None), entry.effective_precision
    base = dict(label=label, name=name, summary=summary, device="cpu", precision=precision, artifact=artifact)
    events(label, "start", "")
    t0 = time.perf_counter()
    try:
        if isinstance(entry, str):
            gen: _Generator = _HFGenerate(label, subject.loaded.model, static=entry == "compile-static")
        else:
            if entry.skip:
                raise BackendUnavailableError(entry.skip)
            gen = _Loop(label, _loop_step(entry, subject, threads))
    except FxbenchError as exc:
        reason = " ".join(str(exc).split())
        events(label, "skip", f"skipped: {reason}")
        return BackendRecord(**base, status="skipped", reason=reason), None, precision
    except Exception as exc:  # noqa: BLE001 - a backend that breaks while loading is reported; the rest still run
        events(label, "fail", _one_line(exc))
        return BackendRecord(**base, status="failed", reason=_one_line(exc), load_seconds=time.perf_counter() - t0), None, precision
    events(label, "done", "loaded")
    return BackendRecord(**base, status="ok", load_seconds=time.perf_counter() - t0, io=gen.io), gen, precision


def check_generation_labels(entries: Sequence[str | Backend]) -> list[str | Backend]:
    labels = [e if isinstance(e, str) else e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise BenchOptionError(f"backend listed twice: {', '.join(sorted({x for x in labels if labels.count(x) > 1}))}")
    for e in entries:
        if isinstance(e, str) and e not in BASELINES:
            raise BenchOptionError(f"unknown generation baseline {e!r}; choose from {', '.join(BASELINES)}")
        if isinstance(e, Backend) and e.name not in LOOP_BACKENDS:
            raise BenchOptionError(f"backend {e.name!r} has no generation loop; --generate runs {', '.join((*BASELINES, *LOOP_BACKENDS))}")
    return list(entries)


def measure_generation(
    subject: GenerationSubject,
    entries: Sequence[str | Backend],
    settings: GenerationSettings = GenerationSettings(),
    *,
    model: Mapping[str, Any],
    source: Mapping[str, Any] | None = None,
    events: EventFn = no_events,
    command: Sequence[str] | None = None,
    on_round: Callable[[GenerationResult], None] | None = None,
) -> GenerationResult:
    """Generate with every entry (a baseline name of BASELINES, or a loop Backend: eager, program,
    aoti, ort on an artifact) at every shape: all loaded at once; per shape eager generate() makes
    the reference tokens and logits, each backend generates once untimed, `warmup` more times and
    once teacher forced (parity), then `rounds` rounds time one generation of each in turn.
    After every round `on_round` gets the result so far (the shapes done, the current one's rounds
    up to now; settings["partial"] says how far): a run stopped later still leaves those numbers."""
    check_generation_labels(entries)
    started = time.perf_counter()
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    previous = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    threads = torch.get_num_threads()
    records: list[BackendRecord] = []
    loaded: list[tuple[str, _Generator, str]] = []
    measurements: list[GenerationMeasurement] = []
    reference = _HFGenerate(REFERENCE, subject.loaded.model, static=False)

    def result(done: Sequence[GenerationMeasurement], partial: dict[str, Any] | None) -> GenerationResult:
        order = {r.label: i for i, r in enumerate(records)}
        ordered = sorted(done, key=lambda m: (order.get(m.backend, 0), settings.shapes.index(m.shape)))
        timing = "interleaved rounds: one generation of each backend in turn per round; gc disabled while timing"
        return GenerationResult(
            model=dict(model), device="cpu", threads=threads,
            reference="eager model.generate() (DynamicCache, fp32), greedy, same prompts",
            shapes=settings.shapes, backends=tuple(records), measurements=tuple(ordered),
            settings={**asdict(settings), "timing": timing, **({"partial": partial} if partial else {})},
            environment=collect_environment(list(command) if command is not None else list(sys.argv)),
            created=created, seconds=time.perf_counter() - started, source=dict(source or {}),
        )

    try:
        for entry in entries:
            record, gen, precision = _load(entry, subject, settings.threads, events)
            records.append(record)
            if gen is not None:
                loaded.append((record.label, gen, precision))
        new = settings.new_tokens
        for shape in settings.shapes:
            ids, mask = _prompts(shape, subject.vocab_size, settings.seed)
            ref = reference.generate(ids, mask, new, keep_logits=True)
            runs = {label: _Run(gen, precision) for label, gen, precision in loaded}
            for label, run in runs.items():
                events(f"{label} {shape.label}", "start", "")
                try:
                    _prepare(run, ids, mask, new, ref, settings.warmup)
                except Exception as exc:  # noqa: BLE001 - one backend failing at one shape is a result
                    run.error = _one_line(exc)
            for i in range(settings.rounds):
                t = time.perf_counter()
                for run in runs.values():
                    if run.error is None:
                        try:
                            _timed(run, ids, mask, new)
                        except Exception as exc:  # noqa: BLE001
                            run.error = _one_line(exc)
                events(f"round {i + 1}/{settings.rounds} {shape.label}", "done", f"{time.perf_counter() - t:.1f} s")
                if on_round is not None and i + 1 < settings.rounds:
                    so_far = [_finish(label, shape, new, run) for label, run in runs.items()]
                    on_round(result([*measurements, *so_far], {"shape": shape.label, "rounds_done": i + 1, "rounds": settings.rounds}))
            for label, run in runs.items():
                m = _finish(label, shape, new, run)
                measurements.append(m)
                _report(events, f"{label} {shape.label}", m)
            if on_round is not None:
                on_round(result(measurements, None if shape == settings.shapes[-1] else
                                {"shape": shape.label, "rounds_done": settings.rounds, "rounds": settings.rounds}))
        final = result(measurements, None)
    finally:
        for _, gen, _ in loaded:
            gen.close()
        torch.set_num_threads(previous)
    return final


def _report(events: EventFn, step: str, m: GenerationMeasurement) -> None:
    if m.status != "ok" or m.tpot is None or m.ttft is None or m.parity is None:
        events(step, "fail", m.reason)
        return
    p = m.parity
    agreement = f"{p.forced_agreement:.3f}" if p.forced_agreement is not None else f"{p.position_agreement:.3f}"
    mark = "" if p.passed else " PARITY FAIL"
    events(step, "done", f"TTFT {m.ttft.median_ms:.1f} ms, TPOT {m.tpot.median_ms:.2f} ms, {m.decode_tokens_per_s:.1f} tok/s, "
                         f"tokens {'equal' if p.tokens_equal else 'differ'}, agreement {agreement}, cos {p.logits_cosine:.6f}{mark}")


@dataclass(frozen=True)
class GenerationChoice:
    """The fastest backend (median time per output token, geometric mean over the shapes) within
    the accuracy budget."""

    backend: str
    artifact: str | None
    tpot_ms: float
    speedup: float | None  # against eager generate()
    worst_cosine: float
    worst_agreement: float
    shapes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def best_generation(result: GenerationResult, min_cosine: float = 0.99, min_agreement: float = 0.9, *,
                    among: Sequence[str] | None = None) -> GenerationChoice | None:
    """The fastest backend in `among` (default: those that load an artifact) that ran at every
    shape with parity passed at its precision, logits cosine >= `min_cosine` and token agreement
    (teacher forced where measured, else by position) >= `min_agreement`."""
    best: GenerationChoice | None = None
    for rec in result.backends:
        if rec.status != "ok" or (among is not None and rec.label not in among) or (among is None and rec.artifact is None):
            continue
        ms = [result.measurement(rec.label, s) for s in result.shapes]
        if any(m is None or m.status != "ok" or m.tpot is None or m.parity is None or not m.parity.passed for m in ms):
            continue
        parities = [m.parity for m in ms if m is not None and m.parity is not None]
        cos = min(p.logits_cosine for p in parities)
        agree = min(p.forced_agreement if p.forced_agreement is not None else p.position_agreement for p in parities)
        if cos < min_cosine or agree < min_agreement:
            continue
        tpot = math.exp(sum(math.log(m.tpot.median_ms) for m in ms if m and m.tpot) / len(ms))
        speedups = [result.speedup(rec.label, s) for s in result.shapes]
        speedup = math.exp(sum(math.log(x) for x in speedups) / len(speedups)) if all(x for x in speedups) else None
        choice = GenerationChoice(rec.label, rec.artifact, tpot, speedup, cos, agree, len(ms))
        if best is None or choice.tpot_ms < best.tpot_ms:
            best = choice
    return best
