"""`fxbench optimize` end to end: capture, verified passes, artifacts for the device, the benchmark, the reports."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fxbench.environment import collect_environment
from fxbench.errors import BenchOptionError, FxbenchError, OutputWriteError, VerificationError, one_line
from fxbench.events import EventFn, count, no_events, prefixed, step
from fxbench.exporters import PROGRAM_FILE, Artifact, load_program, save_program
from fxbench.jobs.bench import run_benchmark
from fxbench.jobs.common import default_device, default_output_dir, export_plan, load_and_capture, pass_context, raise_for_failures
from fxbench.jobs.common import report_header, require_device, resolve_device, resolve_model_source
from fxbench.jobs.common import generation_task, model_record
from fxbench.jobs.generate import generation_backends
from fxbench.jobs.folders import check_output_dir, output_lock, staged_directory
from fxbench.jobs.search import SCREEN_MEASURE, SCREEN_WARMUP, Candidate, candidate_folder, file_named, keep_winner, left_out, pick_winner
from fxbench.jobs.search import relabel
from fxbench.models import (CapturedProgram, DynamicDims, GraphFault, LoadedModel, LoadOptions, ReexportError, export_graph_module,
                            failing_node, run_module)
from fxbench.numerics import Parity, Tolerance, compare
from fxbench.passes import FxbenchPass, PipelineResult, build_passes, op_histogram, run_pipeline
from fxbench.passes.pipelines import PIPELINES, effective_pipeline, search_space
from fxbench.reports.files import write_optimize_reports
from fxbench.reports.records import BestArtifact, CaptureRecord, OpHistogram, OptimizeReport, ParitySummary, PipelineRecord
from fxbench.runtime.backends import Backend, folder_backends
from fxbench.runtime.bench import BenchResult, Choice, Shape, best_artifact
from fxbench.runtime.generation import GenerationResult, GenerationSettings, GenerationSubject, best_generation, measure_generation
from fxbench.runtime.harness import Measure, Warmup
from fxbench.models.decoder import DecoderCapture
from fxbench.models.tasks import WITH_PAST_TASK

if TYPE_CHECKING:
    from fxbench.exporters.export import ExportFailure, ExportOptions, ExportOutcome

__all__ = ["DTYPES", "OptimizeRequest", "OptimizeResult", "optimize", "optimize_captured"]

# The int8 baseline is ONNX Runtime's quantization, not fxbench's: benchmarked beside, never "best".
_BASELINE_KINDS = ("onnx-int8",)

# --dtype: the precision of the program and its artifacts, by the pass that brings it in (eager
# fp32 stays the reference every artifact is checked against).
DTYPES = {"fp32": None, "fp16": "to-fp16", "bf16": "to-bf16"}


@dataclass(frozen=True)
class OptimizeRequest:
    model: str | LoadedModel | None = None  # Hub id or folder, or a model in memory (fxbench.optimize); None: the demo model
    output: Path | None = None
    task: str | None = None
    pipeline: str | None = None  # None: O2
    passes: tuple[str, ...] = ()
    dtype: str = "fp32"  # fp16 / bf16 add the precision pass to the pipeline
    strict: bool = False
    force: bool = False
    batch: int = 2  # the sample the model is captured and checked on
    seq: int = 16
    dims: DynamicDims = DynamicDims()
    attn_implementation: str | None = None
    load: LoadOptions = LoadOptions()
    targets: tuple[str, ...] | None = None  # None: the artifacts that fit the device; (): only model.pt2
    export: ExportOptions | None = None  # export options (opset, TensorRT shapes, ...)
    device: str | None = None  # where artifacts are made and timed: auto (the GPU if any), cpu, cuda; None: the export options' device
    bench: bool = True  # time every artifact against eager PyTorch and name the best
    bench_shapes: tuple[tuple[int, int | None], ...] = ((1, 128),)  # (batch, seq); seq is capped at the model's positions
    bench_images: tuple[tuple[int, int], ...] = ()  # (height, width) to time vision models at; (): the capture's size
    warmup: Warmup = Warmup()
    measure: Measure = Measure(seconds=2.0)  # interleaved rounds (Measure's default)
    threads: int | None = None
    min_cosine: float = 0.99  # the accuracy budget the best artifact must meet (worst output vs eager fp32)
    max_abs_error: float = math.inf
    # What the passes and the artifacts are held to against eager: None, each precision's own
    # (numerics.Tolerance.for_precision); a Tolerance here is the floor (the looser of the two holds).
    tolerance: Tolerance | None = None
    # Try the presets that fit the device and keep the fastest within the budget. None: on a CPU
    # when neither a pipeline nor passes are named and the benchmark runs (the plain `fxbench
    # optimize MODEL` ends with its fastest artifact: int8 there), else not.
    search: bool | None = None
    # Under a search: every candidate's artifacts are first timed in a short interleaved screen, and
    # only each candidate's fastest within budget gets the full benchmark (the table the winner is
    # picked from). False: the full benchmark times every artifact (minutes more on a small CPU).
    screen: bool = True
    # Generation: `generate` captures a causal LM with its KV cache (the with-past task); a with-past
    # capture is benchmarked by greedy generation, bench_shapes as (batch, prompt length), this many new tokens.
    generate: bool = False
    new_tokens: int = 32
    min_token_agreement: float = 0.9  # the accuracy budget's token agreement (teacher forced) for a generation benchmark


@dataclass
class OptimizeResult:
    output_dir: Path
    report: OptimizeReport
    pipeline: PipelineResult
    captured: CapturedProgram
    timings: dict[str, float] = field(default_factory=dict)
    export_failures: tuple[ExportFailure, ...] = ()
    bench: BenchResult | None = None
    best: Choice | None = None
    candidates: list[Candidate] = field(default_factory=list)
    generation: GenerationResult | None = None

    @property
    def report_json(self) -> dict[str, Any]:
        """The report as report.json holds it."""
        return self.report.to_dict()

    @property
    def artifacts(self) -> tuple[Artifact, ...]:
        return self.report.artifacts

    def raise_for_failures(self) -> None:
        """Export targets that failed (their files absent, the rest written): one error for all."""
        raise_for_failures(self.export_failures)


def _device(request: OptimizeRequest) -> str:
    if request.device is not None:
        return resolve_device(request.device)
    return request.export.device if request.export is not None else resolve_device(None)


def _bench_shapes(request: OptimizeRequest, captured: CapturedProgram) -> list[Shape]:
    """The requested shapes, with the sequence capped at what the capture accepts (a model of 128
    positions is timed at 128, not refused at 512) and dropped for models without one."""
    has_seq = captured.loaded.modality == "text" or captured.loaded.is_encoder_decoder
    limit = None
    for spec in (captured.dynamic_shapes or {}).values():
        for dim in spec.values():
            if dim.__name__ in ("seq", "decoder_seq"):
                limit = dim.max if limit is None else min(limit, dim.max)
    if not captured.dynamic_shapes:  # static: the sample's shape is the only one the program runs
        return [Shape(captured.inputs.batch, captured.inputs.seq if has_seq else None, captured.inputs.image)]
    images = list(request.bench_images) if captured.inputs.image is not None else []
    shapes = []
    for batch, seq in request.bench_shapes:
        if not has_seq:
            seq = None
        elif seq is not None and limit is not None:
            seq = min(seq, limit)
        shapes.extend(Shape(batch, seq, image) for image in images or [None])
    return list(dict.fromkeys(shapes))


def _run_passes(captured: CapturedProgram, passes: list[FxbenchPass], request: OptimizeRequest, events: EventFn,
                timings: dict[str, float], prefix: str) -> PipelineResult:
    started = {"n": 0}

    def on_pass(name: str, status: str) -> None:
        if status == "start":
            started["n"] += 1
            events(f"{prefix}pass {name}", "start", count(started["n"], len(passes)))
            return
        events(f"{prefix}pass {name}", "done" if status in ("applied", "unchanged") else "fail", status)

    with step(events, f"{prefix}passes", timings, key="passes") as d:
        result = run_pipeline(
            captured.graph_module(), passes, inputs=dict(captured.inputs.tensors), reference=captured.reference,
            output_names=captured.output_names, context=pass_context(captured), strict=request.strict, progress=on_pass,
            tolerance=request.tolerance,
        )
        applied = sum(r.status == "applied" for r in result.records)
        d["detail"] = f"{applied}/{len(result.records)} applied, {result.parity.brief()}"
    if not result.tolerance.accepts(result.parity):
        raise VerificationError(f"the optimized program misses its tolerance: {result.tolerance.explain(result.parity)}")
    return result


def _pass_hint(result: PipelineResult, node: GraphFault | None) -> str:
    """What to try when the optimized graph fails after the passes: without the pass that put the
    failing op there, or, when none did, without one of those that changed the graph."""
    applied = [r for r in result.records if r.status == "applied"]
    made = [r.name for r in applied if node and r.op_delta.get(node.op, 0) > 0]
    if made:
        return f"{made[-1]} added that op: try --passes -{made[-1]}"
    if applied:
        return f"try without one of the passes that changed the graph ({', '.join(r.name for r in applied)}): --passes -{applied[0].name}"
    return "try --static"


def _reloaded_run(reloaded: Any, captured: CapturedProgram, result: PipelineResult,
                  tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    try:
        return run_module(reloaded, tensors)
    except Exception as exc:  # noqa: BLE001 - any failure of the saved program is named in one line
        node = failing_node(exc)
        config = captured.loaded.config
        raise ReexportError(
            f"model.pt2 of this {config.model_type} model does not run after saving and loading it"
            f"{' at ' + str(node) if node else ''}: {one_line(exc, 160)}; {_pass_hint(result, node)}", node,
        ) from exc


def _save_program(captured: CapturedProgram, result: PipelineResult, folder: Path, events: EventFn,
                  timings: dict[str, float], prefix: str) -> tuple[Any, Artifact]:
    with step(events, f"{prefix}save", timings, key="save") as d:
        try:
            program = export_graph_module(result.module, captured)
        except ReexportError as exc:
            raise ReexportError(f"{exc}; {_pass_hint(result, exc.node)}", exc.node) from exc
        path = save_program(program, folder / PROGRAM_FILE)
        parities = _program_parities(path, captured, result)
        parity: Parity = parities["sample"]
        for name, p in parities.items():
            if not result.tolerance.accepts(p):
                raise VerificationError(f"model.pt2 does not reproduce the optimized program on the {name} inputs: {result.tolerance.explain(p)}")
        d["detail"] = f"model.pt2 ({path.stat().st_size / 2**20:.1f} MiB), reloaded: {parity.brief()}" + (
            f"; {', '.join(n for n in parities if n != 'sample')}: ok" if len(parities) > 1 else "")
    artifact = Artifact(
        kind="program", file=path.name, device="any", precision=result.precision,
        input_names=captured.input_names, output_names=result.output_names,
        parity={n: p.to_dict() for n, p in parities.items()}, details={"bytes": path.stat().st_size}, seconds=timings["save"],
    )
    return program, artifact


def _program_parities(path: Path, captured: CapturedProgram, result: PipelineResult) -> dict[str, Parity]:
    """The saved program, loaded back, against the optimized one on the sample and, for a dynamic
    capture, on the exporters' second inputs (another batch and sequence, an image size or audio
    length never seen)."""
    from fxbench.exporters.checks import second_inputs

    reloaded = load_program(path).module()
    sample = _reloaded_run(reloaded, captured, result, dict(captured.inputs.tensors))
    parities = {"sample": compare(sample, result.reference, result.output_names)}
    second = second_inputs(captured)
    if second is not None:
        name, more = second
        parities[name] = compare(_reloaded_run(reloaded, captured, result, more), run_module(result.module, more), result.output_names)
    return parities


def _export_targets(program: Any, captured: CapturedProgram, result: PipelineResult, targets: tuple[str, ...],
                    options: ExportOptions | None, folder: Path, events: EventFn) -> ExportOutcome:
    from fxbench.exporters.checks import ExportSubject
    from fxbench.exporters.export import ExportOutcome, export_artifacts

    if not targets:
        return ExportOutcome()
    subject = ExportSubject(program, captured, result.output_names, result.precision, result.tolerance, result.rebased)
    return export_artifacts(subject, targets, folder, options, events)


def _generation_settings(request: OptimizeRequest) -> GenerationSettings:
    return GenerationSettings(batches=tuple(dict.fromkeys(b for b, _ in request.bench_shapes)),
                              prompt_lengths=tuple(dict.fromkeys(s or 128 for _, s in request.bench_shapes)),
                              new_tokens=request.new_tokens, rounds=max(3, request.measure.rounds), threads=request.threads)


def _bench_generation(captured: DecoderCapture, folder: Path, artifacts: list[Artifact], request: OptimizeRequest,
                      events: EventFn, timings: dict[str, float], prefix: str) -> tuple[GenerationResult, Choice | None]:
    """A with-past capture's artifacts timed by greedy generation against eager generate(); the
    best is the artifact of fxbench's with the lowest time per output token within the budget."""
    entries = generation_backends(None, folder, artifacts)
    own = {str(folder / a.file) for a in artifacts if a.kind not in _BASELINE_KINDS}
    among = [e.label for e in entries if not isinstance(e, str) and e.artifact is not None and str(e.artifact) in own]
    with step(events, f"{prefix}bench", timings) as d:
        result = measure_generation(GenerationSubject.from_capture(captured), entries, _generation_settings(request),
                                    model=model_record(captured.loaded).to_dict(), source={"kind": "optimize"},
                                    events=prefixed(events, prefix), command=sys.argv)
        best = best_generation(result, request.min_cosine, request.min_token_agreement, among=among)
        d["detail"] = (f"best {best.backend}: {best.tpot_ms:.2f} ms per output token" + (f", {best.speedup:.2f}x eager generate()" if best.speedup else "")
                       if best else "no artifact meets the accuracy budget")
    choice = None
    if best is not None:
        name = next(e.name for e in entries if not isinstance(e, str) and e.label == best.backend)
        # The record optimize keeps for its best artifact; for generation, its median is the time per output token.
        choice = Choice(best.backend, name, best.artifact, best.tpot_ms, best.speedup, best.worst_cosine, 0.0, best.shapes)
    return result, choice


