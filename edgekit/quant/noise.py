"""A quantized reference's own rounding noise, and the fidelity verdict that accounts for it.

Reproducibility of a quantized reference. A runtime computes the reference's float ops with other
summation orders and its integer kernels round the requantizations with other float arithmetic, so a
value that the simulation puts just below a rounding boundary can land just above it: one output step
apart. Each such flip moves the next layer's inputs by a step, which flips about sqrt(C) of its
outputs, and so on: in a deep network the flips cascade until the runtime's and the reference's
rounding noise are independent draws. The output difference is then of the order of the quantization
noise itself, whatever the runtime. Measured on the model-coverage bench (timm, random weights, BN
re-estimated on photos), INT8 fidelity SQNR is mostly INT8-vs-FP32 SQNR + 1-6 dB, on every target and
quantizer (executorch: MobileNetV2 15.0 vs 12.6 dB, ResNet18 29.9 vs 26.6, DeiT-tiny 16.4 vs 10.4,
EfficientFormerV2-S0 18.0 vs 12.2, MobileViTv2-050 6.3 vs 1.5; tflite, with its own quantizer, 7.0 vs
1.6 on MobileViTv2), so a model whose INT8 is far from FP32 misses a fixed output-level bound on any
runtime. No op of those models was found to compute differently from the reference: onnxruntime
running the same Q/DQ graph with every op in float (graph optimizations disabled, no integer kernel)
is 0.039 (EfficientFormerV2) and 0.056 (MobileViTv2) away from it, against bounds of 0.095 and 0.039;
op by op (EfficientFormerV2), that float run differs by one step in a few elements of the first
convs, then in 0.07% (5th conv), 1% (11th), 13% (19th) ... 80% of the elements, growing steadily with
depth, with no op adding a systematic error.

So the reference is measured against itself. A *twin* is the reference computed as a runtime would
differ from it: convolutions and matrix products accumulated exactly (float64, as an int32
accumulator is exact, where the reference sums dequantized products in float32), every other float
op's result moved by 4 float32 ulps with random signs (vectorised exp/erf/tanh/rsqrt kernels are
accurate to a few ulps), quantize/dequantize untouched. Twins are compared with the reference exactly
as the artifact is (``edgekit.parity.compare``). On a well-conditioned model they land within an
output step; on an ill-conditioned one they land as far as the runtimes do. When an artifact misses
its fixed bound, ``noise_tolerance`` widens each criterion to MARGIN x what the worst of three twins
reached, never narrower than the fixed bound, and `edgekit verify` judges it again. That alone could
hide a fault as large as the noise (measured: a sign-flipped weight in the 11th conv of a chaotic
20-layer stack moves tflite from 38 to 50 output steps, inside the widened bound of 52), so the
artifact passes only when its target's per-layer view also ran and found every layer within its step
bound (that view flags the flipped conv at 67 steps); a target without one (mnn), or whose view
could not run, keeps the fail, with the noise figures in its note.

Ulp-level twins alone under-estimate the noise of real kernels, which round a small fraction of a
layer's values the other way (a softmax or GELU table, another requantization order). So the twins
also flip, at each layer, the fraction of int8 values the target's per-layer view measured its
kernel rounding differently on the reference's own input (``flip_rates``), capped at FLIP_CAP: a
kernel flipping more than that is not rounding noise (an XNNPACK bias at the wrong scale flipped 42%
of a conv's values). Measured on EfficientFormerV2-S0 INT8 (random init, BatchNorm re-estimated,
16 photos): ulp twins alone reach cosine 0.991 where onnx is at 0.977 and executorch at 0.980, a
fail; with the measured flips (onnx: 62 layers, at most 2.0% of a QLinearSoftmax's values;
executorch: 57 layers, at most 0.16%) the twins reach 0.978, and both pass with every one of their
220 layers within 1 step. MobileViTv2-050's ulp twins already reach cosine 0.79-0.89 and 38-75
output steps.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

TWIN_SEEDS = (1, 2, 3)  # twins per verdict
TWIN_REL = 2.0 ** -21  # 4 float32 ulps: vectorised exp/erf/tanh/rsqrt kernels are accurate to a few ulps, not to one
MARGIN = 2.0  # an artifact is one more draw of that noise, over other samples than the twins' worst: room for it
FLIP_CAP = 0.05  # a kernel rounding more than 5% of a layer's values the other way is not rounding noise
_ACCUMULATING = {"conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d", "linear",
                 "matmul", "mm", "bmm", "addmm", "baddbmm", "einsum"}  # aten ops an int8 kernel accumulates in int32
_UNPERTURBED = ("quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel", "dequantize_per_channel",
                "getitem", "choose_qparams")


def twin(module: torch.fx.GraphModule, seed: int, rel: float = TWIN_REL, flips: dict[str, float] | None = None):
    """A callable computing ``module`` as an integer runtime would differ from it: convolutions and
    matrix products accumulated exactly (float64, one rounding to float32 at the end, as an int32
    accumulator does), every other float op's result moved by a relative ``rel`` with random signs
    drawn from ``seed``; quantize/dequantize ops untouched, except that the int8 output of each
    quantize node named in ``flips`` has that fraction of its values moved one step (random places,
    random signs): the rate at which the target's own kernel for that layer was measured to round
    the other way (``flip_rates``)."""
    from torch.utils._pytree import tree_map

    gen = torch.Generator().manual_seed(seed)
    flips = flips or {}

    def wide(v):
        return v.double() if isinstance(v, torch.Tensor) and v.dtype == torch.float32 else v

    def narrow(v):
        return v.float() if isinstance(v, torch.Tensor) and v.dtype == torch.float64 else v

    class Twin(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            rate = flips.get(n.name)
            if rate and isinstance(out, torch.Tensor) and out.dtype == torch.int8:
                moved = torch.rand(out.shape, generator=gen) < rate
                step = torch.randint(0, 2, out.shape, generator=gen, dtype=torch.int16) * 2 - 1
                flipped = (out.to(torch.int16) + step).clamp(int(n.args[3]), int(n.args[4])).to(torch.int8)
                out = torch.where(moved, flipped, out)
            return out

        def call_function(self, target, args, kwargs):
            name = str(target)
            if name.split(".")[1:2] and name.split(".")[1] in _ACCUMULATING:
                return tree_map(narrow, target(*tree_map(wide, args), **tree_map(wide, kwargs)))
            out = super().call_function(target, args, kwargs)
            if isinstance(out, torch.Tensor) and out.dtype == torch.float32 and not any(k in name for k in _UNPERTURBED):
                sign = torch.randint(0, 2, out.shape, generator=gen).to(out.dtype) * 2 - 1
                out = out * (1 + rel * sign)
            return out

    def run(*args):  # the graph's output node gives the flat leaves, in the order the module's pytree has them
        return tuple(torch.utils._pytree.tree_leaves(Twin(module).run(*args)))

    return run


def flip_rates(module, per_layer: list[dict]) -> dict[str, float]:
    """Quantize node of the reference -> the fraction of its int8 values the target's kernel rounds
    the other way, from the target's per-layer view (a row within 1 step: its mean step is that
    fraction), capped at FLIP_CAP."""
    from .per_layer import producer, q_nodes

    rows = {r["layer"]: r for r in per_layer if r.get("max_steps") is not None and r["max_steps"] <= 1.0}
    rates = {}
    for q in q_nodes(module):
        row = rows.get(producer(q).name)
        if row and row.get("mean_steps"):
            rates[q.name] = min(float(row["mean_steps"]), FLIP_CAP)
    return rates


def twin_outputs(module, samples, seed: int, rel: float = TWIN_REL, flips: dict[str, float] | None = None) -> list[np.ndarray]:
    """A twin's stacked float32 outputs on ``samples`` (numpy input tuples), as ``run_reference`` gives
    the reference's; one torch thread, so deterministic."""
    from edgekit.reference import run_reference

    from .calibrators import one_torch_thread

    with one_torch_thread():
        return run_reference(twin(module, seed, rel, flips), samples)


