"""`train_loop_per_worker`: what every Ray Train worker runs, top to bottom.

Build the frozen teacher (never DDP) and the student (the only module `prepare_model` wraps) with
the rest of the `TrainState`, restore it from the checkpoint `resume_folder` picks if there is one
(a restarted worker group or a resubmitted run), then per step: train, maybe validate and report,
maybe checkpoint. Rank 0 writes the exports and the report at the end.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch import nn

from dukd_ray.data import build_train_stream
from dukd_ray.data.shards import ShardFormatError
from dukd_ray.data.stream import PatchError
from dukd_ray.distill import EMA, Share, freeze_teacher, train_step
from dukd_ray.eval.benchmark import Pair, evaluate_bicubic
from dukd_ray.eval.inference import InferenceOptions
from dukd_ray.image.io import ImageDecodeError
from dukd_ray.image.pairs import PairError
from dukd_ray.models import StudentInit, build_arch, load_pretrained, load_student_init
from dukd_ray.train.acceleration import autocast_dtype, compiled
from dukd_ray.train.checkpoint import (
    checkpoint_dir_name,
    read_checkpoint,
    read_meta,
    resume_folder,
    run_global_batch,
    write_checkpoint,
)
from dukd_ray.train.config import JobConfig
from dukd_ray.train.faults import Injection
from dukd_ray.train.outputs import write_outputs
from dukd_ray.train.preemption import PreemptionWatch
from dukd_ray.train.progress import ProgressLine, StepMeter, TensorBoard
from dukd_ray.train.resources import use_cpus
from dukd_ray.train.rng import seed_step
from dukd_ray.train.state import TrainState
from dukd_ray.train.throughput import step_cost
from dukd_ray.train.validate import evaluate_distributed, flatten
from dukd_ray.train.valsets import load_val_sets

log = logging.getLogger(__name__)
# what a training record can be wrong with: the same on every retry, unlike a lost node or a network error
DATA_ERRORS = (ImageDecodeError, ShardFormatError, PairError, PatchError)


class DataError(ValueError):
    """A training record a worker cannot use; one line naming it (the driver fails the run on it, once)."""


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train one DUKD (or kd/scratch) student; `config = {"job": JobConfig.to_dict(), "fault": Injection}`.

    `fault` is None outside the fault-tolerance tests (see `build_trainer`).
    """
    cfg = JobConfig.from_dict(config["job"])
    fault: Injection | None = config["fault"]
    t, opts = cfg.train, cfg.data.storage_options or None
    run_url = cfg.run.url()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    use_cpus(cfg.run.cpus_per_worker)  # torch threads = the CPUs this worker asked Ray for
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    memory_format = torch.channels_last if cuda and t.channels_last else torch.contiguous_format  # weights
    # inputs: NHWC on CPU workers too (faster oneDNN convolutions, see train_step), unless switched off
    input_format = torch.channels_last if t.channels_last else torch.contiguous_format
    amp_dtype = autocast_dtype(device, t.amp)  # bf16 where the device has bf16 kernels

    # the same initial student on every rank: DDP broadcasts rank 0's, but the EMA copy is taken here
    _seed_everything(t.seed)
    teacher = _build_teacher(cfg, device, memory_format)
    student, ema, init = _build_student(cfg, device, memory_format)
    if init and rank == 0:
        log.info("student init %s", init.describe())
    optimizer = torch.optim.Adam(student.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    with resume_folder(ray.train.get_checkpoint(), run_url, opts) as folder:
        meta = read_meta(folder) if folder else None
        try:  # the run's global batch: recorded by its first start, whatever the world size is now
            global_batch = run_global_batch(cfg.data.global_batch_size, cfg.data.batch_size, world, meta)
        except ValueError as e:
            raise DataError(str(e)) from None
        cfg.data.global_batch_size = global_batch
        state = TrainState(
            student=student,
            ema=ema,
            optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=t.milestones, gamma=t.gamma),
            stream=build_train_stream(
                cfg.data.train,
                cfg.model.scale,
                patch_size=cfg.data.patch_size,
                batch_size=cfg.data.batch_size,
                rank=rank,
                world_size=world,
                seed=t.seed,
                num_workers=cfg.data.loader_workers,
                cache_dir=cfg.data.cache_dir,
                cache_bytes=int(cfg.data.cache_gb * 2**30),
                patches_per_record=cfg.data.patches_per_record,
                storage_options=opts,
                pin_memory=cuda,
                global_batch=global_batch,
            ),
        )
        if folder:
            read_checkpoint(folder, state, rank=rank, world_size=world)
            if rank == 0:
                log.info("resuming %s from step %d", cfg.run.name, state.step)
    # this rank's rows of every global batch, in passes of at most data.batch_size (see Share)
    share = Share(global_batch, state.stream.lanes.start, cfg.data.batch_size, world)
    model = ray.train.torch.prepare_model(student)  # DDP across workers; the teacher is never wrapped
    # train.compile: the step runs compiled wrappers; EMA, checkpoints and validation use the modules
    model, step_teacher = compiled(model, t.compile, device), compiled(teacher, t.compile, device)
    sets = load_val_sets(cfg.data.val, cfg.data.val_sets, cfg.model.scale, storage_options=opts)
    evaluate = InferenceOptions(self_ensemble=t.val_self_ensemble, tile=t.val_tile)

    tensorboard = TensorBoard(run_url, state.step, opts) if rank == 0 else None
    cost = step_cost(cfg.distill, teacher, student, cfg.data.patch_size, cfg.model.scale, device, amp_dtype)
    progress = ProgressLine(state.step, t.max_steps, t.log_every, rank, tensorboard)
    meter = StepMeter(cost, device)
    preemption = PreemptionWatch(t.max_steps)
    batches = iter(state.stream)
    for step in range(state.step + 1, t.max_steps + 1):
        began = time.perf_counter()
        batch = {k: v.to(device, non_blocking=cuda) for k, v in _next_batch(batches, rank, step).items()}
        fetched = time.perf_counter()
        generator = seed_step(t.seed, step, share.start)  # every draw: a function of (seed, step, row)
        losses = train_step(
            model, step_teacher, optimizer, batch, cfg.distill, generator, amp_dtype, input_format, share
        )
        state.scheduler.step()
        ema.update(model)
        state.step = step
        meter.add(losses, data_s=fetched - began, step_s=time.perf_counter() - began)
        if fault:
            fault.maybe_fail(rank, step, run_url, opts)
        progress.update(step, meter, global_batch, state.scheduler.get_last_lr()[0])  # collective

        if _due(step, t.val_every, t.max_steps):
            metrics = _validation_metrics(cfg, state, meter, teacher, sets, evaluate, rank)
            metrics["world_size"] = world  # an elastic run's size over steps (report, TensorBoard)
            state.history.append(metrics)
            if tensorboard:
                tensorboard.scalars(step, metrics)
            if _due(step, t.ckpt_every, t.max_steps):
                _report_with_checkpoint(metrics, state, rank, world)
                if tensorboard:
                    tensorboard.upload()
            else:
                ray.train.report(metrics)
        if preemption.check(step):  # a node of the run is draining: checkpoint now, train no further
            if not _due(step, t.ckpt_every, t.max_steps):
                sync = ray.train.CheckpointUploadMode.SYNC  # in storage before the node goes
                _report_with_checkpoint(preemption.metrics(step, world), state, rank, world, sync)
            if tensorboard:
                tensorboard.upload()
            preemption.wait_for_restart(rank, step)

    batches.close()  # stop the loader processes before the (rank 0) exports and report
    if rank == 0:
        tensorboard.close()
        write_outputs(cfg, student, ema.module, teacher, sets, state.history, state.resumes, init)