def _own_backends(cand: Candidate, folder: Path, device: str) -> list[Backend]:
    """The candidate's artifacts as benchmark backends (eager is the run's, shared)."""
    return [b for b in folder_backends(folder, cand.artifacts, device) if b.artifact is not None]


def _checks(candidates: list[Candidate]) -> dict[str, dict[str, Any]]:
    """Each artifact backend's export checks (label -> the artifact's parity per check): the budget
    is judged on those shapes too, not only on the benchmark's."""
    out: dict[str, dict[str, Any]] = {}
    for cand in candidates:
        by_file = {a.file: a.parity for a in cand.artifacts}
        for b in cand.backends:
            if b.artifact is not None and Path(b.artifact).name in by_file:
                out[b.label] = by_file[Path(b.artifact).name]
    return out


def _ours(cand: Candidate) -> list[str]:
    """The labels of the candidate's own artifacts: the int8 baseline is ONNX Runtime's, never "best"."""
    baseline = {a.file for a in cand.artifacts if a.kind in _BASELINE_KINDS}
    return [b.label for b in cand.backends if b.artifact is not None and Path(b.artifact).name not in baseline]


def _bench(captured: CapturedProgram, candidates: list[Candidate], request: OptimizeRequest, device: str, shapes: list[Shape],
           events: EventFn, timings: dict[str, float]) -> tuple[BenchResult, Choice | None, BenchResult | None]:
    """One benchmark of every candidate's artifacts beside one eager baseline, interleaved; each
    candidate's best, and the best of all. Under a search with `screen`, a short interleaved screen
    of all of them first, and the full benchmark of each candidate's fastest within budget (the
    screen is returned too; with no finalist at all, it is the benchmark)."""
    ok = [c for c in candidates if c.error is None]
    checks = _checks(ok)
    screen = None
    if request.search and request.screen:
        screen = _screen(captured, ok, request, device, shapes, events, timings, checks)
        if not any(c.backends for c in ok):
            return screen, None, screen
    backends = [Backend("eager"), *(b for c in ok for b in c.backends)]
    with step(events, "bench", timings) as d:
        bench = run_benchmark(
            captured, backends, shapes, device=device, threads=request.threads, warmup=request.warmup,
            measure=request.measure, events=events, command=sys.argv,
        )
        for cand in ok:
            cand.bench = bench
            cand.best = best_artifact(bench, request.min_cosine, request.max_abs_error, among=_ours(cand), checks=checks)
        best = best_artifact(bench, request.min_cosine, request.max_abs_error, among=[x for c in ok for x in _ours(c)], checks=checks)
        if best is None:
            d["detail"] = "no artifact meets the accuracy budget"
        else:
            lead = "" if best.clear is None else (", a clear lead" if best.clear else ", within the noise of " + ", ".join(best.tied_with))
            d["detail"] = f"best {best.backend}: {best.median_ms:.2f} ms" + (f", {best.speedup:.2f}x eager" if best.speedup else "") + lead
    return bench, best, screen


