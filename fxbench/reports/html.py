"""report.html: the tables and plots (latency distributions, speedups, sweeps, accuracy against
latency) as inline SVG drawn here, one self-contained file with no script: it opens offline and in
review tools that strip JavaScript, and fits an 800 px window (plots scale down, prose columns wrap).

The plots are drawn by hand rather than by matplotlib: a dozen shapes per plot, exact data-*
attributes the tests read, and no 30 MB plotting stack in a deployment tool's dependencies."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from fxbench.reports import rows
from fxbench.reports.records import ExportReport, OptimizeReport
from fxbench.runtime.bench import BenchResult, Measurement, Shape

__all__ = ["PALETTE", "Box", "bar_chart", "box_plot", "html_table", "line_chart", "render_export_html", "render_html",
           "render_optimize_html", "scatter_plot"]

# Tableau 10: distinguishable, and each backend keeps its color in every plot.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
_FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:12px;max-width:100%;height:auto"


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


# Plots with one row per backend: labels in the left margin, values along x, 760 px wide.
_ROW_LEFT, _ROW_RIGHT, _ROW_WIDTH = 230, 70, 760


def _row_axes(plot: str, title: str, unit: str, shape: str, hi: float, n_rows: int, row_h: int, top: int) -> tuple[list[str], float, float]:
    """The opening of a one-row-per-backend plot: the <svg> element, its title, vertical grid lines
    at round ticks up to `hi` with their labels and the unit below; (its lines, pixels per unit,
    the x axis' y)."""
    plot_w = _ROW_WIDTH - _ROW_LEFT - _ROW_RIGHT
    height = top + row_h * n_rows + 36
    ticks = _nice_ticks(hi)
    scale = plot_w / ticks[-1]
    out = [f'<svg class="plot" data-plot="{_e(plot)}" data-shape="{_e(shape)}" xmlns="http://www.w3.org/2000/svg" '
           f'width="{_ROW_WIDTH}" height="{height}" viewBox="0 0 {_ROW_WIDTH} {height}" role="img" aria-label="{_e(title)}" style="{_FONT}">',
           f'<text x="{_ROW_LEFT}" y="18" font-weight="600">{_e(title)}</text>']
    axis_y = top + row_h * n_rows
    for t in ticks:
        x = _ROW_LEFT + t * scale
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{axis_y}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle" fill="#555">{_fmt(t)}</text>')
    out.append(f'<text x="{_ROW_LEFT + plot_w / 2:.1f}" y="{axis_y + 30}" text-anchor="middle" fill="#555">{_e(unit)}</text>')
    return out, scale, axis_y


def bar_chart(plot: str, title: str, rows_: Sequence[tuple[str, float, float | None, str]], unit: str, *,
              reference: float | None = None, reference_label: str = "", shape: str = "") -> str:
    """Horizontal bars, one per (label, value, whisker end or None, color); an optional vertical
    reference line (speedup 1.0 = eager). Bars carry data-* attributes and <title> tooltips."""
    row_h = 24
    top = 50 if reference is not None else 34  # room for the reference line's label under the title
    hi = max([v for _, v, _, _ in rows_] + [w for _, _, w, _ in rows_ if w is not None] + [reference or 0] + [1e-12])
    out, scale, axis_y = _row_axes(plot, title, unit, shape, hi, len(rows_), row_h, top)
    left = _ROW_LEFT
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


@dataclass(frozen=True)
class Box:
    """One backend's latency distribution: quartiles, Tukey whiskers (the furthest runs within 1.5
    IQR of the box), the median's 95% interval (the notch) and the runs beyond the whiskers."""

    q1: float
    median: float
    q3: float
    low: float
    high: float
    ci: float
    outliers: tuple[float, ...]
    count: int

    @classmethod
    def of(cls, m: Measurement) -> Box:
        lat = m.latency
        assert lat is not None
        if m.samples_ms:  # the box is the tables' numbers; the runs give the whiskers and the dots
            x = np.asarray(m.samples_ms, dtype=np.float64)
            q1, med, q3 = lat.p25_ms, lat.median_ms, lat.p75_ms
            iqr = q3 - q1
            inside = x[(x >= q1 - 1.5 * iqr) & (x <= q3 + 1.5 * iqr)]
            low, high = float(inside.min()), float(inside.max())
            beyond = np.sort(x[(x < low) | (x > high)])
            if beyond.size > 40:  # enough to show the tail; every run is in report.json
                beyond = beyond[np.linspace(0, beyond.size - 1, 40).astype(int)]
            return cls(q1, med, q3, min(low, q1), max(high, q3), lat.median_ci_ms, tuple(float(v) for v in beyond), int(x.size))
        return cls(lat.p25_ms, lat.median_ms, lat.p75_ms, lat.min_ms, lat.max_ms, lat.median_ci_ms, (), lat.count)


def box_plot(plot: str, title: str, rows_: Sequence[tuple[str, Box, str]], unit: str, *, shape: str = "") -> str:
    """Horizontal box plots, one per (label, box, color): whiskers, the box from q1 to q3, a dark
    band for the median's 95% interval (two bands that do not overlap: a difference beyond the
    noise), the median as a line, and the runs beyond the whiskers as dots."""
    row_h, top, left = 28, 34, _ROW_LEFT
    hi = max([b.high for _, b, _ in rows_] + [max(b.outliers) if b.outliers else 0 for _, b, _ in rows_] + [1e-12])
    out, scale, _ = _row_axes(plot, title, unit, shape, hi, len(rows_), row_h, top)
    for i, (label, b, color) in enumerate(rows_):
        y, cy = top + i * row_h, top + i * row_h + row_h / 2
        X = lambda v: left + v * scale  # noqa: E731
        tip = (f"{label}: median {_fmt(b.median)} {unit} (95% interval ±{_fmt(b.ci)}), quartiles {_fmt(b.q1)}-{_fmt(b.q3)}, "
               f"whiskers {_fmt(b.low)}-{_fmt(b.high)}, {b.count} runs")
        out.append(f'<text x="{left - 8}" y="{cy + 4:.1f}" text-anchor="end">{_e(label)}</text>')
        out.append(f'<line class="whisker" x1="{X(b.low):.1f}" y1="{cy:.1f}" x2="{X(b.high):.1f}" y2="{cy:.1f}" stroke="#333"/>')
        for v in (b.low, b.high):
            out.append(f'<line x1="{X(v):.1f}" y1="{cy - 5:.1f}" x2="{X(v):.1f}" y2="{cy + 5:.1f}" stroke="#333"/>')
        out.append(f'<rect class="box {plot}" data-backend="{_e(label)}" data-median="{b.median:.6g}" x="{X(b.q1):.1f}" y="{y + 5}" '
                   f'width="{max((b.q3 - b.q1) * scale, 1.0):.1f}" height="{row_h - 10}" fill="{color}" fill-opacity="0.55" stroke="{color}">'
                   f'<title>{_e(tip)}</title></rect>')
        lo_ci, hi_ci = max(b.q1, b.median - b.ci), min(b.q3, b.median + b.ci)
        out.append(f'<rect class="notch" x="{X(lo_ci):.1f}" y="{y + 9}" width="{max((hi_ci - lo_ci) * scale, 1.0):.1f}" height="{row_h - 18}" '
                   f'fill="{color}"/>')
        out.append(f'<line class="median" data-backend="{_e(label)}" data-value="{b.median:.6g}" x1="{X(b.median):.1f}" y1="{y + 3}" '
                   f'x2="{X(b.median):.1f}" y2="{y + row_h - 3}" stroke="#111" stroke-width="2"/>')
        for v in b.outliers:
            out.append(f'<circle class="outlier" cx="{X(v):.1f}" cy="{cy:.1f}" r="2" fill="none" stroke="#555"/>')
        out.append(f'<text x="{X(max([b.high, *b.outliers])) + 6:.1f}" y="{cy + 4:.1f}" fill="#333">{_fmt(b.median)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def scatter_plot(plot: str, title: str, points: Sequence[tuple[str, float, float, str]], x_label: str, y_label: str, *,
                 budget: float | None = None) -> str:
    """Points (label, x, y, color), each labelled; a dashed horizontal line at `budget` (the
    accuracy budget: points under it are not eligible)."""
    left, right, top, bottom = 80, 40, 34, 46
    width, height = 760, 340
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [x for _, x, _, _ in points] or [1.0]
    ys = [y for _, _, y, _ in points] + ([budget] if budget is not None else [])
    ticks = _nice_ticks(max(xs) * 1.1)
    y_lo, y_hi = min(ys), max(max(ys), 1.0)
    pad = (y_hi - y_lo) * 0.1 or 1e-3
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def X(v: float) -> float:
        return left + plot_w * v / ticks[-1]

    def Y(v: float) -> float:
        return top + plot_h * (1 - (v - y_lo) / (y_hi - y_lo))

    out = [f'<svg class="plot" data-plot="{_e(plot)}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}" style="{_FONT}">',
           f'<text x="{left}" y="18" font-weight="600">{_e(title)}</text>']
    for t in ticks:
        out.append(f'<line x1="{X(t):.1f}" y1="{top}" x2="{X(t):.1f}" y2="{top + plot_h}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{X(t):.1f}" y="{top + plot_h + 14}" text-anchor="middle" fill="#555">{_fmt(t)}</text>')
    for k in range(5):
        v = y_lo + (y_hi - y_lo) * k / 4
        out.append(f'<line x1="{left}" y1="{Y(v):.1f}" x2="{left + plot_w}" y2="{Y(v):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{Y(v) + 4:.1f}" text-anchor="end" fill="#555">{v:.4f}</text>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 34}" text-anchor="middle" fill="#555">{_e(x_label)}</text>')
    out.append(f'<text x="14" y="{top + plot_h / 2:.1f}" transform="rotate(-90 14 {top + plot_h / 2:.1f})" text-anchor="middle" '
               f'fill="#555">{_e(y_label)}</text>')
    if budget is not None:
        out.append(f'<line class="budget" x1="{left}" y1="{Y(budget):.1f}" x2="{left + plot_w}" y2="{Y(budget):.1f}" stroke="#b00020" '
                   f'stroke-dasharray="5 3"/>')
        out.append(f'<text x="{left + plot_w - 4}" y="{Y(budget) - 4:.1f}" text-anchor="end" fill="#b00020">budget {budget:g}</text>')
    for label, x, y, color in points:
        out.append(f'<circle class="point" data-backend="{_e(label)}" data-x="{x:.6g}" data-value="{y:.6g}" cx="{X(x):.1f}" cy="{Y(y):.1f}" '
                   f'r="5" fill="{color}"><title>{_e(label)}: {_fmt(x)} ms, cosine {y:.6f}</title></circle>')
        out.append(f'<text x="{X(x) + 8:.1f}" y="{Y(y) - 6:.1f}" fill="#333">{_e(label)}</text>')
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
        boxes = []
        for b in result.backends:
            m = result.measurement(b.label, shape)
            if m is not None and m.latency is not None:
                boxes.append((b.label, Box.of(m), colors[b.label]))
        if boxes:
            plots.append(box_plot("latency", f"Latency per run, {shape.label}: quartile box, median's 95% band, Tukey whiskers",
                                  boxes, "ms", shape=shape.label))
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
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:16px;color:#222;max-width:1400px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}h3{font-size:14px}
table{border-collapse:collapse;font-size:12px;margin:8px 0;max-width:100%}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f5f5f5;white-space:normal}td.l,th.l{text-align:left}td.l{white-space:normal;overflow-wrap:anywhere}td.t{text-align:left;white-space:normal;min-width:6em}
tr.skipped td{color:#8a6d00}tr.failed td{color:#b00020}td.bad{color:#b00020;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:16px}.plots svg{border:1px solid #eee;background:#fff}
ul{font-size:13px;padding-left:20px}li{overflow-wrap:anywhere}code{background:#f5f5f5;padding:1px 4px}
p.note{font-size:12px;color:#555;max-width:760px}p.warn{font-size:13px;color:#8a4b00;max-width:760px}
details{margin:8px 0}summary{cursor:pointer;font-size:13px}
"""

# The main table keeps to what fits 800 px; the rest of each measurement is in the details table.
_MAIN = ("backend", "shape", "median ms", "p95 ms", "spread", "speedup", "cosine", "agree", "status")
_DETAIL = ("backend", "shape", "runs", "p90 ms", "p99 ms", "mean ms", "std ms", "samples/s", "mem MiB", "max abs")
_TEXT = {"status", "note", "op changes", "checks", "what", "I/O", "summary", "options", "passes", "error"}


def _bench_table(result: BenchResult, table_id: str, columns: Sequence[str]) -> str:
    if result.device == "cuda" and table_id == "results":
        columns = (*columns[:3], "device ms", *columns[3:])
    left_cols = set(rows.LEFT) | {"output", "file"}
    head = "".join(f'<th class="{"l" if c in left_cols else ""}">{_e(c)}</th>' for c in columns)
    body = []
    for row in rows.bench_rows(result):
        cells = row.cells()
        if not row.ok:
            if table_id != "results":
                continue
            body.append(f'<tr class="{_e(row.status)}"><td class="l">{_e(cells["backend"])}</td><td class="l">{_e(cells["shape"])}</td>'
                        f'<td class="t" colspan="{len(columns) - 2}">{_e(cells["status"])}</td></tr>')
            continue
        tds = []
        for c in columns:
            value = cells.get(c, "-")
            cls = "t" if c in _TEXT else ("l" if c in left_cols else "")
            if c == "status" and value != "ok":
                cls += " bad"
            tds.append(f'<td class="{cls.strip()}">{_e(value)}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def benchmark_section(result: BenchResult, *, extra_plots: Sequence[tuple[str, list[str]]] = ()) -> str:
    """The benchmark's part of a page: header, tables, noise warning, plots, backends, per-output parity."""
    colors = _colors(result)
    sections = [
        *extra_plots,
        ("Latency distributions", _latency_plots(result, colors)),
        ("Speedup", _speedup_plots(result, colors)),
        ("Sweep", _sweep_plots(result, colors)),
    ]
    plot_html = "".join(f"<h2>{_e(name)}</h2><div class='plots'>{''.join(p)}</div>" for name, p in sections if p)
    header = "".join(f"<li>{_e(line)}</li>" for line in rows.header_lines(result))
    warn = "".join(f'<p class="warn">{_e(line)}</p>' for line in rows.noise_lines(result))
    outputs = rows.output_parity_rows(result)
    return f"""<ul>{header}</ul>
{_bench_table(result, "results", _MAIN)}
{warn}
<p class="note">{_e(rows.method_note(result))}</p>
<h3>Every statistic</h3>
{_bench_table(result, "details", _DETAIL)}
{plot_html}
<h2>Parity per output</h2>
{html_table("outputs", ("backend", "shape", "output", "cosine", "max abs", "max rel", "finite"), outputs, right=("cosine", "max abs", "max rel"))}
<h2>Backends</h2>
{html_table("backends", rows.RUN_BACKEND_COLUMNS, rows.run_backend_rows(result), right=("load s",))}
"""


def _page(title: str, body: str, environment: dict, created: str, seconds: float | None) -> str:
    env = "".join(f"<li>{_e(line)}</li>" for line in rows.environment_lines(environment))
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
{body}
<h2>Environment</h2>
<ul>{env}</ul>
<p style="font-size:11px;color:#777">created {_e(created)}{took}</p>
</body></html>
"""


def render_html(result: BenchResult, *, title: str | None = None, preamble: str = "") -> str:
    """The whole report as one HTML document; `preamble` (trusted HTML) goes after the header,
    for reports that wrap a benchmark."""
    title = title or f"fxbench bench: {result.model.get('name')}"
    return _page(title, preamble + benchmark_section(result), result.environment, result.created, result.seconds)


def html_table(table_id: str, columns: Sequence[str], cells: Iterable[rows.Cells], right: Iterable[str] = ()) -> str:
    """An HTML table of the rows' cells in `columns`; `right` columns right-aligned, prose columns
    wrapped, the others left."""
    right = set(right)
    cells = list(cells)
    columns = [c for c in columns if any(row.get(c, "") != "" for row in cells)] or list(columns)  # no empty column takes width
    cls = {c: "" if c in right else ("t" if c in _TEXT else "l") for c in columns}
    head = "".join(f'<th class="{"" if c in right else "l"}">{_e(c)}</th>' for c in columns)
    body = "".join("<tr>" + "".join(f'<td class="{cls[c]}">{_e(row.get(c, ""))}</td>' for c in columns) + "</tr>" for row in cells)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _accuracy_plot(report: OptimizeReport) -> list[str]:
    """--search: every candidate's artifacts, median latency (geometric mean over the shapes) against
    the worst cosine over the benchmark's shapes (the winner's export checks are in its artifact table)."""
    bench = report.benchmark
    if not report.search or bench is None:
        return []
    colors = _colors(bench)
    parity = {}
    for b in bench.backends:
        ms = [m for m in bench.measurements if m.backend == b.label and m.latency is not None and m.parity is not None]
        if b.artifact and ms:
            median = math.exp(sum(math.log(m.latency.median_ms) for m in ms) / len(ms))  # type: ignore[union-attr]
            parity[b.label] = (median, min(m.parity.cosine for m in ms))  # type: ignore[union-attr]
    points = [(label, x, y, colors[label]) for label, (x, y) in parity.items()]
    if not points:
        return []
    budget = report.best.min_cosine if report.best else None
    return [scatter_plot("accuracy-latency", "Accuracy against latency: every candidate's artifacts", points, "median latency, ms",
                         "worst cosine vs eager fp32", budget=budget)]


def _optimize_parts(report: OptimizeReport) -> list[str]:
    parts = ["<ul id='summary'>" + "".join(f"<li>{_e(line)}</li>" for line in rows.summary_lines(report)) + "</ul>"]
    if report.search:
        parts += ["<h2>Search</h2>", html_table("search", rows.SEARCH_COLUMNS, rows.search_rows(report.search),
                                                 right=("median ms", "speedup", "worst cosine"))]
    parts += ["<h2>Passes</h2>", html_table("passes", rows.PASS_COLUMNS, rows.pass_rows(report.passes),
                                            right=("nodes", "cosine", "max abs err", "s"))]
    parts += ["<h3>Op changes per pass</h3>", html_table("op-diff", ("pass", "status", "op", "change"), rows.op_diff_rows(report.passes),
                                                         right=("change",))]
    parts += ["<h3>Ops before and after the pipeline</h3>", html_table("op-histogram", ("op", "before", "after", "change"),
                                                                      rows.op_histogram_rows(report), right=("before", "after", "change"))]
    parts += _artifact_parts(report.artifacts, report.export_failures)
    return parts


def _artifact_parts(artifacts: Sequence, failures: Sequence) -> list[str]:
    return ["<h2>Artifacts</h2>", html_table("artifacts", rows.ARTIFACT_COLUMNS, rows.artifact_rows(artifacts, failures),
                                             right=("cosine", "max rel err", "MiB", "export s")),
            "<h3>Parity per output at each export check</h3>",
            html_table("artifact-outputs", ("file", "check", "output", "cosine", "max abs", "max rel"), rows.artifact_output_rows(artifacts),
                       right=("cosine", "max abs", "max rel"))]


def render_optimize_html(report: OptimizeReport) -> str:
    """report.html of `fxbench optimize`: its summary, search, passes (and their op diffs) and
    artifacts, then the benchmark (when there is one) with the accuracy-against-latency plot of --search."""
    parts = _optimize_parts(report)
    title = f"fxbench optimize: {report.model.name}"
    if report.benchmark is None:
        parts.append("<h2>Benchmark</h2><p class='note'>not run (--no-bench): fxbench bench DIR times every artifact.</p>")
        return _page(title, "\n".join(parts), dict(report.environment), report.header.created, None)
    parts.append("<h2>Benchmark</h2>")
    scatter = _accuracy_plot(report)
    body = "\n".join(parts) + benchmark_section(report.benchmark, extra_plots=[("Accuracy and latency", scatter)] if scatter else [])
    return _page(title, body, dict(report.environment), report.header.created, report.benchmark.seconds)


def render_export_html(report: ExportReport) -> str:
    """report.html of `fxbench export` into a new folder: what was exported and each artifact's checks."""
    model = report.model
    summary = [f"model: {model.model_id or model.source} ({model.architecture}, {model.task}, {model.parameters / 1e6:.1f}M parameters)",
               f"exported from: {report.source.get('program') or 'the model, captured without passes'}"]
    parts = ["<ul id='summary'>" + "".join(f"<li>{_e(line)}</li>" for line in summary) + "</ul>",
             *_artifact_parts(report.artifacts, report.export_failures)]
    return _page(f"fxbench export: {model.name}", "\n".join(parts), dict(report.environment), report.header.created, None)
