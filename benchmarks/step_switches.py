"""`train.amp` and `train.compile` on one `train_step`: seconds per step against eager fp32 in the same run.

The tiny EDSR x4 DUKD step at the quickstart's shape (batch 16, LR patch 24) unless `--paper-widths`
(EDSR f256 teacher, f64 student, 4 blocks each), through `train.acceleration` exactly as the loop
uses it (`autocast_dtype`, `compiled`). Each variant: its first step (compilation included), then the
median and best of `--iters` steps after a second warm-up step; `ratio_*` = variant / eager fp32 (best).

    python benchmarks/step_switches.py [--json] [--device cpu] [--iters 5] [--threads N] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from dukd_ray.distill import freeze_teacher, recipe, train_step
from dukd_ray.image.resize import imresize
from dukd_ray.models import build_arch
from dukd_ray.train.acceleration import autocast_dtype, compiled

SCALE = 4


def time_variant(args: argparse.Namespace, amp: bool, compile_: bool) -> dict[str, float]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    kwargs = {"num_block": 4} if args.paper_widths else {}
    prefix = "" if args.paper_widths else "tiny_"
    teacher = freeze_teacher(build_arch("edsr", SCALE, preset=f"{prefix}teacher", **kwargs).to(device))
    student = build_arch("edsr", SCALE, preset=f"{prefix}student", **kwargs).to(device)
    optimizer = torch.optim.Adam(student.parameters(), 1e-4)
    cfg, generator = recipe("edsr", SCALE, "dukd").distill, torch.Generator().manual_seed(0)
    hr = torch.rand(args.batch_size, 3, SCALE * args.patch, SCALE * args.patch)
    batch = {"lr": imresize(hr, 1 / SCALE).to(device), "hr": hr.to(device)}
    s, t = compiled(student, compile_, device), compiled(teacher, compile_, device)
    dtype = autocast_dtype(device, amp)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        train_step(s, t, optimizer, batch, cfg, generator, dtype)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    first = step()
    step()
    times = [step() for _ in range(args.iters)]
    return {"first_s": first, "median_s": statistics.median(times), "best_s": min(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch", type=int, default=24, help="LR patch side")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--paper-widths", action="store_true", help="f256 teacher / f64 student, 4 blocks")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled variant")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    variants = {"eager_fp32": (False, False), "amp_bf16": (True, False)}
    if not args.no_compile:
        variants["compiled_fp32"] = (False, True)
    runs = {name: time_variant(args, amp, comp) for name, (amp, comp) in variants.items()}
    base = runs["eager_fp32"]["best_s"]
    result = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0],
        "amp_dtype": str(autocast_dtype(torch.device(args.device), True)),
        "runs": runs,
        **{f"ratio_{name}": r["best_s"] / base for name, r in runs.items() if name != "eager_fp32"},
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