def _next_batch(batches: Iterator[dict[str, torch.Tensor]], rank: int, step: int) -> dict[str, torch.Tensor]:
    """The next batch (pinned on CUDA); a bad record is a DataError: its one line, this rank and step."""
    try:
        return next(batches)
    except DATA_ERRORS as e:
        raise DataError(f"{type(e).__name__}: {_one_line(e)} (rank {rank}, step {step})") from None


def _one_line(e: BaseException) -> str:
    """The message of `e`; a DataLoader worker's error is re-raised with its traceback, keep its last line."""
    text = str(e)
    if "\nOriginal Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    return last.removeprefix(f"{type(e).__module__}.{type(e).__qualname__}: ")


def _due(step: int, every: int, last: int) -> bool:
    """Validation and checkpoint steps: every `every` steps, and the last step whatever it is."""
    return step % every == 0 or step == last


def _validation_metrics(
    cfg: JobConfig,
    state: TrainState,
    meter: StepMeter,
    teacher: nn.Module | None,
    sets: dict[str, list[Pair]],
    evaluate: InferenceOptions,
    rank: int,
) -> dict[str, Any]:
    """One report: lr, the step meter's summary and the EMA's scores; the reference rows at the end."""
    scale = cfg.model.scale
    metrics = {
        "step": state.step,
        "lr": state.scheduler.get_last_lr()[0],
        **meter.summary(cfg.data.batch_size),
    }
    metrics.update(flatten(evaluate_distributed(state.ema.module, sets, scale, evaluate)))
    if state.step == cfg.train.max_steps:  # the report's reference rows, once
        if teacher is not None:
            metrics.update(flatten(evaluate_distributed(teacher, sets, scale, evaluate), prefix="teacher/"))
        if rank == 0:  # the same on every rank, and only rank 0's metrics are kept
            metrics.update(flatten(evaluate_bicubic(sets, scale), prefix="bicubic/"))
    return metrics


