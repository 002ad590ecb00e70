"""Training checkpoints: everything a run needs to continue exactly where it stopped.

One directory per checkpoint, `<run>/checkpoint_<step>/`, written by `ray.train.report`, which
merges every rank's files into it and registers it only once all of them are uploaded (so a crash
mid-write never leaves a checkpoint that a resume would pick up):

    train_state.pt   rank 0: the state's SHARED entries: student, EMA, optimizer, scheduler, step
    rank_<r>.pt      every rank: python/numpy/torch(/cuda) RNG states, the distill generator and the
                     data position, which differ per rank, and the digest of its student replica
    history.json     rank 0: every reported metrics dict so far (curves in the report)
    meta.json        rank 0, written last: step, world size, the student's arch_spec, the steps the run
                     resumed from, and the byte size of every other file (the completeness check)

`write_checkpoint` / `read_checkpoint` save and restore a whole `TrainState`. A resume takes Ray's
latest registered checkpoint (`ray.train.get_checkpoint()`), unless the run folder holds a newer
*complete* one (see `resume_folder`). All tensors are read back with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from typing import Any

import ray.train
import torch
from torch import nn

from dukd_ray.storage import basename, get_fs, list_folder, with_retries
from dukd_ray.train.collective import all_gather
from dukd_ray.train.state import PER_RANK, SHARED, TrainState

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


def replica_digest(*models: nn.Module) -> str:
    """SHA-256 of the models' states (names and raw bytes): equal digests = bit-identical replicas."""
    h = hashlib.sha256()
    for model in models:
        for name, tensor in model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_checkpoint(folder: str, state: TrainState, *, rank: int, world_size: int) -> None:
    """This rank's share of `state` as a checkpoint in the local `folder` (Ray uploads it); collective.

    Raises if the ranks' student/EMA replicas differ: validation runs on every rank's EMA.
    """
    saved = state.state_dict()
    step = saved["step"]
    rank_path = os.path.join(folder, rank_file(rank))
    digest = replica_digest(state.student, state.ema.module)
    torch.save({"step": step, **{k: saved[k] for k in PER_RANK}, "replica_digest": digest}, rank_path)
    shares = all_gather((digest, os.path.getsize(rank_path)))
    if len({d for d, _ in shares}) > 1:
        raise RuntimeError(f"student replicas differ across ranks at step {step}: {[d for d, _ in shares]}")
    if rank != 0:
        return
    torch.save({k: saved[k] for k in SHARED}, os.path.join(folder, TRAIN_STATE))
    _write_json(os.path.join(folder, HISTORY), saved["history"])
    files = {rank_file(r): size for r, (_, size) in enumerate(shares)}
    files |= {name: os.path.getsize(os.path.join(folder, name)) for name in (TRAIN_STATE, HISTORY)}
    meta = {
        "step": step,
        "world_size": world_size,
        "arch_spec": getattr(state.student, "arch_spec", None),
        "resumes": saved["resumes"],
        "files": files,
    }
    _write_json(os.path.join(folder, META), meta)


def read_checkpoint(folder: str, state: TrainState, *, rank: int, world_size: int) -> None:
    """Load a (local) checkpoint folder into `state`; the PER_RANK entries only if the world size is the same.

    Its step is appended to `state.resumes`: every restart and resubmission is on record.
    """
    with open(os.path.join(folder, META)) as f:
        meta = json.load(f)
    device = next(state.student.parameters()).device
    saved = torch.load(os.path.join(folder, TRAIN_STATE), map_location=device, weights_only=True)
    if meta["world_size"] == world_size:
        rank_state = torch.load(os.path.join(folder, rank_file(rank)), map_location="cpu", weights_only=True)
        saved |= {k: rank_state[k] for k in PER_RANK}
    else:
        log.warning(
            "checkpoint at step %d was written by %d workers, this run has %d: weights, optimizer and "
            "schedule are restored, data positions and random states start afresh (not an exact resume)",
            meta["step"],
            meta["world_size"],
            world_size,
        )
    with open(os.path.join(folder, HISTORY)) as f:
        saved["history"] = json.load(f)
    saved["step"] = step = int(meta["step"])
    saved["resumes"] = [*meta["resumes"], step]
    state.load_state_dict(saved)


@contextlib.contextmanager
def resume_folder(
    ray_checkpoint: ray.train.Checkpoint | None, run_url: str, storage_options: dict[str, Any] | None
) -> Iterator[str | None]:
    """A local folder with the checkpoint to resume from, or None for a fresh start.

    Why not `ray.train.get_checkpoint()` alone: Ray 2.60 registers a checkpoint only when its
    controller has polled every worker's report (a queue of one inside each worker), and saves its
    list of registered checkpoints (`checkpoint_manager_snapshot.json`, what a restarted group or a
    resubmitted run gets back) only then. A worker that dies after `ray.train.report` returned, its
    report still unpolled, takes the registration with it though every file is uploaded, and the run
    would repeat the steps since the checkpoint before. So the run folder's newest *complete*
    checkpoint (`meta.json` present, every file its recorded size) wins when it is newer than Ray's.
    """
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
    names = list_folder(run_url, storage_options, folders=True, missing_ok=True)
    folders = sorted(((_step_of(n), f"{run_path.rstrip('/')}/{n}") for n in names), reverse=True)
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
    match = _CHECKPOINT_RE.fullmatch(basename(path))
    return int(match.group(1)) if match else -1


def _write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, allow_nan=True)
