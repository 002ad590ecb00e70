"""What a training step costs in model arithmetic, and what the device could do: for throughput and MFU.

FLOPs per training patch are counted the way MFU is usually counted: 2 x the MACs of every forward
the method makes from one LR patch (`eval.cost.measure_cost`, on the meta device, so it costs no
arithmetic), and 3 x for the student's (its backward costs two forwards). Element-wise work (the
upcycling resizes, the losses, FAKD's affinity matrices) is not counted. The peak is the card's
published dense tensor peak for the training dtype (bf16 with `train.amp`, else TF32: cuDNN runs fp32
convolutions in TF32 by default); a device not in the table (every CPU) has no MFU, only TFLOP/s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dukd_ray.distill import DistillConfig
from dukd_ray.eval.cost import measure_cost

# published dense peaks (TFLOP/s): (bf16, tf32); the first name found in the device name wins
PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "H200": (989.4, 494.7),
    "H100 PCIe": (756.0, 378.0),
    "H100": (989.4, 494.7),
    "A100": (312.0, 156.0),
    "L40S": (362.0, 183.0),
    "L4": (121.0, 60.0),
    "A10G": (70.0, 35.0),
}


@dataclass(frozen=True)
class StepCost:
    """Model FLOPs per training patch and the device's peak FLOP/s (None: not known for this device)."""

    flops_per_sample: float
    peak_flops: float | None


def forward_inputs(cfg: DistillConfig, patch: int, scale: int) -> dict[str, list[tuple[int, int]]]:
    """Per LR patch of a step, each network's forwards, {"teacher": [...], "student": [...]}: (inputs, side).

    `dukd`: the LR patch and its `n_gt_sub` zoom-in cells (side `patch`; one teacher forward for both,
    two student forwards) and the zoom-out input (side `patch / scale`); `kd`/`fakd`: the LR patch
    through both; `scratch`: the student only. Tested against the forwards `train_step` makes.
    """
    if cfg.method == "scratch":
        return {"teacher": [], "student": [(1, patch)]}
    if cfg.method != "dukd":
        return {"teacher": [(1, patch)], "student": [(1, patch)]}
    teacher, student = [(1 + (cfg.n_gt_sub if cfg.zoom_in else 0), patch)], [(1, patch)]
    if cfg.zoom_in:
        student.append((cfg.n_gt_sub, patch))
    if cfg.zoom_out:
        teacher.append((1, patch // scale))
        student.append((1, patch // scale))
    return {"teacher": teacher, "student": student}


def step_cost(
    cfg: DistillConfig,
    teacher: nn.Module | None,
    student: nn.Module,
    patch: int,
    scale: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> StepCost:
    """The `StepCost` of training `student` (against `teacher`) with `cfg` on `device`."""
    models = {"teacher": teacher, "student": student}
    flops = 0.0
    for role, inputs in forward_inputs(cfg, patch, scale).items():
        for count, side in inputs:
            macs = measure_cost(models[role], (side, side)).macs
            flops += 2 * macs * count * (3 if role == "student" else 1)
    return StepCost(flops_per_sample=flops, peak_flops=peak_flops(device, amp_dtype))


def peak_flops(device: torch.device, amp_dtype: torch.dtype | None) -> float | None:
    """The published dense peak FLOP/s of `device` for bf16 (`amp_dtype`) or TF32; None if unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for card, (bf16, tf32) in PEAK_TFLOPS.items():
        if card in name:
            return (bf16 if amp_dtype == torch.bfloat16 else tf32) * 1e12
    return None
