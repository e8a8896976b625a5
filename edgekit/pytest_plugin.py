"""The edgekit pytest plugin: parity checks in a user's own test suite.

Installed with edgekit (entry point ``pytest11``), so a user's test reads::

    import pytest
    from edgekit.pytest_plugin import assert_parity

    @pytest.mark.edgekit
    def test_shipped_model_matches(edgekit_parity):          # fixture form (records the report)
        edgekit_parity("my_model.py:build", "bundles/my_model", targets="tflite,onnx")

    def test_plain():                                         # plain form
        assert_parity(build_model, "bundles/my_model/my_model-fp32.tflite", data="samples/")

``assert_parity`` runs the user's PyTorch model (or factory) on real data, runs every selected
artifact of the bundle in its own runtime subprocess, and raises ``ParityAssertionError`` with a
table of what diverged. This module is imported by every pytest run once edgekit is installed, so
it imports nothing heavy at module level (torch only when a check runs).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

MARKER = "edgekit: parity checks of exported artifacts against a PyTorch model (select with -m edgekit)"


class ParityAssertionError(AssertionError):
    """An artifact computes something other than the model; ``report`` holds every figure."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", MARKER)


def pytest_addoption(parser) -> None:
    group = parser.getgroup("edgekit")
    group.addoption("--edgekit-report-dir", default=None, metavar="DIR",
                    help="write report.html (and report.json) of every edgekit_parity check into DIR")


@pytest.fixture
def edgekit_parity(request):
    """``edgekit_parity(model, bundle, data=None, targets=None, samples=None)``: assert_parity that also
    records the verdict in the test's user_properties (they appear in pytest's --junitxml) and writes
    the HTML report when pytest runs with --edgekit-report-dir."""
    out_dir = request.config.getoption("edgekit_report_dir")

    def check(model_or_factory, bundle_or_artifact, **kwargs) -> dict:
        __tracebackhide__ = True
        report_dir = None
        if out_dir:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.nodeid)
            report_dir = Path(out_dir) / safe
        try:
            report = assert_parity(model_or_factory, bundle_or_artifact, report_dir=report_dir, **kwargs)
        except ParityAssertionError as exc:
            _record(request, exc.report)
            raise
        _record(request, report)
        return report

    return check


def _record(request, report: dict) -> None:
    for key, t in report["targets"].items():
        request.node.user_properties.append((f"edgekit.{key}", t["status"]))


def _load_module(model_or_factory: Any):
    """A module in eval mode from: a module, a factory returning one (or (module, example_inputs)),
    or a string the CLI takes (built-in name, path/to/file.py:factory, .pt2)."""
    import torch

    from edgekit.errors import UserError

    obj = model_or_factory
    if isinstance(obj, (str, Path)):
        from edgekit.model_source import load_model

        return load_model(str(obj)).module
    if not isinstance(obj, torch.nn.Module) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:  # the user's factory: say what it raised
            raise UserError("E-MODEL-FACTORY", f"the model factory raised {type(exc).__name__}: {exc}",
                            "fix the factory so it returns a torch.nn.Module") from exc
    if isinstance(obj, tuple) and obj:
        obj = obj[0]
    obj = getattr(obj, "module", obj)  # edgekit's LoadedModel
    if not isinstance(obj, torch.nn.Module):
        raise UserError("E-MODEL-FACTORY", f"got {type(obj).__name__}, not a torch.nn.Module",
                        "pass a module, a factory returning one, or a model name as `edgekit export` takes it")
    return obj.eval()


def _bundle_and_filter(path: str | Path) -> tuple[Path, str | None]:
    from edgekit.errors import UserError

    p = Path(path)
    if p.is_dir():
        return p, None
    if p.is_file() and (p.parent / "manifest.json").is_file():
        return p.parent, p.name
    raise UserError("E-BUNDLE-INVALID", f"{p} is neither a bundle folder nor a file inside one",
                    "pass the folder `edgekit export` wrote, or one artifact file in it")


def _samples(data, spec, root: Path, limit: int | None):
    import numpy as np

    from edgekit import bundle as B
    from edgekit.data import CalibrationSet, load_samples
    from edgekit.errors import UserError

    if data is None:
        from edgekit import manifest as M

        calib = B.load_verify_inputs(M.read(root))
        samples, describe = list(calib.samples), calib.describe()
    elif isinstance(data, CalibrationSet):
        samples, describe = list(data.samples), data.describe()
    elif isinstance(data, (str, Path)):
        calib = load_samples(data, spec, base=root)
        samples, describe = list(calib.samples), calib.describe()
    else:
        samples = [tuple(np.asarray(a) for a in s) if isinstance(s, (tuple, list)) else (np.asarray(s),) for s in data]
        describe = {"root": "(arrays passed to assert_parity)", "kind": "tensor", "count": len(samples), "sha256": None}
    if limit is not None:
        if limit < 1:
            raise UserError("E-ARGS", f"samples={limit} is not a positive number", "pass samples=1 or more")
        samples = samples[:limit]
        describe = {**describe, "count": len(samples)}
    if not samples:
        raise UserError("E-DATA-EMPTY", "no samples to check parity on", "pass data= with at least one sample")
    return samples, describe