def _screen(captured: CapturedProgram, ok: list[Candidate], request: OptimizeRequest, device: str, shapes: list[Shape],
            events: EventFn, timings: dict[str, float], checks: dict[str, dict[str, Any]]) -> BenchResult:
    """Every candidate's artifacts in one short interleaved run (no eager: it ranks artifacts, and
    eager is timed in the benchmark after it); each candidate keeps only its fastest within budget
    as its backend (none: it has no finalist)."""
    backends = [b for c in ok for b in c.backends]
    with step(events, "screen", timings) as d:
        screen = run_benchmark(
            captured, backends, shapes, device=device, threads=request.threads, warmup=SCREEN_WARMUP, measure=SCREEN_MEASURE,
            events=prefixed(events, "screen: "), command=sys.argv,
        )
        finalists = []
        for cand in ok:
            pick = best_artifact(screen, request.min_cosine, request.max_abs_error, among=_ours(cand), checks=checks)
            cand.backends = [b for b in cand.backends if pick is not None and b.label == pick.backend]
            finalists += cand.labels
        d["detail"] = (f"{len(backends)} artifacts, {SCREEN_MEASURE.seconds:g} s each; the full benchmark times "
                       + (", ".join(finalists) if finalists else "none: no artifact meets the accuracy budget") + " (--no-screen: all)")
    return screen


