"""The `edgekit` command line. Exit codes: 0 all pass, 1 a parity check failed or a target errored,
2 usage or input error (a coded message on stderr), 3 internal error (a bug: please report it)."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from edgekit.errors import EdgekitError, UserError

EXIT_PASS, EXIT_PARITY, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: same exit code and form as ours
        self.print_usage(sys.stderr)
        print(f"E-ARGS: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _target_help() -> str:
    from edgekit.converters import target_names

    return f"comma-separated targets, or all (default); one of: {', '.join(target_names())}"


def _calibrators() -> list[str]:
    from edgekit.quant import CALIBRATORS

    return sorted(CALIBRATORS)


def _roundings() -> list[str]:
    from edgekit.quant.recipe import ROUNDINGS

    return list(ROUNDINGS)


def _schemes() -> list[str]:
    from edgekit.quant.recipe import SCHEMES

    return list(SCHEMES)


TASK_HELP = ("what the outputs mean, so how parity judges them: classification (top-1), segmentation (per-pixel "
             "argmax of (B, C, H, W) logits), detection (boxes and scores after IoU matching; name the outputs with "
             "detection:boxes=NAME,scores=NAME[,format=xyxy|xywh|cxcywh][,min_score=X]), regression, embedding "
             "(relative error, cosine). Default: inferred from the outputs (README: Tasks)")


def build_parser() -> argparse.ArgumentParser:
    from edgekit import __version__

    p = _Parser(prog="edgekit", description=__doc__.split(".")[0] + ".",
                epilog="Exit codes: 0 pass, 1 parity failure, 2 usage/input error, 3 internal error.")
    p.add_argument("--version", action="version", version=f"edgekit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (helptext, add, _) in COMMANDS.items():
        add(sub.add_parser(name, help=helptext))
    return p


def _add_export(e) -> None:
    from edgekit.data import DEFAULT_SAMPLES
    from edgekit.isolate import DEFAULT_TIMEOUT_S

    e.add_argument("model", help="built-in name (mobilenet_v2, minilm, tiny_cnn, tiny_transformer), path/to/file.py:factory, or a .pt2 file")
    e.add_argument("--targets", default="all", help=_target_help())
    e.add_argument("--data", help="folder of images, .txt sentences, or .npy/.npz input tensors (default: the built-in model's calibration_data/)")
    e.add_argument("--out", help="bundle folder to write (default: bundles/<model>); an existing bundle there is replaced")
    e.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="verification samples: the first N of the data (default %(default)s)")
    e.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds each runtime subprocess may take (default %(default)s)")
    _add_quant(e)
    e.add_argument("--task", metavar="TASK", help=TASK_HELP)
    e.add_argument("--dynamic", action="append", default=[], metavar="DIM",
                   help="an input axis whose size varies (repeatable): batch=1..8 (axis 0 of every input), x.2=160..320/32 "
                        "(input x, axis 2, multiples of 32), seq:input_ids.1,attention_mask.1=8..128 (one shared size); "
                        "fp32, targets listed by `edgekit targets`; verified at the bounds and the middle")
    e.add_argument("--json", help="also write report.json to this file")
    e.add_argument("--quiet", action="store_true", help="no progress lines (for CI logs)")


def _add_quant(e) -> None:
    e.add_argument("--quant", default="fp32", choices=["fp32", *_schemes()],
                   help="int8: static post-training quantization calibrated on --data (first two thirds; "
                        "verified on the held-out third); int16x8: the same with int16 activations and int8 weights "
                        "(TFLite 16x8 kernels); fp16: fp16 weights; dynamic: weight-only int8 "
                        "(no calibration); `edgekit targets` lists which target takes which")
    e.add_argument("--calibrator", choices=_calibrators(), help="int8 activation ranges (default: the recipe's)")
    e.add_argument("--percentile", type=float, help="int8 with --calibrator percentile: the clip point, e.g. 99.99")
    e.add_argument("--keep-float", default="", metavar="LAYERS",
                   help="int8: comma-separated module names (prefixes match) or class names kept in float")
    e.add_argument("--equalize", action="store_true", help="int8: cross-layer equalization before quantizing")
    e.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                   help="int8: empirical bias correction of depthwise layers (default: the model's measured setting, else off)")
    e.add_argument("--rounding", choices=_roundings(),
                   help="int8 weights: nearest, or adaround (learned rounding on the calibration set, minutes on a "
                        "large model; the same integers for every target). Default: the model's measured setting, else nearest")
    e.add_argument("--minmax-output", action=argparse.BooleanOptionalAction, default=None,
                   help="int8: range the model outputs (logits) by min/max instead of the calibrator (never clipped)")
    e.add_argument("--float-share", type=float, metavar="SHARE",
                   help="int8 mixed precision: keep float the layers whose int8 error is far out of proportion to "
                        "their size, within SHARE of the int8 weight bytes (e.g. 0.005; 0: off). Default: the model's "
                        "measured setting, else 0")
    e.add_argument("--budget", metavar="BOUNDS",
                   help="the most quantization may cost vs FP32, e.g. 'agreement>=0.99', 'sqnr>=30', 'accuracy_drop<=0.5' "
                        "(labelled data), comma-separated; recorded in the manifest, every quantized file must meet "
                        "it (export and verify fail it otherwise)")
    e.add_argument("--qat-steps", type=int, default=None, metavar="N",
                   help="int8: N steps of quantization-aware training on the calibration part (the fake-quant model "
                        "distilled from the FP32 one, augmented, no labels needed); its learned weights and input "
                        "ranges go to every target whose int8 grid it simulates (not ncnn). Minutes on a large model, cached; 0: "
                        "post-training only; default: the built-in model's measured setting (mobilenet_v2: 24), else 0")
    e.add_argument("--float-io", action="store_true",
                   help="int8 tflite: float32 model inputs/outputs (QUANTIZE/DEQUANTIZE added at the edges; the other "
                        "targets' INT8 files always take float)")


def _add_verify(v) -> None:
    from edgekit.converters import all_converters
    from edgekit.isolate import DEFAULT_TIMEOUT_S

    arm = ", ".join(c.info.name for c in all_converters() if c.info.arm)
    v.add_argument("bundle", help="a bundle folder written by `edgekit export`")
    v.add_argument("--data", help="verify on this folder instead of the inputs stored in the bundle")
    v.add_argument("--samples", type=int, help="use only the first N samples")
    v.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds each runtime subprocess may take (default %(default)s)")
    v.add_argument("--total-timeout", type=float, default=4 * 3600.0,
                   help="seconds the whole verify may spend running artifacts (default %(default)s); targets left are errors")
    v.add_argument("--budget", metavar="BOUNDS", help="judge quantized files by this budget (as in export) instead "
                                                     "of the one the manifest records")
    v.add_argument("--json", help="write the verify report (JSON) to this file")
    v.add_argument("--junit", metavar="FILE", help="write JUnit XML (one testcase per target and check) for CI test views")
    v.add_argument("--summary", metavar="FILE", help="append a Markdown summary (e.g. $GITHUB_STEP_SUMMARY)")
    v.add_argument("--html", metavar="FILE", help="write a self-contained HTML report to this file")
    v.add_argument("--arm", default="", metavar="CPUS",
                   help=f"also run the ARM-capable artifacts ({arm}) on these emulated CPUs, e.g. "
                        "cortex-a53,cortex-a76 (qemu-user; needs `edgekit arm setup` once)")
    v.add_argument("--quiet", action="store_true", help="no progress lines")


def _add_inspect(i) -> None:
    i.add_argument("artifact", help="a .tflite, ncnn .param, .pte or .ptl file (inside a bundle, its manifest entry is used)")
    i.add_argument("--json", help="also write the result as JSON to this file")


def _add_bundle(b) -> None:
    b.add_argument("bundle", help="a bundle folder written by `edgekit export`")
    dest = b.add_mutually_exclusive_group(required=True)
    dest.add_argument("--android", metavar="DIR", help="e.g. android_demo/app/src/main/assets (copies the .tflite and ncnn files)")
    dest.add_argument("--ios", metavar="DIR", help="an Xcode project's resource folder (copies the artifacts iOS apps load: "
                                                   "see `edgekit targets`)")


def _add_arm(a) -> None:
    a.add_argument("action", choices=["setup"], help="setup: build it (about a minute, ~350 MB, cached)")


def _add_run(r) -> None:
    r.add_argument("config", nargs="?", help="a .toml file with an [export] table")
    r.add_argument("--task", metavar="TASK", help="replaces the config's task; " + TASK_HELP)
    r.add_argument("--quiet", action="store_true", help="no progress lines")


def _add_targets(t) -> None:
    fmt = t.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="as JSON")
    fmt.add_argument("--markdown", action="store_true", help="as the Markdown table the README carries")


# The report's sections printed on the console (each under its heading); --quiet keeps the first ones.
_CONSOLE_SECTIONS = ("Conversion fidelity:", "Compression cost:", "Accuracy and budget:", "Budget search:", "Dynamic shapes:",
                     "Failures and errors")
_VERBOSE_SECTIONS = ("Delegate coverage", "Notes")


def _console_sections(md: str, quiet: bool) -> str:
    """The tables and bullet lines of report.md's chosen sections, each under a short heading."""
    wanted = _CONSOLE_SECTIONS + (() if quiet else _VERBOSE_SECTIONS)
    out = []
    for section in md.split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        if not title.startswith(wanted):
            continue
        rows = [line for line in body.splitlines() if line.startswith(("|", "- ", "  - "))]
        if rows:
            out += ["", f"== {title.split(':')[0].split(' (')[0]} =="] + rows
    return "\n".join(out).lstrip("\n")


