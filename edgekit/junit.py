"""JUnit XML from a report dict: one testcase per target and check, for CI test dashboards.

Checks per target: ``runs`` (the artifact loaded and ran in its runtime), then per output
``<output>.max_abs``, ``<output>.cosine``, ``<output>.top1`` (classification), ``<output>.steps``
(quantized artifacts with a step tolerance), and ``outputs`` (count and shapes match). A check fails
when the report's failure sentences name it (parity.check is the single source of thresholds);
a target that errored has one ``runs`` testcase with an <error> and its other checks skipped.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

# check name -> the words its failure sentence carries (edgekit.parity.check / compare)
CHECKS = {"max_abs": "max abs error", "cosine": "cosine similarity", "top1": "top-1 agreement", "steps": "step"}


def _cases(key: str, t: dict) -> list[tuple[str, str, str | None, str | None]]:
    """-> (name, outcome, message, detail) with outcome pass / failure / error / skipped."""
    if t["status"] not in ("pass", "fail", "error"):  # e.g. "not runnable on host" (NNAPI): described, never run
        reason = "; ".join(t.get("notes") or []) or t["status"]
        return [("runs", "skipped", f"{t['status']}: {reason}", None)]
    if t["status"] == "error" or t.get("error"):
        e = t.get("error") or {}
        msg = f"{e.get('code')}: {e.get('message')}"
        return [("runs", "error", msg, f"{msg}\nfix: {e.get('fix')}\n\n{t.get('log') or ''}".rstrip())]
    failures = list(t.get("failures") or [])
    cases = [("runs", "pass", None, None)]
    tol = t.get("tolerance") or {}
    for out, m in (t.get("outputs") or {}).items():
        checks = ["max_abs", "cosine"] + (["top1"] if m.get("top1_agreement") is not None else [])
        if tol.get("max_steps") is not None or m.get("max_steps") is not None:
            checks.append("steps")
        for check in checks:
            hits = [f for f in failures if f.startswith(f"{out}:") and CHECKS[check] in f]
            for f in hits:
                failures.remove(f)
            cases.append((f"{out}.{check}", "failure" if hits else "pass", "; ".join(hits) or None, None))
    cases.append(("outputs", "failure" if failures else "pass", "; ".join(failures) or None, None))
    return cases


def junit_xml(report: dict) -> str:
    """The JUnit XML document (one <testsuite>, classname edgekit.<model>.<target>, name = the check)."""
    model = report["model"].get("name", "model")
    suite = ET.Element("testsuite", name=f"edgekit {report['kind']} {model}", timestamp=str(report.get("created", "")))
    props = ET.SubElement(suite, "properties")
    for k, v in (report.get("environment") or {}).items():
        ET.SubElement(props, "property", name=str(k), value=str(v))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for key, t in report["targets"].items():
        latency_s = (t.get("latency_ms") or 0) * (t.get("n_samples") or 0) / 1e3
        for name, outcome, msg, detail in _cases(key, t):
            case = ET.SubElement(suite, "testcase", classname=f"edgekit.{model}.{key}", name=name,
                                 time=f"{latency_s if name == 'runs' else 0:.4f}")
            counts["tests"] += 1
            if outcome == "skipped":
                counts["skipped"] += 1
                ET.SubElement(case, "skipped", message=msg or "")
            elif outcome in ("failure", "error"):
                counts["failures" if outcome == "failure" else "errors"] += 1
                el = ET.SubElement(case, outcome, message=msg or "", type=f"edgekit.{outcome}")
                el.text = detail or msg
    for k, v in counts.items():
        suite.set(k, str(v))
    root = ET.Element("testsuites", name="edgekit", **{k: suite.get(k) for k in ("tests", "failures", "errors")})
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: str | Path, report: dict) -> Path:
    """Write the JUnit XML atomically (temp file, then rename); creates the parent folder."""
    from edgekit.bundle import write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, junit_xml(report))
    return path
