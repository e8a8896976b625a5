"""Model coverage: which architectures that app teams ship export and verify on which target.

    python bench/model_coverage.py                                  # FP32, every model
    python bench/model_coverage.py --precision int8 --models resnet18,efficientnet_lite0
    python bench/model_coverage.py --precision both --models bert_mini --out bench/results
    python bench/model_coverage.py --precision int8 --models int8-priority --keep /tmp/b  # keep the bundles
    python bench/model_coverage.py --targets ptl-nnapi --models resnet18   # re-run some cells of a row
    python bench/model_coverage.py --report                         # only regenerate the .md from the .json

Needs, beyond edgekit[all] (transformers comes with it), timm and torchvision in bench/.vendor
(never in site-packages: the registry's torchvision is a CUDA build that does not import on the
CPU torch, and an installed torchvision or timm changes what transformers imports):

    pip install -c constraints.txt --no-deps --target bench/.vendor -r bench/requirements-coverage.txt

Every model is an architecture from a package on the registries (timm, transformers), none written
here, built with random weights after ``torch.manual_seed(0)`` (no download). Inputs are real: the
48 photos of calibration_data/images preprocessed at 224 (ImageNet normalisation) and the first 48
sentences of calibration_data/text tokenized to 128 tokens with the MiniLM tokenizer edgekit ships.
Random BatchNorm statistics are re-estimated on photos 1-32 (the INT8 calibration part; the held-out
photos 33-48 stay unseen) so outputs depend on the input; zero/tiny residual gains (zero-init BN
gammas, 1e-6 layer scales) are set to 1 unless that makes the model's own float32 noise exceed
1e-5 of its output; re-parameterizable blocks (RepVGG, MobileOne, FastViT) are fused as they ship. Each model is exported with the public API, one call per
precision: ``edgekit.export(module, example, targets=[...], data=samples, quant=..., samples=16)``,
in its own subprocess (a crash or a hang costs one row, not the bench). Results are merged into
``<out>/model_coverage.json`` (partial runs accumulate) and ``<out>/model_coverage.md`` is rebuilt
from it every time (for bench/results, also the tables in docs/model-coverage.md). See that page.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENDOR = HERE / ".vendor"
RESULTS = HERE / "results"
IMAGES = ROOT / "calibration_data" / "images"
TEXT = ROOT / "calibration_data" / "text"
N_SAMPLES = 48  # photos / sentences loaded per model
BN_PHOTOS = 32  # BatchNorm statistics come from these (= the INT8 calibration part)
VERIFY_SAMPLES = 16
TIMEOUT_S = 600  # per runtime subprocess (edgekit's timeout_s)
WORKER_TIMEOUT_S = {"fp32": 1200, "int8": 1800}  # one model, one precision, everything included
TARGETS = {"fp32": ["tflite", "ptl", "ncnn", "executorch", "onnx", "ptl-nnapi"],
           "int8": ["tflite", "ptl", "ncnn", "executorch", "onnx"]}
TABLE_TARGETS = ["tflite", "ptl", "ncnn", "executorch", "onnx", "ptl-nnapi"]

# timm names (1.0.31). Mobile CNNs, then hybrids and vision transformers.
TIMM = [
    "mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv3_small_100", "mobilenetv4_conv_small",
    "efficientnet_b0", "efficientnet_lite0", "mnasnet_100", "ghostnet_100", "lcnet_050", "fbnetc_100",
    "mixnet_s", "rexnet_100", "regnety_002", "regnetx_002", "resnet18", "repvgg_a0", "mobileone_s0",
    "tinynet_e", "hardcorenas_a", "convnext_atto", "edgenext_xx_small", "mobilevit_xxs", "mobilevitv2_050",
    "levit_128s", "efficientformerv2_s0", "fastvit_t8", "deit_tiny_patch16_224", "vit_tiny_patch16_224",
]
# transformers, built from a config (no download); name -> one-line description
HF = {
    "segformer_b0": "SegformerForSemanticSegmentation, MiT-b0 config, 150 classes (ADE20k head): logits (1, 150, 56, 56)",
    "yolos_tiny": "YolosForObjectDetection, yolos-tiny config (12 x 192, 100 detection tokens) at 224x224: logits + pred_boxes",
    "bert_mini": "BertModel, bert-mini geometry (4 layers x 256, 4 heads), eager attention: last_hidden_state + pooler_output",
    "bert_mini_sdpa": "the same BertModel with transformers' default attention (sdpa)",
    "distilbert_small": "DistilBertModel, 4 layers x 256, 4 heads, eager attention: last_hidden_state",
    "mobilebert_6l": "MobileBertModel, default MobileBERT geometry (512 hidden, 128 bottleneck, NoNorm) cut to 6 layers, eager: last_hidden_state + pooler_output",
    "albert_small": "AlbertModel, 4 layers x 256 (shared), 128 embedding, eager: last_hidden_state + pooler_output",
}
MODELS = [*TIMM, *HF]
INT8_PRIORITY = ["mobilenetv3_large_100", "efficientnet_lite0", "efficientnet_b0", "regnety_002", "resnet18",
                 "convnext_atto", "deit_tiny_patch16_224", "mobilevit_xxs", "bert_mini", "segformer_b0"]

# torchvision's operator schemas (csrc/ops/*.cpp). Declared before `import torchvision` so its
# pure-Python modules import against the CPU torch, whose registry lacks its compiled ops; none of
# these ops is used by the models here (calling one would fail: no kernel).
TORCHVISION_SCHEMAS = [
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, bool aligned) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) -> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) -> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "qroi_align(Tensor input, Tensor rois, float input_scale, int input_zero_point, float rois_scale, int rois_zero_point, float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
]
_TV_LIB = None


def import_timm():
    """timm (and the torchvision it imports) from bench/.vendor, in this process only."""
    global _TV_LIB
    import torch

    if not (VENDOR / "timm").is_dir():
        sys.exit(f"timm is not in {VENDOR}: pip install -c constraints.txt --no-deps --target bench/.vendor "
                 "-r bench/requirements-coverage.txt")
    if str(VENDOR) not in sys.path:
        sys.path.insert(0, str(VENDOR))
    if _TV_LIB is None:
        try:
            torch.ops.torchvision.nms  # noqa: B018  (present when a working torchvision is installed)
        except (AttributeError, RuntimeError):
            _TV_LIB = torch.library.Library("torchvision", "DEF")
            for schema in TORCHVISION_SCHEMAS:
                _TV_LIB.define(schema)
    import timm

    return timm


# ---------------------------------------------------------------------------------------------
# building models and inputs (worker side)

def image_samples():
    """The 48 photos as (48, 3, 224, 224) float32: resize 256, center crop 224, ImageNet mean/std."""
    from edgekit.data import load_samples
    from edgekit.spec import ImagePreprocess, ModelSpec, TensorSpec

    spec = ModelSpec("photos", (TensorSpec("image", (1, 3, 224, 224), "float32", "NCHW"),), (TensorSpec("out", (1,)),),
                     ImagePreprocess(256, 224))
    import numpy as np

    cal = load_samples(IMAGES, spec, limit=N_SAMPLES)
    return np.concatenate([s[0] for s in cal.samples])


def text_samples():
    """The first 48 sentences as a list of (input_ids, attention_mask), each (1, 128) int64,
    tokenized exactly as edgekit's built-in MiniLM (its WordPiece tokenizer, padded to 128)."""
    from edgekit.data import load_samples
    from edgekit.models.minilm import model_dir
    from edgekit.spec import ModelSpec, TensorSpec, TextPreprocess

    spec = ModelSpec("sentences", (TensorSpec("input_ids", (1, 128), "int64"), TensorSpec("attention_mask", (1, 128), "int64")),
                     (TensorSpec("out", (1,)),), TextPreprocess(str(model_dir()), 128), "embedding")
    return [tuple(s) for s in load_samples(TEXT, spec, limit=N_SAMPLES).samples]


