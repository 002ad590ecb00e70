"""The training objectives (`scratch`, `kd`, `fakd`, `dukd`) and the one-step function the trainer calls.

Each method is a function registered by name in `METHODS`; `train_step` validates the batch, reads
the scale from its shapes and runs the method, which performs its optimizer step(s) and returns the
weighted loss terms. Nothing here knows about Ray: the student may be DDP-wrapped (it is only ever
called, never reached into), the teacher must be frozen (`freeze_teacher`) and is never wrapped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from dukd_ray.distill.augment import apply_ops, draw_flags, invert_ops
from dukd_ray.distill.fakd import affinity, tapped
from dukd_ray.distill.teacher import check_frozen, train_mode
from dukd_ray.distill.upcycle import draw_cells, zoom_in_cells, zoom_out_input

if TYPE_CHECKING:
    from dukd_ray.distill.config import DistillConfig

Losses = dict[str, torch.Tensor]


@dataclass
class _Step:
    """Everything one method needs for one iteration."""

    student: nn.Module
    teacher: nn.Module | None
    optimizer: torch.optim.Optimizer
    lr: torch.Tensor
    hr: torch.Tensor
    scale: int
    cfg: DistillConfig
    generator: torch.Generator
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.lr.device.type, dtype=self.amp_dtype)

    def student_out(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.student(x.contiguous(memory_format=self.memory_format)).float()

    def teacher_out(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher outputs are targets only: no graph is recorded (no teacher backward, no teacher grads).

        `reference_compat` runs it in train mode, as the reference does (only SwinIR's drop-path cares).
        """
        mode = train_mode(self.teacher) if self.cfg.reference_compat else contextlib.nullcontext()
        with torch.no_grad(), self.autocast(), mode:
            return self.teacher(x.contiguous(memory_format=self.memory_format)).float()


StepFn = Callable[[_Step], Losses]
METHODS: dict[str, StepFn] = {}


def register(name: str) -> Callable[[StepFn], StepFn]:
    """Add a method to the registry under `name` (the value of `DistillConfig.method`)."""

    def add(fn: StepFn) -> StepFn:
        METHODS[name] = fn
        return fn

    return add


def train_step(
    student: nn.Module,
    teacher: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    cfg: DistillConfig,
    generator: torch.Generator,
    amp_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.channels_last,
) -> dict[str, float]:
    """One iteration of `cfg.method`: its optimizer step(s), then the loss terms as floats.

    `batch` is `{"lr": (B, C, p, p), "hr": (B, C, s*p, s*p)}` on the training device; every random draw
    comes from `generator` (a CPU generator). Every network input (the batch and the upcycled inputs built
    from it) is laid out in `memory_format`: NHWC (the default) makes the convolutions (oneDNN on CPU, cuDNN
    under bf16) faster, the maths unchanged; measured on CPU (EDSR x4 f256/f64): teacher forward -10 %,
    student forward+backward -20 %. Keys: `loss_pix`, `loss_kd`, `loss_feat`, `loss_zoom_in`,
    `loss_zoom_out` (those the method and switches use, already weighted) and `loss`, their sum.
    """
    lr, hr = batch["lr"], batch["hr"]
    scale = _scale_of(lr, hr)
    cfg.check_scale(scale)
    if cfg.method != "scratch":
        if teacher is None:
            raise ValueError(f"distill.method {cfg.method!r} needs a teacher, got None")
        check_frozen(teacher)
    step = _Step(student, teacher, optimizer, lr, hr, scale, cfg, generator, amp_dtype, memory_format)
    terms = METHODS[cfg.method](step)
    values = torch.stack([t.detach() for t in terms.values()]).tolist()  # one device sync
    out = dict(zip(terms, values, strict=True))
    out["loss"] = sum(values)
    return out


@register("scratch")
def _scratch(step: _Step) -> Losses:
    """L = L1(S(x), y): the student trained alone, pixel weight 1 as in the paper."""
    step.optimizer.zero_grad()
    terms = {"loss_pix": F.l1_loss(step.student_out(step.lr), step.hr)}
    _descend(step, terms)
    return terms


@register("kd")
def _kd(step: _Step) -> Losses:
    """Step A alone: w_pix * L1(S(x), y) + w_kd * L1(S(x), T(x))."""
    step.optimizer.zero_grad()
    terms = _real_pair_terms(step, step.teacher_out(step.lr))
    _descend(step, terms)
    return terms


