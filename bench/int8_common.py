"""Shared pieces of the MobileNetV2 INT8 bench scripts: metrics, the platform quantizers, the
documented platform PT2E flow, batched evaluation of a quantized reference, and graph surgery that
un-quantizes chosen q/dq pairs of a convert_pt2e program (for diagnosis: which layers cost most).
"""
from __future__ import annotations

import time

import numpy as np
import torch


def sqnr(out: np.ndarray, ref: np.ndarray) -> float:
    out, ref = out.astype(np.float64), ref.astype(np.float64)
    return float(10 * np.log10((ref ** 2).sum() / max(((out - ref) ** 2).sum(), 1e-30)))


def metrics(out: np.ndarray, fp32: np.ndarray) -> dict:
    out, fp32 = out.reshape(len(out), -1), fp32.reshape(len(fp32), -1)
    return {"top1_agree": round(float((out.argmax(-1) == fp32.argmax(-1)).mean()), 4),
            "sqnr_db": round(sqnr(out, fp32), 2)}


def litert_quantizer():
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    return PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))


def xnnpack_quantizer():
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))


def platform_default(model, example, calib, quantizer, fold: bool = False):
    """The documented PT2E flow with the platform's own observers (no edgekit ranges, no levers)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    gm = torch.export.export(model.eval(), example).module()
    prepared = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for s in calib:
            prepared(*[torch.from_numpy(a) for a in s])
    converted = convert_pt2e(prepared, fold_quantize=fold)
    move_exported_model_to_eval(converted)
    return converted


def unguard(gm):
    """Drop torch.export's input-shape guard so a batch-1 program runs on a batch (every other op
    of MobileNetV2's program is batch-agnostic: flatten(1), mean over H, W)."""
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and "guards" in str(n.target):
            gm.graph.erase_node(n)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def run_batched(gm, samples, batch: int = 32) -> np.ndarray:
    """(N, 1000) outputs of a single-input program, batch by batch (guards removed first)."""
    x = np.concatenate([s[0] for s in samples])
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            y = gm(torch.from_numpy(x[i:i + batch]))
            outs.append((y[0] if isinstance(y, (tuple, list)) else y).numpy())
    return np.concatenate(outs)


def module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0].removeprefix("L['self'].") if stack else ""


def _is_q(n) -> bool:
    return n.op == "call_function" and str(n.target).startswith("quantized_decomposed.quantize_per")


def _from_param(n) -> bool:
    return n.op == "get_attr" or (n.op == "call_function" and bool(n.args) and isinstance(n.args[0], torch.fx.Node)
                                  and n.args[0].op == "get_attr" and "quantize" not in str(n.target))


def qdq_pairs(gm):
    """[(quantize node, [its dequantize users], kind, module path)]; kind 'weight' (or bias) for a
    q/dq on a parameter (path = the consuming op), 'act' for an activation (path = the producer;
    '' for the model input)."""
    out = []
    for n in gm.graph.nodes:
        if not _is_q(n):
            continue
        deqs = [u for u in n.users if "dequantize" in str(u.target)]
        src = n.args[0]
        if _from_param(src):
            users = [u for d in deqs for u in d.users]
            out.append((n, deqs, "weight", module_path(users[0]) if users else ""))
        else:
            out.append((n, deqs, "act", module_path(src) if src.op != "placeholder" else ""))
    return out


def bypass(gm, keep) -> int:
    """Turn off every q/dq pair for which keep(kind, path) is True (its dequantize outputs the float
    input of the quantize). Returns how many pairs were bypassed. Mutates gm."""
    count = 0
    for q, deqs, kind, path in qdq_pairs(gm):
        if keep(kind, path):
            src = q.args[0]
            if kind == "act" and src.op == "call_function" and "relu" in str(src.target):
                # a ReLU6 quantized as ReLU + a range capped at 6 (fuse_relu6): without its q/dq the
                # cap must stay, or the "float" layer would compute ReLU instead of ReLU6
                with gm.graph.inserting_after(src):
                    src = gm.graph.call_function(torch.ops.aten.clamp.default, (src, None, 6.0))
            for d in deqs:
                d.replace_all_uses_with(src)
            count += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return count


class Timer:
    def __enter__(self):
        self.t = time.time()
        return self

    def __exit__(self, *exc):
        self.s = round(time.time() - self.t, 1)


def latency_ms(run, sample, n: int = 30, warmup: int = 3) -> float:
    for _ in range(warmup):
        run(sample)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        run(sample)
        times.append(time.perf_counter() - t)
    return round(float(np.median(times) * 1e3), 3)


_SITE_MODE: dict[int, str] = {}  # activation site index -> "q" | "float" | "clip" | "round" (activation_sites_report)


def _site_fq(x, scale, zp, qmin, qmax, idx, relu):
    """One activation q/dq pair, or a part of it: 'clip' (clamp to the range, no rounding), 'round'
    (rounding on the same step, no clamp), 'float' (neither; a former ReLU6 keeps its cap)."""
    mode = _SITE_MODE.get(idx, "q")
    if relu:
        x = x.clamp(max=6.0) if mode != "q" else x
    if mode == "float":
        return x
    if mode == "clip":
        return x.clamp((qmin - zp) * scale, (qmax - zp) * scale)
    if mode == "round":
        return torch.round(x / scale) * scale
    return (torch.clamp(torch.round(x / scale) + zp, qmin, qmax) - zp) * scale


def activation_sites_report(gm, held, fp32) -> dict:
    """Where the activation-only error of a reference comes from (weights float): all sites rounding
    only / clipping only, then each site alone quantized (sqnr of the logits). Mutates gm."""
    bypass(gm, lambda k, p: k == "weight")
    sites = []
    for q, deqs, kind, path in qdq_pairs(gm):
        if kind != "act":
            continue
        src = q.args[0]
        relu = src.op == "call_function" and "relu" in str(src.target)  # a former ReLU6 (fuse_relu6)
        with gm.graph.inserting_after(deqs[-1]):
            node = gm.graph.call_function(_site_fq, (src, *q.args[1:5], len(sites), relu))
        for d in deqs:
            d.replace_all_uses_with(node)
        lo, hi = (q.args[3] - q.args[2]) * q.args[1], (q.args[4] - q.args[2]) * q.args[1]
        sites.append({"site": len(sites), "path": path or "<input>", "op": str(src.target).split(".")[-2] if src.op == "call_function" else "input",
                      "range": [round(lo, 4), round(hi, 4)]})
    gm.graph.eliminate_dead_code()
    gm.recompile()
    out = {"eval_crops": len(held)}
    for label, mode in (("all sites quantized", "q"), ("all sites rounding only (no clipping)", "round"),
                        ("all sites clipping only (no rounding)", "clip")):
        _SITE_MODE.clear()
        _SITE_MODE.update({s["site"]: mode for s in sites})
        out[label] = metrics(run_batched(gm, held), fp32)
    for s in sites:
        _SITE_MODE.clear()
        _SITE_MODE.update({x["site"]: "float" for x in sites})
        _SITE_MODE[s["site"]] = "q"
        s["alone_sqnr_db"] = metrics(run_batched(gm, held), fp32)["sqnr_db"]
    _SITE_MODE.clear()
    total = sum(10 ** (-s["alone_sqnr_db"] / 10) for s in sites)
    for s in sites:
        s["noise_share"] = round(10 ** (-s["alone_sqnr_db"] / 10) / total, 4)
    out["sites"] = sorted(sites, key=lambda s: -s["noise_share"])
    out["sum_of_alone_noise_sqnr_db"] = round(-10 * np.log10(total), 2)
    return out