def _print_outcome(outcome, json_path: str | None, quiet: bool = False) -> int:
    from edgekit import bundle as B
    from edgekit.report import markdown

    if json_path:
        B.write_json(Path(json_path), outcome.report)
    print(_console_sections(markdown(outcome.report), quiet))
    if any("arm" in t for t in outcome.report["targets"].values()):
        from edgekit.arm.verify import arm_markdown

        print("\n" + arm_markdown(outcome.report))
    for reason in outcome.report.get("confinement", {}).get("unconfined", []):
        print(f"WARNING: runtimes ran {reason}", file=sys.stderr)
    s = outcome.report["summary"]
    others = [f"{s[k]} {word}" for k, word in (("unsupported", "unsupported"), ("not_runnable", "not runnable on host")) if s.get(k)]
    print(f"\n{s['status'].upper()}: {s['passed']} passed, {s['failed']} failed, {s['errors']} errors"
          + "".join(f", {o}" for o in others))
    for key, t in outcome.report["targets"].items():
        if t["status"] == "unsupported":
            print(f"  {key} unsupported: {t['error']['message']}; {t['error']['fix']}")
    if outcome.report["kind"] == "export":
        print(f"bundle: {outcome.path}\nreport: {outcome.path / 'report.md'}")
    elif json_path:
        print(f"report: {json_path}")
    return outcome.exit_code


