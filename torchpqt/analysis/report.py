"""``report.html`` and ``report.json`` of a sensitivity analysis.

The HTML is one self-contained file (inline CSS, plots as base64 PNG data URIs, no script, font or image
from elsewhere), so it opens offline and can be mailed. It holds: the summary and the suggested ignored
scope, the sensitivity ranking as a bar chart, range plots (a histogram of the FP32 activation at the
FakeQuantize input with the chosen range marked) for the most sensitive activation FakeQuantize modules,
the plan (every FakeQuantize: rule, levels, mode, granularity, range, figures), the export check when an
:class:`~torchpqt.exporters.openvino.ExportReport` is given, timings and versions.

Plots need matplotlib (``pip install 'torchpqt[report]'``); it is imported only here, when a report is written.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from torchpqt._json import jsonable
from torchpqt.errors import TorchPQTError

__all__ = ["render_html", "report_sections", "require_matplotlib", "write_html", "write_report"]

_MAX_BARS = 40


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise TorchPQTError("the report's plots need matplotlib, which is not installed; run "
                            "`pip install 'torchpqt[report]'` (or pass plots=False for the tables only)") from exc
    return Figure, FigureCanvasAgg


def require_matplotlib() -> None:
    """Raise the clear error now when matplotlib is missing (the CLI checks before quantizing).

    Raises:
        TorchPQTError: matplotlib is not installed.
    """
    _matplotlib()


def _png(fig, canvas_cls) -> str:
    canvas_cls(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _clip(value: float, floor: float = -20.0, ceil: float = 120.0) -> float:
    if math.isnan(value):
        return floor
    return min(max(value, floor), ceil)


def _ranking_plot(analysis, mpl) -> str:
    figure_cls, canvas_cls = mpl
    rows = analysis.ranking[:_MAX_BARS]
    fig = figure_cls(figsize=(9, 0.28 * len(rows) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    labels = [r.fake_quantize for r in rows][::-1]
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [_clip(r.single) for r in rows][::-1], height=0.4, color="#1f77b4",
            label="only this one quantized")
    ax.barh([i - 0.2 for i in y], [_clip(r.leave_one_out) for r in rows][::-1], height=0.4, color="#ff7f0e",
            label="all quantized but this one")
    if math.isfinite(analysis.quantized):
        ax.axvline(analysis.quantized, color="#d62728", linestyle="--", linewidth=1,
                   label=f"all quantized ({analysis.quantized:.1f})")
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=7)
    unit = "output SQNR, dB" if analysis.metric_name == "sqnr_db" else analysis.metric_name
    ax.set_xlabel(f"{unit} (higher is better; most sensitive at the top)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / max(len(rows), 1)), ncol=3)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig, canvas_cls)


def _range_plot(row, values, mpl) -> str:
    import numpy as np

    figure_cls, canvas_cls = mpl
    fig = figure_cls(figsize=(4.2, 2.6))
    ax = fig.add_subplot(1, 1, 1)
    v = values.double().numpy()
    lo, hi = min(float(v.min()), row.input_low), max(float(v.max()), row.input_high)
    if hi <= lo:
        hi = lo + 1.0
    ax.hist(v, bins=np.linspace(lo, hi, 120), color="#1f77b4", log=True)
    ax.axvspan(row.input_low, row.input_high, color="#2ca02c", alpha=0.12)
    for x in (row.input_low, row.input_high):
        ax.axvline(x, color="#2ca02c", linewidth=1.5)
    per = " (widest channel)" if row.granularity == "perchannel" else ""
    ax.set_title(f"{row.fake_quantize}\nrange [{row.input_low:.4g}, {row.input_high:.4g}]{per}, "
                 f"local SQNR {row.local_sqnr_db:.1f} dB", fontsize=7)
    ax.tick_params(labelsize=6)
    return _png(fig, canvas_cls)


def _export_check(report) -> dict[str, Any] | None:
    """The export check's key numbers (None when no report was given or it was not checked)."""
    if report is None:
        return None
    n_int8 = sum(p in ("u8", "i8") for _, _, p in report.op_precisions)
    return {"ir": str(report.path), "device": report.device, "simulated": report.simulated,
            "fake_quantize_checked": len(report.fake_quantize),
            "max_input_deviation_steps": report.max_input_deviation if report.fake_quantize else None,
            "level_flips": report.flips, "unexplained_flips": report.unexplained_flips,
            "output_deviation": report.output_deviation, "sim_sqnr_db": report.sim_sqnr_db,
            "max_diff_steps": report.max_diff_steps, "int8_sqnr_db": report.int8_sqnr_db,
            "top1_agreement": report.top1_agreement, "int8_share": report.int8_share,
            "int8_ops": f"{n_int8}/{len(report.op_precisions)}", "failures": report.failures(),
            "op_precisions": [list(p) for p in report.op_precisions]}


