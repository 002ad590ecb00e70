"""Data-parallel scaling on this host: training samples/s with 1 and with 2 CPU Ray Train workers.

Each run is the real service (`run_training`: gloo DDP, the streaming sample data, the DUKD step with
the frozen teacher) on the tiny EDSR x4 nets at the paper's per-worker batch shape (16 patches of
48 px). Throughput is the group's samples/s over the second half of the steps (the first half warms
up loaders and allocators); `ratio` = 2-worker / 1-worker (weak scaling: the batch per worker is
fixed, as in DDP). `data_wait_frac` is the share of step time spent waiting for the next batch. Every
worker trains on one thread (`run.cpus_per_worker=1`, whatever the default sizing would give), so the
ratio measures data-parallel scaling, not more threads.

`breakdown` says where the 2-worker step loses its time against the 1-worker step: `allreduce_s`, a
gloo all-reduce of the student's gradients (its parameter count in float32, two local processes,
median of 20) timed alone; `data_wait_s`, the extra wait for batches; `loader_competition`, the
2-worker ratio again with `data.loader_workers=0` (batches decoded in the training process, so no
loader processes compete for the cores; `--no-loader-run` skips it); `other_s`, the rest (both
workers' compute sharing the machine's cores and memory bandwidth). `ray_overhead_s` is each run's
wall time outside its training steps (worker start-up, validation, checkpoints, the report).

    python benchmarks/scaling.py [--json] [--steps 30] [--batch-size 16] [--patch 48] [--no-loader-run]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import ray
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dukd_ray.models import build_arch, save_weights
from dukd_ray.train import JobConfig, run_training

TARGET_RATIO = 1.6


def measure(
    workers: int, args: argparse.Namespace, root: str, teacher: str, loader_workers: int
) -> dict[str, float]:
    half = args.steps // 2
    cfg = JobConfig.from_preset("edsr_x4", tiny=True).apply_overrides(
        [
            f"model.teacher={teacher}",
            f"run.storage={root}",
            f"run.name=scaling-{workers}w-{loader_workers}l",
            f"run.num_workers={workers}",
            "run.use_gpu=false",
            "run.cpus_per_worker=1",  # one thread per worker: the ratio measures data parallelism
            f"data.batch_size={args.batch_size}",
            f"data.patch_size={args.patch}",
            f"data.loader_workers={loader_workers}",
            f"train.max_steps={2 * half}",
            f"train.val_every={half}",
            f"train.ckpt_every={2 * half}",
        ]
    )
    began = time.perf_counter()
    result = run_training(cfg)
    wall = time.perf_counter() - began
    steady = result.metrics  # the last report covers steps half+1 .. 2*half
    rate, wait = steady["samples_per_s"], steady["data_wait_frac"]
    step_s = args.batch_size * workers / rate  # per step, each worker
    first = result.history[0]  # steps 1 .. half (warm-up included)
    steps_s = half * (step_s + args.batch_size * workers / first["samples_per_s"])
    return {
        "samples_per_s": rate,
        "data_wait_frac": wait,
        "step_s": step_s,
        "data_wait_s": wait * step_s,
        "torch_threads": steady["torch_threads"],
        "ray_overhead_s": wall - steps_s,
    }


def _allreduce_worker(rank: int, numel: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    grads = torch.ones(numel)
    times = []
    for i in range(25):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(grads)
        if i >= 5:
            times.append(time.perf_counter() - start)
    if rank == 0:
        out["s"] = statistics.median(times)
    dist.destroy_process_group()


def allreduce_seconds(numel: int) -> float:
    """Median seconds of one gloo all-reduce of `numel` float32 between two local processes."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_allreduce_worker, args=(numel, port, out), nprocs=2)
        return float(out["s"])


def breakdown(runs: dict[str, dict[str, float]], allreduce_s: float) -> dict[str, float]:
    """Seconds the 2-worker step spends beyond the 1-worker step, by cause."""
    one, two = runs["1"], runs["2"]
    lost = two["step_s"] - one["step_s"]
    data = two["data_wait_s"] - one["data_wait_s"]
    return {
        "step_s_1_worker": one["step_s"],
        "step_s_2_workers": two["step_s"],
        "lost_s": lost,
        "allreduce_s": allreduce_s,
        "data_wait_s": data,
        "other_s": lost - allreduce_s - data,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16, help="patches per worker per step")
    parser.add_argument("--patch", type=int, default=48, help="LR patch side")
    parser.add_argument("--loader-workers", type=int, default=1, help="decode processes per training worker")
    parser.add_argument(
        "--no-loader-run", action="store_true", help="skip the 2-worker run without loader processes"
    )
    args = parser.parse_args()

    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False
    )  # never a cluster left running
    with tempfile.TemporaryDirectory() as root:
        model = build_arch("edsr", 4, preset="tiny_teacher")
        save_weights(os.path.join(root, "teacher"), model.state_dict(), arch_spec=model.arch_spec)
        teacher = os.path.join(root, "teacher.pth")
        runs = {str(n): measure(n, args, root, teacher, args.loader_workers) for n in (1, 2)}
        no_loaders = None if args.no_loader_run else measure(2, args, root, teacher, 0)
        student = build_arch("edsr", 4, preset="tiny_student")
    ray.shutdown()
    ratio = runs["2"]["samples_per_s"] / runs["1"]["samples_per_s"]
    split = breakdown(runs, allreduce_seconds(sum(p.numel() for p in student.parameters())))
    if no_loaders:
        split["loader_competition"] = {
            "samples_per_s_2_workers_no_loaders": no_loaders["samples_per_s"],
            "ratio_no_loaders": no_loaders["samples_per_s"] / runs["1"]["samples_per_s"],
        }
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
        "breakdown": split,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'workers':>8} {'samples/s':>10} {'data wait':>10}")
    for n, r in runs.items():
        print(f"{n:>8} {r['samples_per_s']:>10.1f} {r['data_wait_frac']:>10.1%}")
    load = result["load_avg_1min"]
    print(f"ratio 2/1 = {ratio:.2f} (target >= {TARGET_RATIO}); 1-min load average {load:.1f}")
    print("2-worker step vs 1-worker step:", json.dumps(split))


if __name__ == "__main__":
    main()
