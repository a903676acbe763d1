"""report.md and report.html of `fxbench optimize`: the summary, search, passes and artifacts, then the benchmark."""

from __future__ import annotations

import html
from typing import Any

from fxbench.runtime.bench import BenchResult
from fxbench.runtime.bench_report import render_markdown
from fxbench.runtime.html_report import render_html

__all__ = ["render_optimize_html", "render_optimize_markdown", "summary_lines"]


def _cos(parity: dict[str, Any] | None) -> str:
    return f"{parity['cosine']:.6f}" if parity else "-"


def _err(parity: dict[str, Any] | None) -> str:
    return f"{parity['max_abs_error']:.2e}" if parity else "-"


def _op_changes(delta: dict[str, int], limit: int = 5) -> str:
    items = [f"{op.removeprefix('aten.').removesuffix('.default')} {d:+d}" for op, d in list(delta.items())[:limit]]
    return ", ".join(items) + (", ..." if len(delta) > limit else "") or "-"


def summary_lines(report: dict[str, Any]) -> list[str]:
    model, pipe = report["model"], report["pipeline"]
    params = model.get("parameters") or 0
    lines = [
        f"model: {model.get('model_id') or model.get('source')} ({model.get('architecture')}, {model.get('task')}, {params / 1e6:.1f}M parameters)",
        f"pipeline: {pipe.get('name') or 'custom'} ({' → '.join(pipe.get('passes', []))})",
        f"device: {report.get('device')}",
        f"final parity against {report['parity']['against']}: cosine {_cos(report['parity']['final'])}, max abs error {_err(report['parity']['final'])}",
    ]
    best = report.get("best")
    if best:
        speed = f", {best['speedup']:.2f}x eager fp32" if best.get("speedup") else ""
        lines.append(
            f"best artifact: {best['backend']} ({best.get('artifact')}): {best['median_ms']:.2f} ms median{speed}, "
            f"worst cosine {best['worst_cosine']:.6f} (budget: cosine >= {best['min_cosine']})"
        )
    elif report.get("benchmark") is not None:
        lines.append("best artifact: none meets the accuracy budget")
    return lines


def _search_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for c in report.get("search") or []:
        best = c.get("best") or {}
        rows.append([
            str(c["pipeline"]), c["status"] if not c.get("error") else f"failed: {c['error'][:80]}", str(c.get("precision") or "-"),
            best.get("backend", "-"), f"{best['median_ms']:.2f}" if best else "-",
            f"{best['speedup']:.2f}x" if best.get("speedup") else "-", f"{best['worst_cosine']:.6f}" if best else "-",
        ])
    return rows


def _pass_rows(report: dict[str, Any]) -> list[list[str]]:
    return [
        [r["name"], r["status"], f"{r['nodes_before']}→{r['nodes_after']}", _op_changes(r["op_delta"]), _cos(r["parity"]),
         _err(r["parity"]), f"{r['seconds'] + r['verify_seconds']:.2f}", r.get("message") or ""]
        for r in report["passes"]
    ]


def _artifact_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for a in report["artifacts"]:
        checks = ", ".join(f"{name} {p['cosine']:.6f}" for name, p in a.get("parity", {}).items())
        rows.append([a["kind"], a["file"], a["device"], a["precision"], checks or "-", f"{a.get('seconds', 0):.1f}"])
    for f in report.get("export_failures", []):
        rows.append([f.get("target", "?"), "-", "-", "-", f"failed: {f.get('message', '')[:100]}", "-"])
    return rows


_SEARCH_COLS = ["pipeline", "status", "precision", "best backend", "median ms", "speedup", "worst cosine"]
_PASS_COLS = ["pass", "status", "nodes", "op changes", "cosine", "max abs err", "s", "note"]
_ARTIFACT_COLS = ["kind", "file", "device", "precision", "checks (cosine vs eager)", "export s"]


def _md_table(cols: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[c.replace("|", "\\|").replace("\n", " ") for c in row] for row in rows]
    return ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |", *("| " + " | ".join(r) + " |" for r in esc)]


def render_optimize_markdown(report: dict[str, Any], bench: BenchResult | None) -> str:
    out = [f"# fxbench optimize: {report['model'].get('name')}", ""]
    out += [f"- {line}" for line in summary_lines(report)] + [""]
    if report.get("search"):
        out += ["## Search", ""] + _md_table(_SEARCH_COLS, _search_rows(report)) + [""]
    out += ["## Passes", ""] + _md_table(_PASS_COLS, _pass_rows(report)) + [""]
    out += ["## Artifacts", ""] + _md_table(_ARTIFACT_COLS, _artifact_rows(report)) + [""]
    if bench is not None:
        body = render_markdown(bench).splitlines()
        body = body[1:] if body and body[0].startswith("# ") else body  # its title is ours now
        out += ["## Benchmark", ""] + [("#" + line if line.startswith("## ") else line) for line in body]
    return "\n".join(out).rstrip() + "\n"


def _html_table(table_id: str, cols: list[str], rows: list[list[str]]) -> str:
    head = "".join(f'<th class="l">{html.escape(c)}</th>' for c in cols)
    body = "".join("<tr>" + "".join(f'<td class="l">{html.escape(c)}</td>' for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_optimize_html(report: dict[str, Any], bench: BenchResult) -> str:
    parts = ["<ul id='summary'>" + "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(report)) + "</ul>"]
    if report.get("search"):
        parts += ["<h2>Search</h2>", _html_table("search", _SEARCH_COLS, _search_rows(report))]
    parts += ["<h2>Passes</h2>", _html_table("passes", _PASS_COLS, _pass_rows(report))]
    parts += ["<h2>Artifacts</h2>", _html_table("artifacts", _ARTIFACT_COLS, _artifact_rows(report))]
    parts += ["<h2>Benchmark</h2>"]
    return render_html(bench, title=f"fxbench optimize: {report['model'].get('name')}", preamble="\n".join(parts))