def _candidate(captured: CapturedProgram, pipeline: str | None, passes: list[FxbenchPass], request: OptimizeRequest,
               targets: tuple[str, ...], options: ExportOptions | None, device: str, folder: Path, events: EventFn,
               prefix: str) -> Candidate:
    cand = Candidate(pipeline, [p.name for p in passes])
    cand.result = _run_passes(captured, passes, request, events, cand.timings, prefix)
    program, program_artifact = _save_program(captured, cand.result, folder, events, cand.timings, prefix)
    made = _export_targets(program, captured, cand.result, targets, options, folder, events)
    cand.artifacts = [program_artifact, *made.artifacts]
    cand.failures = made.failures
    if request.bench and isinstance(captured, DecoderCapture):
        cand.generation, cand.best = _bench_generation(captured, folder, cand.artifacts, request, events, cand.timings, prefix)
        return cand
    own = _own_backends(cand, folder, device)
    cand.backends = relabel(own, pipeline) if request.search else own
    return cand


def _searching(request: OptimizeRequest, device: str) -> bool:
    if request.search is not None:
        return request.search
    # A decoder's generation benchmark times one pipeline; the int8 search is for one-forward models.
    generating = request.generate or (request.task is not None and generation_task(request.task, False) == WITH_PAST_TASK)
    return request.pipeline is None and not request.passes and request.bench and device == "cpu" and not generating


