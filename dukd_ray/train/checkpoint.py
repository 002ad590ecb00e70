"""Training checkpoints: all a run needs to continue exactly where it stopped, on any number of workers.

One directory per checkpoint, `<run>/checkpoint_<step>/`, written by `ray.train.report`, which
registers it only once every rank's report (and rank 0's files) is uploaded (so a crash mid-write
never leaves a checkpoint that a resume would pick up):

    train_state.pt   rank 0: the whole `TrainState` but its history: student, EMA, optimizer,
                     scheduler, step and the data position (the global step; nothing is per rank)
    history.json     rank 0: every reported metrics dict so far (curves in the report)
    meta.json        rank 0, written last: format, step, world size, the run's global batch size,
                     the student's arch_spec, the steps the run resumed from, and the byte size of
                     every other file (the completeness check)

Format 1 (before the global batch) also had a `rank_<r>.pt` per rank with its data position and
RNG states; such a checkpoint restores weights, optimizer and schedule, and the data continues at
its step of today's global order, with a warning (not an exact resume).

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
from dukd_ray.train.state import SHARED, TrainState

log = logging.getLogger(__name__)

TRAIN_STATE = "train_state.pt"
HISTORY = "history.json"
META = "meta.json"
FORMAT = 2  # 1: per-rank data positions and RNG states in rank_<r>.pt


_CHECKPOINT_RE = re.compile(r"checkpoint_(\d{9})")


def checkpoint_dir_name(step: int) -> str:
    """Zero-padded so checkpoint folders sort by step."""
    return f"checkpoint_{step:09d}"


def replica_digest(*models: nn.Module) -> str:
    """SHA-256 of the models' states (names and raw bytes): equal digests = bit-identical replicas."""
    h = hashlib.sha256()
    for model in models:
        for name, tensor in model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_checkpoint(folder: str, state: TrainState, *, rank: int, world_size: int) -> None:
    """`state` as a checkpoint in the local `folder` (Ray uploads it); collective, only rank 0 writes.

    Raises if the ranks' student/EMA replicas differ: validation runs on every rank's EMA.
    """
    step = state.step
    digests = all_gather(replica_digest(state.student, state.ema.module))
    if len(set(digests)) > 1:
        raise RuntimeError(f"student replicas differ across ranks at step {step}: {digests}")
    if rank != 0:
        return
    saved = state.state_dict()
    torch.save({k: saved[k] for k in SHARED}, os.path.join(folder, TRAIN_STATE))
    _write_json(os.path.join(folder, HISTORY), saved["history"])
    meta = {
        "format": FORMAT,
        "step": step,
        "world_size": world_size,
        "global_batch_size": state.stream.plan.global_batch,
        "arch_spec": getattr(state.student, "arch_spec", None),
        "resumes": saved["resumes"],
        "files": {name: os.path.getsize(os.path.join(folder, name)) for name in (TRAIN_STATE, HISTORY)},
    }
    _write_json(os.path.join(folder, META), meta)


def read_meta(folder: str) -> dict[str, Any]:
    with open(os.path.join(folder, META)) as f:
        return json.load(f)


def run_global_batch(
    configured: int | None, batch_size: int, world_size: int, meta: dict[str, Any] | None
) -> int:
    """The run's global batch: the one its checkpoints record, else `configured`, else batch x workers.

    A format-1 checkpoint records none: its run used `batch_size` per worker on its world size.
    """
    recorded = None
    if meta is not None:
        recorded = meta.get("global_batch_size", batch_size * int(meta["world_size"]))
    if configured is not None and recorded is not None and configured != recorded:
        raise ValueError(
            f"data.global_batch_size is {configured}, but this run was started with a global batch of "
            f"{recorded}, which it keeps (leave data.global_batch_size unset to continue it)"
        )
    chosen = recorded or configured or batch_size * world_size
    if chosen < world_size:
        raise ValueError(
            f"the global batch of {chosen} is smaller than the {world_size} workers: each needs a sample "
            "per step (data.global_batch_size)"
        )
    return chosen


def read_checkpoint(folder: str, state: TrainState, *, rank: int, world_size: int) -> None:
    """Load a (local) checkpoint folder into `state`; any world size continues exactly (format 2).

    Its step is appended to `state.resumes`: every restart and resubmission is on record.
    """
    meta = read_meta(folder)
    device = next(state.student.parameters()).device
    saved = torch.load(os.path.join(folder, TRAIN_STATE), map_location=device, weights_only=True)
    if meta.get("format", 1) < FORMAT:
        if rank == 0:
            log.warning(
                "checkpoint at step %d was written by %d workers with per-rank data positions (an older "
                "format), this run has %d: weights, optimizer and schedule are restored, the data and "
                "random streams continue at step %d of the global order (not an exact resume)",
                meta["step"],
                meta["world_size"],
                world_size,
                meta["step"],
            )
        saved.pop("data", None)
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
        # a folder of this process's own: as_directory() shares one download among a node's workers,
        # and deletes it under the others when the first is done with it
        with tempfile.TemporaryDirectory() as local:
            yield ray_checkpoint.to_directory(local)
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
