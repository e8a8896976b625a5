"""Bench 3: the same small student trained from scratch (hard labels) vs distilled from the teacher
(Hinton KD), same data, steps, optimizer and seed. Fashion-MNIST, test accuracy on 10k images.

    python bench/kd_vs_scratch.py --train-limit 15000 --epochs 2   # writes bench/results/kd_vs_scratch.{json,md}

--teacher-cache PATH reuses the teacher that bench/compress_fashion_mnist.py --cache DIR saved
(DIR/models.pt) instead of training one with the students' budget.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress_fashion_mnist import RESULTS, FashionCNN, Pairs, ce_loss, kd_loss_fn, load_fashion  # noqa: E402

from edgekit.compress.count import measure  # noqa: E402
from edgekit.compress.distill import Distiller, KDConfig  # noqa: E402
from edgekit.compress.train import TrainConfig, evaluate_accuracy, fit  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-width", type=int, default=32)
    ap.add_argument("--student-width", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=60000)
    ap.add_argument("--alpha", type=float, default=0.7, help="KD: weight of the soft (teacher) term")
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--teacher-cache", default=None, help="models.pt written by compress_fashion_mnist.py --cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "kd_vs_scratch"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, y = load_fashion("train")
    train = Pairs(x[: args.train_limit], y[: args.train_limit])
    xt, yt = load_fashion("test")
    test = Pairs(xt, yt)
    example = (xt[:1],)
    budget = TrainConfig(epochs=args.epochs, batch_size=128, lr=3e-3, weight_decay=1e-4, seed=0, log_every=50)
    log: dict = {"config": vars(args)}

    torch.manual_seed(0)
    if args.teacher_cache:
        import __main__

        __main__.FashionCNN = FashionCNN  # the cache pickled the class as the bench script's __main__.FashionCNN
        saved = torch.load(args.teacher_cache, weights_only=False)
        teacher = saved["teacher"].eval()
        log["teacher_source"] = f"{args.teacher_cache}, trained with {saved['log']['config']}"
    else:
        teacher = FashionCNN(args.teacher_width)
        fit(teacher, train, ce_loss, budget)
    log["teacher"] = {"accuracy": evaluate_accuracy(teacher, test), "size": measure(teacher, example).to_dict()}

    for mode in ("scratch", "kd"):
        torch.manual_seed(1)  # same initial student for both
        student = FashionCNN(args.student_width)
        t0 = time.perf_counter()
        if mode == "scratch":
            fit(student, train, ce_loss, budget)
        else:
            d = Distiller(teacher, student, KDConfig(temperature=args.temperature, alpha=args.alpha), example)
            fit(d, train, kd_loss_fn, budget)
            d.remove_hooks()
        log[mode] = {"accuracy": evaluate_accuracy(student, test), "train_s": round(time.perf_counter() - t0, 1),
                     "size": measure(student, example).to_dict()}
        print(mode, log[mode], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(log, indent=2))
    os.replace(tmp, out.with_suffix(".json"))
    md = ["| model | params | MMACs | test acc (10k) |", "|---|---|---|---|"]
    for k in ("teacher", "scratch", "kd"):
        md.append(f"| {k} | {log[k]['size']['params']} | {log[k]['size']['macs'] / 1e6:.2f} | {100 * log[k]['accuracy']:.2f} |")
    tmp = out.with_suffix(".md.tmp")
    teacher_note = f"; teacher from {log['teacher_source']}" if args.teacher_cache else "; teacher trained with the same budget"
    tmp.write_text("\n".join(md) + f"\n\nsame budget: {args.epochs} epochs over {len(train)} images, batch 128, AdamW 3e-3 cosine; "
                                     f"KD T={args.temperature}, alpha={args.alpha}{teacher_note}\n")
    os.replace(tmp, out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
