"""One command for a machine with a CUDA GPU: a real 1-GPU training run, then the paper-size step table.

    python benchmarks/gpu_check.py [--json] [--steps 300] [--archs edsr,rcan,swinir] [--no-compile]

1. A Ray Train run of the job service on one GPU: the full EDSR x4 preset (teacher f256b32, student
   f64b32, batch 16, LR patch 48, the DUKD recipe) with `train.amp`, a randomly initialised teacher
   saved as a checkpoint, DIV2K-size synthetic images packed into shards in a local folder (the
   object-store path through fsspec), `--steps` steps, validated once at the end.
2. `paper_scale.time_step` for each arch on the GPU with bf16 autocast on/off and channels-last
   on/off, plus torch.compile with both on for `--compile-archs` (default EDSR; a compilation that
   fails becomes a row with a note).
3. A table naming the card: step time, patches/s and the achieved MFU against the card's published
   dense bf16 peak (when the card is one `paper_scale.CARDS` names).

Every loss must be finite: the run's history and every timed step; otherwise the exit status is 1.
Designed to take under 8 minutes on an H100/H200-class card. On a machine without CUDA the same
runs on the tiny presets (a few steps, small images), so a CI test keeps the script working.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import tempfile
import time
from typing import Any

import torch
from paper_scale import CARDS, SCALE, device_name, macs_per_step, models, time_step  # the sibling script

from dukd_ray.data.pack import pack
from dukd_ray.data.samples import DIV2K_HR_SIZE, write_div2k_like, write_sample_data
from dukd_ray.models import build_arch, save_weights
from dukd_ray.train import JobConfig, run_training


def train_run(tmp: str, gpu: bool, steps: int) -> dict[str, Any]:
    """The job service on one worker (GPU with bf16, or CPU with the tiny presets); its last metrics."""
    size, crop, images = (DIV2K_HR_SIZE, 480, 8) if gpu else ((192, 288), 96, 2)
    root = write_div2k_like(os.path.join(tmp, "div2k"), images, SCALE, size)
    shards = os.path.join(tmp, "shards")
    pack(root, shards, SCALE, crop, crop // 2, shard_size_mb=64, progress=False)
    samples = write_sample_data(os.path.join(tmp, "samples"), scales=(SCALE,))
    cfg = JobConfig.from_preset(f"edsr_x{SCALE}", tiny=not gpu)
    torch.manual_seed(0)
    teacher = build_arch("edsr", SCALE, preset=cfg.model.teacher_preset)
    prefix = os.path.join(tmp, "teacher")
    save_weights(prefix, teacher.state_dict(), arch_spec=teacher.arch_spec)
    cfg.apply_overrides(
        [
            f"model.teacher={prefix}.pth",
            f"data.train={shards}",
            f"data.val={samples.benchmark_url}",
            f"train.max_steps={steps}",
            f"train.val_every={steps}",
            f"train.ckpt_every={steps}",
            f"train.log_every={max(1, steps // 10)}",
            f"train.amp={str(gpu).lower()}",
            f"run.use_gpu={str(gpu).lower()}",
            f"run.storage={os.path.join(tmp, 'runs')}",
            "run.name=gpu-check",
        ]
    )
    start = time.perf_counter()
    result = run_training(cfg)
    losses = {k: v for row in result.history for k, v in row.items() if k.startswith("loss")}
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "steps": result.step,
        "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
        "losses_finite": all(math.isfinite(v) for v in losses.values()) and bool(losses),
    }


def step_table(a: argparse.Namespace, device: torch.device, tiny: bool) -> list[dict[str, Any]]:
    """One row per (arch, bf16, channels-last, compile) of the paper-size step (tiny off CUDA)."""
    peak = next((tflops for card, tflops in CARDS.items() if _same_card(card, device_name(device))), None)
    combos = [(amp, cl, False) for amp, cl in itertools.product((False, True), repeat=2)]
    rows = []
    for arch in a.archs:
        macs = macs_per_step(arch, tiny, a.batch, a.patch)["total"]
        compiled = [(True, True, True)] if a.compile and arch in a.compile_archs else []
        for amp, channels_last, compile_ in combos + compiled:
            opts = argparse.Namespace(
                tiny=tiny,
                amp=amp,
                channels_last=channels_last,
                compile=compile_,
                steps=a.timed_steps,
                warmup_steps=a.warmup_steps,
                warmup_batch=a.batch,
            )
            row: dict[str, Any] = {
                "arch": arch,
                "bf16": amp,
                "channels_last": channels_last,
                "compile": compile_,
            }
            try:
                pair = models(arch, tiny, device, channels_last, compile_)
                timed = time_step(arch, a.batch, a.patch, opts, device, pair)
            except Exception as e:  # noqa: BLE001 - compilation can fail many ways; the row says how
                if not compile_:
                    raise
                row["note"] = f"compile skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                rows.append(row)
                continue
            row.update(
                step_s=timed["step_s"],
                patches_per_s=a.batch / timed["step_s"],
                teacher_forward_s=timed["teacher_forward"],
                student_fwd_bwd_s=timed["student_forward"] + timed["student_backward"],
                peak_memory_gib=(timed.get("bytes") or 0) / 2**30,
                losses_finite=timed["losses_finite"],
                mfu=(2 * macs / timed["step_s"] / (peak * 1e12)) if peak else None,
            )
            rows.append(row)
            del pair
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _same_card(card: str, name: str) -> bool:
    """'NVIDIA H100 80GB HBM3' is the H100 SXM entry; every word of the model must appear."""
    model = card.split()[0]
    return model.lower() in name.lower().split() or f"{model.lower()}-" in name.lower()


def print_table(result: dict[str, Any]) -> None:
    print(f"card: {result['device']}  (batch {result['batch']}, LR patch {result['patch']}, x{SCALE})")
    run = result["train_run"]
    print(
        f"Ray Train run: {run['steps']} steps in {run['seconds']} s, losses finite: {run['losses_finite']}, "
        f"val PSNR {run['metrics'].get('val_psnr', float('nan')):.2f} dB (random teacher)"
    )
    print(
        "| arch | bf16 | channels_last | compile | step (ms) | patches/s | teacher fwd (ms) | "
        "student fwd+bwd (ms) | peak GiB | MFU |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in result["table"]:
        if "note" in r:
            print(f"| {r['arch']} | {r['bf16']} | {r['channels_last']} | {r['compile']} | {r['note']} |")
            continue
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
        cells = [
            f"{1e3 * r['step_s']:.1f}",
            f"{r['patches_per_s']:.0f}",
            f"{1e3 * r['teacher_forward_s']:.1f}",
            f"{1e3 * r['student_fwd_bwd_s']:.1f}",
            f"{r['peak_memory_gib']:.2f}",
            mfu,
        ]
        print(f"| {r['arch']} | {r['bf16']} | {r['channels_last']} | {r['compile']} | {' | '.join(cells)} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--steps", type=int, help="steps of the Ray Train run (default 300 on CUDA, 6 on CPU)")
    p.add_argument("--archs", default="edsr,rcan,swinir")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the compile rows")
    p.add_argument(
        "--compile-archs",
        default="edsr",
        help="archs with a compile row (compiling takes a minute or more each)",
    )
    p.add_argument("--timed-steps", type=int, help="timed steps per row (default 10 on CUDA, 1 on CPU)")
    p.add_argument("--warmup-steps", type=int, default=2)
    a = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    a.archs = [x for x in a.archs.split(",") if x]
    a.compile_archs = [x for x in a.compile_archs.split(",") if x]
    a.batch, a.patch = (16, 48) if gpu else (4, 24)
    a.timed_steps = a.timed_steps or (10 if gpu else 1)
    a.compile = a.compile and gpu  # on CPU, inductor's C++ build alone takes minutes
    with tempfile.TemporaryDirectory() as tmp:
        run = train_run(tmp, gpu, a.steps or (300 if gpu else 6))
    result = {
        "device": device_name(device),
        "presets": "paper" if gpu else "tiny (no CUDA device)",
        "batch": a.batch,
        "patch": a.patch,
        "train_run": run,
        "table": step_table(a, device, tiny=not gpu),
    }
    finite = run["losses_finite"] and all(r.get("losses_finite", True) for r in result["table"])
    result["all_losses_finite"] = finite
    if a.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
