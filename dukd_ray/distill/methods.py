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


@dataclass(frozen=True)
class Share:
    """A worker's rows of the global batch, and why the step weights its losses and cuts it up.

    The student's gradient must equal the one-worker gradient of the whole global batch: a
    micro-batch of b rows backwards its (mean) loss times `b * replicas / global_batch`, and the
    DDP wrapper's average over `replicas` ranks restores the global mean. Rows beyond
    `micro_batch` go through further forward/backward passes whose gradients accumulate locally
    (`no_sync`); only the last micro-batch of each optimizer step synchronises.
    """

    global_batch: int
    start: int = 0  # this worker's first row in the global batch
    micro_batch: int | None = None  # most rows per forward/backward pass; None: all rows at once
    replicas: int = 1  # ranks whose gradients the (DDP) student averages

    def weight(self, rows: int) -> float:
        return rows * self.replicas / self.global_batch


@dataclass
class _Step:
    """Everything one method needs for one micro-batch of one iteration."""

    student: nn.Module
    teacher: nn.Module | None
    lr: torch.Tensor
    hr: torch.Tensor
    scale: int
    cfg: DistillConfig
    draws: dict[str, torch.Tensor]  # the iteration's draws for the whole global batch
    rows: slice  # this micro-batch's rows of the global batch
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


# A method maps one micro-batch to its phases: each phase's loss terms, computed when called. After
# every phase (all micro-batches) the optimizer steps, with no zero_grad in between.
Phase = Callable[[], Losses]
StepFn = Callable[[_Step], list[Phase]]
DrawFn = Callable[["DistillConfig", int, int, torch.Generator, torch.device], dict[str, torch.Tensor]]
METHODS: dict[str, StepFn] = {}
DRAWS: dict[str, DrawFn] = {}  # per-iteration draws of a method, for the whole global batch


def register(name: str, draw: DrawFn | None = None) -> Callable[[StepFn], StepFn]:
    """Add a method to the registry under `name` (the value of `DistillConfig.method`)."""

    def add(fn: StepFn) -> StepFn:
        METHODS[name] = fn
        if draw is not None:
            DRAWS[name] = draw
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
    share: Share | None = None,
) -> dict[str, float]:
    """One iteration of `cfg.method`: its optimizer step(s), then the loss terms as floats.

    `batch` is `{"lr": (B, C, p, p), "hr": (B, C, s*p, s*p)}` on the training device: this worker's
    rows of the global batch described by `share` (default: the whole global batch, one pass). Every
    random draw comes from `generator` (a CPU generator), made for the whole global batch and sliced
    to these rows, so the draws of a sample do not depend on how the batch is shared. Every network
    input (the batch and the upcycled inputs built from it) is laid out in `memory_format`: NHWC (the
    default) makes the convolutions (oneDNN on CPU, cuDNN under bf16) faster, the maths unchanged;
    measured on CPU (EDSR x4 f256/f64): teacher forward -10 %, student forward+backward -20 %. Keys:
    `loss_pix`, `loss_kd`, `loss_feat`, `loss_zoom_in`, `loss_zoom_out` (those the method and
    switches use, already weighted; means over these rows) and `loss`, their sum.
    """
    lr, hr = batch["lr"], batch["hr"]
    scale = _scale_of(lr, hr)
    cfg.check_scale(scale)
    if cfg.method != "scratch":
        if teacher is None:
            raise ValueError(f"distill.method {cfg.method!r} needs a teacher, got None")
        check_frozen(teacher)
    rows = lr.shape[0]
    share = share or Share(rows)
    if not 0 <= share.start <= share.start + rows <= share.global_batch:
        raise ValueError(
            f"batch: rows {share.start}..{share.start + rows} of a global batch of {share.global_batch}"
        )
    draw = DRAWS.get(cfg.method)
    draws = draw(cfg, scale, share.global_batch, generator, lr.device) if draw else {}
    size = share.micro_batch or rows
    micro = [
        _Step(
            student,
            teacher,
            lr[i : i + size],
            hr[i : i + size],
            scale,
            cfg,
            draws,
            slice(share.start + i, share.start + min(i + size, rows)),
            amp_dtype,
            memory_format,
        )
        for i in range(0, rows, size)
    ]
    phases = [METHODS[cfg.method](m) for m in micro]
    optimizer.zero_grad()
    totals: Losses = {}
    for p in range(len(phases[0])):
        for i, (m, fns) in enumerate(zip(micro, phases, strict=True)):
            n = m.lr.shape[0]
            with contextlib.nullcontext() if i == len(micro) - 1 else _no_sync(student):
                terms = fns[p]()
                if terms:
                    loss, weight = sum(terms.values()), share.weight(n)
                    (loss if weight == 1 else loss * weight).backward()
            for k, v in terms.items():
                totals[k] = totals.get(k, 0) + v.detach() * (n / rows)
        optimizer.step()
    values = torch.stack(list(totals.values())).tolist()  # one device sync
    out = dict(zip(totals, values, strict=True))
    out["loss"] = sum(values)
    return out


