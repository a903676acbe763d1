"""report.html: the benchmark table and its plots as inline SVG, one self-contained file with no
script (it opens offline and in review tools that strip JavaScript)."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

from fxbench.reports.records import OptimizeReport
from fxbench.reports import rows
from fxbench.runtime.bench import BenchResult, Shape

__all__ = ["PALETTE", "bar_chart", "html_table", "line_chart", "render_html", "render_optimize_html"]

# Tableau 10: distinguishable, and each backend keeps its color in every plot.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
_FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:12px"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _nice_ticks(hi: float, count: int = 5) -> list[float]:
    """0 .. a round number at or above `hi`, in round steps (1, 2, 2.5, 5 x 10^k)."""
    if hi <= 0 or not math.isfinite(hi):
        return [0.0, 1.0]
    raw = hi / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(hi / step - 1e-9)
    return [i * step for i in range(n + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v < 1000 else f"{v:,.0f}"


def bar_chart(plot: str, title: str, rows_: Sequence[tuple[str, float, float | None, str]], unit: str, *,
              reference: float | None = None, reference_label: str = "", shape: str = "") -> str:
    """Horizontal bars, one per (label, value, whisker end or None, color); an optional vertical
    reference line (speedup 1.0 = eager). Bars carry data-* attributes and <title> tooltips."""
    left, right, row_h = 230, 70, 24
    top = 50 if reference is not None else 34  # room for the reference line's label under the title
    width = 760
    plot_w = width - left - right
    height = top + row_h * len(rows_) + 36
    hi = max([v for _, v, _, _ in rows_] + [w for _, _, w, _ in rows_ if w is not None] + [reference or 0] + [1e-12])
    ticks = _nice_ticks(hi)
    scale = plot_w / ticks[-1]
    out = [f'<svg class="plot" data-plot="{_e(plot)}" data-shape="{_e(shape)}" xmlns="http://www.w3.org/2000/svg" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}" style="{_FONT}">',
           f'<text x="{left}" y="18" font-weight="600">{_e(title)}</text>']
    axis_y = top + row_h * len(rows_)
    for t in ticks:
        x = left + t * scale
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{axis_y}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle" fill="#555">{_fmt(t)}</text>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{axis_y + 30}" text-anchor="middle" fill="#555">{_e(unit)}</text>')
    for i, (label, value, whisker, color) in enumerate(rows_):
        y = top + i * row_h
        w = max(value * scale, 1.0)
        out.append(f'<text x="{left - 8}" y="{y + row_h / 2 + 4:.1f}" text-anchor="end">{_e(label)}</text>')
        tip = f"{label}: {_fmt(value)} {unit}" + (f", p99 {_fmt(whisker)}" if whisker is not None else "")
        out.append(f'<rect class="bar {plot}" data-backend="{_e(label)}" data-value="{value:.6g}" x="{left}" y="{y + 4}" '
                   f'width="{w:.1f}" height="{row_h - 8}" fill="{color}"><title>{_e(tip)}</title></rect>')
        end = left + w
        if whisker is not None:
            wx = left + whisker * scale
            cy = y + row_h / 2
            out.append(f'<line class="p99" data-backend="{_e(label)}" data-value="{whisker:.6g}" x1="{left + value * scale:.1f}" y1="{cy:.1f}" '
                       f'x2="{wx:.1f}" y2="{cy:.1f}" stroke="#333" stroke-width="1.5"/>')
            out.append(f'<line x1="{wx:.1f}" y1="{cy - 6:.1f}" x2="{wx:.1f}" y2="{cy + 6:.1f}" stroke="#333" stroke-width="1.5"/>')
            end = max(end, wx)
        out.append(f'<text x="{end + 5:.1f}" y="{y + row_h / 2 + 4:.1f}" fill="#333">{_fmt(value)}</text>')
    if reference is not None:
        rx = left + reference * scale
        out.append(f'<line class="reference" x1="{rx:.1f}" y1="{top - 8}" x2="{rx:.1f}" y2="{axis_y}" stroke="#111" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{rx + 3:.1f}" y="{top - 10}" fill="#111">{_e(reference_label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def line_chart(plot: str, title: str, x_label: str, xs: Sequence[int], series: Sequence[tuple[str, Sequence[float | None], str]],
               unit: str) -> str:
    """Lines over evenly spaced x categories (batch sizes or sequence lengths), one per backend; the
    y axis is logarithmic when the values span more than 20x."""
    left, right, top, bottom = 70, 200, 34, 46
    width, height = 760, 300
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for _, vs, _ in series for v in vs if v is not None and v > 0]
    lo, hi = (min(values), max(values)) if values else (1.0, 1.0)
    log = hi / lo > 20
    if log:
        y_lo, y_hi = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
        ticks = [10 ** k for k in range(int(math.log10(y_lo)), int(math.log10(y_hi)) + 1)]

        def ypos(v: float) -> float:
            return top + plot_h * (1 - (math.log10(v) - math.log10(y_lo)) / max(math.log10(y_hi) - math.log10(y_lo), 1e-12))
    else:
        ticks = _nice_ticks(hi)
        y_hi = ticks[-1]

        def ypos(v: float) -> float:
            return top + plot_h * (1 - v / y_hi)

    def xpos(i: int) -> float:
        return left + (plot_w * (i + 0.5) / len(xs))

    out = [f'<svg class="plot" data-plot="{_e(plot)}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}" style="{_FONT}">',
           f'<text x="{left}" y="18" font-weight="600">{_e(title)}</text>']
    for t in ticks:
        y = ypos(t) if (t > 0 or not log) else top + plot_h
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{_fmt(t)}</text>')
    out.append(f'<text x="14" y="{top + plot_h / 2:.1f}" transform="rotate(-90 14 {top + plot_h / 2:.1f})" text-anchor="middle" fill="#555">'
               f'{_e(unit)}{" (log)" if log else ""}</text>')
    for i, x in enumerate(xs):
        out.append(f'<text x="{xpos(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="#555">{x}</text>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 34}" text-anchor="middle" fill="#555">{_e(x_label)}</text>')
    for k, (label, vs, color) in enumerate(series):
        pts = [(xpos(i), ypos(v), v, xs[i]) for i, v in enumerate(vs) if v is not None and v > 0]
        if not pts:
            continue
        coords = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in pts)
        out.append(f'<polyline class="series" data-backend="{_e(label)}" points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        for px, py, v, x in pts:
            out.append(f'<circle class="point" data-backend="{_e(label)}" data-x="{x}" data-value="{v:.6g}" cx="{px:.1f}" cy="{py:.1f}" r="3.5" '
                       f'fill="{color}"><title>{_e(label)} at {x}: {_fmt(v)} {_e(unit)}</title></circle>')
        ly = top + 8 + k * 18
        out.append(f'<line x1="{left + plot_w + 16}" y1="{ly}" x2="{left + plot_w + 36}" y2="{ly}" stroke="{color}" stroke-width="3"/>')
        out.append(f'<text x="{left + plot_w + 42}" y="{ly + 4}">{_e(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _colors(result: BenchResult) -> dict[str, str]:
    return {b.label: PALETTE[i % len(PALETTE)] for i, b in enumerate(result.backends)}


def _latency_plots(result: BenchResult, colors: dict[str, str]) -> list[str]:
    plots = []
    for shape in result.shapes:
        bars = []
        for b in result.backends:
            m = result.measurement(b.label, shape)
            if m is not None and m.latency is not None:
                bars.append((b.label, m.latency.median_ms, m.latency.p99_ms, colors[b.label]))
        if bars:
            plots.append(bar_chart("latency", f"Latency per backend, {shape.label}: median bar, p99 whisker", bars, "ms", shape=shape.label))
    return plots


def _speedup_plots(result: BenchResult, colors: dict[str, str]) -> list[str]:
    plots = []
    for shape in result.shapes:
        bars = [(b.label, s, None, colors[b.label]) for b in result.backends if (s := result.speedup(b.label, shape)) is not None]
        if bars:
            plots.append(bar_chart("speedup", f"Speedup against eager fp32, {shape.label} (median latency ratio)", bars, "x eager",
                                   reference=1.0, reference_label="eager = 1", shape=shape.label))
    return plots


def _sweep_plots(result: BenchResult, colors: dict[str, str]) -> list[str]:
    """Latency against batch (one plot per sequence length) and against sequence length (one per batch)."""
    batches = sorted({s.batch for s in result.shapes})
    seqs = sorted({s.seq for s in result.shapes if s.seq is not None})
    ok = [b for b in result.backends if b.status == "ok"]

    def median(label: str, shape: Shape) -> float | None:
        m = result.measurement(label, shape)
        return m.latency.median_ms if m is not None and m.latency is not None else None

    plots = []
    if len(batches) > 1:
        for seq, image in dict.fromkeys((s.seq, s.image) for s in result.shapes):
            series = [(b.label, [median(b.label, Shape(x, seq, image)) for x in batches], colors[b.label]) for b in ok]
            where = (f", sequence {seq}" if seq is not None else "") + (f", image {image[0]}x{image[1]}" if image else "")
            plots.append(line_chart("latency-vs-batch", f"Median latency against batch size{where}", "batch size", batches, series, "ms"))
    if len(seqs) > 1:
        for batch in batches:
            series = [(b.label, [median(b.label, Shape(batch, x)) for x in seqs], colors[b.label]) for b in ok]
            plots.append(line_chart("latency-vs-seq", f"Median latency against sequence length, batch {batch}", "sequence length", seqs, series, "ms"))
    return plots


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f5f5f5}td.l,th.l{text-align:left}
tr.skipped td{color:#8a6d00}tr.failed td{color:#b00020}td.bad{color:#b00020;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:16px}.plots svg{border:1px solid #eee;background:#fff}
ul{font-size:13px}code{background:#f5f5f5;padding:1px 4px}
"""