def _validate(request: OptimizeRequest) -> None:
    """The options that can be checked without the model, so that a typo costs no loading."""
    if request.batch < 1:
        raise BenchOptionError(f"--sample-batch must be at least 1, not {request.batch}")
    if request.seq < 1:
        raise BenchOptionError(f"--sample-seq must be at least 1, not {request.seq}")
    if not request.dims.static and request.batch < 2:
        raise BenchOptionError(
            f"--sample-batch {request.batch} cannot capture a dynamic batch (torch.export specializes sizes 0 and 1); use --sample-batch 2 or more, or --static"
        )
    if request.threads is not None and request.threads < 1:
        raise BenchOptionError(f"--threads must be at least 1, not {request.threads}")
    if request.search and request.pipeline:
        raise BenchOptionError("--search tries the presets itself; drop --pipeline (use --passes to edit every candidate)")
    if request.search and not request.bench:
        raise BenchOptionError("--search picks the fastest candidate, so it needs the benchmark; drop --no-bench")
    if request.dtype not in DTYPES:
        raise BenchOptionError(f"--dtype must be one of {', '.join(DTYPES)}, not {request.dtype!r}")
    if request.search and request.dtype != "fp32":
        raise BenchOptionError("--search tries each preset's own precision; drop --dtype")
    if not 0.0 <= request.min_cosine <= 1.0:
        raise BenchOptionError(f"--min-cosine must be between 0 and 1, not {request.min_cosine}")
    if request.new_tokens < 2:
        raise BenchOptionError(f"--new-tokens must be at least 2, not {request.new_tokens}")
    if not 0.0 <= request.min_token_agreement <= 1.0:
        raise BenchOptionError(f"--min-token-agreement must be between 0 and 1, not {request.min_token_agreement}")
    if not request.max_abs_error > 0:
        raise BenchOptionError(f"--max-abs-error must be positive, not {request.max_abs_error}")
    for batch, seq in request.bench_shapes:
        if batch < 1 or (seq is not None and seq < 1):
            raise BenchOptionError(f"benchmark shape batch={batch} seq={seq} must be positive")