def reestimate_batchnorm(model, images, batch: int = 16) -> int:
    """Random init leaves BatchNorm at mean 0 / var 1, so a random CNN's outputs hardly depend on
    the input. Re-estimate every BN's running statistics on real photos: BN layers in train mode
    with momentum=None (a cumulative average over the batches), everything else in eval mode, then
    eval. -> the number of BN layers re-estimated."""
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for chunk in torch.from_numpy(images).split(batch):
            model(chunk)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()
    return len(bns)


def neutral_gains(model) -> tuple[int, int]:
    """Training-start tricks make residual branches start at (almost) zero: the last BatchNorm of a
    block with gamma = 0 (ResNet, RegNet, LeViT, MobileViT) and layer scales of 1e-5/1e-6 (ConvNeXt,
    EdgeNeXt, EfficientFormerV2, FastViT). Left as is, a random model has dead branches: an error a
    converter makes there is invisible, and INT8 sees tensors with an empty range. Set them to 1 (a
    trained model's gains are of order 0.1-1). -> (BN gammas set, layer-scale parameters set)."""
    import torch
    from torch import nn

    bn = ls = 0
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.weight is not None and float(mod.weight.abs().max()) == 0:
                mod.weight.fill_(1.0)
                bn += 1
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.numel() > 1 and ("gamma" in leaf or "scale" in leaf) and 0 < float(p.abs().max()) < 1e-3 \
                    and float(p.min()) == float(p.max()):
                p.fill_(1.0)
                ls += 1
    return bn, ls


