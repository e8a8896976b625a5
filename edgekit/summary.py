"""A short Markdown summary of a report for a CI job summary page (e.g. $GITHUB_STEP_SUMMARY).

Shorter than report.md: a verdict line, one row per target, what diverged, how to reproduce.
"""
from __future__ import annotations

from pathlib import Path

from edgekit.report import _fmt, has_task_metrics, reproduce_commands, task_cell

ICON = {"pass": "✅", "fail": "❌", "error": "⚠️", "not runnable on host": "➖"}


def summary_markdown(report: dict) -> str:
    s, targets = report["summary"], report["targets"]
    verdict = "all targets match their reference" if s["status"] == "pass" else "parity check failed"
    with_task = has_task_metrics(t.get("metrics") for t in targets.values())
    lines = [f"### {ICON.get(s['status'], '')} edgekit {report['kind']} `{report['model'].get('name')}`: {verdict}", "",
             f"{s['passed']} passed, {s['failed']} failed, {s['errors']} errors on "
             f"{report['data'].get('count')} {report['data'].get('kind')} samples.", "",
             "| target | status | size | latency ms | max abs / limit | SQNR dB | top-1 |" + (" task |" if with_task else ""),
             "|---|---|---:|---:|---:|---:|---:|" + ("---|" if with_task else "")]
    for key, t in targets.items():
        m, tol = t.get("metrics") or {}, t.get("tolerance") or {}
        rel, lim = m.get("max_abs_rel"), tol.get("max_abs_rel")
        ratio = f"{rel / lim:.2g}" if isinstance(rel, float) and lim else "-"
        lines.append(f"| {key} | {ICON.get(t['status'], '')} {t['status']} | {_fmt(t.get('size_bytes'), 'bytes')} | "
                     f"{_fmt(t.get('latency_ms'), 'ms')} | {ratio} | {_fmt(m.get('sqnr_db'), 'db')} | "
                     f"{_fmt(m.get('top1_agreement'), 'pct')} |" + (f" {task_cell(m)} |" if with_task else ""))
    problems = []
    for key, t in targets.items():
        if t.get("error"):
            e = t["error"]
            problems.append(f"- **{key}** `{e.get('code')}`: {e.get('message')}. Fix: {e.get('fix')}")
        problems += [f"- **{key}**: {f}" for f in t.get("failures") or []]
    if problems:
        lines += ["", "<details open><summary>What diverged</summary>", "", *problems, "", "</details>"]
    lines += ["", "<details><summary>Reproduce</summary>", "", "```sh", *reproduce_commands(report), "```", "",
              "</details>", ""]
    return "\n".join(lines)


def write_summary(path: str | Path, report: dict) -> Path:
    """Append the summary to ``path`` (a CI summary file collects several steps), creating it if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(summary_markdown(report) + "\n")
    return path
