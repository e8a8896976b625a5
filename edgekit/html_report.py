"""report.html: one self-contained page (inline CSS, charts as base64 PNG, no script, no network).

``render_html(report, errors)`` takes the report dict (``edgekit.report.build_report``) and, per
report key, the flat array of |artifact - reference| errors (``edgekit.report.abs_errors``) for the
histograms. matplotlib is imported only when a page is rendered (Agg backend, no display needed).
"""
from __future__ import annotations

import base64
import io
import math
from html import escape
from pathlib import Path

import numpy as np

from edgekit.report import _fmt, has_task_metrics, reproduce_commands, task_cell

COLORS = {"pass": "#1a7f37", "fail": "#cf222e", "error": "#9a6700"}
INK, MUTED, GRID = "#1f2328", "#656d76", "#d0d7de"

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f6f8fa;color:#1f2328;font:15px/1.5 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:28px 24px 48px}
header{display:flex;align-items:center;gap:18px;flex-wrap:wrap;margin-bottom:6px}
h1{font-size:26px;margin:0;font-weight:600}
h2{font-size:18px;margin:34px 0 10px;font-weight:600}
.sub{color:#656d76;margin:0 0 18px}
.badge{font-weight:700;letter-spacing:.04em;color:#fff;border-radius:999px;padding:4px 14px;font-size:14px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0 4px}
.card{background:#fff;border:1px solid #d0d7de;border-radius:10px;padding:10px 18px;min-width:130px}
.card b{display:block;font-size:24px;line-height:1.2}
.card span{color:#656d76;font-size:13px}
.panel{background:#fff;border:1px solid #d0d7de;border-radius:10px;padding:14px 16px;overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:6px 8px;text-align:right;border-bottom:1px solid #eaeef2;white-space:nowrap;font-size:14px}
th{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#656d76;font-weight:600}
th:first-child,td:first-child,th:nth-child(2),td:nth-child(2),th:nth-child(3),td:nth-child(3){text-align:left}
tr:last-child td{border-bottom:none}
tr.fail td{background:#fff5f5} tr.error td{background:#fff8e6}
.pill{display:inline-block;color:#fff;border-radius:999px;padding:1px 10px;font-size:12px;font-weight:600}
td.bad{color:#cf222e;font-weight:600}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:14px}
.charts img,.panel img{width:100%;height:auto;display:block}
ul.problems{margin:0;padding-left:20px} ul.problems li{margin:4px 0}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
pre{background:#1f2328;color:#e6edf3;border-radius:10px;padding:14px 16px;overflow-x:auto;margin:0}
details summary{cursor:pointer;color:#656d76}
.note{color:#656d76;font-size:13px;margin:8px 0 0}
footer{color:#656d76;font-size:13px;margin-top:34px}
"""


def _num(v) -> float | None:
    """A report number (JSON-safe: "inf"/"nan" are strings) as a float, or None."""
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{b64}" alt="{escape(alt)}">'


def _style(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color(GRID)
    ax.tick_params(colors=MUTED, labelsize=9)
    ax.title.set_color(INK)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def size_latency_chart(targets: dict) -> str | None:
    """Horizontal bars: file size and host latency per target, coloured by status."""
    rows = [(k, t) for k, t in targets.items() if _num(t.get("size_bytes")) or _num(t.get("latency_ms"))]
    if not rows:
        return None
    plt = _plt()
    names = [k for k, _ in rows][::-1]
    colors = [COLORS.get(t["status"], MUTED) for _, t in rows][::-1]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 0.42 * len(rows) + 0.9))
    for ax, key, title, unit, scale in ((axes[0], "size_bytes", "File size", "kB", 1e-3),
                                         (axes[1], "latency_ms", "Latency per sample (host, 1 thread)", "ms", 1.0)):
        vals = [(_num(t.get(key)) or 0.0) * scale for _, t in rows][::-1]
        if unit == "kB" and max(vals) >= 1000:
            vals, unit = [v / 1000 for v in vals], "MB"
        bars = ax.barh(names, vals, color=colors, height=0.6)
        top = max(vals) or 1.0
        for bar, v in zip(bars, vals):
            ax.text(bar.get_width() + top * 0.02, bar.get_y() + bar.get_height() / 2,
                    f"{v:.3g} {unit}" if v else "-", va="center", fontsize=9, color=INK)
        ax.set_xlim(0, top * 1.28)
        ax.set_title(title, fontsize=11, loc="left")
        ax.xaxis.set_visible(False)
        _style(ax)
        ax.spines["bottom"].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def budget_search_chart(found: dict) -> str | None:
    """The budget search's trials: estimated parameter size against the budget's first metric, the
    bound dashed, trials that meet it in green, the chosen one starred."""
    trials = found.get("trials") or []
    metric = next(iter(found.get("budget") or {}), None)
    key = {"agreement": "agreement", "sqnr": "sqnr", "accuracy_drop": "accuracy_drop"}.get(metric)
    points = [(t["size_bytes"] / 1e3, _num(t["metrics"].get(key)), t["met"], t["keep_float"] == found.get("chosen"))
              for t in trials if _num(t["metrics"].get(key)) is not None]
    if not points:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for x, y, met, chosen in points:
        ax.scatter([x], [y], s=160 if chosen else 40, marker="*" if chosen else "o",
                   color=COLORS["pass"] if met else COLORS["fail"], zorder=3)
    ax.axhline(found["budget"][metric], color=MUTED, linestyle="--", linewidth=1)
    ax.set_xlabel("estimated parameter size (kB)", color=MUTED, fontsize=9)
    ax.set_ylabel(metric, color=MUTED, fontsize=9)
    ax.set_title(f"Budget search: {len(trials)} trial(s), chosen starred", fontsize=11, loc="left")
    _style(ax)
    fig.tight_layout()
    return _png(fig)


def _threshold(t: dict) -> float | None:
    """The smallest absolute max-error allowed over a target's outputs (tolerance x max|reference|)."""
    tol = _num((t.get("tolerance") or {}).get("max_abs_rel"))
    refs = [_num(o.get("ref_max_abs")) for o in (t.get("outputs") or {}).values()]
    refs = [r for r in refs if r]
    return tol * min(refs) if tol is not None and refs else None


def error_histograms(targets: dict, errors: dict[str, np.ndarray]) -> str | None:
    """Small multiples: the distribution of log10 |artifact - reference| per target, with its limit."""
    keys = [k for k in targets if k in errors and np.size(errors[k])]
    if not keys:
        return None
    plt = _plt()
    nrows = math.ceil(len(keys) / 3)
    fig, axes = plt.subplots(nrows, 3, figsize=(10.5, 2.7 * nrows), squeeze=False)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys):
        t, err = targets[key], np.asarray(errors[key], np.float64).ravel()
        err = err[np.isfinite(err)]
        nonzero = err[err > 0]
        exact = int((err == 0).sum())
        color = COLORS.get(t["status"], MUTED)
        limit = _threshold(t)
        if nonzero.size:
            logs = np.log10(nonzero)
            lo = min(logs.min(), math.log10(limit) if limit else logs.min())
            hi = max(logs.max(), math.log10(limit) if limit else logs.max())
            ax.hist(logs, bins=np.linspace(math.floor(lo), math.ceil(hi) + 1e-9, 30), color=color, alpha=0.85)
        if limit:
            ax.axvline(math.log10(limit), color=INK, linestyle="--", linewidth=1.2)
            ax.text(math.log10(limit), ax.get_ylim()[1] * 0.97, "limit ", fontsize=8, color=INK, va="top", ha="right")
        worst = err.max() if err.size else 0.0
        caption = f"max {worst:.2g}" + (f", {exact} of {err.size} exact" if exact else "")
        ax.set_title(f"{key} ({t['status']})", fontsize=10, loc="left", color=color, fontweight="bold")
        ax.set_title(caption, fontsize=8, loc="right", color=MUTED)
        ax.set_xlabel("log10 |error|", fontsize=9, color=MUTED)
        if not nonzero.size:
            ax.text(0.5, 0.5, "bit-exact", transform=ax.transAxes, ha="center", fontsize=11, color=color)
        _style(ax)
    fig.tight_layout()
    return _png(fig)


def _layers(entries: list) -> list[tuple[str, float]]:
    out = []
    for i, e in enumerate(entries):
        if isinstance(e, dict):
            name = str(e.get("layer") or e.get("name") or i)
            v = _num(e.get("sqnr_db"))
            if v is not None:
                out.append((name, v if math.isfinite(v) else 120.0))
    return out


def per_layer_chart(key: str, entries: list) -> str | None:
    """SQNR (dB) of each layer's output along the graph: where precision is first lost."""
    layers = _layers(entries)
    if not layers:
        return None
    plt = _plt()
    names, vals = [n for n, _ in layers], [v for _, v in layers]
    fig, ax = plt.subplots(figsize=(10.5, 3.4))
    x = np.arange(len(names))
    ax.plot(x, vals, color="#0969da", marker="o", markersize=4, linewidth=1.6)
    ax.fill_between(x, vals, min(vals) - 3, color="#0969da", alpha=0.08)
    worst = int(np.argmin(vals))
    ax.annotate(f"lowest: {names[worst]} {vals[worst]:.1f} dB", (worst, vals[worst]), xytext=(-10, -16), ha="right",
                textcoords="offset points", fontsize=8, color=COLORS["fail"])
    ax.scatter([worst], [vals[worst]], color=COLORS["fail"], zorder=3, s=30)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("SQNR dB", fontsize=9, color=MUTED)
    ax.set_title(f"{key}: per-layer SQNR against its quantized reference (higher is better)", fontsize=10, loc="left")
    ax.grid(axis="y", color=GRID, linewidth=0.6)
    _style(ax)
    fig.tight_layout()
    return _png(fig)


def _steps(t: dict) -> float | None:
    m = t.get("metrics") or {}
    for k in ("max_steps", "steps_max", "quant_steps"):
        if m.get(k) is not None:
            return _num(m[k])
    steps = [_num(o.get("max_steps")) for o in (t.get("outputs") or {}).values() if o.get("max_steps") is not None]
    return max(steps) if steps else None


def _table(targets: dict) -> str:
    with_steps = any(_steps(t) is not None for t in targets.values())
    with_task = has_task_metrics(t.get("metrics") for t in targets.values())
    head = ["target", "precision", "status", "size", "latency ms", "max abs err", "max abs / limit",
            "cosine min", "SQNR dB", "top-1 agree"] + (["error (q-steps)"] if with_steps else []) + (["task metrics"] if with_task else [])
    rows = []
    for key, t in targets.items():
        m, tol = t.get("metrics") or {}, t.get("tolerance") or {}
        rel, lim = _num(m.get("max_abs_rel")), _num(tol.get("max_abs_rel"))
        ratio = f"{rel / lim:.2g}" if rel is not None and lim else "-"
        bad = t["status"] == "fail"
        failed_text = " ".join(t.get("failures") or [])
        cls = lambda word: ' class="bad"' if bad and word in failed_text else ""
        status = f'<span class="pill" style="background:{COLORS.get(t["status"], MUTED)}">{escape(t["status"])}</span>'
        cells = [escape(key), escape(t.get("precision", "")), status, _fmt(t.get("size_bytes"), "bytes"),
                 _fmt(t.get("latency_ms"), "ms")]
        cells = [f"<td>{c}</td>" for c in cells]
        cells += [f"<td{cls('max abs')}>{_fmt(m.get('max_abs'), 'e')}</td>", f"<td{cls('max abs')}>{ratio}</td>",
                  f"<td{cls('cosine')}>{_fmt(m.get('cosine_min'), 'cos')}</td>", f"<td>{_fmt(m.get('sqnr_db'), 'db')}</td>",
                  f"<td{cls('top-1')}>{_fmt(m.get('top1_agreement'), 'pct')}</td>"]
        if with_steps:
            s = _steps(t)
            cells.append(f"<td{cls('step')}>{'-' if s is None else f'{s:.2g}'}</td>")
        if with_task:
            task_bad = any(w in failed_text for w in ("per-pixel", "matched", "IoU", "score error", "class agreement", "relative error"))
            mark = ' class="bad"' if bad and task_bad else ""
            cells.append(f"<td{mark}>{escape(task_cell(m))}</td>")
        rows.append(f'<tr class="{escape(t["status"])}">{"".join(cells)}</tr>')
    ths = "".join(f"<th>{escape(h)}</th>" for h in head)
    return f'<table id="targets"><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _cost_table(targets: dict) -> str:
    """Compression cost (quantized artifacts): the deployed outputs against the FP32 original."""
    rows = [(k, out, c) for k, t in targets.items() for out, c in (t.get("compression") or {}).items()]
    if not rows:
        return ""
    with_task = has_task_metrics(c for *_, c in rows)
    head = ["target", "output", "SQNR dB vs FP32", "cosine min", "top-1 agree with FP32", "max abs"] + (
        ["task metrics vs FP32"] if with_task else [])
    body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(out)}</td><td>{_fmt(c.get('sqnr_db'), 'db')}</td>"
                   f"<td>{_fmt(c.get('cosine_min'), 'cos')}</td><td>{_fmt(c.get('top1_agreement'), 'pct')}</td>"
                   f"<td>{_fmt(c.get('max_abs'), 'e')}</td>" + (f"<td>{escape(task_cell(c))}</td>" if with_task else "")
                   + "</tr>" for k, out, c in rows)
    ths = "".join(f"<th>{escape(h)}</th>" for h in head)
    return f'<table id="compression"><thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table>'


def _problems(targets: dict) -> str:
    items = []
    for key, t in targets.items():
        if t.get("error"):
            e = t["error"]
            items.append(f"<li><b>{escape(key)}</b> error <code>{escape(str(e.get('code')))}</code>: "
                         f"{escape(str(e.get('message')))}. <i>Fix:</i> {escape(str(e.get('fix')))}</li>")
        items += [f"<li><b>{escape(key)}</b>: {escape(f)}</li>" for f in t.get("failures") or []]
    return f'<ul class="problems">{"".join(items)}</ul>' if items else ""


def render_html(report: dict, errors: dict[str, np.ndarray] | None = None) -> str:
    """The whole page as one string; ``errors`` maps report keys to flat |error| arrays (optional)."""
    model = report.get("model") or {}
    title = f"edgekit {report['kind']} report: {model.get('name', '?')}"
    parts = [_head(report, title), _fidelity(report["targets"]), _cost(report["targets"]), _search(report),
             _diverged(report["targets"]), _charts(report["targets"], errors or {}), _notes(report),
             _reproduce(report),
             "<footer>Written by edgekit. This page is self-contained: it loads nothing from the network.</footer>"]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>{escape(title)}</title><style>{CSS}</style></head>'
            f"<body><main>{''.join(parts)}</main></body></html>\n")


def _head(report: dict, title: str) -> str:
    """The title with the verdict badge, the data line and the summary cards."""
    s, targets = report["summary"], report["targets"]
    status, data, model = s["status"], report.get("data") or {}, report.get("model") or {}
    task = f' &middot; task <code>{escape(str(model["task"]))}</code>' if model.get("task") else ""
    head = (f'<header><h1>{escape(title)}</h1><span class="badge" style="background:{COLORS.get(status, MUTED)}">'
            f"{escape(status.upper())}</span></header>"
            f'<p class="sub">Created {escape(str(report.get("created")))} &middot; source <code>{escape(str(model.get("source")))}</code>'
            f'{task}'
            f' &middot; {escape(str(data.get("count")))} {escape(str(data.get("kind")))} samples from '
            f'<code>{escape(str(data.get("root")))}</code>'
            + (f' (sha256 <code>{escape(str(data["sha256"])[:16])}</code>)' if data.get("sha256") else "") + "</p>")
    sqnrs = [v for v in (_num((t.get("metrics") or {}).get("sqnr_db")) for t in targets.values()) if v is not None]
    cards = [(s["passed"], "passed"), (s["failed"], "failed"), (s["errors"], "errors"),
             ("exact" if sqnrs and math.isinf(min(sqnrs)) else (f"{min(sqnrs):.1f} dB" if sqnrs else "-"), "worst SQNR")]
    return head + '<div class="cards">' + "".join(
        f"<div class=\"card\"><b>{escape(str(v))}</b><span>{escape(l)}</span></div>" for v, l in cards) + "</div>"


def _fidelity(targets: dict) -> str:
    return ('<h2>Conversion fidelity</h2><div class="panel">' + _table(targets) +
            '<p class="note">Each artifact is compared with its PyTorch reference on the samples above: the FP32 '
            "model, or for a quantized file the float simulation of exactly its quantization (error also in output "
            "quantization steps). max abs / limit: the largest error as a fraction of what the tolerance allows "
            "(above 1 fails" + ("; a detection's boxes and scores are judged after IoU matching instead"
                                if any(t.get("detection") for t in targets.values()) else "") +
            "). Latency: median per sample on this host, 1 thread; not a device timing.</p></div>")


def _cost(targets: dict) -> str:
    cost = _cost_table(targets)
    if not cost:
        return ""
    return ('<h2>Compression cost</h2><div class="panel">' + cost +
            '<p class="note">How far the deployed file is from the FP32 original: a recipe question '
            "(calibration, layers kept in float), not a converter one.</p></div>")


def _search(report: dict) -> str:
    found = report.get("budget_search")
    chart = budget_search_chart(found) if found else None
    if not chart:
        return ""
    return (f'<h2>Budget search</h2><div class="panel">{_img(chart, "budget search trials")}'
            '<p class="note">Each point is one per-layer assignment (layers, or whole blocks, kept float), measured with the shared '
            "PT2E simulation on the held-out samples; the dashed line is the budget. Latency is measured on the "
            "exported files only (Size and latency), not per trial.</p></div>")


def _diverged(targets: dict) -> str:
    problems = _problems(targets)
    return '<h2>What diverged</h2><div class="panel">' + problems + "</div>" if problems else ""


def _charts(targets: dict, errors: dict) -> str:
    """Size and latency bars, the error histograms and the per-layer SQNR charts."""
    bars = size_latency_chart(targets)
    out = "<h2>Size and latency</h2>" + (f'<div class="panel">{_img(bars, "file size and latency per target")}</div>'
                                         if bars else "<p>-</p>")
    hist = error_histograms(targets, errors)
    out += "<h2>Error distribution</h2>"
    if hist:
        out += (f'<div class="panel">{_img(hist, "histogram of absolute errors per target")}'
                '<p class="note">|artifact output - reference output| over every sample and output element; '
                "the dashed line is the largest error the tolerance allows.</p></div>")
    else:
        out += '<p class="note">No per-sample errors were recorded for this report.</p>'
    layer_imgs = [(k, per_layer_chart(k, t["per_layer"])) for k, t in targets.items() if t.get("per_layer")]
    layer_imgs = [(k, b) for k, b in layer_imgs if b]
    if layer_imgs:
        out += "<h2>Per-layer SQNR</h2>" + "".join(f'<div class="panel">{_img(b, f"per-layer SQNR of {k}")}</div>'
                                                  for k, b in layer_imgs)
    return out


def _notes(report: dict) -> str:
    notes = [f"<li><b>{escape(k)}</b>: {escape(n)}</li>" for k, t in report["targets"].items() for n in t.get("notes") or []]
    notes += [f"<li>{escape(n)}</li>" for n in report.get("notes") or []]
    return f'<h2>Notes</h2><div class="panel"><ul class="problems">{"".join(notes)}</ul></div>' if notes else ""


def _reproduce(report: dict) -> str:
    """The commands that reproduce the report, and the environment's versions."""
    cmds = "\n".join(escape(c) for c in reproduce_commands(report))
    out = f"<h2>Reproduce</h2><pre id=\"reproduce\">{cmds}</pre>"
    env = report.get("environment") or {}
    if env:
        rows = "".join(f"<tr><td>{escape(str(k))}</td><td>{escape(str(v))}</td></tr>" for k, v in env.items())
        out += (f'<h2>Environment</h2><details class="panel"><summary>{len(env)} versions</summary>'
                f"<table>{rows}</table></details>")
    return out


def write_html(path: str | Path, report: dict, errors: dict[str, np.ndarray] | None = None) -> Path:
    """Render and write report.html atomically (temp file, then rename)."""
    from edgekit.bundle import write_text

    path = Path(path)
    write_text(path, render_html(report, errors))
    return path
