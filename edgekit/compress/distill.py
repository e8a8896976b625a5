"""Knowledge distillation: Hinton's loss and feature (hidden-state) distillation.

``kd_loss`` mixes the temperature-softened KL term (scaled by T^2, so its gradients keep their size
as T grows) with the hard-label cross-entropy. The teacher's logits are detached: gradients reach
the student only. ``Distiller`` runs teacher and student on the same batch and adds, for chosen
layer pairs, an MSE between the student's feature (through a learned projection when the widths
differ) and the teacher's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from edgekit.errors import UserError


@dataclass(frozen=True)
class KDConfig:
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft (teacher) term; 1 - alpha on the hard labels
    # Feature distillation: pairs (student layer name, teacher layer name) and the weight of their MSE.
    feature_pairs: tuple[tuple[str, str], ...] = ()
    feature_weight: float = 1.0

    def __post_init__(self):
        if not self.temperature > 0:
            raise UserError("E-COMPRESS-CONFIG", f"KD temperature {self.temperature} is not > 0", "pass a temperature such as 4.0")
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError("E-COMPRESS-CONFIG", f"KD alpha {self.alpha} is outside [0, 1]", "pass alpha in [0, 1], e.g. 0.9")


def check_outputs(student_out: torch.Tensor, teacher_out: torch.Tensor) -> None:
    if tuple(student_out.shape) != tuple(teacher_out.shape):
        raise UserError("E-COMPRESS-MISMATCH",
                        f"student output shape {tuple(student_out.shape)} differs from teacher output shape {tuple(teacher_out.shape)}",
                        "give the student the teacher's output head (same number of classes)")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
            config: KDConfig = KDConfig()) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels); without labels
    (unlabelled transfer data) the soft term alone, T^2 * KL."""
    check_outputs(student_logits, teacher_logits)
    t = config.temperature
    soft_teacher = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    soft_student = F.log_softmax(student_logits / t, dim=-1)
    soft = F.kl_div(soft_student, soft_teacher, reduction="batchmean", log_target=True) * t * t
    if labels is None or config.alpha >= 1.0:
        return soft
    return config.alpha * soft + (1.0 - config.alpha) * F.cross_entropy(student_logits, labels)


def _module(model: nn.Module, name: str, role: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        near = [n for n in modules if n and name.split(".")[-1] in n][:5]
        raise UserError("E-COMPRESS-LAYER", f"the {role} has no layer named {name!r}",
                        f"use a name from named_modules(){', e.g. ' + ', '.join(near) if near else ''}")
    return modules[name]


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    hidden = getattr(out, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise UserError("E-COMPRESS-LAYER", f"a distilled layer returned {type(out).__name__}, not a tensor",
                    "pick a layer whose output is a tensor (or a tuple starting with one)")


class _Capture:
    def __init__(self, module: nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _module, _inputs, output):
        self.value = _first_tensor(output)


def _projection(student_dim: int, teacher_dim: int, rank: int) -> nn.Module:
    if rank == 4:  # NCHW feature maps: 1x1 convolution over channels
        return nn.Conv2d(student_dim, teacher_dim, 1, bias=False)
    return nn.Linear(student_dim, teacher_dim, bias=False)  # (..., features)


class Distiller(nn.Module):
    """Teacher (frozen, eval) + student + learned projections; ``loss(inputs, labels)`` is the objective.

    Only the student and the projections hold trainable parameters; the teacher runs under no_grad.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, config: KDConfig, example_inputs: tuple):
        super().__init__()
        self.config = config
        self.student = student
        self.teacher = [teacher.eval()]  # a list: not a submodule (not trained, not in DDP, not saved)
        for p in teacher.parameters():
            p.requires_grad_(False)
        self._s_caps = [_Capture(_module(student, s, "student")) for s, _ in config.feature_pairs]
        self._t_caps = [_Capture(_module(teacher, t, "teacher")) for _, t in config.feature_pairs]
        with torch.no_grad():
            was = student.training
            student.eval()
            s_out, t_out = student(*example_inputs), teacher(*example_inputs)
            student.train(was)
        check_outputs(s_out, t_out)
        projections = []
        for (s_name, t_name), sc, tc in zip(config.feature_pairs, self._s_caps, self._t_caps):
            sf, tf = sc.value, tc.value
            if sf.dim() != tf.dim() or (sf.dim() == 4 and sf.shape[2:] != tf.shape[2:]) or (sf.dim() == 3 and sf.shape[1] != tf.shape[1]):
                raise UserError("E-COMPRESS-MISMATCH",
                                f"student layer {s_name} gives shape {tuple(sf.shape)}, teacher layer {t_name} gives {tuple(tf.shape)}",
                                "pair layers whose outputs differ only in the feature (channel) width")
            ch = 1 if sf.dim() == 4 else -1
            projections.append(_projection(sf.shape[ch], tf.shape[ch], sf.dim()) if sf.shape[ch] != tf.shape[ch] else nn.Identity())
        self.projections = nn.ModuleList(projections)

    @property
    def teacher_model(self) -> nn.Module:
        return self.teacher[0]

    def forward(self, *inputs, labels: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            t_logits = self.teacher_model(*inputs)
        s_logits = self.student(*inputs)
        loss = kd_loss(s_logits, t_logits, labels, self.config)
        for proj, sc, tc in zip(self.projections, self._s_caps, self._t_caps):
            loss = loss + self.config.feature_weight * F.mse_loss(proj(sc.value), tc.value.detach())
        return loss

    def remove_hooks(self) -> None:
        for cap in self._s_caps + self._t_caps:
            cap.handle.remove()


def distill_step_loss(distiller: Distiller, batch: tuple) -> torch.Tensor:
    """Loss of one (inputs..., labels) batch; the shape train.fit expects of a loss function."""
    *inputs, labels = batch
    return distiller(*inputs, labels=labels)