@dataclass(frozen=True)
class _Plan:
    out_dir: Path
    device: str
    pipelines: list[tuple[str | None, list[FxbenchPass]]]
    targets: tuple[str, ...]
    options: ExportOptions | None
    search: bool


def _with_dtype(pipeline: str | None, passes: list[FxbenchPass], request: OptimizeRequest) -> list[FxbenchPass]:
    precision_pass = DTYPES[request.dtype]
    if precision_pass is None:
        return passes
    own = sorted({p.precision for p in passes if p.precision != "fp32"})
    if own:
        raise BenchOptionError(f"--pipeline {pipeline} sets its own precision ({', '.join(own)}); drop --dtype {request.dtype}")
    return build_passes(pipeline, (*request.passes, precision_pass))


def _plan(request: OptimizeRequest, source: str) -> _Plan:
    """Everything a user can get wrong, checked before minutes of loading: options, passes,
    targets, the output folder."""
    _validate(request)
    out_dir = Path(request.output) if request.output else default_output_dir(source)
    device = _device(request)
    require_device(device)
    request = dataclasses.replace(request, search=_searching(request, device))
    names = list(search_space(device)) if request.search else [effective_pipeline(request.pipeline, request.passes)]
    pipelines = [(name, _with_dtype(name, build_passes(name, request.passes), request)) for name in names]
    targets, options = _plan_targets(request, device)
    check_output_dir(out_dir, request.force)
    return _Plan(out_dir, device, pipelines, targets, options, bool(request.search))


