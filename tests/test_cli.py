"""The CLI end to end in subprocesses: optimize, plugins found by entry point, errors, the saved program."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fxbench.reports.schema import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[1]


def fxbench(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("HF_HUB_OFFLINE", "1")
    return subprocess.run(
        [sys.executable, "-m", "fxbench", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )


def readme_example_pass() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- example-pass:start -->\s*```python\n(.*?)```\s*<!-- example-pass:end -->", text, re.S)
    assert block, "README.md lost its example pass"
    return block.group(1)


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """The example plugin package, with the README's pass in it, installed by pip into a folder."""
    src = tmp_path_factory.mktemp("plugin_src") / "plugin"
    shutil.copytree(ROOT / "tests" / "plugin_dist", src)
    (src / "fxbench_example_plugin" / "decompose_gelu.py").write_text(readme_example_pass(), encoding="utf-8")
    site = tmp_path_factory.mktemp("plugin_site")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert list(site.glob("fxbench_example_plugin-*.dist-info"))
    return site


def with_plugin(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_optimize_end_to_end_and_the_saved_program_reloads(tiny_dir, tmp_path):
    out = tmp_path / "out"
    proc = fxbench("optimize", str(tiny_dir("bert")), "-o", str(out), "--target", "none", "--no-bench", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # report.md and report.html are written with --no-bench too (the HTML says the benchmark did not run).
    assert sorted(p.name for p in out.iterdir()) == ["model.pt2", "report.html", "report.json", "report.md"]
    assert json.loads((out / "report.json").read_text()) == report
    assert report["schema_version"] == SCHEMA_VERSION and report["kind"] == "optimize" and report["benchmark"] is None
    assert [r["name"] for r in report["passes"]] == [
        "remove-noops", "fuse-attention", "fold-batchnorm", "fold-constants", "eliminate-common-subexpressions", "eliminate-dead-code",
    ]
    for rec in report["passes"]:
        assert {"name", "options", "modified", "nodes_before", "nodes_after", "op_delta", "parity", "seconds"} <= set(rec)
    assert report["model"]["task"] == "feature-extraction" and report["inputs"]["origin"] == "tokenizer"
    assert report["inputs"]["dynamic"]["input_ids"]["1"]["name"] == "seq"
    assert report["environment"]["packages"]["torch"] == importlib.metadata.version("torch")
    assert report["parity"]["final"]["cosine"] > 0.99999
    # No temporary folder is left beside the output.
    assert [p.name for p in tmp_path.iterdir()] == ["out"]

    # model.pt2 loads with torch.export.load and matches the Hugging Face model at a new shape.
    from transformers import AutoModel

    program = torch.export.load(str(out / "model.pt2")).module()
    ids = torch.randint(0, 30522, (3, 24))
    mask = torch.ones(3, 24, dtype=torch.long)
    types = torch.zeros(3, 24, dtype=torch.long)
    got = program(input_ids=ids, attention_mask=mask, token_type_ids=types)
    with torch.no_grad():
        want = AutoModel.from_pretrained(str(tiny_dir("bert"))).eval()(input_ids=ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(got[0], want.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want.pooler_output, rtol=1e-5, atol=1e-5)

    inspected = fxbench("inspect", str(out), "--json")
    assert inspected.returncode == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    assert info["parameters"] == sum(p.numel() for p in AutoModel.from_pretrained(str(tiny_dir("bert"))).parameters())
    assert info["nodes_per_module"]["encoder.layer.0"] > 0
    assert "aten.dropout.default" not in info["op_histogram"]


def test_plugin_passes_come_from_entry_points(plugin_site):
    proc = fxbench("passes", "list", "--json", env=with_plugin(plugin_site))
    assert proc.returncode == 0, proc.stderr
    listing = {p["name"]: p for p in json.loads(proc.stdout)["passes"]}
    assert listing["decompose-gelu"]["origin"] == "plugin (fxbench-example-plugin)"
    assert listing["decompose-gelu"]["summary"] == "Rewrite exact GELU as 0.5 * x * (1 + erf(x / sqrt(2)))."
    assert listing["remove-noops"]["origin"] == "built-in"
    # Without the package on the path, the pass is unknown.
    assert "decompose-gelu" not in {p["name"] for p in json.loads(fxbench("passes", "list", "--json").stdout)["passes"]}


def test_readme_pass_runs_verified_through_the_cli(plugin_site, tiny_dir, tmp_path):
    # --passes adds the pass to the default pipeline (O2), at the end of its stage.
    proc = fxbench("optimize", str(tiny_dir("bert")), "-o", str(tmp_path / "o"), "--passes", "decompose-gelu", "--to", "none", "--no-bench", "--json",
                   env=with_plugin(plugin_site))
    assert proc.returncode == 0, proc.stderr
    names = [r["name"] for r in json.loads(proc.stdout)["passes"]]
    assert names == ["remove-noops", "fuse-attention", "fold-batchnorm", "fold-constants", "decompose-gelu",
                     "eliminate-common-subexpressions", "eliminate-dead-code"]
    # --pipeline none runs exactly the passes given.
    proc = fxbench("optimize", str(tiny_dir("bert")), "-o", str(tmp_path / "p"), "--pipeline", "none", "--passes", "decompose-gelu", "--to", "none",
                   "--no-bench", "--json", env=with_plugin(plugin_site))
    assert proc.returncode == 0, proc.stderr
    (rec,) = json.loads(proc.stdout)["passes"]
    assert rec["status"] == "applied"
    assert rec["op_delta"]["aten.gelu.default"] == -4 and rec["op_delta"]["aten.erf.default"] == 4
    assert rec["parity"]["cosine"] > 0.99999


def test_wrong_plugin_pass_is_rolled_back_and_strict_fails(plugin_site, tiny_dir, tmp_path):
    env = with_plugin(plugin_site)
    proc = fxbench("optimize", str(tiny_dir("bert")), "-o", str(tmp_path / "a"), "--pipeline", "O1",
                   "--passes", "gelu-to-relu", "--target", "none", "--no-bench", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    records = {r["name"]: r for r in json.loads(proc.stdout)["passes"]}
    assert records["gelu-to-relu"]["status"] == "rolled-back"
    assert "cosine" in records["gelu-to-relu"]["message"]
    assert records["remove-noops"]["status"] == "applied"

    strict = fxbench("optimize", str(tiny_dir("bert")), "-o", str(tmp_path / "b"), "--passes", "gelu-to-relu", "--strict", "--target", "none", "--no-bench", env=env)
    assert strict.returncode == 3
    errors = [ln for ln in strict.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "gelu-to-relu broke the tolerance" in errors[0]
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["optimize", "no-such-org/no-such-model"], "Hub is unreachable (offline) and no cached copy was found"),
        (["optimize", "{bert}", "--task", "nonsense"], "unknown task 'nonsense'"),
        (["optimize", "{bert}", "--passes", "fold-everything"], "unknown pass 'fold-everything'"),
        (["optimize", "{bert}", "--passes", "remove-noops:dropout=sometimes"], "option dropout='sometimes' is invalid"),
        (["optimize", "{bert}", "-o", "{nonempty}"], "is not empty; pass --force"),
        (["optimize", "{bert}", "--pipeline", "O7"], "unknown pipeline 'O7'"),
    ],
)
def test_user_errors_are_one_line_and_nonzero(tiny_dir, tmp_path, args, message):
    nonempty = tmp_path / "taken"
    nonempty.mkdir()
    (nonempty / "keep.txt").write_text("mine")
    args = [a.format(bert=tiny_dir("bert"), nonempty=nonempty) for a in args]
    proc = fxbench(*args)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(("✗", "W1", "Failed to load"))]
    assert lines == [lines[0]] and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert (nonempty / "keep.txt").read_text() == "mine"


def test_force_replaces_an_existing_output(tiny_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    proc = fxbench("optimize", str(tiny_dir("gpt2")), "-o", str(out), "--force", "--target", "none", "--no-bench")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.pt2", "report.html", "report.json", "report.md"]


def test_inspect_prints_graph(tiny_dir):
    proc = fxbench("inspect", str(tiny_dir("vit")), "--graph")
    assert proc.returncode == 0, proc.stderr
    assert "parameters" in proc.stdout and "aten.linear.default" in proc.stdout and "def forward" in proc.stdout
