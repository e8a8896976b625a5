"""AdaRound: learned rounding of conv/linear weights (Nagel et al. 2020, "Up or Down? Adaptive
Rounding for Post-Training Quantization"), target-neutral.

Every target re-derives each output channel's symmetric weight scale as max|w| / 127 from the float
weights it is given (PT2E's per-channel observers for tflite/executorch, edgekit's ptl and ncnn
writers; a target whose kernels need a coarser grid may widen some channels and round those again),
after folding BatchNorm into the conv. So ``adaround`` returns a *float* model whose
BatchNorms are folded and whose every rounded weight is already on that grid: w = s * q with q an
integer in -127..127 and the channel's max |q| = 127 (the element that sets the scale is pinned), so
the re-derived scale is s again and every target quantizes exactly to the learned integers.

Per layer, in execution order (``_Layer``):
- inputs X from the partially quantized model (layers before already rounded; with ``act_recipe``
  each rounded layer's input is also fake-quantized at its calibrated int8 range: "asymmetric
  reconstruction", so the weights can compensate upstream error), targets Y from the float model
  (BatchNorm folded), both at ``positions`` output positions drawn once (seeded) from the
  calibration set: the loss is computed on im2col patches of those positions only. Inputs and targets
  of every layer come from one forward of the two models side by side, node by node of the model's fx
  graph over all samples at once, each layer learned when the forward reaches it (``_one_pass``; a
  model that does not trace: forwards that stop at each layer, ``_per_layer``, the same numbers);
- W(V) = s * clamp(floor(w / s) + h(V), -127, 127), h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1),
  V initialised so that h(V) = the fractional part (W(V) = w at the start);
- loss = mean ||W(V) x - y||^2 / (the same for round-to-nearest) + reg_weight * mean * sum(1 - |2 h(V) - 1| ^ beta), the
  regulariser off for the first ``warmup`` of the iterations, then beta annealed from ``beta_start``
  to ``beta_end``; Adam on V (and on the bias when ``learn_bias``);
- the learned integers q = floor + (h(V) >= 0.5) are written back as s * q if they beat round-to-nearest
  on positions of the last quarter of the samples (not learned from); else the nearest integers are
  (on MobileNetV2 the 1.28 M-weight classifier sees only 64 pooled vectors and overfits); a layer with
  fewer than ``min_positions_per_input`` x fan-in output positions is not learned at all (nearest):
  measured on MobileNetV2, learning the 7x7 layers and the classifier lost 2.5-7 dB of logit SQNR.
Deterministic: a seeded generator draws positions and batches, and the work runs on ``threads``
torch threads (1 by default), so the same inputs give the same integers run after run.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.errors import UserError

from .recipe import WEIGHT_SCALE_FLOOR

log = logging.getLogger(__name__)
QMAX = 127  # symmetric int8 weights: -127..127, scale = max|w| / 127
# The PT2E weight observers (litert-torch's and XNNPACK's symmetric configs) floor each channel's scale
# at eps = 2^-12: a channel with max|w| < 127 * 2^-12 ~ 0.031 is quantized on that coarser grid there.
SCALE_FLOOR = WEIGHT_SCALE_FLOOR
ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (the paper's values)
_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class AdaRoundConfig:
    iterations: int = 100  # Adam steps per layer (MobileNetV2: 300 gave 18.39 dB in 49 CPU s, 100 18.36 in 34; bench/adaround_mobilenet_v2.py)
    batch: int = 256  # output positions per step (drawn from ``positions``)
    positions: int = 4096  # output positions per layer kept for the loss (drawn once from 3/4 of the samples; 1/4 of that from the rest: validation)
    reg_weight: float = 0.1  # weight of the rounding regulariser (mean over the weights; rec. loss in units of nearest's)
    beta_start: float = 20.0  # regulariser exponent: annealed from beta_start ...
    beta_end: float = 2.0  # ... to beta_end
    warmup: float = 0.2  # fraction of the iterations without the regulariser
    lr: float = 1e-2  # Adam learning rate for V (and the bias)
    learn_bias: bool = False  # learn the float bias jointly (it stays float / int32 in every target)
    max_samples: int = 64  # calibration samples used at most
    seed: int = 0
    threads: int = 1  # torch threads while learning (1: bit-identical results whatever the machine's count)
    skip: tuple[str, ...] = ()  # module names left as they are (e.g. layers kept float)
    min_positions_per_input: float = 16.0  # learn a layer only if its output positions >= this x its fan-in
    scale_floor: float = SCALE_FLOOR  # smallest channel scale (the PT2E observers' eps); 0: none

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skip"] = list(self.skip)
        return d


def check_config(config: AdaRoundConfig) -> AdaRoundConfig:
    bad = [(n, v) for n, v in (("iterations", config.iterations), ("batch", config.batch),
                               ("positions", config.positions), ("max_samples", config.max_samples),
                               ("threads", config.threads)) if not (isinstance(v, int) and v >= 1)]
    if bad:
        raise UserError("E-ARGS", f"adaround {', '.join(f'{n}={v!r}' for n, v in bad)} must be positive integers",
                        "pass e.g. iterations=300, batch=256, positions=2048")
    if not (config.reg_weight >= 0 and config.lr > 0 and 0 <= config.warmup < 1
            and config.beta_start >= config.beta_end > 0):
        raise UserError("E-ARGS", "adaround needs reg_weight >= 0, lr > 0, 0 <= warmup < 1, beta_start >= beta_end > 0",
                        "use the AdaRoundConfig defaults")
    return config


# ---------------------------------------------------------------- folding BatchNorm
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a conv inside an nn.Sequential (the BN
    becomes Identity). Returns how many were folded."""
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, (nn.Conv1d, nn.Conv2d)) and isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) \
                    and bn.track_running_stats and conv.out_channels == bn.num_features:
                with torch.no_grad():
                    g = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
                        1.0 / torch.sqrt(bn.running_var + bn.eps)
                    conv.weight.mul_(g.reshape(-1, *([1] * (conv.weight.dim() - 1))))
                    b0 = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
                    conv.bias = nn.Parameter((b0 - bn.running_mean) * g + beta)
                seq._modules[b] = nn.Identity()
                folded += 1
    return folded