@register("fakd")
def _fakd(step: _Step) -> Losses:
    """Step A plus w_feat * sum over taps of L1(A(f_S), A(f_T)), A the spatial affinity (fakd.affinity).

    The feature term is trained; `reference_compat` detaches it, as the reference's does by accident
    (its value is still logged and summed into `loss`).
    """
    taps = step.cfg.fakd_taps
    with tapped(step.teacher, taps, "teacher") as t_feats:
        t_lr = step.teacher_out(step.lr)
    step.optimizer.zero_grad()
    with tapped(step.student, taps, "student") as s_feats:
        terms = _real_pair_terms(step, t_lr)
    feat = sum(F.l1_loss(affinity(s), affinity(t)) for s, t in zip(s_feats, t_feats, strict=True))
    terms["loss_feat"] = step.cfg.w_feat * (feat.detach() if step.cfg.reference_compat else feat)
    _descend(step, terms)
    return terms


@register("dukd")
def _dukd(step: _Step) -> Losses:
    """Step A on the real pair, step B on the upcycled data (see docs/distill.md).

    `paper`: zero_grad, backward A, step, backward B, step -- no zero_grad in between, so the second
    step applies grad(L_A) + grad(L_B), as the reference code does. `joint`: one step on L_A + L_B.
    Draws, every iteration whatever the switches: the cells, then the flags of every zoom-in sample.
    `reference_compat` maps the student's zoom-in output back with the ops in forward order, as the
    reference does (wrong exactly where transpose meets one flip: a 180-degree rotation).
    """
    cfg, lr, scale = step.cfg, step.lr, step.scale
    cells = draw_cells(scale, cfg.n_gt_sub, step.generator)
    flags = draw_flags(cfg.n_gt_sub * lr.shape[0], cfg.lc_ops, cfg.lc_prob, step.generator, lr.device)
    if not cfg.label_consistency:
        flags.zero_()
    zoom_in = zoom_in_cells(step.hr, scale, cells) if cfg.zoom_in else None
    if zoom_in is None:
        t_lr, t_zoom_in = step.teacher_out(lr), None
    else:  # same spatial size: one teacher forward for both
        t_lr, t_zoom_in = step.teacher_out(torch.cat([lr, zoom_in])).split([lr.shape[0], zoom_in.shape[0]])
    lr_down = zoom_out_input(lr, scale) if cfg.zoom_out else None
    t_lr_down = step.teacher_out(lr_down) if lr_down is not None else None

    step.optimizer.zero_grad()
    terms = _real_pair_terms(step, t_lr)
    if cfg.step_mode == "paper":
        _descend(step, terms)  # step A; its gradient stays in .grad for step B
    upcycled: Losses = {}
    if zoom_in is not None:
        back = apply_ops if cfg.reference_compat else invert_ops
        s_zoom_in = back(step.student_out(apply_ops(zoom_in, flags)), flags)
        upcycled["loss_zoom_in"] = cfg.w_zoom_in * cfg.w_kd * F.l1_loss(s_zoom_in, t_zoom_in)
    if lr_down is not None:
        s_down = step.student_out(lr_down)
        zoom_out = cfg.w_pix * F.l1_loss(s_down, lr) + cfg.w_kd * F.l1_loss(s_down, t_lr_down)
        upcycled["loss_zoom_out"] = cfg.w_zoom_out * zoom_out
    _descend(step, upcycled if cfg.step_mode == "paper" else terms | upcycled)
    return terms | upcycled


def _real_pair_terms(step: _Step, t_lr: torch.Tensor) -> Losses:
    s_lr = step.student_out(step.lr)
    return {
        "loss_pix": step.cfg.w_pix * F.l1_loss(s_lr, step.hr),
        "loss_kd": step.cfg.w_kd * F.l1_loss(s_lr, t_lr),
    }


def _descend(step: _Step, terms: Losses) -> None:
    """Backward the sum of `terms` into the existing grads and take one optimizer step."""
    sum(terms.values()).backward()
    step.optimizer.step()


def _scale_of(lr: torch.Tensor, hr: torch.Tensor) -> int:
    """The integer scale s with hr = (B, C, s*h, s*w) for lr = (B, C, h, w); anything else is an error."""
    if lr.ndim != 4 or hr.ndim != 4 or lr.shape[:2] != hr.shape[:2] or lr.shape[-1] == 0:
        raise ValueError(
            f"batch: expected lr (B, C, h, w) and hr (B, C, s*h, s*w), "
            f"got {tuple(lr.shape)} and {tuple(hr.shape)}"
        )
    scale = hr.shape[-1] // lr.shape[-1]
    if scale < 1 or hr.shape[-2:] != (scale * lr.shape[-2], scale * lr.shape[-1]):
        raise ValueError(
            f"batch: hr {tuple(hr.shape)} is not the same integer multiple of lr {tuple(lr.shape)} "
            "in both dimensions"
        )
    return scale