def _tame_toolchain_noise() -> None:
    """Hide two harmless, repeated messages of torch's own internals so progress lines stay readable."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def _manifest_meta(path: Path) -> dict | None:
    """The artifact's manifest entry (target, meta) when the file sits in a bundle folder (the
    manifest checked like `edgekit verify` checks it)."""
    from edgekit import manifest as M

    if not (path.parent / M.MANIFEST).is_file():
        return None
    for a, files in M.read(path.parent).artifacts:
        if any(f.path == path.name for f in files):
            return {**a.get("meta", {}), "target": a["target"]}
    return None


def _terminate_cleanly() -> None:
    """SIGTERM (CI cancelling a job, `timeout`) unwinds like Ctrl-C, so staging and run folders are
    removed and the destination lock released instead of being left behind."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _run_targets(args, command: str) -> int:
    from edgekit import capabilities

    if args.json:
        print(json.dumps(capabilities.rows(), indent=2))
    else:
        print(capabilities.markdown_table() if args.markdown else capabilities.text_table())
    return EXIT_PASS


def _run_export(args, command: str) -> int:
    import edgekit

    bundle = edgekit.export(args.model, targets=args.targets, data=args.data, out=args.out, samples=args.samples,
                            timeout_s=args.timeout, quant=args.quant, calibrator=args.calibrator,
                            percentile=args.percentile, keep_float=args.keep_float, equalize=args.equalize,
                            bias_correction=args.bias_correction, float_io=args.float_io, rounding=args.rounding,
                            minmax_output=args.minmax_output, float_share=args.float_share, task=args.task,
                            dynamic_shapes=tuple(args.dynamic) or None,
                            budget=args.budget, qat_steps=args.qat_steps,
                            progress=not args.quiet, command=command)
    return _print_outcome(bundle, args.json, args.quiet)


