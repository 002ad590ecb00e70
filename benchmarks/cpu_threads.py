"""One CPU Ray Train worker on 1 thread (Ray's default before `run.cpus_per_worker`) vs the sized default.

The quickstart's student run shape (tiny EDSR x4 DUKD, batch 16, LR patch 24, one loader process)
through `run_training` on a local Ray of all this machine's CPUs; samples/s over the second half of
the steps, for `run.cpus_per_worker` = 1, unset (sized by `train/resources.py`) and every CPU.
`ratio_*` = that run / the 1-thread run.

    python benchmarks/cpu_threads.py [--json] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import ray

from dukd_ray.models import build_arch, save_weights
from dukd_ray.train import JobConfig, run_training


def samples_per_s(cpus: int | None, steps: int, root: str, teacher: str) -> tuple[float, int]:
    """(samples/s of the last report, the worker's torch threads) for `run.cpus_per_worker=cpus`."""
    cfg = JobConfig.from_preset("edsr_x4", tiny=True)
    cfg.model.teacher, cfg.run.storage, cfg.run.name = teacher, root, f"threads-{cpus}"
    cfg.run.use_gpu, cfg.run.cpus_per_worker = False, cpus
    cfg.data.batch_size, cfg.data.patch_size = 16, 24
    cfg.train.max_steps, cfg.train.val_every, cfg.train.ckpt_every = steps, steps // 2, steps
    last = run_training(cfg.validate()).metrics
    return last["samples_per_s"], last["torch_threads"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as root:
        model = build_arch("edsr", 4, preset="tiny_teacher")
        save_weights(os.path.join(root, "teacher"), model.state_dict(), arch_spec=model.arch_spec)
        teacher = os.path.join(root, "teacher.pth")
        runs = {str(c): samples_per_s(c, args.steps, root, teacher) for c in (1, None, cpus)}
    ray.shutdown()
    base = runs["1"][0]
    result = {
        "host_cpus": cpus,
        "load_avg_1min": os.getloadavg()[0],
        "runs": {k: {"samples_per_s": r, "torch_threads": t} for k, (r, t) in runs.items()},
        "ratio_sized": runs["None"][0] / base,
        "ratio_all_cpus": runs[str(cpus)][0] / base,
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