def _report_with_checkpoint(
    metrics: dict[str, Any],
    state: TrainState,
    rank: int,
    world: int,
    upload: ray.train.CheckpointUploadMode = ray.train.CheckpointUploadMode.ASYNC,
) -> None:
    """`ray.train.report` with this rank's checkpoint of `state` (collective: every rank calls it).

    ASYNC: training goes on while Ray uploads it (and then deletes the local copy); a checkpoint
    cut short by a crash is never resumed (`resume_folder` takes complete ones only). A preemption
    checkpoint is SYNC: in storage before the report returns.
    """
    folder = tempfile.mkdtemp(prefix="dukd-checkpoint-")
    write_checkpoint(folder, state, rank=rank, world_size=world)
    ray.train.report(
        metrics,
        checkpoint=ray.train.Checkpoint.from_directory(folder),
        checkpoint_dir_name=checkpoint_dir_name(state.step),
        checkpoint_upload_mode=upload,
        delete_local_checkpoint_after_upload=True,
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build_teacher(
    cfg: JobConfig, device: torch.device, memory_format: torch.memory_format
) -> nn.Module | None:
    """The pretrained teacher on this worker's device, frozen; None when the method needs none."""
    m = cfg.model
    if cfg.distill.method == "scratch":
        return None
    teacher = build_arch(m.arch, m.scale, preset=m.teacher_preset, **m.teacher_kwargs)
    load_pretrained(teacher, m.teacher, strict=True, storage_options=cfg.data.storage_options or None)
    return freeze_teacher(teacher.to(device, memory_format=memory_format))


def _build_student(
    cfg: JobConfig, device: torch.device, memory_format: torch.memory_format
) -> tuple[nn.Module, EMA, StudentInit | None]:
    """The student on this worker's device and its EMA; from `model.student_init` as BasicSR does it.

    `params` -> student, `params_ema` -> EMA (else the EMA starts as the initialised student); the
    load is non-strict, and only the upsampler may be skipped (an x4 student from an x2 export).
    """
    m = cfg.model
    student = build_arch(m.arch, m.scale, preset=m.student_preset, **m.student_kwargs)
    student = student.to(device, memory_format=memory_format)
    ema = EMA(student, cfg.train.ema_decay)
    init = None
    if m.student_init:
        opts = cfg.data.storage_options or None
        init = load_student_init(student, m.student_init, ema=ema.module, storage_options=opts)
    return student, ema, init
