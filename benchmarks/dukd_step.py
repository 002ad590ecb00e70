"""Time one DUKD iteration of ours against a reference-style one: same models, batch and draws.

The reference-style iteration is written here the way the reference code does it: the teacher in
train mode with its parameters requiring grad and its outputs not detached (so every backward also
runs through the teacher and accumulates teacher grads), and the zoom-out resize done on the CPU one
image at a time. Ours is `dukd_ray.distill.train_step` with a frozen teacher and the batched resize
on the training device. Iterations alternate (ours, reference, ours, ...) so that load from other
processes hits both alike; the median and the best of each are reported.

    python benchmarks/dukd_step.py [--json] [--paper] [--device cuda] [--iters 3]

Defaults keep the paper's EDSR x4 widths (teacher f256, student f64) with fewer blocks and a small
batch so it runs in about a minute on a CPU; `--paper` is f256b32 / f64b32, batch 16, LR patch 48.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from dukd_ray.distill import DistillConfig, apply_ops, freeze_teacher, recipe, train_step, zoom_in_cells
from dukd_ray.distill.augment import draw_flags
from dukd_ray.distill.upcycle import draw_cells
from dukd_ray.image.resize import imresize
from dukd_ray.models import build_arch

SCALE = 4


def reference_iteration(
    student: nn.Module,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    cfg: DistillConfig,
    generator: torch.Generator,
) -> float:
    """One iteration as the reference code runs it (paper mode), including its wasted work."""
    lr, hr = batch["lr"], batch["hr"]
    optimizer.zero_grad()
    out = student(lr)
    # the teacher output is not detached: this backward also runs through the teacher
    loss_a = cfg.w_pix * F.l1_loss(out, hr) + cfg.w_kd * F.l1_loss(out, teacher(lr))
    loss_a.backward()
    optimizer.step()

    cells = draw_cells(SCALE, cfg.n_gt_sub, generator)
    flags = draw_flags(cfg.n_gt_sub * lr.shape[0], cfg.lc_ops, cfg.lc_prob, generator, lr.device)
    zoom_in = zoom_in_cells(hr, SCALE, cells)
    # the reference's "inverse" re-applies the ops in forward order (same cost as the true inverse)
    s_zoom_in = apply_ops(student(apply_ops(zoom_in, flags)), flags)
    loss_zoom_in = cfg.w_kd * F.l1_loss(teacher(zoom_in), s_zoom_in)
    lr_down = torch.stack([imresize(img.cpu(), 1 / SCALE) for img in lr]).to(lr.device)  # per image, on CPU
    s_down = student(lr_down)
    loss_zoom_out = cfg.w_pix * F.l1_loss(s_down, lr) + cfg.w_kd * F.l1_loss(s_down, teacher(lr_down))
    loss_b = loss_zoom_in + loss_zoom_out
    loss_b.backward()  # no zero_grad before it, as in the reference
    optimizer.step()
    return (loss_a + loss_b).item()


def _timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call; CPU time is what load from others disturbs least."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(10)
    teacher_blocks, student_blocks = (32, 32) if args.paper else (args.teacher_blocks, args.student_blocks)
    batch_size, patch = (16, 48) if args.paper else (args.batch_size, args.patch)
    teacher = build_arch("edsr", SCALE, preset="teacher", num_block=teacher_blocks).to(device)
    student = build_arch("edsr", SCALE, preset="student", num_block=student_blocks).to(device)
    ref_teacher, ref_student = copy.deepcopy(teacher).train(), copy.deepcopy(student)
    freeze_teacher(teacher)
    hr = torch.rand(batch_size, 3, SCALE * patch, SCALE * patch, generator=torch.Generator().manual_seed(0))
    batch = {"lr": imresize(hr, 1 / SCALE).to(device), "hr": hr.to(device)}
    cfg = recipe("edsr", SCALE, "dukd").distill
    ours_opt = torch.optim.Adam(student.parameters(), 1e-4, betas=(0.9, 0.99))
    ref_opt = torch.optim.Adam(ref_student.parameters(), 1e-4, betas=(0.9, 0.99))
    ours_gen, ref_gen = torch.Generator().manual_seed(10), torch.Generator().manual_seed(10)
    amp_dtype = torch.bfloat16 if args.amp else None

    def ours() -> None:
        train_step(student, teacher, ours_opt, batch, cfg, ours_gen, amp_dtype)

    def reference() -> None:
        reference_iteration(ref_student, ref_teacher, ref_opt, batch, cfg, ref_gen)

    for _ in range(args.warmup):
        ours()
        reference()
    ours_runs, ref_runs = [], []
    for _ in range(args.iters):
        ours_runs.append(_timed(ours, device))
        ref_runs.append(_timed(reference, device))
    ours_times, ref_times = [wall for wall, _ in ours_runs], [wall for wall, _ in ref_runs]
    ours_cpu, ref_cpu = (statistics.median(cpu for _, cpu in runs) for runs in (ours_runs, ref_runs))
    ours_s, ref_s = statistics.median(ours_times), statistics.median(ref_times)
    # the best of each is the least disturbed by other processes on a shared machine
    ours_best, ref_best = min(ours_times), min(ref_times)
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "setup": {
            "arch": "edsr",
            "scale": SCALE,
            "teacher": f"f256b{teacher_blocks}",
            "student": f"f64b{student_blocks}",
            "batch_size": batch_size,
            "lr_patch": patch,
            "n_gt_sub": cfg.n_gt_sub,
            "lc_prob": cfg.lc_prob,
            "amp": str(amp_dtype) if amp_dtype else None,
        },
        "iters": args.iters,
        "ours_s": ours_s,
        "reference_s": ref_s,
        "ratio": ours_s / ref_s,
        "ours_best_s": ours_best,
        "reference_best_s": ref_best,
        "ratio_best": ours_best / ref_best,
        # process CPU time (all threads); meaningful for --device cpu only
        "ours_cpu_s": ours_cpu if device.type == "cpu" else None,
        "reference_cpu_s": ref_cpu if device.type == "cpu" else None,
        "ratio_cpu": ours_cpu / ref_cpu if device.type == "cpu" else None,
        "ours_all_s": ours_times,
        "reference_all_s": ref_times,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--paper", action="store_true", help="the paper's sizes: f256b32/f64b32, batch 16, patch 48"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--amp", action="store_true", help="run ours under bf16 autocast (the trainer's CUDA mode)"
    )
    parser.add_argument("--iters", type=int, default=3, help="timed iterations of each")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1: CPU time = work)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--patch", type=int, default=48, help="LR patch size")
    parser.add_argument("--teacher-blocks", type=int, default=2)
    parser.add_argument("--student-blocks", type=int, default=2)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    setup = result["setup"]
    print(
        f"EDSR x{SCALE} teacher {setup['teacher']} / student {setup['student']}, "
        f"batch {setup['batch_size']}, patch {setup['lr_patch']}, "
        f"{result['device']} ({result['threads']} threads)"
    )
    print(f"ours      {result['ours_s']:.3f} s/iter (median; best {result['ours_best_s']:.3f})")
    print(f"reference {result['reference_s']:.3f} s/iter (median; best {result['reference_best_s']:.3f})")
    print(f"ratio     {result['ratio']:.3f} median, {result['ratio_best']:.3f} best (ours / reference)")
    if result["ratio_cpu"] is not None:
        print(f"ratio     {result['ratio_cpu']:.3f} of process CPU time (median)")


if __name__ == "__main__":
    main()