def _unfolded_bn_convs(model: nn.Module) -> set[str]:
    """Conv modules still followed by a BatchNorm somewhere outside a Sequential: a target would fold
    that BN and move the weights off the grid, so they are not rounded (found by a module graph trace)."""
    if not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules()):
        return set()
    names = {m: n for n, m in model.named_modules()}
    out: set[str] = set()
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001  (any tracing failure: round nothing that might feed a BN)
        raise UserError("E-ARGS", f"adaround cannot tell which convs feed a BatchNorm ({type(exc).__name__}: {exc})",
                        "put each conv and its BatchNorm in one nn.Sequential, or turn adaround off") from exc
    mods = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(mods[node.target], (nn.Conv1d, nn.Conv2d)):
            if any(u.op == "call_module" and isinstance(mods[u.target], (nn.BatchNorm1d, nn.BatchNorm2d)) for u in node.users):
                out.add(names.get(mods[node.target], node.target))
    return out


# ---------------------------------------------------------------- grid helpers
def channel_scales(w: torch.Tensor, floor: float = SCALE_FLOOR) -> torch.Tensor:
    """Per-output-channel symmetric scale max(max|w| / 127, floor) (what the PT2E targets derive;
    ncnn and ptl derive max|w| / 127: the same wherever it is above the floor)."""
    return torch.clamp(w.detach().abs().reshape(w.shape[0], -1).amax(1) / QMAX, min=floor)


def on_grid(w: torch.Tensor, floor: float = SCALE_FLOOR) -> tuple[torch.Tensor, torch.Tensor]:
    """(integers q, scales s) of a weight as a target re-derives them: q = round(w / s)."""
    s = channel_scales(w, floor)
    shape = (-1,) + (1,) * (w.dim() - 1)
    q = torch.round(w.detach() / torch.where(s > 0, s, 1.0).reshape(shape)).clamp(-QMAX, QMAX)
    return q, s


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


