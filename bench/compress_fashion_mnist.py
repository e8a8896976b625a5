"""Bench 1: Fashion-MNIST teacher CNN -> structured pruning to <= half the MACs -> KD recovery,
measured in the exported runtimes (tflite, ncnn, executorch): test accuracy on the 10k test images
and per-image latency (1 thread; best of several medians, the models taking turns). The INT8 rows
(teacher and pruned+KD) are static PTQ with edgekit's default QuantRecipe, calibrated on training
images, exported by each converter and measured by running the exported file on the test images.
With --qat-steps N the pruned+KD student is also fine-tuned N steps as a fake-quant student against
the FP32 teacher (QAT-KD, edgekit.compress.qat) and exported INT8 to --qat-targets: the row to set
against the PTQ-only INT8 row.

    python bench/compress_fashion_mnist.py            # writes bench/results/compress_fashion_mnist.{json,md}

Data: Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.compress.count import ModelSize, SizeChange, measure
from edgekit.compress.distill import Distiller, KDConfig
from edgekit.compress.prune import PruneConfig, prune
from edgekit.compress.train import TrainConfig, evaluate_accuracy, fit

DATA = Path("/usr/share/datasets/fashion-mnist")
RESULTS = Path(__file__).resolve().parent / "results"
MEAN, STD = 0.2860, 0.3530


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    images = _idx(DATA / f"{prefix}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    labels = _idx(DATA / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    x = torch.from_numpy((images - MEAN) / STD).unsqueeze(1)
    return x, torch.from_numpy(labels)


class Pairs:
    """(image, label) sequence over tensors (what train.fit takes)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def conv_bn(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class FashionCNN(nn.Module):
    """Plain 3x3 conv stack: most MACs sit in convs whose input and output channels both get pruned,
    so removing a fraction r of channels removes about 1-(1-r)^2 of the work."""

    def __init__(self, width: int = 32, num_classes: int = 10):
        super().__init__()
        w = width
        self.features = nn.Sequential(conv_bn(1, w), conv_bn(w, 2 * w, 2), conv_bn(2 * w, 2 * w),
                                      conv_bn(2 * w, 4 * w, 2), conv_bn(4 * w, 4 * w))
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def ce_loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def kd_loss_fn(model, batch):
    x, y = batch
    return model(x, labels=y)


def calibration_set(x: torch.Tensor, n: int):
    """The first n training images as an edgekit CalibrationSet (one (1,1,28,28) sample each)."""
    from edgekit.data import CalibrationSet

    arrays = x[:n].numpy()
    return CalibrationSet(tuple((a[None],) for a in arrays), tuple(f"fashion-mnist train[{i}]" for i in range(len(arrays))),
                          "tensor", str(DATA))


def export_all(model: nn.Module, name: str, targets: list[str], example: np.ndarray, root: Path,
               recipe=None, calibration=None) -> dict:
    """Export to each target (FP32, or INT8 with ``recipe`` calibrated on ``calibration``);
    -> {target: (artifact dict, folder)}."""
    from edgekit.converters import get
    from edgekit.spec import ModelSpec, TensorSpec

    spec = ModelSpec(name, (TensorSpec("image", (1, 1, 28, 28), "float32", "NCHW"),), (TensorSpec("logits", (1, 10)),))
    extra = {} if recipe is None else {"calibration": calibration}
    out = {}
    for target in targets:
        d = root / f"{name}_{target}"
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            out[target] = (get(target).export(model.eval(), spec, recipe, d, (torch.from_numpy(example),), **extra).to_dict(), d)
        except Exception as exc:  # one toolchain failing is a result of the bench, not its end
            out[target] = ({"error": {"code": getattr(exc, "code", "E-EXPORT-FAILED"), "message": f"{type(exc).__name__}: {str(exc)[:300]}"}}, d)
        print(f"  exported {name} to {target} in {time.perf_counter() - t0:.1f} s{' (FAILED)' if 'error' in out[target][0] else ''}", flush=True)
    return out


def run_all(exported: dict[str, dict], targets: list[str], x_test: np.ndarray, y_test: np.ndarray,
            latency_rounds: int, latency_samples: int) -> dict:
    """Accuracy on every test image in each runtime (isolated, 1 thread); latency as the best of
    ``latency_rounds`` medians, the models taking turns so that load from other processes hits both alike."""
    from edgekit.isolate import run_artifact

    results: dict = {name: {} for name in exported}
    for target in targets:
        for name, arts in exported.items():
            if target not in arts:
                continue
            art, d = arts[target]
            if "error" in art:
                results[name][target] = {"error": art["error"]}
                continue
            res = run_artifact(target, art, d, [x_test], threads=1, warmup=20)
            results[name][target] = {"error": res.error} if res.error else {
                "accuracy": float((res.outputs[0].reshape(len(y_test), -1).argmax(-1) == y_test).mean()), "latency_ms": []}
        for _ in range(latency_rounds):
            for name, arts in exported.items():
                if "latency_ms" not in results[name].get(target, {}):
                    continue
                art, d = arts[target]
                res = run_artifact(target, art, d, [x_test[:latency_samples]], threads=1, warmup=50)
                if res.error is None:
                    results[name][target]["latency_ms"].append(res.latency_ms)
        for name in exported:
            r = results[name].get(target, {})
            if r.get("latency_ms"):
                r["latency_rounds_ms"] = [round(v, 4) for v in r["latency_ms"]]
                r["latency_ms"] = min(r["latency_ms"])
                print(f"  {name:10s} {target:10s} acc {r['accuracy']:.4f} latency {r['latency_ms']:.3f} ms", flush=True)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--teacher-epochs", type=int, default=3)
    ap.add_argument("--kd-epochs", type=int, default=3)
    ap.add_argument("--ratio", type=float, default=0.3, help="fraction of channels pruned per layer")
    ap.add_argument("--targets", default="tflite,ncnn,executorch")
    ap.add_argument("--test-limit", type=int, default=10000)
    ap.add_argument("--latency-rounds", type=int, default=5)
    ap.add_argument("--latency-samples", type=int, default=2000)
    ap.add_argument("--train-limit", type=int, default=60000, help="first N training images (2 shared cores: 15000)")
    ap.add_argument("--calib", type=int, default=256, help="INT8: training images to calibrate on")
    ap.add_argument("--no-int8", action="store_true", help="skip the INT8 rows")
    ap.add_argument("--cache", default=None, help="folder: save the trained teacher and pruned+KD student there, "
                                                   "and reuse them on the next run (skips training)")
    ap.add_argument("--qat-steps", type=int, default=0, help="QAT-KD fine-tuning steps of the pruned+KD student (0: none)")
    ap.add_argument("--qat-targets", default="tflite")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training (1: fastest on shared cores)")
    ap.add_argument("--out", default=str(RESULTS / "compress_fashion_mnist"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x_train, y_train = load_fashion("train")
    x_test, y_test = load_fashion("test")
    x_test, y_test = x_test[: args.test_limit], y_test[: args.test_limit]
    x_train, y_train = x_train[: args.train_limit], y_train[: args.train_limit]
    train, test = Pairs(x_train, y_train), Pairs(x_test, y_test)
    example = (x_test[:1],)
    log: dict = {"config": vars(args), "threads": torch.get_num_threads()}

    cached = Path(args.cache) / "models.pt" if args.cache else None
    if cached is not None and cached.is_file():
        saved = torch.load(cached, weights_only=False)
        teacher, student, log = saved["teacher"].eval(), saved["student"].eval(), saved["log"]
        log["config"], log["cache"] = vars(args), f"models loaded from {cached} (trained with config {saved['log']['config']})"
        result_size = SizeChange(ModelSize(**log["teacher"]["size"]), ModelSize(**log["pruned_kd"]["size"]))
    else:
        teacher, student, result_size = train_models(args, train, test, example, log)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"teacher": teacher, "student": student, "log": log}, cached)

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    xt, yt = x_test.numpy()[:, None], y_test.numpy()  # (N, 1, 1, 28, 28): one sample per run
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        exported = {"teacher": export_all(teacher, "teacher", targets, xt[0], Path(tmp)),
                    "pruned_kd": export_all(student, "pruned_kd", targets, xt[0], Path(tmp))}
        if not args.no_int8:
            from edgekit.quant import QuantRecipe

            recipe, cal = QuantRecipe(), calibration_set(x_train, args.calib)
            log["int8"] = {"recipe": recipe.to_dict(), "recipe_summary": recipe.describe(), "calibration": cal.describe()}
            for key, model in (("teacher_int8", teacher), ("pruned_kd_int8", student)):
                exported[key] = export_all(model, key, targets, xt[0], Path(tmp), recipe, cal)
            if args.qat_steps:  # QAT-KD, and as control the same steps of plain KD: the gain is QAT's, not more training
                qat_targets = [t.strip() for t in args.qat_targets.split(",") if t.strip() in targets]
                for key, fake in (("pruned_kd_qat", True), ("pruned_kd_more", False)):
                    tuned = qat_kd(teacher, student, train, test, example, args.qat_steps, log, key, fake)
                    exported[f"{key}_int8"] = export_all(tuned, f"{key}_int8", qat_targets, xt[0], Path(tmp), recipe, cal)
        runs = run_all(exported, targets, xt, yt, args.latency_rounds, args.latency_samples)
    for key, r in runs.items():
        log.setdefault(key, {})["runtimes"] = r
    log["speedup"] = {t: s for t in targets if (s := _speedup(log, "teacher", "pruned_kd", t))}
    log["speedup_vs_teacher_fp32"] = {key: {t: s for t in targets if (s := _speedup(log, "teacher", key, t))}
                                      for key in runs if key != "teacher"}
    log["mac_reduction"] = round(1 / result_size.mac_ratio, 2)
    log["accuracy_drop_points"] = round(100 * (log["teacher"]["torch_accuracy"] - log["pruned_kd"]["torch_accuracy"]), 2)
    write(log, Path(args.out))
    return 0


def train_models(args, train, test, example, log: dict):
    """Teacher from scratch, pruned to <= half its MACs, recovered by KD; -> (teacher, student, SizeChange)."""
    t0 = time.perf_counter()
    teacher = FashionCNN(args.width)
    fit(teacher, train, ce_loss, TrainConfig(epochs=args.teacher_epochs, batch_size=128, lr=3e-3, weight_decay=1e-4, log_every=50))
    teacher.eval()
    log["teacher"] = {"size": measure(teacher, example).to_dict(), "torch_accuracy": evaluate_accuracy(teacher, test),
                      "train_s": round(time.perf_counter() - t0, 1)}
    print("teacher", log["teacher"], flush=True)

    result = prune(teacher, example, PruneConfig(ratio=args.ratio, importance="l2", round_to=8))
    pruned = result.model.eval()
    log["prune"] = result.to_dict()
    log["pruned"] = {"torch_accuracy": evaluate_accuracy(pruned, test)}
    print("pruned", log["prune"]["size"], log["pruned"], flush=True)

    t0 = time.perf_counter()
    distiller = Distiller(teacher, pruned, KDConfig(temperature=4.0, alpha=0.7), example)
    fit(distiller, train, kd_loss_fn, TrainConfig(epochs=args.kd_epochs, batch_size=128, lr=1e-3, weight_decay=1e-4, log_every=50))
    distiller.remove_hooks()
    student = distiller.student.eval()
    log["pruned_kd"] = {"torch_accuracy": evaluate_accuracy(student, test), "train_s": round(time.perf_counter() - t0, 1),
                        "size": measure(student, example).to_dict()}
    print("pruned+kd", log["pruned_kd"], flush=True)
    return teacher, student, result.size


def qat_kd(teacher, student, train, test, example, steps: int, log: dict, key: str, fake: bool = True) -> nn.Module:
    """QAT-style distillation: the pruned+KD student as a fake-quant student (int8 per-channel
    weights, per-tensor inputs), the FP32 teacher, the KD loss; -> the plain float student after.
    fake=False: the same steps of plain KD (the control)."""
    import copy

    from edgekit.compress.qat import QATConfig, fake_quant, strip_fake_quant

    t0 = time.perf_counter()
    fq = fake_quant(copy.deepcopy(student), QATConfig()) if fake else copy.deepcopy(student)
    distiller = Distiller(teacher, fq, KDConfig(temperature=4.0, alpha=0.7), example)
    losses = fit(distiller, train, kd_loss_fn, TrainConfig(epochs=1, batch_size=128, lr=1e-4, max_steps=steps, log_every=50))
    distiller.remove_hooks()
    fq.eval()
    fake_acc = evaluate_accuracy(fq, test)
    out = strip_fake_quant(fq).eval()
    log[key] = {"steps": len(losses), "train_s": round(time.perf_counter() - t0, 1), "fake_quant": fake,
                "torch_accuracy_during": fake_acc, "float_torch_accuracy": evaluate_accuracy(out, test)}
    print(key, log[key], flush=True)
    return out


def _speedup(log: dict, base: str, key: str, target: str) -> float | None:
    a, b = log.get(base, {}).get("runtimes", {}).get(target, {}), log.get(key, {}).get("runtimes", {}).get(target, {})
    if "latency_ms" in a and "latency_ms" in b:
        return round(a["latency_ms"] / b["latency_ms"], 2)
    return None


ROWS = (("teacher", "teacher", "FP32"), ("pruned_kd", "pruned_kd", "FP32"),
        ("teacher_int8", "teacher", "INT8 PTQ"), ("pruned_kd_int8", "pruned_kd", "INT8 PTQ"),
        ("pruned_kd_more_int8", "pruned_kd", "INT8 PTQ after N more KD steps (control)"),
        ("pruned_kd_qat_int8", "pruned_kd", "INT8 PTQ after N QAT-KD steps"))


def write(log: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(log, indent=2))
    os.replace(tmp, out.with_suffix(".json"))
    targets = list(log["teacher"]["runtimes"])
    rows = ["| model | precision | MMACs | params | torch acc | " + " | ".join(f"{t} acc | {t} ms" for t in targets) + " |"]
    rows.append("|" + "---|" * (5 + 2 * len(targets)))
    for key, float_key, precision in ROWS:
        if key not in log:
            continue
        m, size = log[key], log[float_key]["size"]
        acc = f"{100 * m['torch_accuracy']:.2f}" if "torch_accuracy" in m else "-"
        cells = [float_key, precision, f"{size['macs'] / 1e6:.2f}", str(size["params"]), acc]
        for t in targets:
            r = m.get("runtimes", {}).get(t, {})
            cells += [f"{100 * r['accuracy']:.2f}", f"{r['latency_ms']:.3f}" if "latency_ms" in r else "-"] if "accuracy" in r \
                else [f"error {r.get('error', {}).get('code', '?')}" if r else "-", "-"]
        rows.append("| " + " | ".join(cells) + " |")
    int8 = log.get("int8")
    text = "\n".join(rows) + (
        f"\n\npruned (no recovery) torch acc {100 * log['pruned']['torch_accuracy']:.2f}; MAC reduction {log['mac_reduction']}x; "
        f"pruned+KD speedup over the teacher (FP32 both) {log['speedup']}; accuracy drop {log['accuracy_drop_points']} points (torch)\n"
        f"\nspeedup over the FP32 teacher: {log.get('speedup_vs_teacher_fp32', {})}\n")
    if "pruned_kd_qat" in log:
        q, c = log["pruned_kd_qat"], log["pruned_kd_more"]
        text += (f"\nQAT-KD: N = {q['steps']} steps ({q['train_s']} s) of the pruned+KD student with fake-quant weights/inputs against the FP32 "
                 f"teacher; torch accuracy with fake quant {100 * q['torch_accuracy_during']:.2f}, float after {100 * q['float_torch_accuracy']:.2f}. "
                 f"Control: the same {c['steps']} steps of plain KD, float after {100 * c['float_torch_accuracy']:.2f}\n")
    if int8:
        text += f"\nINT8: {int8['recipe_summary']}; calibrated on {int8['calibration']['count']} training images\n"
    text += f"\nconfig: {log['config']}\n"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, out.with_suffix(".md"))


if __name__ == "__main__":
    sys.exit(main())
