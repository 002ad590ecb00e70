"""Sizing estimates for the paper's 250k-iteration DUKD runs, derived from FLOP counts.

No GPU was measured for these numbers: every time, bandwidth and memory figure printed here is an
ESTIMATE built from (a) FLOPs counted exactly with `torch.utils.flop_counter.FlopCounterMode` on the
project's own teacher/student presets (on the `meta` device: shapes only, no compute) and (b) the stated
assumptions below. Run it to reproduce the tables in docs/cluster.md:

    python cluster/estimate_sizing.py                 # markdown tables
    python cluster/estimate_sizing.py --json          # the same numbers, machine-readable
    python cluster/estimate_sizing.py --mfu 0.2       # your own achieved fraction of peak

What one DUKD iteration costs per GPU (docs/distill.md; the paper's row from the `dukd` recipe):
  teacher forward (no grad) on x (B LR patches), on the zoom-in cells z (n_gt_sub*B patches of p px)
  and, when the row has zoom-out, on x_down (B patches of p//s px);
  student forward + backward on the same three inputs (counted, not assumed: about 3x the forward).
`paper` and `joint` step modes cost the same FLOPs: `paper` runs two optimizer steps but never
recomputes a forward (step A's graph is freed by its backward; step B builds its own). Elementwise ops,
the EMA update, Adam and the resize of x_down are not counted (they are small next to the convolutions
and matmuls); validation and checkpoint time are not included.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from dukd_ray.distill import recipe
from dukd_ray.models import ARCHS, build_arch

PAPER_ITERATIONS = 250_000
PAPER_BATCH = 16  # LR patches per GPU per iteration (docs/distill.md)
PAPER_PATCH = 48  # LR patch side in pixels
# Packed shards hold BasicSR-style 480x480 HR sub-images (step 240) with their LR crops, pre-decoded
# uint8 RGB; the stream takes one random patch per crop it reads (data issue), so every training sample
# costs one whole crop pair of storage reads.
HR_CROP = 480
# BasicSR's extract_subimages on the 800 DIV2K train HR images (480 px, step 240): the count of lines of
# its basicsr/data/meta_info/meta_info_DIV2K800sub_GT.txt
DIV2K_CROPS = 32_592


@dataclass(frozen=True)
class Gpu:
    """A GPU type as the cluster configs use it; peak = dense bf16 tensor-core TFLOP/s (vendor figure)."""

    name: str
    instance: str
    per_node: int
    vcpus_per_node: int
    memory_gib: int
    peak_bf16_tflops: float


GPUS = (
    Gpu("A100-SXM4-40GB", "p4d.24xlarge", 8, 96, 40, 312.0),
    # A10G is AWS's variant of the A10 with fewer tensor-core FLOP/s than the A10's 125 (assumed ~70).
    Gpu("A10G-24GB", "g5.12xlarge", 4, 48, 24, 70.0),
)
DEFAULT_MFU = 0.32  # assumed achieved fraction of peak: 100 TFLOP/s on an A100 with bf16 autocast
CONSERVATIVE_FRACTION = 0.5  # of --mfu: 64-channel convs and SwinIR's small windows often reach no more


@dataclass(frozen=True)
class IterationCost:
    """FLOPs (multiply-add = 2 FLOPs) of one DUKD iteration on one GPU, split by network."""

    arch: str
    scale: int
    batch: int
    patch: int
    n_gt_sub: int
    zoom_out: bool
    teacher_params: int
    student_params: int
    teacher_fwd_flops: int
    student_fwd_bwd_flops: int
    student_fwd_flops: int
    activation_bytes: int  # student activations of one iteration's largest pass (fp32 upper bound)

    @property
    def total_flops(self) -> int:
        return self.teacher_fwd_flops + self.student_fwd_bwd_flops


def _meta_model(arch: str, scale: int, preset: str) -> torch.nn.Module:
    with torch.device("meta"):
        return build_arch(arch, scale, preset)


def count_flops(model: torch.nn.Module, side: int, batch: int = 1, backward: bool = False) -> int:
    """FLOPs of one forward (and backward) pass of `model` on (batch, 3, side, side) meta input."""
    x = torch.empty(batch, 3, side, side, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        if backward:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    return counter.get_total_flops()


class _OutputBytes(TorchDispatchMode):
    """Sums the bytes of every new tensor an op returns (views and in-place results alias an input and
    are skipped): an upper bound on what autograd keeps for backward."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.total += t.numel() * t.element_size()
        return out