def _run_run(args, command: str) -> int:
    import edgekit

    return _print_outcome(edgekit.run(args.config, task=args.task, progress=not args.quiet, command=command), None, args.quiet)


def _run_verify(args, command: str) -> int:
    import edgekit

    outcome = edgekit.verify(args.bundle, data=args.data, samples=args.samples, timeout_s=args.timeout,
                             total_timeout_s=args.total_timeout, arm=args.arm, budget=args.budget,
                             progress=not args.quiet, command=command)
    if args.junit:
        from edgekit.junit import write_junit

        write_junit(args.junit, outcome.report)
    if args.summary:
        from edgekit.summary import write_summary

        write_summary(args.summary, outcome.report)
    if args.html:
        from edgekit.html_report import write_html

        write_html(Path(args.html), outcome.report, outcome._errors)
    return _print_outcome(outcome, args.json, args.quiet)


def _run_inspect(args, command: str) -> int:
    from edgekit.inspect import inspect_artifact

    path = Path(args.artifact)
    result = inspect_artifact(path, _manifest_meta(path))
    if args.json:
        from edgekit import bundle as B

        B.write_json(Path(args.json), result.to_dict())
    print(result.markdown())
    return EXIT_PASS


def _run_bundle(args, command: str) -> int:
    from edgekit.deploy import copy_for_app

    platform, dest = ("android", args.android) if args.android else ("ios", args.ios)
    copied = copy_for_app(args.bundle, dest, platform)
    print("\n".join(f"copied {f}" for f in copied) + f"\n{len(copied)} files -> {dest} ({platform})")
    return EXIT_PASS


def _run_arm(args, command: str) -> int:
    from edgekit.arm import prepare

    env = prepare(progress=lambda msg: print(msg, file=sys.stderr))
    print(f"ARM environment ready: {env.home}")
    return EXIT_PASS


# subcommand -> (help, adds its arguments, runs it): the parser and main() both follow this table
COMMANDS = {
    "export": ("export a model to targets, verify each in its runtime, write a bundle", _add_export, _run_export),
    "verify": ("re-run every artifact of a bundle against its reference (what CI runs)", _add_verify, _run_verify),
    "inspect": ("delegate coverage of an artifact: ops, XNNPACK (measured), GPU, NNAPI by API level", _add_inspect, _run_inspect),
    "bundle": ("copy a bundle's manifest, labels and app-loadable artifacts into an app's assets", _add_bundle, _run_bundle),
    "arm": ("ARM emulation: build the aarch64 environment once (qemu-user, Debian arm64, runtime wheels)", _add_arm, _run_arm),
    "run": ("run the pipeline from a TOML config (default: the shipped MobileNetV2 example)", _add_run, _run_run),
    "targets": ("print the capability table", _add_targets, _run_targets),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _tame_toolchain_noise()
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][2](args, "edgekit " + shlex.join(argv))
    except UserError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except EdgekitError as exc:
        print(f"internal error: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: say so, with the type, instead of a parity verdict
        import traceback

        traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {exc} (please report it)", file=sys.stderr)
        return EXIT_INTERNAL


def entry() -> int:
    """The console script: main() with SIGTERM unwinding like Ctrl-C."""
    _terminate_cleanly()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
