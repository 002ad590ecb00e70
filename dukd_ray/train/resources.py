"""How many CPUs a Ray Train worker asks for, and trains on.

Ray gives an actor that asks for no CPU count `OMP_NUM_THREADS=1`, and one that asks for n CPUs n
threads; a CPU worker left at Ray's default therefore trains on one core of its machine, however
many it has. `run.cpus_per_worker` is that request (`ScalingConfig.resources_per_worker["CPU"]`), and
the worker sets torch's threads to it (`use_cpus`). Unset, `run_training` sizes it for CPU workers
from the cluster (`default_cpus_per_worker`); callers of `build_trainer` that share the cluster
between several runs (Tune's trials, a plan's concurrent runs) leave it unset and get Ray's default,
one CPU per worker, which is what their concurrency counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from dukd_ray.train.config import JobConfig, RunSpec

# CPU workers' loader processes decode one batch per (slow, CPU) step and are idle most of it:
# each is given half a core of the node's room
LOADER_CORE_SHARE = 0.5


def default_cpus_per_worker(node_cpus: Iterable[float], num_workers: int, loader_workers: int) -> int:
    """CPUs per CPU worker: its node's CPUs divided by the workers placed there, less its loaders' room.

    `node_cpus`: the CPU count of each node that can take a worker. Workers are counted spread over
    the nodes as evenly as they go (ceil(W / nodes) per node), on the smallest node; each loader
    process takes `LOADER_CORE_SHARE` of a core. At least 1.
    """
    nodes = [c for c in node_cpus if c >= 1]
    if not nodes:
        return 1
    per_node = math.ceil(num_workers / len(nodes))
    room = per_node * loader_workers * LOADER_CORE_SHARE
    return max(1, math.floor((min(nodes) - room) / per_node))


def cluster_node_cpus() -> list[float]:
    """The CPUs of each alive node of the Ray cluster this process is connected to (starting one if none)."""
    import ray

    if not ray.is_initialized():
        ray.init()
    return [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]


def size_cpu_workers(cfg: JobConfig) -> JobConfig:
    """A copy of `cfg` (`run.use_gpu` decided) with `run.cpus_per_worker` sized for CPU workers if unset."""
    out = JobConfig.from_dict(cfg.to_dict())
    if out.run.use_gpu is False and out.run.cpus_per_worker is None:
        nodes = cluster_node_cpus()
        out.run.cpus_per_worker = default_cpus_per_worker(nodes, out.run.max_workers, out.data.loader_workers)
    return out


def worker_resources(run: RunSpec, use_gpu: bool) -> dict[str, float] | None:
    """`ScalingConfig.resources_per_worker`: `cpus_per_worker` CPUs and `gpus_per_worker` GPUs when set.

    None is Ray's default: 1 CPU for a CPU worker, 1 GPU and no CPU for a GPU worker.
    """
    resources: dict[str, float] = {}
    if run.cpus_per_worker is not None:
        resources["CPU"] = run.cpus_per_worker
    if use_gpu:
        resources["GPU"] = run.gpus_per_worker
    return resources if resources and resources != {"GPU": 1.0} else None


def use_cpus(cpus_per_worker: int | None) -> int:
    """In the worker: torch's intra-op threads = the CPUs it asked for (Ray's 1 when unset); returns it."""
    threads = cpus_per_worker or 1
    torch.set_num_threads(threads)
    return threads