NOISE_LIMIT = 1e-5  # a tenth of edgekit's FP32 criterion (max abs error <= 1e-4 x max|reference|)


def fp32_noise(model, images) -> float:
    """The reference's own float32 rounding noise: max |fp32 - fp64| / max |fp64| over a few photos.
    A model above NOISE_LIMIT cannot meet edgekit's FP32 criterion on any target."""
    import copy

    import torch

    x = torch.from_numpy(images)
    with torch.no_grad():
        a = model(x)
        b = copy.deepcopy(model).double()(x.double())
    a = list(a.values()) if isinstance(a, dict) else [a]
    b = list(b.values()) if isinstance(b, dict) else [b]
    return max(float((u.double() - v).abs().max() / v.abs().max().clamp(min=1e-30)) for u, v in zip(a, b))


class HFWrap:
    """Builds nn.Modules whose forward takes positional tensors and returns the HF model's outputs
    as a plain dict (edgekit flattens it and names the outputs after the keys)."""

    @staticmethod
    def make(model, keys):
        from torch import nn

        class Wrapped(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, *args):
                out = self.inner(*args, return_dict=True)
                return {k: out[k] for k in keys}

        w = Wrapped(model)
        w.__class__.__name__ = type(model).__name__
        return w.eval()


class TextWrap:
    @staticmethod
    def make(model, keys):
        from torch import nn

        class Encoder(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask):
                out = self.inner(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
                return {k: out[k] for k in keys}

        return Encoder(model).eval()


def build(name: str):
    """-> (module in eval mode, samples for edgekit.export's data=, example inputs, info dict)."""
    import numpy as np
    import torch

    os.environ["HF_HUB_OFFLINE"] = "1"
    info: dict = {"notes": []}
    if name in TIMM:
        timm = import_timm()
        images = image_samples()
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False).eval()
        info.update(family="timm", source=f"timm.create_model({name!r}, pretrained=False)", input="image 1x3x224x224")
        zbn, zls = neutral_gains(model)
        n_bn = reestimate_batchnorm(model, images[:BN_PHOTOS])
        if zbn or zls:
            noise = fp32_noise(model, images[:4])
            if noise > NOISE_LIMIT:  # gains of 1 made this random model ill-conditioned: keep the library's init
                info["notes"].append(f"residual gains of 1 gave a reference whose own float32 noise is {noise:.1e} of "
                                     f"the output's max abs (> {NOISE_LIMIT:g}): kept timm's init (zero/tiny gains)")
                torch.manual_seed(0)
                model = timm.create_model(name, pretrained=False).eval()
                zbn = zls = 0
                n_bn = reestimate_batchnorm(model, images[:BN_PHOTOS])
            else:
                info["notes"].append("residual gains set to 1: " + ", ".join(
                    w for w, k in ((f"{zbn} zero-init BN gammas", zbn), (f"{zls} layer scales", zls)) if k))
        info["gains_set"] = [zbn, zls]
        info["bn_reestimated"] = n_bn
        info["notes"].append(f"{n_bn} BatchNorm layers re-estimated on photos 1-{BN_PHOTOS}" if n_bn else
                             "no BatchNorm (LayerNorm/other norms): random-init statistics kept")
        reps = [m for m in model.modules() if hasattr(m, "reparameterize") or hasattr(m, "switch_to_deploy")]
        if reps:
            from timm.utils.model import reparameterize_model

            model = reparameterize_model(model).eval()
            info["notes"].append(f"re-parameterized ({len(reps)} blocks fused, as shipped)")
        data, example = images, (torch.from_numpy(images[:1]),)
    elif name in ("segformer_b0", "yolos_tiny"):
        from transformers import SegformerConfig, SegformerForSemanticSegmentation, YolosConfig, YolosForObjectDetection

        images = image_samples()
        torch.manual_seed(0)
        if name == "segformer_b0":
            cfg = SegformerConfig(num_encoder_blocks=4, depths=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1], hidden_sizes=[32, 64, 160, 256],
                                  patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], num_attention_heads=[1, 2, 5, 8],
                                  mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=256, num_labels=150)
            model = HFWrap.make(SegformerForSemanticSegmentation(cfg).eval(), ["logits"])
        else:
            cfg = YolosConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
                              image_size=[224, 224], num_detection_tokens=100, num_labels=91, attn_implementation="eager")
            model = HFWrap.make(YolosForObjectDetection(cfg).eval(), ["logits", "pred_boxes"])
        info.update(family="transformers", source=HF[name], input="image 1x3x224x224")
        n_bn = reestimate_batchnorm(model, images[:BN_PHOTOS])
        info["bn_reestimated"] = n_bn
        info["notes"].append(f"{n_bn} BatchNorm layers re-estimated on photos 1-{BN_PHOTOS}" if n_bn else
                             "no BatchNorm (LayerNorm): random-init statistics kept")
        data, example = images, (torch.from_numpy(images[:1]),)
    elif name in HF:
        import transformers as T

        samples = text_samples()
        torch.manual_seed(0)
        attn = "sdpa" if name.endswith("_sdpa") else "eager"
        if name.startswith("bert_mini"):
            cfg = T.BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
            cfg._attn_implementation = attn
            model, keys = T.BertModel(cfg), ["last_hidden_state", "pooler_output"]
        elif name == "distilbert_small":
            cfg = T.DistilBertConfig(dim=256, n_layers=4, n_heads=4, hidden_dim=1024)
            cfg._attn_implementation = attn
            model, keys = T.DistilBertModel(cfg), ["last_hidden_state"]
        elif name == "mobilebert_6l":
            cfg = T.MobileBertConfig(num_hidden_layers=6)
            cfg._attn_implementation = attn
            model, keys = T.MobileBertModel(cfg), ["last_hidden_state", "pooler_output"]
        elif name == "albert_small":
            cfg = T.AlbertConfig(embedding_size=128, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                 intermediate_size=1024)
            cfg._attn_implementation = attn
            model, keys = T.AlbertModel(cfg), ["last_hidden_state", "pooler_output"]
        else:
            raise KeyError(name)
        model = TextWrap.make(model.eval(), keys)
        info.update(family="transformers", source=HF[name], input="input_ids + attention_mask 1x128 int64",
                    attention=getattr(model.inner.config, "_attn_implementation", attn), bn_reestimated=0)
        info["notes"].append("text encoder: no BatchNorm, random-init LayerNorm kept")
        data, example = samples, tuple(torch.from_numpy(a) for a in samples[0])
    else:
        raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    info["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    if isinstance(data, np.ndarray):
        info["fp32_noise_rel"] = fp32_noise(model, data[:4])
    with torch.no_grad():
        out = model(*example)
    leaves = list(out.values()) if isinstance(out, dict) else [out]
    info["outputs"] = [list(t.shape) for t in leaves]
    ys = []
    with torch.no_grad():
        for i in range(VERIFY_SAMPLES):
            args = (data[i:i + 1],) if isinstance(data, np.ndarray) else data[i]
            o = model(*(torch.from_numpy(a) for a in args))
            ys.append((list(o.values())[0] if isinstance(o, dict) else o).flatten().numpy())
    ys = np.stack(ys)
    # how much the output depends on the input: std over samples / mean |output| (near 0 = near-constant)
    info["output_spread"] = float(ys.std(axis=0).mean() / max(np.abs(ys).mean(), 1e-12))
    return model, data, example, info


def target_row(key: str, t: dict, seconds: float | None) -> dict:
    err = t.get("error") or {}
    m = t.get("metrics") or {}
    row = {"status": t.get("status"), "seconds": None if seconds is None else round(seconds, 1),
           "size_bytes": t.get("size_bytes"), "latency_ms": t.get("latency_ms"),
           "max_abs": m.get("max_abs"), "max_abs_rel": m.get("max_abs_rel"), "cosine_min": m.get("cosine_min"),
           "sqnr_db": m.get("sqnr_db"), "top1_agreement": m.get("top1_agreement"), "max_steps": m.get("max_steps"),
           "failures": [f[:400] for f in t.get("failures") or []]}
    if err:
        row["error"] = {"code": err.get("code"), "message": (err.get("message") or "")[:1500], "op": err.get("op"),
                        "source": err.get("source")}
    cost = t.get("compression")
    if cost:
        vals = [v for v in cost.values() if isinstance(v, dict)]
        num = lambda k: [v[k] for v in vals if isinstance(v.get(k), (int, float))]
        row["vs_fp32"] = {"sqnr_db": min(num("sqnr_db"), default=None), "cosine_min": min(num("cosine_min"), default=None),
                          "top1_agreement": min(num("top1_agreement"), default=None), "per_output": cost}
    notes = t.get("notes") or []
    int8_layers = [re.search(r"ncnn int8: (\d+) ", n) for n in notes]
    int8_layers = [int(m.group(1)) for m in int8_layers if m]
    if int8_layers:  # ncnn: layers edgekit's int8 writer quantized, and those it left float (named in the notes)
        row["int8_layers"] = [int8_layers[0], int8_layers[0] + sum("kept float" in n for n in notes)]
    rows = t.get("per_layer") or []
    if rows:  # the target's per-layer view ran: how many layers, the worst one, those it flagged
        row["per_layer"] = {"layers": len(rows), "max_steps": max(r.get("max_steps") or 0.0 for r in rows)}
    if t.get("per_layer_error"):
        row["per_layer_error"] = t["per_layer_error"][:400]
    noise = t.get("reference_noise")
    if noise:
        row["reference_noise"] = noise.get("verdict")
    per_layer = [r for r in rows if r.get("flagged")]
    if per_layer:
        row["per_layer_flagged"] = [r.get("layer") for r in per_layer][:20]
    return row


def edgekit_source() -> str | None:
    """The edgekit checkout a row was measured with: commit, plus "+dirty" when edgekit/ or
    converters/ differ from it (edgekit moves while a long bench runs)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "edgekit", "converters"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def worker(name: str, precision: str, out_json: Path, keep: str | None = None, only: list[str] | None = None) -> None:
    import torch

    import edgekit
    from edgekit.errors import UserError

    torch.set_num_threads(1)
    t0 = time.time()
    row: dict = {"precision": precision, "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
                 "edgekit_source": edgekit_source()}
    try:
        model, data, example, info = build(name)
    except BaseException as exc:  # noqa: BLE001 - a model that cannot be built is a row too
        row.update(status="build error", error=f"{type(exc).__name__}: {str(exc)[:1500]}", build_seconds=round(time.time() - t0, 1))
        out_json.write_text(json.dumps({"row": row}))
        return
    row["build_seconds"] = round(time.time() - t0, 1)
    stamps: list[tuple[float, str | None]] = []

    def progress(stage, target=None):
        stamps.append((time.time(), target))

    t1 = time.time()
    with tempfile.TemporaryDirectory(prefix=f"coverage-{name}-") as tmp:
        dest = Path(keep) / f"{name}-{precision}" if keep else Path(tmp) / "bundle"
        try:
            bundle = edgekit.export(model, example, targets=only or TARGETS[precision], data=data, out=str(dest),
                                    quant=precision, samples=VERIFY_SAMPLES, timeout_s=TIMEOUT_S, progress=progress)
            report = bundle.report
        except UserError as exc:
            report = None
            row.update(status="export error", error={"code": exc.code, "message": exc.what[:1500], "fix": exc.fix})
        except BaseException as exc:  # noqa: BLE001
            report = None
            row.update(status="export error", error={"code": "exception", "message": f"{type(exc).__name__}: {str(exc)[:1500]}"})
    row["seconds"] = round(time.time() - t1, 1)
    if report is not None:
        # per-target wall time: from a target's first progress line to the next target's first line
        firsts: dict[str, float] = {}
        for ts, target in stamps:
            if target and target not in firsts:
                firsts[target] = ts
        order = sorted(firsts.items(), key=lambda kv: kv[1])
        spans = {t: (order[i + 1][1] if i + 1 < len(order) else time.time()) - ts for i, (t, ts) in enumerate(order)}
        row["status"] = report["summary"]["status"]
        row["targets"] = {}
        for key, t in report["targets"].items():
            target = key.split(":")[0]
            row["targets"][target] = target_row(key, t, spans.get(target))
        env = dict(report.get("environment") or {})
        row["environment"] = env
    out_json.write_text(json.dumps({"row": row, "info": info}, default=str))


# ---------------------------------------------------------------------------------------------
# driver

def environment() -> dict:
    import importlib.metadata as md

    def ver(d):
        try:
            return md.version(d)
        except md.PackageNotFoundError:
            return None

    def vendor_ver(d):
        hits = sorted(VENDOR.glob(f"{d}-*.dist-info"))
        return hits[0].name[len(d) + 1:-len(".dist-info")] if hits else None

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
           "cpu": cpu, "cores": os.cpu_count()}
    for d in ("edgekit", "torch", "transformers", "litert-torch", "ai-edge-litert", "torchao", "executorch", "pnnx", "ncnn",
              "onnx", "onnxruntime", "onnxscript", "numpy"):
        env[d] = ver(d)
    env["timm"] = vendor_ver("timm")
    env["torchvision"] = vendor_ver("torchvision")
    return env


def load_results(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"about": "bench/model_coverage.py: model x target coverage of edgekit, random weights (seed 0), real inputs",
            "models": {}, "runs": []}


def run_one(name: str, precision: str, tmp: Path, keep: str | None = None, only: list[str] | None = None) -> dict:
    out = tmp / f"{name}-{precision}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--precision", precision, "--worker-out", str(out)]
    if keep:
        cmd += ["--keep", str(Path(keep).resolve())]
    if only:
        cmd += ["--targets", ",".join(only)]
    log = tmp / f"{name}-{precision}.log"
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        try:
            rc = proc.wait(timeout=WORKER_TIMEOUT_S[precision])
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker's own process group (its runtimes too)
            proc.wait()
            rc = "timeout"
    if out.is_file():
        got = json.loads(out.read_text())
    else:
        tail = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
        what = f"bench worker killed after {WORKER_TIMEOUT_S[precision]} s" if rc == "timeout" else f"bench worker exited {rc}"
        got = {"row": {"precision": precision, "status": "worker error", "error": f"{what}: {tail}",
                       "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat()}}
    got["row"]["worker_seconds"] = round(time.time() - t0, 1)
    return got


def merge(results: dict, name: str, got: dict, only: list[str] | None = None) -> None:
    entry = results["models"].setdefault(name, {})
    info = got.get("info")
    row = got["row"]
    env = row.pop("environment", None)
    if env:
        results.setdefault("edgekit_environment", {}).update(env)
    old = entry.get(row["precision"])
    if only and old and old.get("targets") and row.get("targets"):
        # a re-run of some targets: replace those cells only, and say when and with which edgekit
        for t in only:
            if t in row["targets"]:
                old["targets"][t] = {**row["targets"][t], "rerun": {"date": row["date"], "edgekit_source": row.get("edgekit_source")}}
        return
    if info:
        entry["info"] = info
    entry[row["precision"]] = row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precision", choices=["fp32", "int8", "both"], default="fp32")
    ap.add_argument("--models", default="", help="comma-separated names (default: all; 'int8-priority' for the INT8 set)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--report", action="store_true", help="only rebuild the .md from the .json")
    ap.add_argument("--list", action="store_true", help="print the model names and exit")
    ap.add_argument("--targets", default="", help="re-run only these targets and replace just their cells in existing rows")
    ap.add_argument("--keep", help="keep each bundle in KEEP/<model>-<precision> (default: deleted after the row is read)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.precision, Path(args.worker_out), args.keep,
               [t for t in args.targets.split(",") if t] or None)
        return 0
    if args.list:
        print("\n".join(MODELS))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model_coverage.json"
    results = load_results(path)
    if args.report:
        write_markdown(results, out / "model_coverage.md")
        update_doc(out / "model_coverage.md")
        return 0
    if args.models == "int8-priority":
        names = INT8_PRIORITY
    else:
        names = [n.strip() for n in args.models.split(",") if n.strip()] or MODELS
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    precisions = ["fp32", "int8"] if args.precision == "both" else [args.precision]
    results["environment"] = environment()
    t_run = time.time()
    with tempfile.TemporaryDirectory(prefix="model-coverage-") as tmp:
        for precision in precisions:
            for name in names:
                t0 = time.time()
                only = [t for t in args.targets.split(",") if t] or None
                got = run_one(name, precision, Path(tmp), args.keep, only)
                results = load_results(path)  # another run may have written meanwhile: merge into the latest
                results["environment"] = environment()
                merge(results, name, got, only)
                results["updated"] = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
                path.write_text(json.dumps(results, indent=1, default=str) + "\n")
                write_markdown(results, out / "model_coverage.md")
                update_doc(out / "model_coverage.md")
                row = got["row"]
                cells = " ".join(f"{t}={r['status']}" for t, r in (row.get("targets") or {}).items())
                print(f"[{time.time() - t_run:7.0f}s] {name} {precision}: {row.get('status')} in {time.time() - t0:.0f} s  {cells}",
                      flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# markdown

DOC = ROOT / "docs" / "model-coverage.md"
DOC_BEGIN, DOC_END = "<!-- coverage:begin (generated by bench/model_coverage.py) -->", "<!-- coverage:end -->"


def update_doc(generated: Path) -> None:
    """Copy the generated tables into docs/model-coverage.md between its markers (headings one level
    down), when the results are the published ones (bench/results) and the doc has the markers."""
    if generated.resolve().parent != RESULTS.resolve() or not DOC.is_file():
        return
    doc = DOC.read_text()
    if DOC_BEGIN not in doc or DOC_END not in doc:
        return
    body = generated.read_text().split("\n", 1)[1].strip()
    body = "\n".join("#" + line if line.startswith("##") else line for line in body.splitlines())
    head, rest = doc.split(DOC_BEGIN, 1)
    DOC.write_text(head + DOC_BEGIN + "\n" + body + "\n" + DOC_END + rest.split(DOC_END, 1)[1])


SHORT = {"not runnable on host": "host-unrunnable", "unsupported": "unsupported"}


def _num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _cell(r: dict | None, precision: str) -> str:
    if not r:
        return "-"
    st = r.get("status")
    if st == "pass" or st == "fail":
        if precision == "fp32":
            ma = r.get("max_abs")
            s = f"{st} {ma:.1e}" if _num(ma) is not None else f"{st} {ma}" if isinstance(ma, str) else st
        else:
            sq = _num((r.get("vs_fp32") or {}).get("sqnr_db"))
            s = f"{st} {sq:.1f} dB" if sq is not None else st
            if r.get("int8_layers"):
                s += " ({}/{} int8)".format(*r["int8_layers"])
        if st == "fail":
            s = f"**{s}**"
        return s
    if st == "not runnable on host":
        return "n/r"
    err = r.get("error") or {}
    bits = [SHORT.get(st, st), err.get("code") or ""]
    if err.get("op"):
        bits.append(f"`{err['op']}`")
    return "**" + " ".join(b for b in bits if b) + "**"


def pass_rates(models: dict, precision: str, targets: list[str]) -> dict:
    rates = {}
    for t in targets:
        rows = [m[precision]["targets"].get(t) for m in models.values()
                if precision in m and m[precision].get("targets") and t in m[precision]["targets"]]
        failed_whole = [m for m in models.values() if precision in m and not m[precision].get("targets")]
        n = len(rows) + len(failed_whole)
        if t == "ptl-nnapi":
            ok = sum(r["status"] == "not runnable on host" for r in rows)
        else:
            ok = sum(r["status"] == "pass" for r in rows)
        rates[t] = (ok, n)
    return rates


def _short_paths(text: str) -> str:
    """Site-specific prefixes out of messages: bench/.vendor/timm/x.py -> timm/x.py."""
    import sysconfig

    for prefix in (str(VENDOR) + os.sep, sysconfig.get_paths()["purelib"] + os.sep, str(ROOT) + os.sep):
        text = text.replace(prefix, "")
    return text


def _reason(r: dict) -> str:
    err = r.get("error") or {}
    if err:
        msg = " ".join((err.get("message") or "").split())
        where = f" (from {err['source']})" if err.get("source") and err["source"] not in msg else ""
        return _short_paths(f"{err.get('code')}: {msg[:300]}{where}")
    return _short_paths("; ".join(" ".join(f.split()) for f in r.get("failures") or [])[:400])


def write_markdown(results: dict, path: Path) -> None:
    models = results.get("models", {})
    order = [n for n in MODELS if n in models] + [n for n in models if n not in MODELS]
    env = {**(results.get("edgekit_environment") or {}), **(results.get("environment") or {})}
    L = ["# Model coverage (generated by `bench/model_coverage.py`)", "",
         f"Updated {results.get('updated', '-')}. Random weights (seed 0), real inputs: the photos of "
         "`calibration_data/images` at 224 (BatchNorm statistics re-estimated on photos 1-32) or sentences of "
         "`calibration_data/text` at 128 tokens. FP32 verifies on the first 16 samples; INT8 calibrates on 1-32 and "
         "verifies on the held-out 33-48. `n/r` = exported, not runnable on a host (NNAPI).", ""]
    L += ["## Pass rate per target", "", "| precision | " + " | ".join(TABLE_TARGETS) + " |",
          "|---|" + "---|" * len(TABLE_TARGETS)]
    for precision in ("fp32", "int8"):
        rates = pass_rates(models, precision, TABLE_TARGETS if precision == "fp32" else TABLE_TARGETS[:-1])
        cells = []
        for t in TABLE_TARGETS:
            if t not in rates or rates[t][1] == 0:
                cells.append("-")
            else:
                ok, n = rates[t]
                cells.append(f"exported {ok}/{n}" if t == "ptl-nnapi" else f"{ok}/{n} ({100 * ok / n:.0f}%)")
        L.append(f"| {precision.upper()} | " + " | ".join(cells) + " |")
    L += ["", "## FP32 (cell: status and max abs error vs the PyTorch reference)", "",
          "| model | family | params M | " + " | ".join(TABLE_TARGETS) + " | worst cosine | export+verify s |",
          "|---|---|---|" + "---|" * len(TABLE_TARGETS) + "---|---|"]
    for n in order:
        m = models[n]
        info = m.get("info") or {}
        r = m.get("fp32")
        if not r:
            continue
        ts = r.get("targets") or {}
        cos = [_num(x.get("cosine_min")) for x in ts.values() if _num(x.get("cosine_min")) is not None]
        if ts:
            cells = [_cell(ts.get(t), "fp32") for t in TABLE_TARGETS]
        else:
            cells = [f"**{r.get('status')}**"] * len(TABLE_TARGETS)
        worst = f"{min(cos):.6f}" if cos else "-"
        L.append(f"| {n} | {info.get('family', '-')} | {info.get('params_m', '-')} | " + " | ".join(cells)
                 + f" | {worst} | {r.get('seconds', '-')} |")
    int8 = [n for n in order if "int8" in models[n]]
    L += ["", "## INT8 (cell: status and SQNR of the INT8 file vs the FP32 PyTorch model)", ""]
    if int8:
        L += ["Status is edgekit's fidelity verdict (the file against its own quantized reference, in output steps); "
              "SQNR is the compression cost vs FP32 (worst output). `top-1` is the agreement of the INT8 file with FP32 "
              "on the held-out photos (tflite file's value).", "",
              "| model | " + " | ".join(TABLE_TARGETS[:-1]) + " | top-1 vs FP32 | max steps (tflite) | export+verify s |",
              "|---|" + "---|" * (len(TABLE_TARGETS) - 1) + "---|---|---|"]
        for n in int8:
            r = models[n]["int8"]
            ts = r.get("targets") or {}
            cells = [_cell(ts.get(t), "int8") for t in TABLE_TARGETS[:-1]] if ts else [f"**{r.get('status')}**"] * 5
            tfl = ts.get("tflite") or {}
            top1 = _num((tfl.get("vs_fp32") or {}).get("top1_agreement"))
            steps = _num(tfl.get("max_steps"))
            L.append(f"| {n} | " + " | ".join(cells) + f" | {'-' if top1 is None else f'{100 * top1:.0f}%'} | "
                     f"{'-' if steps is None else f'{steps:.1f}'} | {r.get('seconds', '-')} |")
    missing = [n for n in MODELS if n in models and "int8" not in models[n]]
    if missing:
        L += ["", f"No INT8 row yet for: {', '.join(missing)}."]
    L += ["", "## Every non-pass", "", "| model | precision | target | status | code: message |", "|---|---|---|---|---|"]
    for n in order:
        for precision in ("fp32", "int8"):
            r = models[n].get(precision)
            if not r:
                continue
            if not r.get("targets"):
                e = r.get("error")
                msg = e if isinstance(e, str) else f"{(e or {}).get('code')}: {(e or {}).get('message')}"
                L.append(f"| {n} | {precision} | (all) | {r.get('status')} | {' '.join(str(msg).split())[:400]} |")
                continue
            for t, x in r["targets"].items():
                if x.get("status") in ("pass", "not runnable on host"):
                    continue
                L.append(f"| {n} | {precision} | {t} | {x.get('status')} | {_reason(x).replace('|', '/')} |")
    L += ["", "## Models", "", "| model | built from | inputs | outputs | output spread | fp32 noise | notes |",
          "|---|---|---|---|---|---|---|"]
    for n in order:
        info = models[n].get("info") or {}
        spread, noise = info.get("output_spread"), info.get("fp32_noise_rel")
        L.append(f"| {n} | {info.get('source', '-')} | {info.get('input', '-')} | "
                 f"{', '.join('x'.join(map(str, s)) for s in info.get('outputs', []))} | "
                 f"{'-' if spread is None else f'{spread:.3f}'} | {'-' if noise is None else f'{noise:.1e}'} | "
                 f"{'; '.join(info.get('notes', [])).replace('|', '/')} |")
    L += ["", "Output spread: std over 16 samples / mean |output| of the first output (0 = the output ignores the input). "
          "fp32 noise: the PyTorch model's own float32 error, max |fp32 - fp64| / max |fp64| on 4 photos (image models; "
          "edgekit's FP32 criterion is 1e-4).",
          "", "## Environment", "", "| | |", "|---|---|"]
    for k in ("edgekit", "python", "torch", "timm", "torchvision", "transformers", "litert-torch", "ai-edge-litert", "torchao",
              "executorch", "pnnx", "ncnn", "onnx", "onnxruntime", "onnxscript", "numpy", "platform", "machine", "cpu", "cores"):
        if env.get(k) is not None:
            L.append(f"| {k} | {env[k]} |")
    L.append("")
    path.write_text("\n".join(L))


if __name__ == "__main__":
    sys.exit(main())