def optimize(request: OptimizeRequest, events: EventFn = no_events) -> OptimizeResult:
    """Capture once; run the pipeline (or, with `search`, each preset that fits the device) with
    verification; save model.pt2 and the artifacts for the device; benchmark them against eager
    PyTorch; name the fastest within the accuracy budget; write report.json / .md / .html.
    The output folder appears only when everything succeeded."""
    task = generation_task(request.task, request.generate)
    if isinstance(request.model, LoadedModel):
        source: str | LoadedModel = request.model
        plan = _plan(request, request.model.name)
    else:
        source = resolve_model_source(request.model)
        plan = _plan(request, source)
    timings: dict[str, float] = {}
    # The output's lock is taken before loading: a second run into the same folder stops at once.
    with output_lock(plan.out_dir):
        check_output_dir(plan.out_dir, request.force)
        captured = load_and_capture(
            source, task=task, batch=request.batch, seq=request.seq, dims=request.dims,
            attn_implementation=request.attn_implementation, events=events, timings=timings, load=request.load,
        )
        return _optimize(captured, request, plan, events, timings)


def optimize_captured(captured: CapturedProgram, request: OptimizeRequest, events: EventFn = no_events) -> OptimizeResult:
    """`optimize` for a model captured already (scripts that try several requests on one capture);
    the request's model, task and capture settings are not used."""
    return _optimize(captured, request, _plan(request, captured.loaded.name if captured.loaded.source.startswith("module:")
                                              else captured.loaded.source), events, {})


def _optimize(captured: CapturedProgram, request: OptimizeRequest, plan: _Plan, events: EventFn,
              timings: dict[str, float]) -> OptimizeResult:
    started = _dt.datetime.now(_dt.timezone.utc)
    request = dataclasses.replace(request, search=plan.search)
    with staged_directory(plan.out_dir, request.force) as staging:
        candidates: list[Candidate] = []
        for k, (name, passes) in enumerate(plan.pipelines):
            folder = candidate_folder(staging, name) if request.search else staging
            folder.mkdir(parents=True, exist_ok=True)
            prefix = f"{name}: " if request.search else ""
            targets, own = plan.targets, PIPELINES[name].targets if name in PIPELINES else ()
            # What the preset is for: unless targets are named, and in a search always (a candidate
            # makes none it is not for: bf16-cpu no ONNX, which ORT's CPU provider cannot run).
            if own and (request.targets is None or request.search):
                targets = tuple(t for t in targets if t in own)
            skipped = left_out(targets, plan.device, own) if request.search and request.targets is None else ()
            targets = tuple(t for t in targets if t not in skipped)
            try:
                if request.search:
                    with step(events, f"candidate {name}", {}, place=count(k + 1, len(plan.pipelines))) as d:
                        cand = _candidate(captured, name, passes, request, targets, plan.options, plan.device, folder, events, prefix)
                        cand.left_out = skipped
                        d["detail"] = f"{len(cand.artifacts)} artifacts" + (
                            f"; not made in the search: {', '.join(skipped)} (--to names it)" if skipped else "")
                else:
                    cand = _candidate(captured, name, passes, request, targets, plan.options, plan.device, folder, events, prefix)
                candidates.append(cand)
            except OutputWriteError:
                raise  # the disk, not the candidate: the search stops
            except FxbenchError as exc:
                if not request.search:
                    raise
                candidates.append(Candidate(name, [p.name for p in passes], error=" ".join(str(exc).split())))
        bench, best, screen = None, None, None
        if isinstance(captured, DecoderCapture):
            best = next((c.best for c in candidates if c.error is None and c.best is not None), None)  # generation, per candidate
        elif request.bench and any(c.error is None for c in candidates):
            bench, best, screen = _bench(captured, candidates, request, plan.device, _bench_shapes(request, captured), events, timings)
        winner = pick_winner(candidates, best)
        if request.search:
            keep_winner(staging, winner)
        for cand in candidates:
            timings.update({f"{cand.pipeline}: {k}" if request.search else k: v for k, v in cand.timings.items()})
        report = _report(request, captured, winner, candidates, plan.device, started, timings, bench, best, staging, screen)
        write_optimize_reports(report, staging)
    assert winner.result is not None
    return OptimizeResult(plan.out_dir, report, winner.result, captured, timings, winner.failures, bench, best, candidates,
                          winner.generation)


