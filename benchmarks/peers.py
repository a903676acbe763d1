"""The CPU int8 stacks a user would pick instead of fxbench, built from their public APIs: ONNX
Runtime's transformer optimizer + `quantize_dynamic`, and CTranslate2 int8.

Each recipe takes a Hugging Face encoder folder (BertModel-style: input ids, attention mask, token
types) and returns a `Peer`: the files it made, what it did, and a `bind` that places a batch once
and returns a run step and a fetch of `last_hidden_state` as a float32 torch tensor, so the same
agreement metrics and interleaved timing apply to it as to fxbench's own artifacts.

    peer = ort_recipe(model_dir, work / "ort")          # or ctranslate2_int8(model_dir, work / "ct2")
    step, fetch = peer.bind(input_ids, attention_mask)
    step(); hidden = fetch()["last_hidden_state"]
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fxbench.errors import BackendUnavailableError
from fxbench.models import CapturedProgram
from fxbench.runtime import BACKENDS, Backend, BackendSpec, register_backend
from fxbench.runtime.sessions import Bound, Session, SessionOptions

__all__ = ["Peer", "PeerSession", "PeerUnavailable", "ctranslate2_int8", "ort_recipe", "peer_backends", "peers"]

Step = Callable[[], object]
Fetch = Callable[[], dict[str, torch.Tensor]]


def _step_fetch(run: Callable[[], Any], outputs: Callable[[Any], dict[str, torch.Tensor]]) -> tuple[Step, Fetch]:
    """`step` runs the peer once (what is timed); `fetch` gives the last run's outputs as float32
    tensors (running it once first if it never ran)."""
    last: list[Any] = [None]

    def step() -> object:
        last[0] = run()
        return last[0]

    def fetch() -> dict[str, torch.Tensor]:
        if last[0] is None:
            step()
        return outputs(last[0])

    return step, fetch


class PeerUnavailable(RuntimeError):
    """A peer cannot be built here (its package is missing, or it does not take this model); the
    message is one line, fit to print as the skip reason."""


@dataclass(frozen=True)
class Peer:
    """A built peer. `bind(input_ids, attention_mask)` places the batch (right-padded, mask 1 on real
    tokens) where the peer reads it and returns `(step, fetch)`: `step()` runs one inference,
    `fetch()` gives the latest outputs by name as float32 (`last_hidden_state` [batch, seq, hidden],
    and `pooler_output` where the peer computes one)."""

    name: str
    artifacts: tuple[Path, ...]
    bind: Callable[[torch.Tensor, torch.Tensor], tuple[Step, Fetch]]
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # to build it (export, optimize, quantize / convert)
    # Between its blocks of interleaved rounds: let go of the runtime, and take it back (True: rebuilt).
    suspend: Callable[[], None] | None = None
    resume: Callable[[], bool] | None = None

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One inference, untimed: `last_hidden_state` for the batch."""
        step, fetch = self.bind(input_ids, attention_mask)
        step()
        return fetch()["last_hidden_state"]


def _config(model_dir: Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))


def _quiet_ort() -> contextlib.ExitStack:
    """The optimizer and quantizer print and log advice on every call; a benchmark's lines would drown."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    stack.callback(root.setLevel, level)
    return stack


# ----- ONNX Runtime: TorchScript export, transformer optimizer, dynamic int8


class _Keywords(torch.nn.Module):
    """Calls the model by keyword: the TorchScript tracer passes inputs by position, which
    transformers 5's forward wrappers reject ("multiple values for argument 'use_cache'")."""

    def __init__(self, model: torch.nn.Module, outputs: list[str]):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(getattr(out, name) for name in self.outputs)


