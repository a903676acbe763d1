"""AOTInductor: a CPU package of a tiny model compiles, loads back and matches eager at shapes it never saw."""

from __future__ import annotations

import pytest
import torch

from fxbench.errors import BackendUnavailableError
from fxbench.exporters import ExportSubject, export_artifacts
from fxbench.exporters.aoti import require_aoti
from fxbench.numerics import Tolerance, compare


def test_aoti_cpu_package_loads_and_matches_eager_with_dynamic_shapes(captured, tmp_path):
    cp = captured("gpt2")
    made = export_artifacts(ExportSubject(cp.exported, cp, cp.output_names), ["aoti"], tmp_path)
    assert not made.failures, made.failures
    (art,) = made.artifacts
    assert (art.kind, art.file, art.device) == ("aoti", "model.aoti.pt2", "cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.aoti.pt2"]
    assert set(art.parity) == {"sample", "batch3_seq40"}
    assert art.details["dynamic"]["input_ids"] == {"0": "batch", "1": "seq"}
    # Loaded afresh, as a server would, at a third shape.
    runner = torch._inductor.aoti_load_package(str(tmp_path / "model.aoti.pt2"))
    inputs = cp.make_inputs(5, 24, seed=4).tensors
    with torch.no_grad():
        got = runner(**inputs)
    parity = compare(got, cp.run_eager(inputs), cp.output_names)
    assert Tolerance.for_precision("fp32").accepts(parity), parity.brief()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: a CUDA package can be built here")
def test_cuda_package_without_a_gpu_is_one_line():
    with pytest.raises(BackendUnavailableError, match="needs a CUDA GPU") as info:
        require_aoti("cuda")
    assert "\n" not in str(info.value)