def _plan_targets(request: OptimizeRequest, device: str) -> tuple[tuple[str, ...], ExportOptions | None]:
    from fxbench.exporters.export import ExportOptions
    from fxbench.exporters.targets import device_targets

    options = dataclasses.replace(request.export or ExportOptions(), device=device)
    if request.targets is not None:
        return export_plan(request.targets, options)
    return device_targets(options), options


def _file_names(bench: BenchResult, staging: Path) -> BenchResult:
    """The benchmark with artifact paths relative to the output folder (a candidate's under its
    pipeline: int8-cpu/model.onnx): it was run in the staging folder, which is renamed into place
    afterwards, and a report must not name a machine's temp paths."""
    def rel(path: str) -> str:
        p = Path(path)
        for root in (staging / "search", staging):
            if p.is_relative_to(root):
                return p.relative_to(root).as_posix()
        return p.name

    backends = tuple(dataclasses.replace(b, artifact=rel(b.artifact)) if b.artifact else b for b in bench.backends)
    return dataclasses.replace(bench, backends=backends)


def _generation_file_names(result: GenerationResult) -> GenerationResult:
    backends = tuple(dataclasses.replace(b, artifact=Path(b.artifact).name) if b.artifact else b for b in result.backends)
    return dataclasses.replace(result, backends=backends)


def _report(request: OptimizeRequest, captured: CapturedProgram, winner: Candidate, candidates: list[Candidate], device: str,
            started: _dt.datetime, timings: dict[str, float], bench: BenchResult | None, best: Choice | None,
            staging: Path, screen: BenchResult | None = None) -> OptimizeReport:
    result = winner.result
    assert result is not None
    return OptimizeReport(
        header=report_header(captured, started),
        capture=CaptureRecord(seconds=captured.seconds, nodes=len(captured.exported.graph.nodes), axes=captured.describe_axes(),
                              static_axes=dict(captured.static_axes)),
        device=device,
        pipeline=PipelineRecord(winner.pipeline, tuple(request.passes), tuple(winner.passes)),
        passes=tuple(result.records),
        op_histogram=OpHistogram(dict(op_histogram(captured.graph_module()).most_common()), dict(op_histogram(result.module).most_common())),
        parity=ParitySummary(
            against="eager PyTorch fp32" if not result.rebased else "the model as changed by layer surgery",
            final=result.parity, eager=result.eager_parity, tolerance=result.tolerance,
        ),
        artifacts=tuple(winner.artifacts),
        export_failures=tuple(winner.failures),
        benchmark=_file_names(bench, staging) if bench else None,
        best=BestArtifact(file_named(best), request.min_cosine, request.max_abs_error) if best else None,
        generation=_generation_file_names(winner.generation) if winner.generation else None,
        environment=collect_environment(sys.argv),
        seconds=dict(timings),
        search=tuple(c.record() for c in candidates) if request.search else None,
        screen=_file_names(screen, staging) if screen is not None and screen is not bench else None,
    )