def export_torchscript(model_dir: Path, destination: Path, *, opset: int | None = None) -> Path:
    """`torch.onnx.export(..., dynamo=False)` of the folder's `AutoModel` with eager attention: the
    export ORT's BERT fusions were written against (they do not match SDPA or dynamo's graphs).
    Inputs input_ids, attention_mask, token_type_ids; outputs last_hidden_state (and pooler_output
    where the model has a pooler); batch and sequence dynamic."""
    import transformers

    model = transformers.AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    sample = torch.ones(2, 16, dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad():
        pooled = getattr(model(input_ids=sample), "pooler_output", None) is not None
    output_names = ["last_hidden_state"] + (["pooler_output"] if pooled else [])
    dims = {0: "batch", 1: "sequence"}
    destination.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(
            _Keywords(model, output_names), (sample, sample, torch.zeros_like(sample)), str(destination), dynamo=False,
            input_names=names, output_names=output_names,
            dynamic_axes={**{n: dims for n in names}, "last_hidden_state": dims, **({"pooler_output": {0: "batch"}} if pooled else {})},
            **({"opset_version": opset} if opset else {}),
        )
    return destination


def ort_recipe(
    model_dir: Path,
    work: Path,
    *,
    per_channel: bool = True,
    opt_level: int = 2,
    threads: int = 2,
    reuse_export: Path | None = None,
) -> Peer:
    """ONNX Runtime's documented BERT int8 recipe: TorchScript export with eager attention,
    `onnxruntime.transformers.optimizer.optimize_model(model_type="bert", num_heads, hidden_size,
    opt_level)` (fused Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu), then
    `quantize_dynamic` (int8 weights, activations quantized at run time) with
    `DefaultTensorType=FLOAT` (the fused graph has outputs whose type the quantizer cannot infer).

    `per_channel` defaults to True, unlike quantize_dynamic: with one weight scale per tensor
    all-MiniLM-L6-v2's mean sentence cosine falls to 0.966 (min 0.939) against 0.994 (0.989) per
    channel, at the same speed, so a user who checks the answers picks per-channel. `opt_level` 1 and
    2 give the same graph here.

    Run in a default `InferenceSession` (all graph optimizations) with `threads` intra-op threads."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    start = time.perf_counter()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    config = _config(model_dir)
    exported = reuse_export or export_torchscript(model_dir, work / "model.onnx")
    optimized = work / f"model.opt{opt_level}.onnx"
    quantized = work / f"model.opt{opt_level}.int8{'-pc' if per_channel else ''}.onnx"
    with _quiet_ort():
        opt = optimize_model(str(exported), model_type="bert", num_heads=int(config["num_attention_heads"]),
                             hidden_size=int(config["hidden_size"]), opt_level=opt_level, use_gpu=False)
        opt.save_model_to_file(str(optimized))
        fused = opt.get_fused_operator_statistics()
        quantize_dynamic(optimized, quantized, weight_type=QuantType.QInt8, per_channel=per_channel,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    ops = Counter(n.op_type for n in onnx.load(str(quantized), load_external_data=False).graph.node)

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if os.environ.get("FXBENCH_ORT_NO_SPIN") == "1":  # the benchmarks' --no-spin, as for fxbench's own ORT sessions
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(quantized), sess_options=options, providers=["CPUExecutionProvider"])
    wanted = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]

    def bind(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[Step, Fetch]:
        ids = input_ids.numpy().astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": attention_mask.numpy().astype(np.int64), "token_type_ids": np.zeros_like(ids)}
        feeds = {k: v for k, v in feeds.items() if k in wanted}
        return _step_fetch(lambda: session.run(outputs, feeds),
                           lambda got: {name: torch.from_numpy(np.asarray(v, dtype=np.float32)) for name, v in zip(outputs, got)})

    return Peer(
        name=f"ORT optimize_model O{opt_level} + quantize_dynamic ({'per-channel' if per_channel else 'per-tensor'})",
        artifacts=(quantized,),
        bind=bind,
        details={
            "recipe": "torch.onnx.export(dynamo=False, eager attention) -> optimize_model(model_type='bert') -> quantize_dynamic(QInt8)",
            "opt_level": opt_level, "per_channel": per_channel, "threads": threads,
            "spinning": os.environ.get("FXBENCH_ORT_NO_SPIN") != "1",
            "fused_by_optimizer": {k: v for k, v in fused.items() if v},
            "ops": dict(sorted(ops.items())),
            "onnxruntime": ort.__version__,
        },
        seconds=time.perf_counter() - start,
    )


# ----- CTranslate2


def _ct2_source(model_dir: Path, work: Path) -> tuple[Path, str]:
    """The folder to convert, and what was patched. CTranslate2's BERT loader reads
    `config.position_embedding_type`, which transformers 5 no longer writes for BertConfig (absolute
    is implied); without it the converter fails, so such a folder is converted through a copy whose
    config says "absolute" (weights linked, not copied)."""
    config = _config(model_dir)
    if config.get("model_type") != "bert" or "position_embedding_type" in config:
        return model_dir, ""
    copy = work / "hf-for-ct2"
    copy.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.is_file() and f.name != "config.json" and not (copy / f.name).exists():
            (copy / f.name).symlink_to(f.resolve())
    (copy / "config.json").write_text(json.dumps({**config, "position_embedding_type": "absolute"}, indent=2), encoding="utf-8")
    return copy, "position_embedding_type='absolute' added to config.json (transformers 5 omits it)"


def ctranslate2_int8(model_dir: Path, work: Path, *, threads: int = 2, compute_type: str = "int8") -> Peer:
    """CTranslate2's converter on the Hugging Face folder (weights stored int8), run by
    `ctranslate2.Encoder(compute_type="int8", intra_threads=threads)`: per-row int8 weights,
    activations quantized at run time. Raises `PeerUnavailable` when ctranslate2 is not installed
    or does not convert this architecture."""
    try:
        import ctranslate2
    except ImportError:
        raise PeerUnavailable("ctranslate2 is not installed (pip install -e '.[peers]')") from None
    start = time.perf_counter()
    out = Path(work) / "ct2-int8"
    source, patched = _ct2_source(Path(model_dir), Path(work))
    try:
        with _quiet_ort(), contextlib.redirect_stderr(io.StringIO()):
            ctranslate2.converters.TransformersConverter(str(source)).convert(str(out), quantization="int8", force=True)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare errors for unsupported models; one line says why
        raise PeerUnavailable(f"ctranslate2 {ctranslate2.__version__} cannot convert {Path(model_dir).name}: {' '.join(str(exc).split())[:200]}") from exc
    def load() -> Any:
        return ctranslate2.Encoder(str(out), device="cpu", compute_type=compute_type, intra_threads=threads, inter_threads=1)

    # A live Encoder slows PyTorch in the same process (MiniLM's bf16 AOTInductor package: 3.65 ms
    # alone, 9.53 ms beside it, 3.63 ms once it is deleted; unload_model() does not help), so
    # between its blocks of interleaved rounds the benchmark deletes it and loads it again (0.2 s)
    # before its next block: each backend is timed as it runs in a process of its own.
    held: list[Any] = [load()]

    def suspend() -> None:
        held[0] = None
        gc.collect()

    def resume() -> bool:
        if held[0] is not None:
            return False
        held[0] = load()
        return True

    def bind(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[Step, Fetch]:
        # CTranslate2 masks by lengths (right padding), which is what an attention mask of leading ones says.
        ids = ctranslate2.StorageView.from_array(np.ascontiguousarray(input_ids.numpy().astype(np.int32)))
        lengths = ctranslate2.StorageView.from_array(np.ascontiguousarray(attention_mask.numpy().sum(1).astype(np.int32)))

        def outputs(got: Any) -> dict[str, torch.Tensor]:
            out = {"last_hidden_state": torch.from_numpy(np.array(got.last_hidden_state, dtype=np.float32))}
            if got.pooler_output is not None:
                out["pooler_output"] = torch.from_numpy(np.array(got.pooler_output, dtype=np.float32))
            return out

        return _step_fetch(lambda: held[0].forward_batch(ids, lengths), outputs)

    files = tuple(sorted(p for p in out.iterdir() if p.is_file()))
    return Peer(
        name=f"CTranslate2 {ctranslate2.__version__} {compute_type}",
        artifacts=files,
        bind=bind,
        details={"converter": "ctranslate2.converters.TransformersConverter(quantization='int8')", "compute_type": compute_type,
                 **({"config_patched": patched} if patched else {}),
                 "intra_threads": threads, "ctranslate2": ctranslate2.__version__,
                 "between_rounds": "the Encoder is deleted after each block and loaded again before the next (a live one slows PyTorch)",
                 "bytes": sum(p.stat().st_size for p in files)},
        seconds=time.perf_counter() - start,
        suspend=suspend,
        resume=resume,
    )


def peers(model_dir: Path, work: Path, *, threads: int = 2, per_channel: bool = True, opt_level: int = 2) -> tuple[list[Peer], dict[str, str]]:
    """Both peers for `model_dir`; those that cannot be built are left out, with their one-line reason."""
    built: list[Peer] = []
    skipped: dict[str, str] = {}
    for name, make in (("ort", lambda: ort_recipe(model_dir, Path(work) / "ort", per_channel=per_channel, opt_level=opt_level, threads=threads)),
                       ("ctranslate2", lambda: ctranslate2_int8(model_dir, Path(work), threads=threads))):
        try:
            built.append(make())
        except PeerUnavailable as exc:
            skipped[name] = str(exc)
    return built, skipped


# ----- peers as fxbench backends: timed in the same interleaved rounds as fxbench's artifacts


class PeerSession(Session):
    """A built peer behind fxbench's `Session` interface: the workload's inputs in, the capture's
    outputs out (in its order), so the harness checks it against eager and times it in the same
    rounds as fxbench's artifacts."""

    device = "cpu"
    precision = "int8"
    torch_allocator = False
    io = "inputs converted for the peer once, at bind"

    def __init__(self, peer: Peer, captured: CapturedProgram, options: SessionOptions):
        if options.device != "cpu":
            raise BackendUnavailableError("the peers run on the CPU")
        super().__init__(captured.input_names, captured.output_names)
        self.peer = peer
        self.backend = f"peer: {peer.name}"

    def bind(self, inputs: Mapping[str, torch.Tensor]) -> Bound:
        step, fetch = self.peer.bind(inputs["input_ids"], inputs["attention_mask"])

        def outputs() -> tuple[torch.Tensor, ...]:
            got = fetch()
            missing = [n for n in self.output_names if n not in got]
            if missing:
                raise BackendUnavailableError(f"{self.peer.name} gives no {', '.join(missing)}")
            return tuple(got[n] for n in self.output_names)

        return Bound(step=step, fetch=outputs)

    def suspend(self) -> None:
        if self.peer.suspend is not None:
            self.peer.suspend()

    def resume(self) -> bool:
        return self.peer.resume() if self.peer.resume is not None else False


def peer_backends(built: list[Peer]) -> list[Backend]:
    """One registered fxbench backend per built peer (peer-ort-recipe, peer-ctranslate2), as
    `Backend` records for `run_benchmark`."""
    out = []
    for peer in built:
        name = "peer-" + ("ort-recipe" if peer.name.startswith("ORT") else peer.name.split()[0].lower())
        if name not in BACKENDS:
            register_backend(BackendSpec(name, peer.name, ("cpu",), lambda captured, options, p=peer: PeerSession(p, captured, options),
                                         precision="int8"))
        out.append(Backend(name, label=peer.name))
    return out
