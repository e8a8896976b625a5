"""report.json and report.md: one row per target, every failure and error spelled out."""
from __future__ import annotations

import math
import shlex

import numpy as np

from edgekit.parity import NOT_RUNNABLE, UNSUPPORTED, ParityResult


def overall_status(results: list[ParityResult], optional: frozenset[str] = frozenset()) -> str:
    """pass when every result that could run passed (a bundle of device-only artifacts, checked
    statically, passes with nothing run: the summary counts say so). A not-runnable artifact is neither; an
    ``unsupported`` target fails the run only when the user named it (it is not in ``optional``,
    the targets ``--targets all`` chose by itself)."""
    judged = [r for r in results if r.status != NOT_RUNNABLE and not (r.status == UNSUPPORTED and r.target in optional)]
    if not results or (not judged and not any(r.status == NOT_RUNNABLE for r in results)):
        return "fail"  # nothing exported at all
    return "pass" if all(r.passed for r in judged) else "fail"


def report_key(result: ParityResult) -> str:
    """The key of a result in report["targets"]: the target name, plus ":precision" unless FP32."""
    return result.target if result.precision == "fp32" else f"{result.target}:{result.precision}"


def abs_errors(reference: list[np.ndarray], outputs: list[np.ndarray]) -> np.ndarray:
    """Every |output - reference| element of every output, flattened (float32): the histogram's data."""
    parts = [np.abs(np.asarray(o, np.float64) - np.asarray(r, np.float64)).ravel()
             for r, o in zip(reference, outputs) if np.shape(r) == np.shape(o)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def reproduce_commands(report: dict, bundle: str | None = None) -> list[str]:
    """The commands that reproduce a report: install, the command that made it, and a re-verify."""
    cmds = ["pip install -c constraints.txt 'edgekit[all]'", report["command"]]
    if report["kind"] == "export":
        words = shlex.split(report["command"])
        out = words[words.index("--out") + 1] if "--out" in words[:-1] else bundle or f"bundles/{report['model']['name']}"
        cmds.append(f"edgekit verify {shlex.quote(str(out))}")
    return cmds


def build_report(kind: str, model: dict, data: dict, results: list[ParityResult], env: dict,
                 command: str, created: str, notes: list[str] | None = None, optional: frozenset[str] = frozenset()) -> dict:
    return {
        "kind": kind,  # "export" or "verify"
        "created": created,
        "command": command,
        "model": model,
        "data": data,
        "summary": {
            "status": overall_status(results, optional),
            "passed": sum(r.status == "pass" for r in results),
            "failed": sum(r.status == "fail" for r in results),
            "errors": sum(r.status == "error" for r in results),
            "unsupported": sum(r.status == UNSUPPORTED for r in results),
            "not_runnable": sum(r.status == NOT_RUNNABLE for r in results),
            "optional": sorted(optional),  # targets `--targets all` chose: unsupported there does not fail the run
        },
        "targets": {report_key(r): r.to_dict() for r in results},
        "confinement": confinement(results),
        "notes": notes or [],
        "environment": env,
    }


def confinement(results: list[ParityResult]) -> dict:
    """Whether every runtime run was confined (edgekit.confine), and why not where it was not."""
    runs = [r.extra["confinement"] for r in results if "confinement" in r.extra]
    unconfined = sorted({c["note"] for c in runs if not c["confined"]})
    return {"runs": len(runs), "confined": not unconfined, "unconfined": unconfined}


def _fmt(v, kind: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):  # "inf" from the JSON-safe form
        return "exact" if v == "inf" and kind == "db" else v
    if kind == "bytes":
        return f"{v / 1e6:.2f} MB" if v >= 1e5 else f"{v / 1e3:.1f} kB"
    if kind == "ms":
        return f"{v:.2f}"
    if kind == "db":
        return "exact" if math.isinf(v) else f"{v:.1f}"
    if kind == "pct":
        return f"{v:.1%}"
    if kind == "pct3":
        return f"{v:.3%}"
    if kind == "iou":
        return f"{v:.4f}"
    if kind == "cos":
        return f"{v:.6f}"
    return f"{v:.2e}"


TASK_KEYS = ("pixel_agreement", "matched_fraction", "mean_iou", "score_err_rel", "label_agreement", "rel_error")


def has_task_metrics(rows) -> bool:
    """Whether any metrics dict of ``rows`` holds a task figure (segmentation, detection, regression, embedding)."""
    return any(isinstance(m, dict) and any(m.get(k) is not None for k in TASK_KEYS) for m in rows)


def task_cell(m: dict) -> str:
    """A task's own figures as one short table cell: pixels, matched boxes / IoU / score error, relative error."""
    parts = []
    if m.get("pixel_agreement") is not None:
        parts.append(f"pixels {_fmt(m['pixel_agreement'], 'pct3')}")
    if m.get("matched_fraction") is not None:
        gaps = [f"{m[k]} {w}" for k, w in (("missing_boxes", "missing"), ("extra_boxes", "extra")) if m.get(k)]
        parts.append(f"boxes {_fmt(m['matched_fraction'], 'pct')} matched" + (f" ({', '.join(gaps)})" if gaps else ""))
        parts.append(f"IoU {_fmt(m.get('mean_iou'), 'iou')}")
        parts.append(f"score err {_fmt(m.get('score_err_rel'), 'e')}")
    if m.get("label_agreement") is not None:
        parts.append(f"classes {_fmt(m['label_agreement'], 'pct')}")
    if m.get("rel_error") is not None:
        parts.append(f"rel err {_fmt(m['rel_error'], 'e')}")
    return ", ".join(parts) or "-"


def markdown(report: dict) -> str:
    """report.md: the sections of ``SECTIONS`` (end of this file) in order, then how to reproduce it."""
    lines = [line for section in SECTIONS for line in section(report)]
    lines += ["", "## Reproduce", "", "```", report["command"], "```", ""]
    return "\n".join(lines)


def _header(report: dict) -> list[str]:
    s, data = report["summary"], report["data"]
    return [
        f"# edgekit {report['kind']} report: {report['model']['name']}",
        "",
        f"**{s['status'].upper()}**: {s['passed']} passed, {s['failed']} failed, {s['errors']} errors. "
        f"Created {report['created']}.",
        "",
        f"Verification data: {data.get('count')} samples ({data.get('kind')}) from "
        f"`{data.get('root')}`, sha256 `{str(data.get('sha256'))[:16]}...`. "
        "Latency: median per sample, 1 thread, host runtime (not a device timing).",
    ]


def _fidelity(report: dict) -> list[str]:
    with_task = has_task_metrics(t.get("metrics") for t in report["targets"].values())
    task = report["model"].get("task")
    lines = [
        "",
        "## Conversion fidelity: does each file compute what its PyTorch reference computes?",
        "",
        "FP32 files against the FP32 model (`reference.pt2`); quantized files against the PyTorch simulation "
        "of exactly their quantization (`*.reference.pt2`), with the error in output quantization steps."
        + (f" Task: `{task}`." if task else ""),
        "",
        "| target | precision | status | size | latency ms | max abs | max steps | mean abs | cosine min | SQNR dB | top-1 agree |"
        + (" task metrics |" if with_task else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if with_task else ""),
    ]
    for name, t in report["targets"].items():
        m = t.get("metrics") or {}
        steps = f"{m['max_steps']:.1f}" if isinstance(m.get("max_steps"), (int, float)) else "-"
        lines.append(
            f"| {name} | {t['precision']} | {t['status']} | {_fmt(t.get('size_bytes'), 'bytes')} | "
            f"{_fmt(t.get('latency_ms'), 'ms')} | {_fmt(m.get('max_abs'), 'e')} | {steps} | {_fmt(m.get('mean_abs'), 'e')} | "
            f"{_fmt(m.get('cosine_min'), 'cos')} | {_fmt(m.get('sqnr_db'), 'db')} | {_fmt(m.get('top1_agreement'), 'pct')} |"
            + (f" {task_cell(m)} |" if with_task else ""))
    return lines


def _compression_cost(report: dict) -> list[str]:
    cost = [(n, t, o, c) for n, t in report["targets"].items() for o, c in (t.get("compression") or {}).items()]
    if not cost:
        return []
    cost_task = has_task_metrics(c for *_, c in cost)
    lines = ["", "## Compression cost: how far is the deployed file from the FP32 original?", "",
             "A recipe question, not a converter one (same verification samples).", "",
             "| target | output | SQNR dB vs FP32 | cosine min | top-1 agree with FP32 | max abs |"
             + (" task metrics vs FP32 |" if cost_task else ""),
             "|---|---|---|---|---|---|" + ("---|" if cost_task else "")]
    for name, t, out, c in cost:
        lines.append(f"| {name} | {out} | {_fmt(c.get('sqnr_db'), 'db')} | {_fmt(c.get('cosine_min'), 'cos')} | "
                     f"{_fmt(c.get('top1_agreement'), 'pct')} | {_fmt(c.get('max_abs'), 'e')} |"
                     + (f" {task_cell(c)} |" if cost_task else ""))
    return lines


def _compression_stage(report: dict) -> list[str]:
    if not report.get("compression_stage"):
        return []
    return ["", "## Compression stage (before export)", "",
            "The model every target exported is the compressed one; the stage compares it with the original.", "",
            report["compression_stage"]["markdown"]]


def _failures(report: dict) -> list[str]:
    problems = [(n, t) for n, t in report["targets"].items() if t["status"] != "pass"]
    if not problems:
        return []
    lines = ["", "## Failures and errors", ""]
    for name, t in problems:
        if t.get("error"):
            e = t["error"]
            lines.append(f"- **{name}** error `{e['code']}`: {e['message']}. Fix: {e['fix']}")
        for f in t.get("failures", []):
            lines.append(f"- **{name}** fail: {f}")
    return lines


def _coverage(report: dict) -> list[str]:
    covered = [t["coverage"] for t in report["targets"].values() if t.get("coverage")]
    if not covered:
        return []
    return ["", "## Delegate coverage", ""] + [
        c.get("markdown") or f"- coverage analysis failed: `{c['error']['code']}` {c['error']['message']}" for c in covered]


def _notes(report: dict) -> list[str]:
    notes = [f"- **{n}**: {note}" for n, t in report["targets"].items() for note in t.get("notes", [])]
    notes += [f"- {n}" for n in report.get("notes", [])]
    return ["", "## Notes", ""] + notes if notes else []


def _accuracy_budget(report: dict) -> list[str]:
    """Labelled top-1 accuracy of the FP32 model and of each file, and each quantized file's budget verdict."""
    rows = [(n, t.get("accuracy"), t.get("budget")) for n, t in report["targets"].items() if t.get("accuracy") or t.get("budget")]
    if not rows:
        return []
    lines = ["", "## Accuracy and budget: labelled accuracy and what quantization may cost", "",
             "Accuracy: top-1 on the labelled verification samples. Budget: the bound the manifest records (or "
             "`--budget`), judged on each quantized file's cost vs the FP32 model.", "",
             "| target | FP32 accuracy | file accuracy | points lost | budget | measured | met |", "|---|---|---|---|---|---|---|"]
    for name, acc, budget in rows:
        acc = acc or {}
        got = (budget or {}).get("measured") or {}
        bounds = ", ".join(f"{k} {v:g}" for k, v in ((budget or {}).get("budget") or {}).items()) or "-"
        figures = ", ".join(f"{k} {v:.4g}" for k, v in got.items() if isinstance(v, (int, float))) or "-"
        met = "-" if budget is None else ("yes" if budget.get("met") else "**no**")
        lines.append(f"| {name} | {_fmt(acc.get('fp32'), 'pct')} | {_fmt(acc.get('artifact'), 'pct')} | "
                     f"{'-' if acc.get('drop_points') is None else format(acc['drop_points'], '.2f')} | {bounds} | {figures} | {met} |")
    return lines


def _budget_search(report: dict) -> list[str]:
    """The budget search's trials (edgekit.quant.search): float layers, size, metrics, the chosen one."""
    from edgekit.quant.search import kept_float_count

    found = report.get("budget_search")
    if not found:
        return []
    chosen = found["chosen"]
    lines = ["", "## Budget search: the cheapest assignment that meets the budget", "",
             "Each trial is the shared PT2E float simulation (nearest rounding) measured on the held-out samples; "
             "the chosen one was then exported and every file verified against the budget in its runtime.", "",
             "| trial | kept float | est. parameter size | agreement | SQNR dB | accuracy drop | met | chosen |",
             "|---|---|---|---|---|---|---|---|"]
    for i, t in enumerate(found["trials"], 1):
        m = t["metrics"]
        lines.append(f"| {i} | {kept_float_count(t)} | {_fmt(t['size_bytes'], 'bytes')} | {_fmt(m.get('agreement'), 'pct')} | "
                     f"{_fmt(m.get('sqnr'), 'db')} | {'-' if m.get('accuracy_drop') is None else format(m['accuracy_drop'], '.2f')} | "
                     f"{'yes' if t['met'] else 'no'} | {'**yes**' if t['keep_float'] == chosen else ''} |")
    lines += ["", f"Kept float: {', '.join(f'`{k}`' for k in chosen) or 'none'}."]
    return lines


def _dynamic_sizes(report: dict) -> list[str]:
    """Files with dynamic shapes: each one judged again at the bounds and middle of its ranges."""
    rows = [(n, t["dynamic"]) for n, t in report["targets"].items() if t.get("dynamic")]
    if not rows:
        return []
    lines = ["", "## Dynamic shapes: each file at other sizes of its declared ranges", "",
             f"Ranges: {', '.join(f'`{d}`' for d in rows[0][1]['dims'])}. Samples rebuilt from the verification data "
             "(batches of consecutive samples, images resampled, token ids cut or padded).", "",
             "| target | sizes | status | max abs | cosine min |", "|---|---|---|---|---|"]
    for name, d in rows:
        for row in d["sizes"]:
            sizes = ", ".join(f"{k}={v}" for k, v in row["sizes"].items())
            lines.append(f"| {name} | {sizes} | {row['status']} | {_fmt(row.get('max_abs'), 'e')} | "
                         f"{_fmt(row.get('cosine_min'), 'cos')} |")
    return lines


def _per_layer(report: dict, top: int = 5) -> list[str]:
    """Per-layer conversion fidelity: each target's layer count, worst layers and every flagged one."""
    rows = [(n, t.get("per_layer")) for n, t in report["targets"].items() if t.get("per_layer") or t.get("per_layer_error")]
    if not rows:
        return []
    lines = ["", "## Conversion fidelity per layer (each tensor of the file vs the reference op fed the same input)", "",
             "A layer more than 2 steps from its reference is flagged: the fault is in that layer (clean: <= 1 step).", ""]
    for name, layers in rows:
        if not layers:
            err = report["targets"][name].get("per_layer_error") or "no rows"
            lines.append(f"- **{name}**: the per-layer view failed (the end-to-end check stands): {err}")
            continue
        stepped = [r for r in layers if isinstance(r.get("max_steps"), (int, float))]
        flagged = [r for r in layers if r.get("flagged")]
        worst = max((r["max_steps"] for r in stepped), default=0.0)
        lines.append(f"- **{name}**: {len(layers)} layers, worst {worst:g} steps, "
                     f"{len(flagged)} flagged" + (":" if flagged else "."))
        for r in flagged[:top]:
            steps = f"{r['max_steps']:g} steps" if isinstance(r.get("max_steps"), (int, float)) else "no steps"
            note = f" ({r['note']})" if r.get("note") else ""
            lines.append(f"  - `{r['layer']}` {r.get('op', '')} (module {r.get('module') or '-'}): {steps}, "
                         f"worst channel {r.get('worst_channel', '-')}{note}")
        if len(flagged) > top:
            lines.append(f"  - ... and {len(flagged) - top} more (report.json has every row)")
    return lines


def _localisation(report: dict, top: int = 5) -> list[str]:
    """Where each quantized file loses precision (quantized reference vs FP32, layer by layer)."""
    located = [(n, t["localisation"]) for n, t in report["targets"].items() if (t.get("localisation") or {}).get("rows")]
    if not located:
        return []
    lines = ["", "## Where precision is lost (quantized reference vs FP32, per layer)", "",
             "SQNR of each layer's output vs the FP32 model, and the dB the layer loses itself (its worst "
             "input's SQNR minus its own): the layers that lose most are the `--keep-float` candidates.", ""]
    for name, loc in located:
        worst = sorted((r for r in loc["rows"] if r.get("drop_db") is not None), key=lambda r: -r["drop_db"])[:top]
        lines += [f"**{name}** ({len(loc['rows'])} layers; lowest SQNR "
                  f"{min(r['sqnr_db'] for r in loc['rows']):.1f} dB):", "",
                  "| layer | module | SQNR dB vs FP32 | dB lost here |", "|---|---|---|---|"]
        lines += [f"| {r['layer']} | {r['module'] or '-'} | {r['sqnr_db']:.1f} | {r['drop_db']:.1f} |" for r in worst]
        if loc.get("suggest"):
            lines += ["", f"Suggestion: `--keep-float {','.join(loc['suggest'])}` (then compare the compression cost)."]
        lines.append("")
    return lines


# The report's sections in order: each maps the report to its markdown lines ([] when it has nothing to say).
SECTIONS = (_header, _fidelity, _compression_cost, _compression_stage, _accuracy_budget, _budget_search,
            _dynamic_sizes, _per_layer, _localisation, _failures, _coverage, _notes)