def report_sections(analysis, export_report=None) -> dict[str, Any]:
    """What report.json holds: the analysis (ranking, suggestion, timings, versions), the plan and the
    export check; JSON-ready (infinities as strings)."""
    out = {"analysis": analysis.to_dict(),
           "plan": [{k: r.to_dict()[k] for k in ("fake_quantize", "module", "scopes", "group", "rule", "levels",
                                                 "mode", "granularity", "input_low", "input_high")}
                    for r in sorted(analysis.ranking, key=lambda r: r.fake_quantize)],
           "config": {"name": "DefaultQuantization", "params": analysis.config.to_dict(full=True)}}
    check = _export_check(export_report)
    if check is not None:
        out["export_check"] = check
    return jsonable(out)


_CSS = """body{font-family:sans-serif;margin:1.2em 2em;color:#222;max-width:1300px}
h1{font-size:1.4em}h2{font-size:1.1em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;font-size:0.8em}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:8px}code,pre{background:#f6f6f6;padding:1px 4px}
.bad{color:#b00}"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if value == math.inf else "-inf" if value == -math.inf else f"{value:.4g}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class='n'>{_fmt(c)}</td>" if i in numeric else f"<td>{_fmt(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(analysis, export_report=None, *, histogram_layers: int = 6, plots: bool = True) -> str:
    """The report as one self-contained HTML page."""
    mpl = _matplotlib() if plots else None
    a = analysis
    unit = "dB output SQNR" if a.metric_name == "sqnr_db" else a.metric_name
    suggestion = a.suggest_ignored_scope(max_layers=1) if a.ranking else {}
    estimate = ""
    new = [s for s in suggestion.get("scope", []) if s not in a.config.ignored.scope]
    if new and a._evaluate is not None:
        estimate = f" (estimated {_fmt(a.estimate(suggestion['scope']))} {unit})"
    parts = [(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>torchpqt report</title>"
             f"<style>{_CSS}</style></head><body>"),
             "<h1>torchpqt quantization report</h1>",
             (f"<p>Fully quantized: <b>{_fmt(a.quantized)}</b> {unit}; every FakeQuantize off: {_fmt(a.fp32_baseline)} "
             f"({a.eval_samples} held-out samples, {len(a.ranking)} FakeQuantize, {a.passes} batched passes).</p>")]
    if a.ranking:
        worst = a.ranking[0]
        parts.append(f"<p>Most sensitive: <code>{html.escape(worst.fake_quantize)}</code> (alone: {_fmt(worst.single)}; "
                     f"all but it: {_fmt(worst.leave_one_out)}). Suggested <code>ignored</code> section{estimate}:</p>"
                     f"<pre>{html.escape(json.dumps(suggestion))}</pre>")
    if mpl is not None and a.ranking:
        parts.append("<h2>Sensitivity ranking</h2>")
        parts.append(f"<img id='ranking' alt='sensitivity ranking' src='{_ranking_plot(a, mpl)}'>")
        acts = [r for r in a.ranking if r.module in a.histograms][:histogram_layers]
        if acts:
            parts.append("<h2>Ranges of the most sensitive activations</h2><p>Histogram (log scale) of the FP32 "
                         "input of each FakeQuantize on the held-out set; green: the range it quantizes to.</p>"
                         "<div class='grid'>")
            parts += [f"<img class='range' alt='range of {html.escape(r.fake_quantize)}' "
                      f"src='{_range_plot(r, a.histograms[r.module], mpl)}'>" for r in acts]
            parts.append("</div>")
    parts.append("<h2>Sensitivity and plan</h2><p>In ranking order. <i>single</i>: only this FakeQuantize "
                 "quantized; <i>leave-one-out</i>: all but this one; <i>local</i>: its own output vs input (dB). "
                 "<i>scopes</i>: the ops it feeds (what <code>ignored.scope</code> needs to remove it).</p>")
    parts.append(_table(["#", "FakeQuantize", "scopes", "group", "rule", "levels", "mode", "granularity", "low",
                         "high", "single", "leave-one-out", "local dB"],
                        [[i + 1, r.fake_quantize, ", ".join(r.scopes), r.group, r.rule, r.levels, r.mode,
                          r.granularity, r.input_low, r.input_high, r.single, r.leave_one_out, r.local_sqnr_db]
                         for i, r in enumerate(a.ranking)], numeric={0, 5, 8, 9, 10, 11, 12}))
    check = _export_check(export_report)
    if check is not None:
        parts.append("<h2>Export check</h2>")
        keys = [k for k in check if k not in ("op_precisions", "failures")]
        parts.append(_table(["key", "value"], [[k, check[k]] for k in keys]))
        if check["failures"]:
            parts.append("<p class='bad'>" + "<br>".join(html.escape(f) for f in check["failures"]) + "</p>")
        if check["op_precisions"]:
            parts.append("<p>Runtime precision of the weighted ops in the int8 run:</p>")
            parts.append(_table(["op", "type", "precision"], check["op_precisions"]))
    parts.append("<h2>Timings</h2>" + _table(["phase", "seconds"], [[k, v] for k, v in a.timings_s.items()], {1}))
    parts.append("<h2>Versions</h2>" + _table(["package", "version"], [[k, v] for k, v in a.versions.items()]))
    parts.append("<h2>Config</h2><pre>" + html.escape(json.dumps(a.config.to_dict(), indent=1)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(analysis, directory, *, export_report=None, histogram_layers: int = 6, plots: bool = True) -> Path:
    """Write only ``report.html`` into ``directory`` (the CLI merges the JSON sections into its report.json)."""
    page = render_html(analysis, export_report, histogram_layers=histogram_layers, plots=plots)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.html").write_text(page, encoding="utf-8")
    return folder / "report.html"


def write_report(analysis, directory, *, export_report=None, histogram_layers: int = 6, plots: bool = True,
                 extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` of ``analysis`` into ``directory`` (created when missing).

    Args:
        analysis: what :func:`torchpqt.analyze` returned.
        export_report: the :class:`~torchpqt.exporters.openvino.ExportReport` of the exported IR, if any.
        histogram_layers: range plots for this many of the most sensitive activation FakeQuantize modules.
        plots: False writes the HTML without plots (no matplotlib needed).
        extra: more top-level sections for report.json.

    Returns:
        The paths of report.html and report.json.

    Raises:
        TorchPQTError: plots requested and matplotlib is not installed.
    """
    html_path = write_html(analysis, directory, export_report=export_report, histogram_layers=histogram_layers,
                           plots=plots)
    json_path = html_path.parent / "report.json"
    sections = {**report_sections(analysis, export_report), **jsonable(extra or {})}
    json_path.write_text(json.dumps(sections, indent=2) + "\n", encoding="utf-8")
    return html_path, json_path