def reference_noise(module, samples, rel: float = TWIN_REL, seed: int = 0) -> dict:
    """Summary of one twin against the reference on ``samples``: max_abs, ref_max_abs, max_abs_rel
    (max_abs / ref_max_abs) and cosine_min over the float outputs; all 0/1 for a reference that no
    rounding difference moves."""
    from edgekit.reference import run_reference

    from .calibrators import one_torch_thread

    with one_torch_thread():
        plain = run_reference(module, samples)
    worst, ref_max, cos_min = 0.0, 0.0, 1.0
    for a, b in zip(plain, twin_outputs(module, samples, seed, rel)):
        a, b = a.astype(np.float64).reshape(len(a), -1), b.astype(np.float64).reshape(len(b), -1)
        worst, ref_max = max(worst, float(np.abs(a - b).max())), max(ref_max, float(np.abs(a).max()))
        denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = np.where(denom > 0, (a * b).sum(axis=1) / np.where(denom > 0, denom, 1), 1.0)
        cos_min = min(cos_min, float(cos.min()))
    return {"max_abs": worst, "ref_max_abs": ref_max, "max_abs_rel": worst / ref_max if ref_max > 0 else 0.0,
            "cosine_min": cos_min, "samples": len(samples), "rel": rel}


def noise_tolerance(tol, twins: list) -> tuple:
    """(Tolerance, TaskTolerance): ``tol`` and the task criteria it implies (``task_tolerance``) widened
    to MARGIN x the worst the twins (ParityResults of twin outputs vs the reference, judged with
    ``tol``) reached on each criterion, never narrower than the fixed ones."""
    from edgekit.tasks import task_tolerance

    m = [o for t in twins for o in t.outputs]
    dets = [t.detection for t in twins if t.detection is not None]
    steps = [o.max_steps for o in m if o.max_steps is not None and np.isfinite(o.max_steps)]
    widened = replace(
        tol,
        max_abs_rel=max([tol.max_abs_rel, *(MARGIN * o.max_abs_rel for o in m if np.isfinite(o.max_abs_rel))]),
        min_cosine=max(-1.0, min([tol.min_cosine, *(1 - MARGIN * (1 - o.cosine_min) for o in m)])),
        min_top1=max(0.0, min([tol.min_top1, *(1 - MARGIN * (1 - o.top1_agreement) for o in m if o.top1_agreement is not None)])),
        max_steps=None if tol.max_steps is None else max([tol.max_steps, *(MARGIN * s for s in steps)]))
    tt = task_tolerance(tol)
    agreements = [o.pixel_agreement for o in m if o.pixel_agreement is not None] + [d.matched_fraction for d in dets] \
        + [d.label_agreement for d in dets if d.label_agreement is not None]
    task = replace(
        tt,
        min_agreement=max(0.0, min([tt.min_agreement, *(1 - MARGIN * (1 - a) for a in agreements)])),
        min_mean_iou=max(0.0, min([tt.min_mean_iou, *(1 - MARGIN * (1 - d.mean_iou) for d in dets if d.mean_iou is not None)])),
        max_score_err_rel=max([tt.max_score_err_rel, *(MARGIN * d.score_err_rel for d in dets if np.isfinite(d.score_err_rel))]),
        max_rel_error=max([tt.max_rel_error, *(MARGIN * o.rel_error for o in m if o.rel_error is not None)]))
    return widened, task


def noise_figures(tol, widened, twins: list) -> dict:
    """The report's record of a noise-judged verdict (JSON-safe); ``widened``: ``noise_tolerance``'s pair."""
    from dataclasses import asdict

    from edgekit.tasks import task_tolerance

    widened, task = widened
    worst = [t.summary_metrics() for t in twins]
    return {"twins": len(twins), "rel": TWIN_REL, "margin": MARGIN,
            "twin_max_abs_rel": max((w.get("max_abs_rel", 0.0) for w in worst), default=0.0),
            "twin_cosine_min": min((w.get("cosine_min", 1.0) for w in worst), default=1.0),
            "twin_max_steps": max((w.get("max_steps") or 0.0 for w in worst), default=0.0),
            "fixed": {"max_abs_rel": tol.max_abs_rel, "min_cosine": tol.min_cosine, "min_top1": tol.min_top1,
                      "max_steps": tol.max_steps},
            "widened": {"max_abs_rel": widened.max_abs_rel, "min_cosine": widened.min_cosine,
                        "min_top1": widened.min_top1, "max_steps": widened.max_steps},
            **({"task_fixed": asdict(task_tolerance(tol)), "task_widened": asdict(task)}
               if task != task_tolerance(tol) else {})}
