"""Training checkpoints: everything a run needs to continue exactly where it stopped.

One directory per checkpoint, `<run>/checkpoint_<step>/`, written by `ray.train.report`, which
merges every rank's files into it and registers it only once all of them are uploaded (so a crash
mid-write never leaves a checkpoint that a resume would pick up):

    train_state.pt   rank 0: student, EMA, optimizer, scheduler, step (identical on every rank)
    rank_<r>.pt      every rank: python/numpy/torch(/cuda) RNG states, the distill generator and the
                     data position, which differ per rank, and the digest of its student replica
    history.json     rank 0: every reported metrics dict so far (curves in the report)
    meta.json        rank 0: step, world size, the student's arch_spec, the steps the run resumed from

All tensors are read back with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

TRAIN_STATE = "train_state.pt"
HISTORY = "history.json"
META = "meta.json"


def checkpoint_dir_name(step: int) -> str:
    """Zero-padded so checkpoint folders sort by step."""
    return f"checkpoint_{step:09d}"


def rank_file(rank: int) -> str:
    return f"rank_{rank}.pt"


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a step consumes (numpy's as plain values so `weights_only` loading works)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def replica_digest(*models: nn.Module) -> str:
    """SHA-256 of the models' states (names and raw bytes): equal digests = bit-identical replicas."""
    h = hashlib.sha256()
    for model in models:
        for name, tensor in model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_replicas(step: int, *models: nn.Module) -> str:
    """This rank's digest of `models`; raises if the replicas have drifted apart across ranks (collective)."""
    digest = replica_digest(*models)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        digests: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(digests, digest)
        if len(set(digests)) > 1:
            raise RuntimeError(f"student replicas differ across ranks at step {step}: digests {digests}")
    return digest


@dataclass
class Restored:
    """What a worker gets back from a checkpoint; `rank_state` is None when the world size changed."""

    step: int
    train_state: dict[str, Any]
    rank_state: dict[str, Any] | None
    history: list[dict[str, Any]]
    resumes: list[int]  # every step the run resumed from (restarts, resubmissions), this one included


def write_checkpoint(
    folder: str,
    *,
    rank: int,
    world_size: int,
    step: int,
    student: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    data_state: dict[str, Any],
    history: list[dict[str, Any]],
    resumes: list[int],
) -> None:
    """This rank's share of the checkpoint at `step` into the local `folder` (Ray uploads it); collective."""
    digest = check_replicas(step, student, ema)  # validation runs on every rank's EMA: it must match too
    rank_state = {"step": step, "rng": capture_rng(generator), "data": data_state, "replica_digest": digest}
    torch.save(rank_state, os.path.join(folder, rank_file(rank)))
    if rank != 0:
        return
    torch.save(
        {
            "step": step,
            "student": student.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        },
        os.path.join(folder, TRAIN_STATE),
    )
    _write_json(os.path.join(folder, HISTORY), history)
    arch_spec = getattr(student, "arch_spec", None)
    meta = {"step": step, "world_size": world_size, "arch_spec": arch_spec, "resumes": resumes}
    _write_json(os.path.join(folder, META), meta)


def read_checkpoint(folder: str, rank: int, world_size: int, device: torch.device) -> Restored:
    """Load a checkpoint folder (already local). Rank states are skipped if the world size changed."""
    with open(os.path.join(folder, META)) as f:
        meta = json.load(f)
    train_state = torch.load(os.path.join(folder, TRAIN_STATE), map_location=device, weights_only=True)
    rank_state = None
    if meta["world_size"] == world_size:
        rank_state = torch.load(os.path.join(folder, rank_file(rank)), map_location="cpu", weights_only=True)
    else:
        log.warning(
            "checkpoint at step %d was written by %d workers, this run has %d: weights, optimizer and "
            "schedule are restored, data positions and random states start afresh (not an exact resume)",
            meta["step"],
            meta["world_size"],
            world_size,
        )
    with open(os.path.join(folder, HISTORY)) as f:
        history = json.load(f)
    step = int(meta["step"])
    return Restored(step, train_state, rank_state, history, resumes=[*meta["resumes"], step])


def _write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, allow_nan=True)
