"""Head-node memory per sweep trial: what sizes the `dukd_driver` slots of cluster/aws-gpu.yaml and KubeRay.

    python benchmarks/tune_driver_memory.py [--json] [--trials 2]

On a cluster from `cluster/`, each running trial keeps two processes on the head node: its driver (the
Tune function trainable) and its Ray Train controller (Ray Train puts it on the driver's node); the
workers are elsewhere. This runs a tiny CPU sweep (`--tiny` EDSR x4, the embedded sample data, a tiny
untrained teacher made here, `--trials` trials at once) on a local Ray and reads both processes' memory
from /proc at every report: RSS, and PSS (shared pages split between the processes mapping them, so the
PSS of N trials adds up to what they really take). Baseline, measured in the same run: the same numbers
for an idle Ray actor that has imported torch and ray.train (what any Ray worker process costs here).
The models' size barely matters to the driver: it holds no tensors, only the job config and the reports.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

MB = 1 << 20


def _memory(pid: int) -> dict[str, float]:
    """RSS and PSS of a process, in MiB (Linux /proc)."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                fields[name.lower()] = int(rest.split()[0]) * 1024 / MB
    return fields


def _baseline() -> dict[str, float]:
    import ray

    @ray.remote(num_cpus=0)
    class Idle:
        def pid(self) -> int:
            import ray.train  # noqa: F401
            import torch  # noqa: F401

            return os.getpid()

    actor = Idle.remote()
    out = _memory(ray.get(actor.pid.remote()))
    ray.kill(actor)
    return out


def measure(trials: int, folder: str) -> dict[str, Any]:
    import torch
    from ray import tune
    from ray.util.state import list_actors

    from dukd_ray.data.samples import write_sample_data
    from dukd_ray.models import build_arch, save_weights
    from dukd_ray.tune import cli
    from dukd_ray.tune.sweep import init_ray, run_sweep

    samples = write_sample_data(os.path.join(folder, "samples"))
    torch.manual_seed(0)
    teacher = build_arch("edsr", 4, preset="tiny_teacher")
    save_weights(os.path.join(folder, "teacher"), teacher.state_dict(), arch_spec=teacher.arch_spec)
    space = os.path.join(folder, "space.yaml")
    with open(space, "w") as f:
        f.write("space:\n  w_kd: {uniform: [0.5, 1.0]}\n")
    argv = ["--tiny", "--teacher", os.path.join(folder, "teacher.pth"), "--data", samples.train_url]
    argv += ["--val-data", samples.benchmark_url, "--set", "data.val_sets=[Sample]", "--max-steps", "6"]
    argv += ["--set", "train.val_every=2", "--set", "train.ckpt_every=6", "--space", space]
    argv += ["--num-samples", str(trials), "--max-concurrent", str(trials), "--scheduler", "fifo"]
    argv += ["--storage", os.path.join(folder, "sweeps"), "--name", "memory"]

    samples_per_trial: list[dict[str, float]] = []

    class Measure(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            controllers = list_actors(
                filters=[("class_name", "=", "TrainController"), ("state", "=", "ALIVE")]
            )
            drivers = _memory(result["pid"])
            ctl = [_memory(a.pid) for a in controllers if a.pid]
            ctl_pss = sum(c["pss"] for c in ctl) / max(1, len(ctl))
            ctl_rss = sum(c["rss"] for c in ctl) / max(1, len(ctl))
            samples_per_trial.append(
                {
                    "driver_rss": drivers["rss"],
                    "driver_pss": drivers["pss"],
                    "ctl_rss": ctl_rss,
                    "ctl_pss": ctl_pss,
                }
            )

    init_ray(num_cpus=trials + 1)
    baseline = _baseline()
    run_sweep(cli.spec_from_args(cli.build_sweep_parser().parse_args(argv)), tune_callbacks=[Measure()])
    peak = {k: max(s[k] for s in samples_per_trial) for k in samples_per_trial[0]}
    per_trial_pss = peak["driver_pss"] + peak["ctl_pss"]
    return {
        "trials_at_once": trials,
        "reports_measured": len(samples_per_trial),
        "peak_mib": {k: round(v, 1) for k, v in peak.items()},
        "per_trial_pss_mib": round(per_trial_pss, 1),
        "baseline_idle_actor_mib": {k: round(v, 1) for k, v in baseline.items()},
        "per_trial_vs_idle_actor_pss": round(per_trial_pss / baseline["pss"], 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=2, help="trials running at once")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        out = measure(args.trials, folder)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    peak = out["peak_mib"]
    base = out["baseline_idle_actor_mib"]
    print(f"{out['trials_at_once']} trials at once, {out['reports_measured']} reports measured (peaks, MiB):")
    print(f"  trial driver:      RSS {peak['driver_rss']:7.1f}  PSS {peak['driver_pss']:7.1f}")
    print(f"  Train controller:  RSS {peak['ctl_rss']:7.1f}  PSS {peak['ctl_pss']:7.1f}")
    print(f"  idle Ray actor:    RSS {base['rss']:7.1f}  PSS {base['pss']:7.1f}  (baseline, same run)")
    print(
        f"head memory per trial (driver + controller PSS): {out['per_trial_pss_mib']:.1f} MiB = "
        f"{out['per_trial_vs_idle_actor_pss']:.2f}x an idle Ray actor"
    )


if __name__ == "__main__":
    main()
