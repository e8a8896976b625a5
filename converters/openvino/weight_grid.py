"""OpenVINO INT8 weights on the widest grid that the CPU plugin's non-VNNI x86 kernels cannot overflow.

The fault: on x86 CPUs without VNNI (AVX2, pre-Ice Lake), the CPU plugin's int8 conv and matmul
kernels multiply u8 activations by s8 weights with ``vpmaddubsw``, which adds each *pair* of products
into a saturating int16. Measured with OpenVINO 2026 on single layers built to overflow (this host,
``ONEDNN_MAX_CPU_ISA=AVX2``, and ``AVX512_CORE`` for the AVX-512 kernels of CPUs without VNNI, making
oneDNN pick those kernels; both pair the same channels; the AVX-512 VNNI kernels are exact):
- the pair is two *adjacent input channels* (2k, 2k+1) at the same kernel tap, in 1x1 and KxK convs,
  a 3-channel stem conv and fully connected layers: weights 127 and 127 on input channels 0 and 1 with
  activations at 255 give 32767 instead of 64770; on channels 1 and 2, or 0 and 2, or on two taps of
  one channel, the result is exact;
- depthwise convs never pair (exact with every weight at 127);
- 127 + 2 on channels 0 and 1 already overflows (255 x 129 = 32895 > 32767).

The grid: per output channel, scale = max(max |w|, the largest same-sign sum of a pair) / 127. Each
weight still fits -127..127, and a same-sign pair rounds to at most 128, so 255 x 128 = 32640 fits
int16 whatever the activations. A channel whose largest weights are not neighbours keeps the full
8-bit scale; the worst case (two equal neighbours) is the 7-bit grid (-63..63) OpenVINO's NNCF uses
(its overflow fix), so this grid is never coarser than that one. Opposite-sign pairs cannot overflow
(each product is at most 255 x 127 in magnitude).
"""
from __future__ import annotations

import torch
from torchao.quantization.pt2e.observer import PerChannelMinMaxObserver

QMAX = 127  # a weight within -127..127; a same-sign pair with sum <= 127 x scale rounds to <= 128, 255 x 128 = 32640
EPS = 2.0 ** -12  # the smallest scale, as the other targets' weight observers


def pair_bound(w: torch.Tensor, ch_axis: int = 0) -> torch.Tensor:
    """Per output channel (``ch_axis``): the largest same-sign sum of two weights on adjacent input
    channels (2k, 2k+1) at one tap. The input-channel axis is the first of dims 0 and 1 that is not
    ``ch_axis`` (conv/linear: 1; a transposed conv's weight: 0). Zeros for a 1-D weight or a single
    input channel (a depthwise conv: no pair)."""
    w = w.detach().float()
    out = torch.zeros(w.shape[ch_axis] if w.dim() else 0, device=w.device)
    if w.dim() < 2:
        return out
    ic_axis = 1 if ch_axis == 0 else 0
    w = w.movedim((ch_axis, ic_axis), (0, 1))
    if w.shape[1] < 2:
        return out
    if w.shape[1] % 2:  # an odd channel count pairs its last channel with the kernel's zero padding
        w = torch.cat([w, torch.zeros_like(w[:, :1])], dim=1)
    even, odd = w[:, 0::2], w[:, 1::2]
    pos = even.clamp(min=0) + odd.clamp(min=0)
    neg = (-even).clamp(min=0) + (-odd).clamp(min=0)
    return torch.maximum(pos, neg).flatten(1).amax(dim=1)


class PairSafeObserver(PerChannelMinMaxObserver):
    """The per-channel symmetric weight observer (-127..127) with each channel's range widened to its
    ``pair_bound``: torchao's symmetric scale max(|min|, |max|) / 127 then is this grid's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if (self.quant_min, self.quant_max, self.qscheme) != (-QMAX, QMAX, torch.per_channel_symmetric):
            raise ValueError("PairSafeObserver bounds pair sums on the symmetric per-channel grid -127..127 only")

    def forward(self, x_orig):
        out = super().forward(x_orig)
        if x_orig.numel() == 0:
            return out
        bound = pair_bound(x_orig, self.ch_axis).to(self.max_val.dtype)
        reach = torch.maximum(torch.maximum(self.max_val, -self.min_val), bound)
        self.max_val.copy_(reach)
        self.min_val.copy_(-reach)
        return out


def observer():
    """The weight observer the openvino target hands the onnx target's quantizer."""
    return PairSafeObserver.with_args(eps=EPS)
