"""Data-parallel scaling on this host: training samples/s with 1 and with 2 CPU Ray Train workers.

Each run is the real service (`run_training`: gloo DDP, the streaming sample data, the DUKD step with
the frozen teacher) on the tiny EDSR x4 nets at the paper's per-worker batch shape (16 patches of
48 px). Throughput is the group's samples/s over the second half of the steps (the first half warms
up loaders and allocators); `ratio` = 2-worker / 1-worker (weak scaling: the batch per worker is
fixed, as in DDP). `data_wait_frac` is the share of step time spent waiting for the next batch.

    python benchmarks/scaling.py [--json] [--steps 30] [--batch-size 16] [--patch 48]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import ray

from dukd_ray.models import build_arch, save_weights
from dukd_ray.train import JobConfig, run_training

TARGET_RATIO = 1.6


def measure(workers: int, args: argparse.Namespace, root: str, teacher: str) -> dict[str, float]:
    half = args.steps // 2
    cfg = JobConfig.from_preset("edsr_x4", tiny=True).apply_overrides(
        [
            f"model.teacher={teacher}",
            f"run.storage={root}",
            f"run.name=scaling-{workers}w",
            f"run.num_workers={workers}",
            "run.use_gpu=false",
            f"data.batch_size={args.batch_size}",
            f"data.patch_size={args.patch}",
            f"data.loader_workers={args.loader_workers}",
            f"train.max_steps={2 * half}",
            f"train.val_every={half}",
            f"train.ckpt_every={2 * half}",
        ]
    )
    steady = run_training(cfg).metrics  # the last report covers steps half+1 .. 2*half
    return {"samples_per_s": steady["samples_per_s"], "data_wait_frac": steady["data_wait_frac"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16, help="patches per worker per step")
    parser.add_argument("--patch", type=int, default=48, help="LR patch side")
    parser.add_argument("--loader-workers", type=int, default=1, help="decode processes per training worker")
    args = parser.parse_args()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as root:
        model = build_arch("edsr", 4, preset="tiny_teacher")
        save_weights(os.path.join(root, "teacher"), model.state_dict(), arch_spec=model.arch_spec)
        teacher = os.path.join(root, "teacher.pth")
        runs = {str(n): measure(n, args, root, teacher) for n in (1, 2)}
    ray.shutdown()
    ratio = runs["2"]["samples_per_s"] / runs["1"]["samples_per_s"]
    result = {
        "host_cpus": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "nets": "edsr x4 tiny_teacher -> tiny_student, dukd",
        "batch_per_worker": args.batch_size,
        "patch": args.patch,
        "steps": args.steps,
        "workers": runs,
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'workers':>8} {'samples/s':>10} {'data wait':>10}")
    for n, r in runs.items():
        print(f"{n:>8} {r['samples_per_s']:>10.1f} {r['data_wait_frac']:>10.1%}")
    load = result["load_avg_1min"]
    print(f"ratio 2/1 = {ratio:.2f} (target >= {TARGET_RATIO}); 1-min load average {load:.1f}")


if __name__ == "__main__":
    main()
