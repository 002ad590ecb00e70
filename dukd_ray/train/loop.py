"""`train_loop_per_worker`: what every Ray Train worker runs, top to bottom.

Build the frozen teacher (never DDP) and the student (the only module `prepare_model` wraps), restore
from `ray.train.get_checkpoint()` if there is one (a restarted worker group or a resubmitted run),
stream this rank's share of the data, and at every validation interval report metrics, with a
checkpoint at checkpoint intervals. Rank 0 writes the exports and the report at the end.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch import nn

from dukd_ray.data import TrainStream, build_train_stream
from dukd_ray.distill import EMA, freeze_teacher, train_step
from dukd_ray.eval.benchmark import evaluate_bicubic, load_benchmark_sets
from dukd_ray.eval.inference import InferenceOptions
from dukd_ray.models import build_arch, load_pretrained
from dukd_ray.train.checkpoint import (
    Restored,
    checkpoint_dir_name,
    read_checkpoint,
    restore_rng,
    resume_folder,
    write_checkpoint,
)
from dukd_ray.train.config import JobConfig
from dukd_ray.train.faults import Fault
from dukd_ray.train.outputs import write_outputs
from dukd_ray.train.progress import ProgressLine, StepMeter, TensorBoard
from dukd_ray.train.validate import evaluate_distributed, flatten

log = logging.getLogger(__name__)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train one DUKD (or kd/scratch) student; `config = {"job": JobConfig.to_dict(), "fault": spec}`."""
    cfg = JobConfig.from_dict(config["job"])
    fault = Fault.parse(config.get("fault"))
    t, opts = cfg.train, cfg.data.storage_options or None
    run_url = cfg.run.url()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    memory_format = torch.channels_last if cuda and t.channels_last else torch.contiguous_format  # weights
    # inputs: NHWC on CPU workers too (faster oneDNN convolutions, see train_step), unless switched off
    input_format = torch.channels_last if t.channels_last else torch.contiguous_format
    amp_dtype = torch.bfloat16 if cuda and t.amp else None  # CPU workers train in fp32

    # the same initial student on every rank: DDP broadcasts rank 0's, but the EMA copy is taken here
    _seed_everything(t.seed)
    teacher = _build_teacher(cfg, device, memory_format)
    student = _build_student(cfg, device, memory_format)
    ema = EMA(student, t.ema_decay)
    _seed_everything(t.seed + rank)  # from here on each rank draws its own random numbers
    generator = torch.Generator().manual_seed(t.seed + rank)  # the distill method's draws
    optimizer = torch.optim.Adam(student.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=t.milestones, gamma=t.gamma)
    stream = build_train_stream(
        cfg.data.train,
        cfg.model.scale,
        patch_size=cfg.data.patch_size,
        batch_size=cfg.data.batch_size,
        rank=rank,
        world_size=world,
        seed=t.seed,
        num_workers=cfg.data.loader_workers,
        storage_options=opts,
        pin_memory=cuda,
    )
    start_step, history, resumes = 0, [], []
    with resume_folder(ray.train.get_checkpoint(), run_url, opts) as folder:
        restored = read_checkpoint(folder, rank, world, device) if folder else None
    if restored:
        _restore(restored, student, ema, optimizer, scheduler, stream, generator)
        start_step, history, resumes = restored.step, restored.history, restored.resumes
        if rank == 0:
            log.info("resuming %s from step %d", cfg.run.name, start_step)
    model = ray.train.torch.prepare_model(student)  # DDP across workers; the teacher is never wrapped
    sets = load_benchmark_sets(cfg.data.val, cfg.data.val_sets, cfg.model.scale, storage_options=opts)
    evaluate = InferenceOptions(self_ensemble=t.val_self_ensemble, tile=t.val_tile)

    tensorboard = TensorBoard(run_url, start_step, opts) if rank == 0 else None
    progress = ProgressLine(start_step, t.max_steps, t.log_every)
    meter = StepMeter()
    batches = iter(stream)
    for step in range(start_step + 1, t.max_steps + 1):
        began = time.perf_counter()
        batch = {k: v.to(device, non_blocking=cuda) for k, v in next(batches).items()}  # pinned on CUDA
        fetched = time.perf_counter()
        losses = train_step(model, teacher, optimizer, batch, cfg.distill, generator, amp_dtype, input_format)
        scheduler.step()
        ema.update(model)
        meter.add(losses, data_s=fetched - began, step_s=time.perf_counter() - began)
        if fault:
            fault.maybe_fail(rank, step, run_url, opts)
        if rank == 0:
            progress.update(step, losses["loss"], cfg.data.batch_size * world)
        if step % t.val_every and step != t.max_steps:
            continue
        metrics = {"step": step, "lr": scheduler.get_last_lr()[0], **meter.summary(cfg.data.batch_size)}
        metrics.update(flatten(evaluate_distributed(ema.module, sets, cfg.model.scale, evaluate)))
        if step == t.max_steps:  # the report's reference rows, once
            if teacher is not None:
                scores = evaluate_distributed(teacher, sets, cfg.model.scale, evaluate)
                metrics.update(flatten(scores, prefix="teacher/"))
            if rank == 0:  # the same on every rank, and only rank 0's metrics are kept
                metrics.update(flatten(evaluate_bicubic(sets, cfg.model.scale), prefix="bicubic/"))
        history.append(metrics)
        if tensorboard:
            tensorboard.scalars(step, metrics)
        if step % t.ckpt_every and step != t.max_steps:
            ray.train.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as folder:
            write_checkpoint(
                folder,
                rank=rank,
                world_size=world,
                step=step,
                student=student,
                ema=ema.module,
                optimizer=optimizer,
                scheduler=scheduler,
                generator=generator,
                data_state=stream.state_dict(),
                history=history,
                resumes=resumes,
            )
            checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name(step))
        if tensorboard:
            tensorboard.upload()

    batches.close()  # stop the loader processes before the (rank 0) exports and report
    if rank == 0:
        tensorboard.close()
        write_outputs(cfg, student, ema.module, teacher, sets, history, resumes)


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


def _build_student(cfg: JobConfig, device: torch.device, memory_format: torch.memory_format) -> nn.Module:
    m = cfg.model
    student = build_arch(m.arch, m.scale, preset=m.student_preset, **m.student_kwargs)
    if m.student_init:  # non-strict: the paper starts x3/x4 students from the x2 one (upsampler differs)
        load_pretrained(
            student, m.student_init, strict=False, storage_options=cfg.data.storage_options or None
        )
    return student.to(device, memory_format=memory_format)


def _restore(
    restored: Restored,
    student: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    stream: TrainStream,
    generator: torch.Generator,
) -> None:
    state = restored.train_state
    student.load_state_dict(state["student"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if restored.rank_state is not None:
        stream.load_state_dict(restored.rank_state["data"])
        restore_rng(restored.rank_state["rng"], generator)
