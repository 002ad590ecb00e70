"""What the per-step preemption check costs: `ray.train.get_preemption_info()` against a gloo barrier.

The training loop asks Ray once per step whether a node of the run is draining (docs/cluster.md,
section 6); the call is a collective through Ray Train's synchronization actor. This runs a Ray Train
group of `--workers` CPU workers on a local Ray and times `--calls` checks, then as many
`torch.distributed.barrier()` calls (the cheapest collective DDP already does each step) in the same
group; `ratio` = check / barrier. Compare the check's milliseconds with a training step's.

    python benchmarks/preemption_check.py [--workers 2] [--calls 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchTrainer


def measure(config: dict[str, Any]) -> dict[str, float]:
    """Milliseconds per preemption check and per barrier, on every rank (rank 0's are returned)."""
    import torch.distributed as dist

    calls = config["calls"]
    ray.train.get_preemption_info()  # the synchronization actor's first call sets it up
    began = time.perf_counter()
    for _ in range(calls):
        ray.train.get_preemption_info()
    check_ms = (time.perf_counter() - began) / calls * 1e3
    began = time.perf_counter()
    for _ in range(calls):
        dist.barrier()
    barrier_ms = (time.perf_counter() - began) / calls * 1e3
    return {"check_ms": check_ms, "barrier_ms": barrier_ms}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    ray.init(num_cpus=args.workers, include_dashboard=False)
    with tempfile.TemporaryDirectory() as storage:
        trainer = TorchTrainer(
            measure,
            train_loop_config={"calls": args.calls},
            scaling_config=ray.train.ScalingConfig(num_workers=args.workers),
            run_config=ray.train.RunConfig(storage_path=storage),
        )
        out = trainer.fit().return_value
    out["ratio"] = out["check_ms"] / out["barrier_ms"]
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"preemption check {out['check_ms']:.2f} ms, gloo barrier {out['barrier_ms']:.2f} ms "
            f"({args.workers} workers), ratio {out['ratio']:.1f}"
        )


if __name__ == "__main__":
    main()