def _no_sync(student: nn.Module) -> contextlib.AbstractContextManager:
    """DDP's gradient accumulation without all-reduce; a plain module has nothing to synchronise."""
    no_sync = getattr(student, "no_sync", None)
    return no_sync() if no_sync is not None else contextlib.nullcontext()


@register("scratch")
def _scratch(step: _Step) -> list[Phase]:
    """L = L1(S(x), y): the student trained alone, pixel weight 1 as in the paper."""
    return [lambda: {"loss_pix": F.l1_loss(step.student_out(step.lr), step.hr)}]


@register("kd")
def _kd(step: _Step) -> list[Phase]:
    """Step A alone: w_pix * L1(S(x), y) + w_kd * L1(S(x), T(x))."""
    return [lambda: _real_pair_terms(step, step.teacher_out(step.lr))]


@register("fakd")
def _fakd(step: _Step) -> list[Phase]:
    """Step A plus w_feat * sum over taps of L1(A(f_S), A(f_T)), A the spatial affinity (fakd.affinity).

    The feature term is trained; `reference_compat` detaches it, as the reference's does by accident
    (its value is still logged and summed into `loss`).
    """

    def terms() -> Losses:
        taps = step.cfg.fakd_taps
        with tapped(step.teacher, taps, "teacher") as t_feats:
            t_lr = step.teacher_out(step.lr)
        with tapped(step.student, taps, "student") as s_feats:
            out = _real_pair_terms(step, t_lr)
        feat = sum(F.l1_loss(affinity(s), affinity(t)) for s, t in zip(s_feats, t_feats, strict=True))
        out["loss_feat"] = step.cfg.w_feat * (feat.detach() if step.cfg.reference_compat else feat)
        return out

    return [terms]


def _dukd_draws(
    cfg: DistillConfig, scale: int, global_batch: int, generator: torch.Generator, device: torch.device
) -> dict[str, torch.Tensor]:
    """The cells, then the flags of every zoom-in sample of the global batch, (n_gt_sub, G, 4) cell-major.

    Drawn every iteration whatever the switches, so switching one off never moves the other draws.
    """
    cells = draw_cells(scale, cfg.n_gt_sub, generator)
    flags = draw_flags(cfg.n_gt_sub * global_batch, cfg.lc_ops, cfg.lc_prob, generator, device)
    if not cfg.label_consistency:
        flags.zero_()
    return {"cells": cells, "flags": flags.view(cfg.n_gt_sub, global_batch, -1)}


@register("dukd", draw=_dukd_draws)
def _dukd(step: _Step) -> list[Phase]:
    """Step A on the real pair, step B on the upcycled data (see docs/distill.md).

    `paper`: zero_grad, backward A, step, backward B, step -- no zero_grad in between, so the second
    step applies grad(L_A) + grad(L_B), as the reference code does. `joint`: one step on L_A + L_B.
    `reference_compat` maps the student's zoom-in output back with the ops in forward order, as the
    reference does (wrong exactly where transpose meets one flip: a 180-degree rotation).
    """
    cfg, lr, scale = step.cfg, step.lr, step.scale
    flags = step.draws["flags"][:, step.rows].reshape(-1, step.draws["flags"].shape[-1])
    zoom_in = zoom_in_cells(step.hr, scale, step.draws["cells"]) if cfg.zoom_in else None
    lr_down = zoom_out_input(lr, scale) if cfg.zoom_out else None
    targets: dict[str, torch.Tensor] = {}  # teacher outputs, from step A's phase to step B's

    def real_pair() -> Losses:
        if zoom_in is None:
            targets["lr"] = step.teacher_out(lr)
        else:  # same spatial size: one teacher forward for both
            both = step.teacher_out(torch.cat([lr, zoom_in]))
            targets["lr"], targets["zoom_in"] = both.split([lr.shape[0], zoom_in.shape[0]])
        if lr_down is not None:
            targets["lr_down"] = step.teacher_out(lr_down)
        return _real_pair_terms(step, targets["lr"])

    def upcycled() -> Losses:
        out: Losses = {}
        if zoom_in is not None:
            back = apply_ops if cfg.reference_compat else invert_ops
            s_zoom_in = back(step.student_out(apply_ops(zoom_in, flags)), flags)
            out["loss_zoom_in"] = cfg.w_zoom_in * cfg.w_kd * F.l1_loss(s_zoom_in, targets["zoom_in"])
        if lr_down is not None:
            s_down = step.student_out(lr_down)
            zoom_out = cfg.w_pix * F.l1_loss(s_down, lr) + cfg.w_kd * F.l1_loss(s_down, targets["lr_down"])
            out["loss_zoom_out"] = cfg.w_zoom_out * zoom_out
        return out

    if cfg.step_mode == "paper":
        return [real_pair, upcycled]  # step A; its gradient stays in .grad for step B
    return [lambda: real_pair() | upcycled()]


def _real_pair_terms(step: _Step, t_lr: torch.Tensor) -> Losses:
    s_lr = step.student_out(step.lr)
    return {
        "loss_pix": step.cfg.w_pix * F.l1_loss(s_lr, step.hr),
        "loss_kd": step.cfg.w_kd * F.l1_loss(s_lr, t_lr),
    }


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
