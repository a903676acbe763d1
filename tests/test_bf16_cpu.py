"""bf16-cpu: bf16 matmuls in an AOTInductor package with frozen oneDNN weights, searched where the CPU multiplies bf16 in hardware."""

from __future__ import annotations

import json
import re
import zipfile

import pytest
import torch

from fxbench.jobs import OptimizeRequest, optimize_captured
from fxbench.models import run_module
from fxbench.numerics import compare
from fxbench.passes import PIPELINES, native_bf16_cpu, search_space

needs_bf16 = pytest.mark.skipif(not native_bf16_cpu(), reason="this CPU has neither AMX nor AVX-512 BF16: bf16-cpu is not searched here")


@pytest.mark.parametrize(("amx", "avx512_bf16", "searched"), [(True, False, True), (False, True, True), (False, False, False)])
def test_the_cpu_search_tries_bf16_only_where_the_cpu_multiplies_bf16(monkeypatch, amx, avx512_bf16, searched):
    # The hardware probes are torch's; what the search makes of them is fxbench's.
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert native_bf16_cpu() is searched
    assert search_space("cpu") == (("O2", "int8-cpu", "bf16-cpu") if searched else ("O2", "int8-cpu"))
    assert "bf16-cpu" not in search_space("cuda") and PIPELINES["bf16-cpu"].targets == ("aoti",)


def _wrapper_calls(package) -> set[str]:
    with zipfile.ZipFile(package) as z:
        code = "".join(z.read(n).decode() for n in z.namelist() if n.endswith("wrapper.cpp"))
    return set(re.findall(r"aoti_torch_cpu_\w+", code))


@needs_bf16
def test_bf16_cpu_makes_a_frozen_aoti_package_that_matches_eager_at_a_second_shape(captured, tmp_path):
    cp = captured("bert")
    out = tmp_path / "o"
    result = optimize_captured(cp, OptimizeRequest(output=out, pipeline="bf16-cpu", bench=False))
    report = json.loads((out / "report.json").read_text())
    # Its artifact is the package (ORT's CPU provider has no bf16 kernels): no ONNX is made.
    assert [a["file"] for a in report["artifacts"]] == ["model.pt2", "model.aoti.pt2"]
    aoti = report["artifacts"][1]
    assert aoti["precision"] == "bf16" and aoti["details"]["inductor_configs"] == {"freezing": True}
    # Structure: every linear multiplies bf16 weights; layer norms stay fp32.
    gm = result.pipeline.module
    linears = [n for n in gm.graph.nodes if n.target is torch.ops.aten.linear.default]
    norms = [n for n in gm.graph.nodes if n.target is torch.ops.aten.layer_norm.default]
    assert linears and all(n.args[1].meta["val"].dtype == torch.bfloat16 for n in linears)
    assert norms and all(n.meta["val"].dtype == torch.float32 for n in norms)
    # Frozen weights: the linears are oneDNN's prepacked GEMMs, not addmm on the parameters.
    calls = _wrapper_calls(out / "model.aoti.pt2")
    assert "aoti_torch_cpu__linear_pointwise" in calls and "aoti_torch_cpu_addmm_out" not in calls, calls
    # Numerics against eager fp32, at the sample shape and at one the capture never saw.
    runner = torch._inductor.aoti_load_package(str(out / "model.aoti.pt2"))
    for inputs in (cp.inputs.tensors, cp.make_inputs(3, 24, seed=1).tensors):
        with torch.no_grad():
            got = runner(**inputs)
        got = (got,) if isinstance(got, torch.Tensor) else tuple(got)
        parity = compare([g.float() for g in got], run_module(cp.eager, inputs), cp.output_names)
        assert parity.cosine >= 0.999, parity.brief()
    # fxbench's own checks of the package (the sample and an unseen shape) hold the same.
    assert len(aoti["parity"]) >= 2 and all(c["cosine"] >= 0.999 for c in aoti["parity"].values())