def render_html(result: BenchResult, *, title: str | None = None, preamble: str = "") -> str:
    """The whole report as one HTML document; `preamble` (trusted HTML) goes after the header,
    for reports that wrap a benchmark (fxbench optimize puts its summary and passes there)."""
    title = title or f"fxbench bench: {result.model.get('name')}"
    colors = _colors(result)
    cols = rows.table_columns(result)
    left_cols = set(rows.LEFT)
    head = "".join(f'<th class="{"l" if c in left_cols else ""}">{_e(c)}</th>' for c in cols)
    body = []
    for row in rows.bench_rows(result):
        cells = row.cells()
        if not row.ok:
            body.append(f'<tr class="{_e(row.status)}"><td class="l">{_e(cells["backend"])}</td><td class="l">{_e(cells["shape"])}</td>'
                        f'<td class="l" colspan="{len(cols) - 2}">{_e(cells["status"])}</td></tr>')
            continue
        tds = []
        for c in cols:
            value = cells.get(c, "-")
            cls = "l" if c in left_cols else ""
            if c == "status" and value != "ok":
                cls += " bad"
            tds.append(f'<td class="{cls.strip()}">{_e(value)}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    sections = [
        ("Latency", _latency_plots(result, colors)),
        ("Speedup", _speedup_plots(result, colors)),
        ("Sweep", _sweep_plots(result, colors)),
    ]
    plot_html = "".join(f"<h2>{_e(name)}</h2><div class='plots'>{''.join(p)}</div>" for name, p in sections if p)
    env = "".join(f"<li>{_e(line)}</li>" for line in rows.environment_lines(result.environment))
    header = "".join(f"<li>{_e(line)}</li>" for line in rows.header_lines(result))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
{preamble}
<ul>{header}</ul>
<table id="results"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>
<p style="font-size:12px;color:#555">{_e(rows.method_note(result))}</p>
{plot_html}
<h2>Backends</h2>
{html_table("backends", rows.RUN_BACKEND_COLUMNS, rows.run_backend_rows(result), right=("load s",))}
<h2>Environment</h2>
<ul>{env}</ul>
<p style="font-size:11px;color:#777">created {_e(result.created)} in {result.seconds:.1f} s</p>
</body></html>
"""


def html_table(table_id: str, columns: Sequence[str], cells: Iterable[rows.Cells], right: Iterable[str] = ()) -> str:
    """An HTML table of the rows' cells in `columns`; `right` columns right-aligned, the others left."""
    right = set(right)
    cls = {c: "" if c in right else "l" for c in columns}
    head = "".join(f'<th class="{cls[c]}">{_e(c)}</th>' for c in columns)
    body = "".join("<tr>" + "".join(f'<td class="{cls[c]}">{_e(row.get(c, ""))}</td>' for c in columns) + "</tr>" for row in cells)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_optimize_html(report: OptimizeReport) -> str:
    """report.html of `fxbench optimize`: its summary, search, passes and artifacts, then the benchmark's page."""
    assert report.benchmark is not None, "report.html is written with the benchmark"
    parts = ["<ul id='summary'>" + "".join(f"<li>{_e(line)}</li>" for line in rows.summary_lines(report)) + "</ul>"]
    if report.search:
        parts += ["<h2>Search</h2>", html_table("search", rows.SEARCH_COLUMNS, rows.search_rows(report.search))]
    parts += ["<h2>Passes</h2>", html_table("passes", rows.PASS_COLUMNS, rows.pass_rows(report.passes))]
    parts += ["<h2>Artifacts</h2>", html_table("artifacts", rows.ARTIFACT_COLUMNS, rows.artifact_rows(report.artifacts, report.export_failures))]
    parts += ["<h2>Benchmark</h2>"]
    return render_html(report.benchmark, title=f"fxbench optimize: {report.model.name}", preamble="\n".join(parts))
