"""The generation benchmark's tables (terminal and markdown, from one row builder) and its report files."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from fxbench.reports.files import write_json
from fxbench.reports.rows import Cells, environment_lines
from fxbench.runtime.generation import GenerationMeasurement, GenerationResult

__all__ = ["GENERATION_COLUMNS", "generation_header", "generation_rows", "render_generation_markdown", "render_generation_table",
           "write_generation_reports"]

GENERATION_COLUMNS = ("backend", "shape", "TTFT ms", "TPOT ms", "TPOT p90 ms", "tok/s", "decode tok/s", "speedup", "mem MiB",
                      "tokens", "agreement", "logits cos", "status")
_LEFT = ("backend", "shape", "tokens", "status")


def _cells(result: GenerationResult, m: GenerationMeasurement) -> Cells:
    if m.status != "ok" or m.tpot is None or m.ttft is None:
        return {"backend": m.backend, "shape": m.shape.label, "status": f"{m.status}: {m.reason}"}
    p = m.parity
    speed = result.speedup(m.backend, m.shape)
    agreement = None if p is None else (p.forced_agreement if p.forced_agreement is not None else p.position_agreement)
    return {
        "backend": m.backend, "shape": m.shape.label,
        "TTFT ms": f"{m.ttft.median_ms:.1f}", "TPOT ms": f"{m.tpot.median_ms:.2f}", "TPOT p90 ms": f"{m.tpot.p90_ms:.2f}",
        "tok/s": f"{m.tokens_per_s:.1f}" if m.tokens_per_s else "-", "decode tok/s": f"{m.decode_tokens_per_s:.1f}" if m.decode_tokens_per_s else "-",
        "speedup": f"{speed:.2f}x" if speed else "-", "mem MiB": f"{m.memory.growth_mib:,.1f}" if m.memory else "-",
        "tokens": "-" if p is None else ("equal" if p.tokens_equal else f"{p.position_agreement:.0%} equal"),
        "agreement": f"{agreement:.3f}" if agreement is not None else "-",
        "logits cos": f"{p.logits_cosine:.6f}" if p else "-",
        "status": "ok" if p is None or p.passed else f"PARITY FAIL ({p.reason})",
    }


def generation_rows(result: GenerationResult) -> list[Cells]:
    """Rows shape by shape, backends in the order they loaded; then each that never ran, with why."""
    out = []
    for shape in result.shapes:
        for rec in result.backends:
            m = result.measurement(rec.label, shape)
            if rec.status == "ok" and m is not None:
                out.append(_cells(result, m))
    out += [{"backend": r.label, "shape": "-", "status": f"{r.status}: {r.reason}"} for r in result.backends if r.status != "ok"]
    return out


def generation_header(result: GenerationResult) -> list[str]:
    env, s = result.environment, result.settings
    return [
        f"model: {result.model.get('model_id') or result.model.get('source')} ({result.model.get('architecture')}, "
        f"{result.model.get('parameters', 0) / 1e6:.1f}M parameters)",
        f"CPU: {env.get('cpu')} ({env.get('cpu_count')} logical CPUs), {result.threads} threads; load average {env.get('load_average', '-')}",
        f"greedy, {s['new_tokens']} new tokens per sequence (eos ignored), prompts of random tokens; parity against {result.reference}",
        f"timing: one untimed generation, {s['warmup']} warm-up, then {s['rounds']} interleaved rounds; TTFT = the prefill call "
        "(median over rounds), TPOT = each later call (median, p90 over every step of every round); speedup = eager generate()'s "
        "TPOT / the backend's; mem = peak RSS growth over a warm-up generation",
        "agreement: teacher forced (eager generate()'s tokens fed back) share of calls whose argmax is eager's token; for "
        "generate() baselines, the share of positions equal; logits cos: worst per call and row",
    ]


def render_generation_table(result: GenerationResult) -> Table:
    table = Table(title=f"fxbench bench --generate: {result.model.get('name')}", title_justify="left",
                  caption="\n".join(generation_header(result)), caption_justify="left")
    for col in GENERATION_COLUMNS:
        table.add_column(col, justify="left" if col in _LEFT else "right", overflow="fold")
    for cells in generation_rows(result):
        status = cells.get("status", "")
        table.add_row(*[cells.get(c, "") if c != "status" else (status if status == "ok" else f"[red]{status}[/]") for c in GENERATION_COLUMNS])
    return table


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_generation_markdown(result: GenerationResult, *, title: bool = True) -> str:
    out = [f"# fxbench bench --generate: {result.model.get('name')}", ""] if title else []
    out += [f"- {line}" for line in generation_header(result)] + [""]
    out += ["| " + " | ".join(GENERATION_COLUMNS) + " |",
            "| " + " | ".join("---" if c in _LEFT else "---:" for c in GENERATION_COLUMNS) + " |"]
    out += ["| " + " | ".join(_escape(row.get(c, "")) for c in GENERATION_COLUMNS) + " |" for row in generation_rows(result)]
    out += ["", "## Backends", ""] + [f"- {r.label}: {r.summary}; {r.io or r.reason}" for r in result.backends]
    out += ["", "## Environment", ""] + [f"- {line}" for line in environment_lines(result.environment)] + [""]
    return "\n".join(out)


def write_generation_reports(result: GenerationResult, folder: Path) -> dict[str, Path]:
    """report.json and report.md of a generation benchmark into `folder` (created; both replaced)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "md": folder / "report.md"}
    from fxbench.reports.schema import SCHEMA_VERSION

    write_json({"schema_version": SCHEMA_VERSION, "kind": "generation", **result.to_dict()}, paths["json"])
    paths["md"].write_text(render_generation_markdown(result), encoding="utf-8")
    return paths