def activation_bytes(model: torch.nn.Module, side: int, batch: int) -> int:
    """Upper bound (fp32) on the activations a training forward keeps, on meta input (no memory used)."""
    x = torch.empty(batch, 3, side, side, device="meta")
    with _OutputBytes() as mode:
        model(x)
    return mode.total


def iteration_cost(
    arch: str,
    scale: int = 4,
    batch: int = PAPER_BATCH,
    patch: int = PAPER_PATCH,
    presets: tuple[str, str] = ("teacher", "student"),
) -> IterationCost:
    """Count one paper-config DUKD iteration of `arch` at `scale` (see the module docstring).

    `presets` names the (teacher, student) model sizes; the tiny ones make a quick check of the counting.
    """
    cfg = recipe(arch, scale, "dukd").distill
    teacher, student = (_meta_model(arch, scale, preset) for preset in presets)
    # (input side, number of patches) for x, the zoom-in cells z and, if used, x_down
    passes = [(patch, batch), (patch, cfg.n_gt_sub * batch)]
    if cfg.zoom_out:
        passes.append((patch // scale, batch))
    sides = {side for side, _ in passes}  # FLOPs are linear in the batch: count each input size once
    teacher_fwd = {side: count_flops(teacher, side) for side in sides}
    student_fwd = {side: count_flops(student, side) for side in sides}
    student_fwd_bwd = {side: count_flops(student, side, backward=True) for side in sides}
    return IterationCost(
        arch=arch,
        scale=scale,
        batch=batch,
        patch=patch,
        n_gt_sub=cfg.n_gt_sub,
        zoom_out=cfg.zoom_out,
        teacher_params=sum(p.numel() for p in teacher.parameters()),
        student_params=sum(p.numel() for p in student.parameters()),
        teacher_fwd_flops=sum(n * teacher_fwd[side] for side, n in passes),
        student_fwd_bwd_flops=sum(n * student_fwd_bwd[side] for side, n in passes),
        student_fwd_flops=sum(n * student_fwd[side] for side, n in passes),
        # the largest pass: the zoom-in cells (n_gt_sub * B full-size patches) or x itself
        activation_bytes=activation_bytes(student, patch, max(passes[:2], key=lambda p: p[1])[1]),
    )


def crop_pair_bytes(scale: int, hr_crop: int = HR_CROP) -> int:
    """Bytes of one packed uint8 RGB HR crop plus its LR crop (what one training sample reads)."""
    return 3 * hr_crop**2 + 3 * (hr_crop // scale) ** 2


def train_memory_gib(cost: IterationCost) -> float:
    """Per-trial GPU memory: fp32 student + grads + Adam (16 B/param), fp32 teacher, activations."""
    return (16 * cost.student_params + 4 * cost.teacher_params + cost.activation_bytes) / 2**30


def trials_by_memory(cost: IterationCost, gpu: Gpu, usable: float = 0.9) -> int:
    """How many trials of this size one GPU's memory holds (compute, not memory, is usually the limit)."""
    return int(usable * gpu.memory_gib // train_memory_gib(cost))


def estimate(cost: IterationCost, gpu: Gpu, mfu: float, iterations: int = PAPER_ITERATIONS) -> dict:
    """Step time, GPU-hours, storage read rate and trials per node for one arch on one GPU type."""
    achieved = gpu.peak_bf16_tflops * mfu * 1e12
    step_s = cost.total_flops / achieved
    gpu_hours = iterations * step_s / 3600
    per_gpu_mb_s = cost.batch * crop_pair_bytes(cost.scale) / step_s / 1e6
    return {
        "gpu": gpu.name,
        "instance": gpu.instance,
        "achieved_tflops": round(achieved / 1e12, 1),
        "step_s": round(step_s, 4),
        "gpu_hours": round(gpu_hours, 1),
        "node_wall_hours": round(gpu_hours / gpu.per_node, 2),
        "read_mb_s_per_gpu": round(per_gpu_mb_s),
        "read_mb_s_per_node": round(per_gpu_mb_s * gpu.per_node),
        "trial_memory_gib": round(train_memory_gib(cost), 2),
        "trials_per_node": gpu.per_node,
        "trials_per_gpu_by_memory": trials_by_memory(cost, gpu),
        "vcpus_per_trial": gpu.vcpus_per_node // gpu.per_node,
    }


def markdown(costs: list[IterationCost], mfu: float) -> str:
    """The tables docs/cluster.md shows, for the given achieved fraction of peak."""
    lines = [
        f"FLOPs per iteration per GPU (batch {costs[0].batch}, LR patch {costs[0].patch}, x{costs[0].scale}; "
        "counted with FlopCounterMode):",
        "",
        "| arch | zoom-in cells | zoom-out | teacher fwd TFLOP "
        "| student fwd+bwd TFLOP (÷ fwd) | total TFLOP |",
        "|---|---|---|---|---|---|",
    ]
    for c in costs:
        ratio = c.student_fwd_bwd_flops / c.student_fwd_flops
        lines.append(
            f"| {c.arch} | {c.n_gt_sub} | {'yes' if c.zoom_out else 'no'} | {c.teacher_fwd_flops / 1e12:.2f} "
            f"| {c.student_fwd_bwd_flops / 1e12:.2f} ({ratio:.2f}x) | {c.total_flops / 1e12:.2f} |"
        )
    for m, label in ((mfu, "headline"), (mfu * CONSERVATIVE_FRACTION, "conservative")):
        lines += [
            "",
            f"ESTIMATE ({label}: {m:.0%} of dense bf16 peak), {PAPER_ITERATIONS:,} iterations:",
            "",
            "| arch | GPU | step s | GPU-hours | wall h, 1 node | read MB/s per GPU | per node |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in costs:
            for gpu in GPUS:
                e = estimate(c, gpu, m)
                lines.append(
                    f"| {c.arch} | {gpu.name} ({e['achieved_tflops']} TFLOP/s) | {e['step_s']:.3f} "
                    f"| {e['gpu_hours']} | {e['node_wall_hours']} ({gpu.per_node} GPUs) "
                    f"| {e['read_mb_s_per_gpu']} | {e['read_mb_s_per_node']} |"
                )
    lines += [
        "",
        "Tune trials per node (1 GPU per trial; memory = fp32 student + grads + Adam, fp32 teacher, "
        "activation upper bound; 'by memory' = how many such trials one GPU's memory could hold):",
        "",
        "| arch | trial memory GiB | "
        + " | ".join(f"{g.instance}: trials (vCPU each), by memory per GPU" for g in GPUS)
        + " |",
        "|---|---|" + "---|" * len(GPUS),
    ]
    for c in costs:
        cells = [f"{g.per_node} ({g.vcpus_per_node // g.per_node}), {trials_by_memory(c, g)}" for g in GPUS]
        lines.append(f"| {c.arch} | {train_memory_gib(c):.2f} | " + " | ".join(cells) + " |")
    run_tb = PAPER_ITERATIONS * costs[0].batch * crop_pair_bytes(costs[0].scale) / 1e12
    lines += [
        "",
        f"Shard bytes read per GPU over the run: {PAPER_ITERATIONS:,} x {costs[0].batch} x "
        f"{crop_pair_bytes(costs[0].scale):,} B = {run_tb:.2f} TB "
        f"(the packed DIV2K x{costs[0].scale} set is {DIV2K_CROPS:,} crops = "
        f"{DIV2K_CROPS * crop_pair_bytes(costs[0].scale) / 1e9:.1f} GB).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="achieved fraction of dense bf16 peak")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args(argv)
    if not 0 < args.mfu <= 1:
        parser.error(f"--mfu must be in (0, 1], got {args.mfu}")
    costs = [iteration_cost(arch, args.scale) for arch in ARCHS]
    if args.json:
        out = [
            {**asdict(c), "total_flops": c.total_flops, "estimates": [estimate(c, g, args.mfu) for g in GPUS]}
            for c in costs
        ]
        print(json.dumps(out, indent=2))
    else:
        print(markdown(costs, args.mfu))


if __name__ == "__main__":
    main()
