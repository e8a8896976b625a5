"""Parity on real aarch64 kernels: run a bundle's ARM-capable artifacts on emulated CPUs.

For each artifact whose capability row says ``arm`` and each CPU, the report gets one result
``<target>@<cpu>``: parity against the reference with the table's tolerance (a failure fails
verify), plus the error against the host run of the same file, whether XNNPACK was active (TFLite),
and the emulated time (and, for a target pinning its own aarch64 runtime version in
``TargetInfo.arm_exact_wheels``, the version the guest ran: ``guest_versions`` and a note). A
runtime killed by SIGILL (an instruction the emulated CPU lacks) is an ``error`` row whose message
says so and names the features that CPU lacks. With ``defaults=True`` (ncnn) the file also runs with the runtime's own
settings, FP16 where the CPU has it: what an app on a phone gets, reported next to strict FP32.
Times are qemu's, not a device's, and are labelled so.

An artifact whose target has no aarch64 runtime in the emulated user space (``arm`` False) is never
skipped silently: it gets one ``<target>@<cpu>`` row per CPU with the status "not runnable on host"
(parity.NOT_RUNNABLE) and the reason (``TargetInfo.arm_missing``, else ``not_runnable``) as its note.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.converters import Artifact, Converter
from edgekit.isolate import run_artifact
from edgekit.parity import NOT_RUNNABLE, ParityResult, compare, output_metrics

from .launch import check_cpu, launcher, xnnpack_active
from .setup import ArmEnv, guest_versions

EMULATED_TIMEOUT_S = 1800.0


def arm_results(env: ArmEnv, cpus: list[str], conv: Converter, art: Artifact, root: Path,
                stacked: list[np.ndarray], reference: list[np.ndarray], host: list[np.ndarray] | None,
                names: list[str], classification: bool) -> list[ParityResult]:
    info = conv.info
    if not info.arm:
        return not_runnable_results(cpus, conv, art)
    tol = info.tolerances[art.precision]
    guest = guest_versions(conv)
    out = []
    for cpu in cpus:
        cmd, extra = launcher(env, check_cpu(cpu))
        label = f"{info.name}@{cpu}"
        run = run_artifact(info.name, art.to_dict(), root, stacked, launcher=cmd, extra_env=extra,
                           timeout_s=EMULATED_TIMEOUT_S)
        notes = [f"emulated {cpu} (qemu-user): latency and time are emulation figures, not device timings"]
        if guest:
            notes.append(f"the emulated run used {_versions(guest)}, not the host's version: the host's has no "
                         "usable aarch64 build (TargetInfo.arm_exact_wheels)")
        if run.error:
            error = dict(run.error)
            if "SIGILL" in error.get("message", ""):
                error["message"] += f" ({illegal_instruction(env, cpu)})"
                error["fix"] = (f"a runtime fault, not the file's: report it to the runtime with the log, and check "
                                f"the app's own runtime build on a {cpu}-class device")
            out.append(ParityResult(label, art.precision, "error", art.path, error=error, notes=notes, log=run.log,
                                    extra={"arm": {"cpu": cpu, "emulated_seconds": round(run.runtime_s, 2),
                                                   **({"guest_versions": guest} if guest else {})}}))
            continue
        res = compare(label, art.precision, reference, run.outputs, names, tol, classification,
                      art.meta.get("output_scales"), file=art.path, latency_ms=run.latency_ms, notes=notes)
        arm = {"cpu": cpu, "emulated_seconds": round(run.runtime_s, 2), **({"guest_versions": guest} if guest else {})}
        if host is not None:
            arm["vs_host"] = _vs(host, run.outputs, names)
        if "xnnpack" in info.delegates:
            # a file with XNNPACK subgraphs baked in (a .pte) runs them on XNNPACK or not at all; otherwise
            # the runtime's log says whether it created the delegate (TFLite)
            baked = any("xnnpack" in b.lower() for b in (art.meta.get("delegation") or {}).get("backends", {}))
            arm["xnnpack_active"] = baked or xnnpack_active(run.log)
            if not arm["xnnpack_active"]:
                res.notes.append("XNNPACK was NOT active in the emulated run: these are not the kernels a phone runs")
        if info.relaxed_defaults:
            defaults = run_artifact(info.name, art.to_dict(), root, stacked, launcher=cmd, extra_env=extra,
                                    strict=False, timeout_s=EMULATED_TIMEOUT_S)
            arm["runtime_defaults"] = ({"error": defaults.error} if defaults.error else
                                       {"vs_reference": _vs(reference, defaults.outputs, names),
                                        "vs_strict": _vs(run.outputs, defaults.outputs, names)})
        res.extra["arm"] = arm
        out.append(res)
    return out


def illegal_instruction(env: ArmEnv, cpu: str) -> str:
    """What a SIGILL on an emulated CPU means, with the features that CPU lacks compared with the most
    capable one emulated (e.g. cortex-a53 has no asimddp: a dot-product kernel chosen anyway dies)."""
    features = env.versions.get("cpu_features", {})
    mine = set(features.get(cpu, ()))
    richest = max(features.values(), key=len, default=[])
    lacks = [f for f in richest if f not in mine]
    return (f"illegal instruction: the runtime executed an instruction the emulated {cpu} does not implement, "
            "so it chose kernels for a newer core (its CPU detection did not see the core lacks them; a phone "
            "with this core is likely to crash the same way with this runtime build, not verified on a device)"
            + (f" ({cpu} lacks {', '.join(lacks)})" if lacks else ""))


def _versions(guest: dict[str, str]) -> str:
    return ", ".join(f"{d} {v}" for d, v in guest.items())


def arm_missing_reason(info) -> str:
    """Why a target's artifacts do not run on the emulated CPUs (its TargetInfo's own words when it has them)."""
    if info.arm_missing:
        return info.arm_missing
    if info.not_runnable:
        return f"not runnable outside its device: {info.not_runnable}"
    return (f"no aarch64 runtime in the emulated user space: target {info.name} does not declare one "
            "(TargetInfo.arm is False)")


def not_runnable_results(cpus: list[str], conv: Converter, art: Artifact) -> list[ParityResult]:
    """One NOT_RUNNABLE row per CPU for an artifact whose target has no aarch64 runtime, with the reason."""
    reason = arm_missing_reason(conv.info)
    return [ParityResult(f"{conv.info.name}@{check_cpu(cpu)}", art.precision, NOT_RUNNABLE, art.path,
                         notes=[f"not run on emulated {cpu}: {reason}"],
                         extra={"arm": {"cpu": cpu, "runnable": False, "reason": reason}})
            for cpu in cpus]


def _vs(ref: list[np.ndarray], got: list[np.ndarray], names: list[str]) -> dict:
    """Worst-output error of ``got`` against ``ref``: max abs, relative to max |ref|, and SQNR."""
    ms = [output_metrics(n, r, g, classification=False) for n, r, g in zip(names, ref, got)]
    return {"max_abs": max(m.max_abs for m in ms), "max_abs_rel": max(m.max_abs_rel for m in ms),
            "sqnr_db": min(m.sqnr_db for m in ms)}


def arm_markdown(report: dict) -> str:
    """The ARM table of a verify report ('' when no emulated CPU ran)."""
    rows = [(n, t) for n, t in report["targets"].items() if "arm" in t]
    if not rows:
        return ""
    fmt = lambda v: "-" if v is None else (v if isinstance(v, str) else f"{v:.2e}")
    lines = ["## ARM kernels (emulated with qemu-user; times are not device timings)", "",
             "| artifact | CPU | status | max abs vs reference | max abs vs host run | XNNPACK | runtime defaults vs reference | emulated s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, t in rows:
        a = t["arm"]
        d = a.get("runtime_defaults")
        defaults = "-" if d is None else ("error" if "error" in d else f"{fmt(d['vs_reference']['max_abs'])} (SQNR {d['vs_reference']['sqnr_db']:.1f} dB)")
        xnn = {True: "active", False: "NOT active"}.get(a.get("xnnpack_active"), "-")
        lines.append(f"| {name.split('@')[0]} | {a['cpu']} | {t['status']} | {fmt((t.get('metrics') or {}).get('max_abs'))} | "
                     f"{fmt(a.get('vs_host', {}).get('max_abs'))} | {xnn} | {defaults} | {a.get('emulated_seconds', '-')} |")
    guests = {name.split("@")[0]: t["arm"]["guest_versions"] for name, t in rows if t["arm"].get("guest_versions")}
    if guests:
        lines += ["", "Emulated runs on other runtime versions than the host's (no usable aarch64 build of the "
                  "host's): " + "; ".join(f"{n}: {_versions(g)}" for n, g in guests.items()) + "."]
    errors = [(name, t) for name, t in rows if t["status"] == "error" and t.get("error")]
    if errors:
        lines += [""] + [f"- {name}: {t['error'].get('code', '')} {t['error'].get('message', '')}" for name, t in errors]
    return "\n".join(lines)
