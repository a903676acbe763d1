"""Benchmark reports (terminal table, report.json, report.md, report.html rendered in a real
headless browser) and `fxbench bench` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from browser import CHROMIUM, SKIP_REASON, dump_dom, layout_width, screenshot
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from fxbench.cli import app
from fxbench.jobs import run_benchmark
from fxbench.reports import render_markdown, render_table, write_reports
from fxbench.reports.html import PALETTE, Box
from fxbench.runtime.bench import BenchResult, shapes_from
from fxbench.runtime.harness import Measure, Warmup


@pytest.fixture(scope="module")
def result(captured) -> BenchResult:
    return run_benchmark(
        captured("bert"), ["eager", "program", "eager-fp16"], shapes_from([1, 2], [8, 16]),
        warmup=Warmup(iters=1, seconds=0.0), measure=Measure(iters=3), threads=1, command=["fxbench", "bench", "tiny"],
    )


@pytest.fixture(scope="module")
def reports(result, tmp_path_factory) -> dict[str, Path]:
    return write_reports(result, tmp_path_factory.mktemp("reports"))


def test_json_report_holds_numbers_environment_and_command(reports, result):
    data = json.loads(reports["json"].read_text())
    assert data["environment"]["command"] == "fxbench bench tiny"
    assert data["environment"]["packages"]["torch"] and data["environment"]["cpu"]
    assert [s["label"] for s in data["shapes"]] == ["b1 s8", "b1 s16", "b2 s8", "b2 s16"]
    by = {(m["backend"], m["batch"], m["seq"]): m for m in data["measurements"]}
    m = by[("program", 2, 16)]
    assert m["latency"]["median_ms"] == pytest.approx(result.measurement("program", result.shapes[3]).latency.median_ms)
    assert {"median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput"} <= set(m["latency"])
    assert m["parity"]["agreement"]["metric"] == "embedding cosine" and m["memory"]["kind"] == "rss"
    skipped = next(b for b in data["backends"] if b["label"] == "eager-fp16")
    assert skipped["status"] == "skipped" and "no CUDA GPU" in skipped["reason"]


def test_markdown_report_is_a_table_to_paste(reports, result):
    md = reports["md"].read_text()
    assert md == render_markdown(result)
    lines = md.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("| backend | shape | median ms"))
    table = lines[header:lines.index("", header)]
    assert len(table) == 2 + 2 * 4 + 1  # header, rule, two backends at four shapes, the skipped one
    assert all(row.count("|") == table[0].count("|") for row in table[2:] if "skipped" not in row)
    assert any(row.startswith("| program | b2 s16 |") for row in table)
    assert "| eager-fp16 | - |" in md and "no CUDA GPU" in md
    assert "## Environment" in md and "command: `fxbench bench tiny`" in md and "Warm-up" in md


def test_terminal_table_renders(result):
    console = Console(record=True, width=200)
    console.print(render_table(result))
    text = console.export_text()
    assert text.count("program ") >= 4 and "b2 s16" in text and "skipped: eager-fp16: no CUDA GPU" in text


def test_html_report_has_the_plots(reports, result):
    page = reports["html"].read_text()
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    # Latency as distributions (a box per backend and shape, from every run), speedups, the sweeps.
    assert page.count('data-plot="latency"') == 4 and page.count('data-plot="speedup"') == 4
    assert page.count('data-plot="latency-vs-batch"') == 2 and page.count('data-plot="latency-vs-seq"') == 2
    m = result.measurement("program", result.shapes[0])
    box = Box.of(m)
    assert (box.q1, box.median, box.q3) == (m.latency.p25_ms, m.latency.median_ms, m.latency.p75_ms) and box.count == m.latency.count
    assert box.low <= box.q1 and box.high >= box.q3 and all(v < box.low or v > box.high for v in box.outliers)
    assert f'class="median" data-backend="program" data-value="{m.latency.median_ms:.6g}"' in page
    # Every output's parity per backend and shape; every statistic in its own table.
    assert page.count("<td class=\"l\">last_hidden_state</td>") == 2 * 4 and 'id="details"' in page and "p99 ms" in page


@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_html_report_renders_in_headless_chromium(reports, tmp_path):
    dom = dump_dom(reports["html"], tmp_path / "profile")
    # The browser parsed the SVG into elements: boxes and their whiskers, sweep lines and their points.
    assert dom.count('<svg class="plot"') == 12
    assert dom.count('class="box latency"') == 8 and dom.count('class="whisker"') == 8 and dom.count('class="median"') == 8
    assert dom.count('class="series"') == 8 and dom.count('class="point"') == 16
    # The page fits an 800 px window (nothing wider than the viewport) and uses a 1400 px one.
    for width in (800, 1400):
        scroll, right = layout_width(reports["html"], tmp_path, width)
        assert scroll <= width and right <= width, (width, scroll, right)
    shot = screenshot(reports["html"], tmp_path, 1280)
    # The plots were painted: the backends' colors cover real areas of the page.
    image = Image.open(shot).convert("RGB")
    counts = {color: n for n, color in image.getcolors(maxcolors=1 << 20)}
    for hexcolor in PALETTE[:2]:  # eager, program
        rgb = tuple(int(hexcolor[i:i + 2], 16) for i in (1, 3, 5))
        assert counts.get(rgb, 0) > 500, f"{hexcolor} barely painted"


def _fxbench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "fxbench", *args], capture_output=True, text=True, env=env, timeout=300, cwd=cwd)


def test_bench_command_end_to_end(tiny_dir, tmp_path):
    out = tmp_path / "bench"
    proc = _fxbench("bench", str(tiny_dir("bert")), "--backends", "eager,program", "--backends", "eager-fp16", "--batch", "1,2", "--seq", "8", "--iters", "3", "--warmup", "1", "--warmup-time", "0",
                    "--threads", "1", "-o", str(out), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert json.loads((out / "report.json").read_text()) == data
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]
    assert [(b["label"], b["status"]) for b in data["backends"]] == [("eager", "ok"), ("program", "ok"), ("eager-fp16", "skipped")]
    assert len(data["measurements"]) == 4 and all(m["latency"]["count"] == 3 for m in data["measurements"])
    assert data["threads"] == 1 and "--threads 1" in data["environment"]["command"]
    assert "✓ program b2 s8" in proc.stderr and "skipped: no CUDA GPU" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backends", "eager,warp-drive"], "unknown backend 'warp-drive'"),
        (["--backends", "ort"], "backend 'ort' runs an artifact"),
        (["--backends", "ort@nope.onnx"], "no artifact file at nope.onnx"),
        (["--iters", "3", "--time", "1"], "give --iters or --time, not both"),
        (["--batch", "1,x"], "bad --batch '1,x'"),
        (["--device", "tpu"], "unknown device 'tpu'; choose one of: auto, cpu, cuda"),
    ],
)
def test_bench_user_errors_are_one_line_before_any_work(tiny_dir, args, message):
    # In-process (the real typer app, not a subprocess per case): each error comes before the
    # model is loaded, so no step line precedes it.
    proc = CliRunner().invoke(app, ["bench", str(tiny_dir("bert")), *args])
    assert proc.exit_code == 2, proc.output
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: ") and message in proc.stderr