class _Rounding:
    """One weight's learnable rounding: floor(w/s) + h(V), the scale-setting element of each channel pinned."""

    def __init__(self, w: torch.Tensor, floor: float):
        w = w.detach().double()
        s = channel_scales(w, floor)
        self.shape = (-1,) + (1,) * (w.dim() - 1)
        self.s = torch.where(s > 0, s, 1.0).reshape(self.shape)
        x = w / self.s
        flat = x.reshape(x.shape[0], -1)
        pin = torch.zeros_like(flat, dtype=torch.bool)
        rows = torch.nonzero(flat.abs().amax(1) >= QMAX * (1 - 1e-6)).flatten()  # channels whose max sets the scale
        pin[rows, flat[rows].abs().argmax(1)] = True  # their max |q| stays exactly 127
        self.pin = pin.reshape(x.shape)
        self.floored = int(flat.shape[0] - len(rows))
        self.fixed = torch.round(x).clamp(-QMAX, QMAX)
        self.floor = torch.floor(x).clamp(-QMAX, QMAX)
        rest = (x - self.floor).clamp(0.0, 1.0)
        p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
        self.v = torch.log(p / (1 - p)).float().requires_grad_(True)
        self.s, self.floor, self.fixed, self.pin = self.s.float(), self.floor.float(), self.fixed.float(), self.pin
        self.free = (~self.pin).float()  # the regulariser's weights (pinned elements: 0)

    def soft(self, h: torch.Tensor) -> torch.Tensor:
        """The weight at h = _h(self.v)."""
        q = torch.clamp(self.floor + h, -QMAX, QMAX)
        return torch.where(self.pin, self.fixed, q) * self.s

    def hard_q(self) -> torch.Tensor:
        q = torch.clamp(self.floor + (_h(self.v) >= 0.5).float(), -QMAX, QMAX)
        return torch.where(self.pin, self.fixed, q.detach())

    def reg(self, h: torch.Tensor, beta: float) -> torch.Tensor:
        return ((1 - (2 * h - 1).abs().pow(beta)) * self.free).sum()


# ---------------------------------------------------------------- capturing layer inputs / outputs
class _Stop(Exception):
    pass


def _layers_in_order(model: nn.Module, sample: tuple, wanted: set[str]) -> list[str]:
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: order.append(n) if n not in order else None)
             for n, m in model.named_modules() if n in wanted]
    try:
        with torch.no_grad():
            model(*sample)
    finally:
        for h in hooks:
            h.remove()
    return order


