"""Training checkpoints: everything a run needs to continue exactly where it stopped.

One directory per checkpoint, `<run>/checkpoint_<step>/`, written by `ray.train.report`, which
merges every rank's files into it and registers it only once all of them are uploaded (so a crash
mid-write never leaves a checkpoint that a resume would pick up):

    train_state.pt   rank 0: student, EMA, optimizer, scheduler, step (identical on every rank)
    rank_<r>.pt      every rank: python/numpy/torch(/cuda) RNG states, the distill generator and the
                     data position, which differ per rank, and the digest of its student replica
    history.json     rank 0: every reported metrics dict so far (curves in the report)
    meta.json        rank 0, written last: step, world size, the student's arch_spec, the steps the run
                     resumed from, and the byte size of every other file (the completeness check)

A resume takes Ray's latest registered checkpoint (`ray.train.get_checkpoint()`), unless the run
folder holds a newer *complete* one: a worker that dies right after a report can take the
registration of that report's checkpoint with it, though every byte of it is in storage.
All tensors are read back with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray.train
import torch
from torch import nn

from dukd_ray.storage import get_fs, with_retries
from dukd_ray.train.collective import all_gather

log = logging.getLogger(__name__)

TRAIN_STATE = "train_state.pt"
HISTORY = "history.json"
META = "meta.json"


_CHECKPOINT_RE = re.compile(r"checkpoint_(\d{9})")


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
    """This rank's share of the checkpoint at `step` into the local `folder` (Ray uploads it); collective.

    Raises if the ranks' student/EMA replicas differ: validation runs on every rank's EMA.
    """
    rank_path = os.path.join(folder, rank_file(rank))
    digest = replica_digest(student, ema)
    torch.save(
        {"step": step, "rng": capture_rng(generator), "data": data_state, "replica_digest": digest}, rank_path
    )
    shares = all_gather((digest, os.path.getsize(rank_path)))
    if len({d for d, _ in shares}) > 1:
        raise RuntimeError(f"student replicas differ across ranks at step {step}: {[d for d, _ in shares]}")
    if rank != 0:
        return
    train_state = {
        "step": step,
        "student": student.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    torch.save(train_state, os.path.join(folder, TRAIN_STATE))
    _write_json(os.path.join(folder, HISTORY), history)
    files = {rank_file(r): size for r, (_, size) in enumerate(shares)}
    files |= {name: os.path.getsize(os.path.join(folder, name)) for name in (TRAIN_STATE, HISTORY)}
    arch_spec = getattr(student, "arch_spec", None)
    meta = {
        "step": step,
        "world_size": world_size,
        "arch_spec": arch_spec,
        "resumes": resumes,
        "files": files,
    }
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


@contextlib.contextmanager
def resume_folder(
    ray_checkpoint: ray.train.Checkpoint | None, run_url: str, storage_options: dict[str, Any] | None
) -> Iterator[str | None]:
    """A local folder with the checkpoint to resume from, or None for a fresh start (see module doc)."""
    found = latest_complete_checkpoint(run_url, storage_options)
    registered = _step_of(ray_checkpoint.path) if ray_checkpoint else -1
    if found and found[0] > registered:
        step, fs, path, meta = found
        log.warning(
            "resuming from step %d: the run folder's latest complete checkpoint, unregistered by Ray", step
        )
        with tempfile.TemporaryDirectory() as local:
            for name in [*meta["files"], META]:
                with_retries(
                    lambda n=name: fs.get_file(f"{path}/{n}", os.path.join(local, n)), f"{path}/{name}"
                )
            yield local
    elif ray_checkpoint:
        with ray_checkpoint.as_directory() as local:
            yield local
    else:
        yield None


def latest_complete_checkpoint(
    run_url: str, storage_options: dict[str, Any] | None
) -> tuple[int, Any, str, dict[str, Any]] | None:
    """(step, filesystem, path, meta) of the newest checkpoint folder whose files all have their sizes."""
    fs, run_path = get_fs(run_url, storage_options)
    try:
        entries = with_retries(lambda: fs.ls(run_path, detail=False), run_url)
    except FileNotFoundError:
        return None
    folders = sorted(((_step_of(e), e.rstrip("/")) for e in entries), reverse=True)
    for step, path in folders:
        if step < 0:
            continue
        try:
            meta = json.loads(with_retries(lambda p=path: fs.cat_file(f"{p}/{META}"), path))
            if all(fs.size(f"{path}/{name}") == size for name, size in meta["files"].items()):
                return step, fs, path, meta
        except (FileNotFoundError, ValueError, KeyError):  # not (fully) uploaded, or an older layout
            continue
    return None


def _step_of(path: str) -> int:
    match = _CHECKPOINT_RE.fullmatch(path.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else -1


def _write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, allow_nan=True)