def _select(manifest: dict, targets, artifact_name: str | None) -> list[dict]:
    from edgekit.errors import UserError

    arts = manifest.get("artifacts", [])
    if artifact_name:
        arts = [a for a in arts if artifact_name in {f["path"] for f in a["files"]}]
    if targets:
        wanted = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
        have = {a["target"] for a in arts}
        unknown = [t for t in wanted if t not in have]
        if unknown:
            raise UserError("E-TARGET-UNKNOWN", f"the bundle has no artifact for {', '.join(unknown)}",
                            f"pick from {', '.join(sorted(have)) or '(none)'}")
        arts = [a for a in arts if a["target"] in wanted]
    if not arts:
        raise UserError("E-BUNDLE-INVALID", "no artifact of the bundle matches", "check the artifact path or targets=")
    return arts


def assert_parity(model_or_factory, bundle_or_artifact, data=None, targets=None, samples: int | None = None,
                  timeout_s: float | None = None, report_dir: str | Path | None = None) -> dict:
    """Check that the bundle's artifacts compute what ``model_or_factory`` computes; -> the report dict.

    data: None (the inputs stored in the bundle), a folder of samples, or a list of per-sample arrays.
    targets: "tflite,onnx" or a list; default every artifact (or the one ``bundle_or_artifact`` names).
    Raises ParityAssertionError, with a table of the targets and what diverged, when any fails or errors.
    """
    __tracebackhide__ = True
    report, errors = check_parity(model_or_factory, bundle_or_artifact, data, targets, samples, timeout_s)
    if report_dir is not None:
        from edgekit import bundle as B
        from edgekit.html_report import write_html

        Path(report_dir).mkdir(parents=True, exist_ok=True)
        B.write_json(Path(report_dir) / "report.json", report)
        write_html(Path(report_dir) / "report.html", report, errors)
    if report["summary"]["status"] != "pass":
        raise ParityAssertionError(failure_table(report, str(bundle_or_artifact)), report)
    return report


def check_parity(model_or_factory, bundle_or_artifact, data=None, targets=None, samples: int | None = None,
                 timeout_s: float | None = None):
    """The check without the assertion: -> (report dict, {report key: flat |error| array})."""
    import torch

    from edgekit import bundle as B
    from edgekit.converters import get
    from edgekit.data import CalibrationSet
    from edgekit.isolate import DEFAULT_TIMEOUT_S
    from edgekit import manifest as M
    from edgekit.verification import check_entry, manifest_budget
    from edgekit.reference import run_reference
    from edgekit.report import abs_errors, build_report, report_key
    from edgekit.size_probes import size_probes

    root, artifact_name = _bundle_and_filter(bundle_or_artifact)
    m = M.read(root)
    spec = m.spec
    arts = _select(m.raw, targets, artifact_name)
    module = _load_module(model_or_factory)
    samples_, describe = _samples(data, spec, root, samples)
    with torch.no_grad():
        reference = run_reference(module, samples_)
    vset = CalibrationSet(tuple(tuple(s) for s in samples_), tuple(str(i) for i in range(len(samples_))), "tensor",
                          str(describe.get("root")))
    probes = size_probes(spec, vset, module)  # a bundle with dynamic shapes: checked at its other sizes too
    budget = manifest_budget(m)  # the budget the manifest records gates quantized artifacts here too
    results, errors = [], {}
    for entry, files in m.artifacts:
        if not any(entry is a for a in arts):
            continue
        # the same check as `edgekit verify`, with the user's model as the FP32 reference
        checked = check_entry(m, entry, files, vset, reference, timeout_s or DEFAULT_TIMEOUT_S, probes=probes, budget=budget)[0]
        results.append(checked.result)
        if checked.outputs is not None:
            errors[report_key(checked.result)] = abs_errors(checked.reference, checked.outputs)
    env = B.environment({k: v for e in arts for k, v in get(e["target"]).versions().items()})
    model_name = model_or_factory if isinstance(model_or_factory, (str, Path)) else type(module).__name__
    report = build_report("verify", {"name": spec.name, "source": str(model_name)}, describe, results, env,
                          f"pytest  # assert_parity({model_name!s}, {bundle_or_artifact!s})", B.now())
    return report, errors


def failure_table(report: dict, where: str) -> str:
    """A plain-text table of every target (diverged ones marked) and each failure sentence."""
    from edgekit.report import _fmt

    s, targets = report["summary"], report["targets"]
    bad = s["failed"] + s["errors"]
    head = ["target", "precision", "status", "max abs", "allowed", "cosine min", "SQNR dB", "top-1"]
    rows = []
    for key, t in targets.items():
        m, tol = t.get("metrics") or {}, t.get("tolerance") or {}
        refs = [o.get("ref_max_abs") for o in (t.get("outputs") or {}).values() if isinstance(o.get("ref_max_abs"), float)]
        allowed = tol.get("max_abs_rel") * min(refs) if tol.get("max_abs_rel") is not None and refs else None
        rows.append([key, t["precision"], t["status"].upper() if t["status"] != "pass" else "pass",
                     _fmt(m.get("max_abs"), "e"), _fmt(allowed, "e"), _fmt(m.get("cosine_min"), "cos"),
                     _fmt(m.get("sqnr_db"), "db"), _fmt(m.get("top1_agreement"), "pct")])
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    out = [f"edgekit parity: {bad} of {len(targets)} target(s) diverged from the model "
           f"{report['model'].get('source')} on {report['data'].get('count')} samples ({where})", "",
           line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    details = []
    for key, t in targets.items():
        if t.get("error"):
            e = t["error"]
            details.append(f"{key}: error {e.get('code')}: {e.get('message')}; fix: {e.get('fix')}")
        details += [f"{key}: {f}" for f in t.get("failures") or []]
    return "\n".join(out + ([""] + details if details else []))