def _capture(model: nn.Module, name: str, samples, want_output: bool, batch: int = 8) -> list[torch.Tensor]:
    """The input (or output) of module ``name`` on every sample; the forward stops at that module."""
    mod = model.get_submodule(name)
    got: list[torch.Tensor] = []

    def pre(m, args):
        if not want_output:
            got.append(args[0].detach())
            raise _Stop

    def post(m, args, out):
        got.append(out.detach())
        raise _Stop

    hooks = [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        with torch.no_grad():
            for i in range(0, len(samples), batch):
                xs = [torch.cat([samples[j][k] for j in range(i, min(i + batch, len(samples)))])
                      for k in range(len(samples[0]))]
                try:
                    model(*xs)
                except _Stop:
                    pass
    finally:
        for h in hooks:
            h.remove()
    return got


def _patches(mod: nn.Module, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """im2col columns of ``x`` at flat output positions ``idx`` (n * L + l): (len(idx), groups, cin/g * k)."""
    if isinstance(mod, nn.Linear):
        return x.reshape(-1, x.shape[-1])[idx][:, None, :]
    if isinstance(mod, nn.Conv1d):
        x = x[..., None]
        k, st, pd, dl = (mod.kernel_size[0], 1), (mod.stride[0], 1), (mod.padding[0], 0), (mod.dilation[0], 1)
    else:
        k, st, pd, dl = mod.kernel_size, mod.stride, mod.padding, mod.dilation
    if isinstance(pd, str) or mod.padding_mode != "zeros":
        raise UserError("E-ARGS", f"adaround supports zero, numeric conv padding only (got {mod.padding!r}, {mod.padding_mode})",
                        "turn adaround off for this model or skip the layer")
    # gather the patches of the chosen positions only (an im2col of the whole input would take GBs; so
    # would a padded copy): taps that fall in the zero padding read the nearest pixel and are zeroed
    n, c, h, w = x.shape
    oh = (h + 2 * pd[0] - dl[0] * (k[0] - 1) - 1) // st[0] + 1
    ow = (w + 2 * pd[1] - dl[1] * (k[1] - 1) - 1) // st[1] + 1
    b, rest = idx // (oh * ow), idx % (oh * ow)
    r0, c0 = (rest // ow) * st[0] - pd[0], (rest % ow) * st[1] - pd[1]
    taps = []  # each (P, C)
    for i in range(k[0]):
        for j in range(k[1]):
            r, cc = r0 + i * dl[0], c0 + j * dl[1]
            inside = (r >= 0) & (r < h) & (cc >= 0) & (cc < w)
            tap = x[b, :, r.clamp(0, h - 1), cc.clamp(0, w - 1)]
            taps.append(tap if bool(inside.all()) else torch.where(inside[:, None], tap, 0.0))
    sel = torch.stack(taps, dim=2).reshape(len(idx), c * k[0] * k[1])  # unfold's order: channel, then kernel
    return sel.reshape(len(idx), mod.groups, c * k[0] * k[1] // mod.groups)


def _flat_out(mod: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Layer output as (positions, out_channels)."""
    if isinstance(mod, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    return y.reshape(y.shape[0], y.shape[1], -1).permute(0, 2, 1).reshape(-1, y.shape[1])


def _apply(mod: nn.Module, w: torch.Tensor, b: torch.Tensor | None, cols: torch.Tensor) -> torch.Tensor:
    """The layer on im2col columns: (P, G, K) x weight (G*Cg, ...) -> (P, Cout)."""
    g = cols.shape[1]
    wg = w.reshape(g, w.shape[0] // g, -1)  # (G, Cg, K)
    if g == 1:  # dense: one matmul
        out = cols[:, 0] @ wg[0].t()
    elif wg.shape[1] == 1:  # depthwise: a product and a sum over the (few) taps, 1.5-2.5x an einsum's bmm
        out = (cols * wg[:, 0]).sum(-1)
    else:
        out = torch.einsum("pgk,gck->pgc", cols, wg).reshape(cols.shape[0], -1)
    return out + b if b is not None else out


# ---------------------------------------------------------------- activation fake-quant on layer inputs
def _input_ranges(model: nn.Module, names: list[str], samples, act_recipe) -> dict[str, tuple[float, float, str]]:
    """Each layer input's (lo, hi, activation grid) from edgekit's calibrator (the recipe's), on the float model."""
    from .calibrators import TensorStatsCollector, calibrate_ranges

    collector = TensorStatsCollector(act_recipe.bins)

    def feed():  # 8 samples a forward: min/max and histogram counts add up, the same statistics
        with torch.no_grad():
            for i in range(0, len(samples), 8):
                model(*[torch.cat([s[k] for s in samples[i:i + 8]]) for k in range(len(samples[0]))])

    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, args, n=n: collector.observe(n, args[0])) for n in names]
    try:
        ranges = calibrate_ranges(collector, feed, act_recipe, names)
    finally:
        for h in hooks:
            h.remove()
    grid = getattr(act_recipe, "scheme", "int8")
    return {n: (lo, hi, grid) for n, (lo, hi) in ranges.items()}


def input_fake_quant(lo: float, hi: float, grid: str = "int8"):
    """Fake-quantize a layer's input on its scheme's activation grid (recipe.ACTIVATION_GRID): int8
    asymmetric as the PT2E observers place it, or int16x8's symmetric int16 (zero point 0)."""
    from .calibrators import QMAX as AQMAX, QMIN as AQMIN, qparams
    from .recipe import ACTIVATION_GRID

    _, qmin, qmax, symmetric = ACTIVATION_GRID.get(grid, ACTIVATION_GRID["int8"])
    if symmetric:
        scale, zp = max(max(abs(lo), abs(hi)) / qmax, 2.0 ** -24), 0  # the int16 observers' eps (pt2e.activation_spec)
    else:
        (scale, zp), qmin, qmax = qparams(lo, hi), AQMIN, AQMAX

    def hook(mod, args):  # one fused kernel; rounds x * (1 / scale) as the PT2E quantize op does
        return (torch.fake_quantize_per_tensor_affine(args[0], scale, zp, qmin, qmax),) + tuple(args[1:])
    return hook


# ---------------------------------------------------------------- the learning
class _Adam:
    """torch.optim.Adam's update (defaults: betas 0.9, 0.999, eps 1e-8, no weight decay), without its
    per-step bookkeeping: a few hundred steps on one small tensor per layer, where that dominated."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads) -> None:
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1 ** self.t, math.sqrt(1 - b2 ** self.t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m, (v.sqrt() / c2).add_(self.eps), value=-self.lr / c1)


def _learn(mod: nn.Module, cols: torch.Tensor, target: torch.Tensor, val_cols: torch.Tensor, val_target: torch.Tensor,
           config: AdaRoundConfig, gen: torch.Generator) -> dict:
    r = _Rounding(mod.weight, config.scale_floor)
    bias = mod.bias.detach().clone() if mod.bias is not None else None
    params = [r.v]
    if config.learn_bias and bias is not None:
        bias.requires_grad_(True)
        params.append(bias)
    opt = _Adam(params, config.lr)
    wshape = mod.weight.shape
    with torch.no_grad():  # losses in units of round-to-nearest's error on these positions
        nearest = (on_grid(mod.weight, config.scale_floor)[0] * r.s).reshape(wshape)
        norm = (_apply(mod, nearest, mod.bias, cols) - target).pow(2).mean().clamp_min(1e-20)
    n_warm = int(config.warmup * config.iterations)
    for it in range(config.iterations):
        sel = torch.randint(0, cols.shape[0], (min(config.batch, cols.shape[0]),), generator=gen)
        h = _h(r.v)
        out = _apply(mod, r.soft(h).reshape(wshape), bias, cols[sel])
        rec = (out - target[sel]).pow(2).mean() / norm
        if it < n_warm:
            loss = rec
        else:
            t = (it - n_warm) / max(1, config.iterations - n_warm - 1)
            beta = config.beta_end + 0.5 * (config.beta_start - config.beta_end) * (1 + math.cos(math.pi * t))
            loss = rec + config.reg_weight * r.reg(h, beta) / max(1, r.v.numel())
        opt.step(torch.autograd.grad(loss, params))
    q = r.hard_q()
    with torch.no_grad():
        b = bias.detach() if bias is not None else mod.bias

        def rel(w, bb, c, y):
            return float((_apply(mod, w, bb, c) - y).pow(2).mean() / y.pow(2).mean().clamp_min(1e-20))

        new_w = (q * r.s).reshape(wshape)
        row = {"rel_err_nearest": rel(nearest, mod.bias, cols, target), "rel_err_adaround": rel(new_w, b, cols, target),
               "val_rel_err_nearest": rel(nearest, mod.bias, val_cols, val_target),
               "val_rel_err_adaround": rel(new_w, b, val_cols, val_target)}
        # learned integers only where they also beat nearest on positions of samples not learned from
        keep = row["val_rel_err_adaround"] < row["val_rel_err_nearest"]
        mod.weight.copy_(new_w if keep else nearest)
        if keep and config.learn_bias and bias is not None:
            mod.bias.copy_(b)
    row = {k: round(v, 7) for k, v in row.items()}
    return {**row, "kept": "adaround" if keep else "nearest",
            "changed_vs_nearest": round(float((q != r.fixed).float().mean()), 4) if keep else 0.0,
            "floored_channels": r.floored}


def adaround(model: nn.Module, example_inputs: tuple, samples, config: AdaRoundConfig = AdaRoundConfig(),
             act_recipe=None) -> tuple[nn.Module, dict]:
    """Learned rounding of every Conv1d/Conv2d/Linear of a copy of ``model`` (BatchNorm folded first).

    ``samples``: numpy input tuples (the calibration set); ``act_recipe``: a QuantRecipe whose
    calibrator gives each layer input's int8 range (asymmetric reconstruction), or None (weights only).
    Returns (the new float model, a report dict with per-layer relative reconstruction errors)."""
    check_config(config)
    t0 = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _adaround(model, example_inputs, samples, config, act_recipe, t0)
    finally:
        torch.set_num_threads(threads)


def _adaround(model, example_inputs, samples, config, act_recipe, t0):
    fp = copy.deepcopy(model).eval()
    n_bn = fold_batchnorm(fp)
    samples = [tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in s) for s in list(samples)[: config.max_samples]]
    if not samples:
        raise UserError("E-DATA-EMPTY", "adaround got no calibration samples", "pass the calibration set (--data)")
    unknown = [s for s in config.skip if not any(n == s or n.startswith(s + ".") for n, _ in fp.named_modules())]
    if unknown:
        raise UserError("E-ARGS", f"adaround skip {unknown} names no module", "name modules of the model")
    blocked = _unfolded_bn_convs(fp)
    skipped = {n for n, _ in fp.named_modules() if any(n == s or n.startswith(s + ".") for s in config.skip)}
    wanted = {n for n, m in fp.named_modules() if isinstance(m, _LAYER_TYPES) and n not in blocked | skipped}
    order = _layers_in_order(fp, tuple(torch.as_tensor(x) for x in example_inputs), wanted)
    ranges = _input_ranges(fp, order, samples, act_recipe) if act_recipe is not None else {}
    qm = copy.deepcopy(fp)
    gen = torch.Generator().manual_seed(config.seed)
    layers: list[dict] = []

    def visit(name: str, xq: torch.Tensor, y: torch.Tensor, t: float) -> None:
        row = _round_layer(qm.get_submodule(name), fp.get_submodule(name), xq, y, len(samples), config, gen)
        row.update({"layer": name, "seconds": round(time.time() - t, 2)})
        layers.append(row)
        log.info("adaround %s: %s", name, row)

    graph = _graph(fp)
    if graph is not None and _one_pass(graph, fp, qm, samples, order, ranges, visit):
        capture = "one pass (fx graph)"
    else:  # not traceable: each layer's input and target from forwards that stop at it
        capture = "a forward per layer"
        _per_layer(fp, qm, samples, order, ranges, visit)
    report = {"config": config.to_dict(), "layers": layers, "batchnorm_folded": n_bn,
              "not_rounded": sorted(blocked | (skipped & {n for n, m in fp.named_modules() if isinstance(m, _LAYER_TYPES)})),
              "activation_ranges": "calibrated (asymmetric reconstruction)" if ranges else "float inputs (weights only)",
              "capture": capture, "seconds": round(time.time() - t0, 1)}
    return qm, report


def _round_layer(mod_q: nn.Module, mod_f: nn.Module, xq: torch.Tensor, y_out: torch.Tensor, n_samples: int,
                 config: AdaRoundConfig, gen: torch.Generator) -> dict:
    """Round one layer of the quantized model in place from its inputs ``xq`` (all samples, upstream
    layers rounded, fake-quantized) and the float model's outputs ``y_out``; its report row."""
    y = _flat_out(mod_f, y_out)
    per = y.shape[0] // n_samples  # output positions per sample
    n_train = n_samples - n_samples // 4 if n_samples >= 4 else n_samples  # last quarter: validation
    first_val = n_train if n_train < n_samples else 0  # (under 4 samples: validated on the learned ones)
    idx = first_val * per + torch.randperm((n_samples - first_val) * per, generator=gen)[: max(1, config.positions // 4)]
    val_cols, val_y = _patches(mod_q, xq, idx.sort().values), y[idx.sort().values]
    idx = torch.randperm(n_train * per, generator=gen)[: config.positions].sort().values
    cols = _patches(mod_q, xq, idx)
    if n_train * per >= config.min_positions_per_input * mod_q.weight[0].numel():
        with torch.enable_grad():
            row = _learn(mod_q, cols, y[idx], val_cols, val_y, config, gen)
    else:  # too few positions for its fan-in (MobileNetV2's 7x7 layers, the classifier): overfits
        with torch.no_grad():
            q, sc = on_grid(mod_q.weight, config.scale_floor)
            mod_q.weight.copy_(q * sc.reshape(-1, *[1] * (q.dim() - 1)))
        row = {"kept": "nearest (too few positions)", "changed_vs_nearest": 0.0}
    row.update({"weights": mod_q.weight.numel(), "positions": len(idx)})
    return row


def _graph(fp: nn.Module):
    """The model's fx graph (leaf modules as call_module nodes), or None when it does not trace."""
    try:
        return torch.fx.symbolic_trace(fp).graph
    except Exception:  # noqa: BLE001  (data-dependent control flow etc.: the per-layer capture works on any model)
        return None


def _one_pass(graph, fp: nn.Module, qm: nn.Module, samples, order: list[str], ranges: dict, visit) -> bool:
    """One forward of the float and of the quantized model side by side, node by node over all samples
    at once: at the first call of each layer to round, ``visit`` learns it from the quantized model's
    input (upstream layers already rounded) and the float model's output, then the quantized model goes
    on with the rounded layer. The same inputs and targets as a forward per layer, at the cost of one.
    False (nothing rounded) when the graph's layers are not ``order`` (then the per-layer capture runs)."""
    nodes, wanted = list(graph.nodes), set(order)
    calls = [n.target for n in nodes if n.op == "call_module" and n.target in wanted]
    if list(dict.fromkeys(calls)) != order:
        return False
    last = {}
    for i, n in enumerate(nodes):
        for a in n.all_input_nodes:
            last[a] = i
    xs = [torch.cat([s[k] for s in samples]) for k in range(len(samples[0]))]
    env_f: dict = {}
    env_q: dict = {}
    done: set[str] = set()
    fq = {name: input_fake_quant(*r) for name, r in ranges.items()}
    placeholders = 0
    with torch.no_grad():
        for i, n in enumerate(nodes):
            if n.op == "output":
                break
            t = time.time()
            af, kf = torch.fx.node.map_arg((n.args, n.kwargs), lambda a: env_f[a])
            aq, kq = torch.fx.node.map_arg((n.args, n.kwargs), lambda a: env_q[a])
            if n.op == "placeholder":
                if placeholders < len(xs):
                    of = oq = xs[placeholders]
                elif n.args:  # an argument with a default value
                    of = oq = n.args[0]
                else:
                    raise UserError("E-ARGS", f"adaround got {len(xs)} inputs, the model takes more",
                                    "pass every input in each calibration sample")
                placeholders += 1
            elif n.op == "get_attr":
                of, oq = _attr(fp, n.target), _attr(qm, n.target)
            elif n.op == "call_function":
                of, oq = n.target(*af, **kf), n.target(*aq, **kq)
            elif n.op == "call_method":
                of, oq = getattr(af[0], n.target)(*af[1:], **kf), getattr(aq[0], n.target)(*aq[1:], **kq)
            else:  # call_module
                if n.target in fq:  # this layer's input is fake-quantized (in the quantized model)
                    aq = fq[n.target](None, aq)
                of = fp.get_submodule(n.target)(*af, **kf)
                if n.target in wanted and n.target not in done:
                    visit(n.target, aq[0], of, t)
                    done.add(n.target)
                oq = qm.get_submodule(n.target)(*aq, **kq)
            env_f[n], env_q[n] = of, oq
            for a in n.all_input_nodes:  # free what no later node reads
                if last.get(a) == i:
                    del env_f[a], env_q[a]
    return True


def _attr(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _per_layer(fp: nn.Module, qm: nn.Module, samples, order: list[str], ranges: dict, visit) -> None:
    """Layer by layer, its input and target from forwards of the quantized and float models that stop
    at it (any model; a forward per layer)."""
    hooks = []
    try:
        for name in order:
            t = time.time()
            if name in ranges:  # this layer's input is fake-quantized from now on (in the quantized model)
                hooks.append(qm.get_submodule(name).register_forward_pre_hook(input_fake_quant(*ranges[name])))
            # the input after this layer's fake-quant pre-hook (pre-hooks run in registration order)
            xq = torch.cat(_capture(qm, name, samples, want_output=False))
            y = torch.cat(_capture(fp, name, samples, want_output=True))
            visit(name, xq, y, t)
            del xq, y
    finally:
        for h in hooks:
            h.remove()


# ---------------------------------------------------------------- the one entry point every target calls
_MEMO: dict[str, tuple[dict, dict]] = {}  # cache key -> (state_dict, report); the last few results of this process
_MEMO_SIZE = 2
_FORMAT = "edgekit-adaround-1"  # the on-disk layout (_save / _load)
_ALGORITHM = 3  # part of the cache key: bump when the same config would learn different integers


def _cache_key(model: nn.Module, samples, config: AdaRoundConfig, act_recipe) -> str:
    import hashlib

    from .state_cache import hash_model_and_samples

    h = hashlib.sha256()
    hash_model_and_samples(h, model, list(samples)[: config.max_samples])
    # the activation grid too (scheme): the layer inputs are fake-quantized on it while learning
    acts = None if act_recipe is None else (act_recipe.calibrator, act_recipe.percentile, act_recipe.bins,
                                            getattr(act_recipe, "scheme", "int8"))
    h.update(repr((sorted(config.to_dict().items()), acts, torch.__version__, _ALGORITHM)).encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """Where round_weights keeps learned roundings when its caller names no folder:
    ``$EDGEKIT_CACHE_DIR/adaround``, else ``$EDGEKIT_CACHE/adaround`` (the variable edgekit.arm reads),
    else ``~/.cache/edgekit/adaround``."""
    from .state_cache import cache_dir

    return cache_dir("adaround")


def _save(path: Path, key: str, state: dict, report: dict) -> None:
    """One .npz per key, no pickle (edgekit.quant.state_cache)."""
    from .state_cache import save

    save(path, _FORMAT, key, state, report)


def _load(path: Path, key: str, like: dict) -> tuple[dict, dict] | None:
    """(state dict, report) from a file _save wrote for ``key``, or None when it is missing, truncated,
    corrupt, for another key or does not fit the model (``like``: the BN-folded model's state dict)."""
    from .state_cache import load

    return load(path, _FORMAT, key, like)


def round_weights(model: nn.Module, example_inputs: tuple, samples, recipe, cache_dir=None,
                  config: AdaRoundConfig | None = None) -> tuple[nn.Module, dict]:
    """The float model every target quantizes: ``model`` itself for rounding="nearest"; for
    "adaround", a copy with BatchNorm folded and learned on-grid weights (layers the recipe keeps float
    are skipped; layer inputs fake-quantized with the recipe's calibrator). Results are cached per
    content hash of (weights, calibration samples, config, calibrator, torch version) in this process
    and on disk, in ``cache_dir`` (None: ``default_cache_dir()``; False: no disk cache), so one export
    job learns once for all of its targets and a re-export of the same model, data and recipe learns
    nothing. ``config``: the AdaRoundConfig to start from (default: AdaRoundConfig()); the recipe sets
    its skip and caps its max_samples."""
    from .recipe import keep_float_modules

    if recipe.rounding == "nearest":
        return model, {}
    base = config or AdaRoundConfig()
    config = replace(base, max_samples=min(base.max_samples, recipe.max_samples),
                     skip=tuple(sorted(set(base.skip) | set(keep_float_modules(model, recipe)))))
    samples = list(samples)[: config.max_samples]
    key = _cache_key(model, samples, config, recipe)
    if cache_dir is False:
        path = None
    else:
        path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"adaround-{key[:32]}.npz"
    hit = _MEMO.get(key)
    out = None
    if hit is None and path is not None:
        out = copy.deepcopy(model).eval()
        fold_batchnorm(out)
        hit = _load(path, key, out.state_dict())
        if hit is not None:
            _remember(key, hit)
    if hit is not None:
        if out is None:
            out = copy.deepcopy(model).eval()
            fold_batchnorm(out)
        out.load_state_dict(hit[0])
        return out, {**hit[1], "cached": True}
    out, report = adaround(model, example_inputs, samples, config, act_recipe=recipe)
    state = {k: v.detach().clone() for k, v in out.state_dict().items()}
    _remember(key, (state, report))
    from .state_cache import store

    store(path, _FORMAT, key, state, report)  # a failure (a read-only or full disk): the next job learns again
    return out, {**report, "cached": False}


def _remember(key: str, hit: tuple[dict, dict]) -> None:
    _MEMO[key] = hit
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.pop(next(iter(_MEMO)))


def describe(report: dict) -> str:
    """One line for a quantization report's notes."""
    if not report:
        return ""
    layers = report["layers"]
    learned = [r for r in layers if "val_rel_err_nearest" in r]
    near = float(np.mean([r["val_rel_err_nearest"] for r in learned])) if learned else 0.0
    ada = float(np.mean([min(r["val_rel_err_adaround"], r["val_rel_err_nearest"]) for r in learned])) if learned else 0.0
    kept = sum(r["kept"] == "adaround" for r in layers)
    src = "cached" if report.get("cached") else f"{report['seconds']} s"
    return (f"AdaRound on {len(layers)} conv/linear layers, learned rounding kept on {kept} ({src}; BatchNorm folded: "
            f"{report['batchnorm_folded']}; mean held-out layer error vs float {near:.2e} -> {ada:.2e})")
