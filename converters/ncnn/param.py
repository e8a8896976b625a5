"""The ncnn model files edgekit reads and writes: the .param text (one layer per line: type, name,
blob counts, input and output blobs, ``key=value`` params) and loading a .param/.bin pair into an
``ncnn.Net`` with edgekit's settings. Shared by the FP32 export, the INT8 writer and the runners."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import InternalError, UserError


@dataclass
class Layer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: list[str] = field(default_factory=list)  # "key=value" tokens, kept verbatim

    def line(self) -> str:
        return " ".join([f"{self.type:<24} {self.name:<24} {len(self.inputs)} {len(self.outputs)}",
                         *self.inputs, *self.outputs, *self.params])


def parse_layers(text: str) -> list[Layer]:
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2 or lines[0] != ["7767517"]:
        raise InternalError("pnnx wrote an ncnn .param without the 7767517 magic")
    layers = []
    for tok in lines[2:]:
        nin, nout = int(tok[2]), int(tok[3])
        layers.append(Layer(tok[0], tok[1], tok[4:4 + nin], tok[4 + nin:4 + nin + nout], tok[4 + nin + nout:]))
    return layers


def format_layers(layers: list[Layer]) -> str:
    blobs = {b for layer in layers for b in layer.inputs + layer.outputs}
    return "\n".join(["7767517", f"{len(layers)} {len(blobs)}", *(layer.line() for layer in layers)]) + "\n"


def load_net(param: Path, weights: Path, threads: int, strict: bool = True):
    """An ncnn.Net with strict FP32 settings (or, strict=False, ncnn's own defaults: what a phone
    app gets, fp16 storage and arithmetic where the CPU has them) and ``threads`` threads, or
    E-ARTIFACT-CORRUPT.

    load_param/load_model return non-zero instead of raising: their codes are checked here."""
    import ncnn

    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = False
    # Strict FP32: with the defaults ncnn silently stores and computes in fp16 (or bf16) on CPUs that have it.
    for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage", "use_bf16_packed"):
        if strict and hasattr(opt, flag):
            setattr(opt, flag, False)
    opt.num_threads = int(threads)
    if net.load_param(str(param)) != 0:
        raise UserError("E-ARTIFACT-CORRUPT", f"ncnn cannot parse {param.name}", "re-export the bundle")
    if net.load_model(str(weights)) != 0:
        raise UserError("E-ARTIFACT-CORRUPT", f"ncnn cannot load the weights {weights.name} (truncated or not "
                        f"matching {param.name})", "re-export the bundle")
    return net
