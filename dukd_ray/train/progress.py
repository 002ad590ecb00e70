"""What a run tells people while it trains: the rank-0 progress line, TensorBoard, and the step meter.

Every `train.log_every` steps the loss terms, lr, samples/s, data-wait fraction, model TFLOP/s (MFU
where the device's peak is known) and CUDA peak memory go to TensorBoard and the progress line;
validation adds its scores (and its own window's throughput to the report history).

TensorBoard events are written to a local folder on rank 0 (SummaryWriter wants a local path) and
copied into `<run>/tensorboard/` at every checkpoint and at the end, so they live with the run
whatever the storage is.
"""

from __future__ import annotations

import datetime
import logging
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from dukd_ray.storage import join, write_bytes_atomic
from dukd_ray.train.collective import all_gather
from dukd_ray.train.throughput import StepCost

log = logging.getLogger(__name__)  # not print: Ray Train workers echo prints twice


class _Window:
    """Loss sums and timings of the steps since the window was last taken."""

    def __init__(self) -> None:
        self.steps = 0
        self.loss_sums: dict[str, float] = {}
        self.data_s = 0.0
        self.step_s = 0.0

    def add(self, losses: dict[str, float], data_s: float, step_s: float) -> None:
        self.steps += 1
        for key, value in losses.items():
            self.loss_sums[key] = self.loss_sums.get(key, 0.0) + value
        self.data_s += data_s
        self.step_s += step_s


class StepMeter:
    """Loss terms and timings averaged over steps and ranks: since the last report (`summary`) and
    since the last progress line (`log_summary`); `cost` adds model TFLOP/s and MFU, CUDA peak memory."""

    def __init__(self, cost: StepCost | None = None, device: torch.device | None = None) -> None:
        self.cost, self.device = cost, device
        self.report, self.log = _Window(), _Window()

    def add(self, losses: dict[str, float], data_s: float, step_s: float) -> None:
        self.report.add(losses, data_s, step_s)
        self.log.add(losses, data_s, step_s)

    def summary(self, batch_size: int) -> dict[str, float]:
        """The report window's means, samples/s of the whole group (`batch_size` per rank) and throughput.

        Collective when distributed: every rank must call it.
        """
        window, self.report = self.report, _Window()
        return self._summarize(window, lambda world: batch_size * world)

    def log_summary(self, samples_per_step: int) -> dict[str, float]:
        """The same over the steps since the last call; `samples_per_step` over all ranks. Collective."""
        window, self.log = self.log, _Window()
        return self._summarize(window, lambda world: samples_per_step)

    def _summarize(self, window: _Window, samples: Callable[[int], int]) -> dict[str, float]:
        peak = (
            torch.cuda.max_memory_allocated(self.device) if self.device and self.device.type == "cuda" else 0
        )
        parts = all_gather([window.steps, window.data_s, window.step_s, window.loss_sums, peak])
        world, steps = len(parts), sum(p[0] for p in parts)
        step_s = sum(p[2] for p in parts)
        out = {key: sum(p[3][key] for p in parts) / steps for key in window.loss_sums}
        # each rank ran its steps concurrently: group throughput = all samples / mean wall time per rank
        rate = (steps / world) * samples(world) / (step_s / world) if step_s > 0 else 0.0
        out["samples_per_s"] = rate
        out["data_wait_frac"] = sum(p[1] for p in parts) / step_s if step_s > 0 else 0.0
        if self.cost:
            out["model_tflops"] = rate * self.cost.flops_per_sample / 1e12  # achieved, whole group
            if self.cost.peak_flops:
                out["mfu"] = rate * self.cost.flops_per_sample / (self.cost.peak_flops * world)
        if peak:
            out["peak_memory_gib"] = max(p[4] for p in parts) / 2**30  # the fullest rank's allocator peak
        out["torch_threads"] = torch.get_num_threads()
        return out


class ProgressLine:
    """Every `every` steps (and the last): the step meter's window to TensorBoard and, on rank 0, a line

    `step 120/250000 | loss 0.0312 | 45.2 samples/s | 3.10 TFLOP/s, MFU 12.3% | peak 10.2 GiB | ETA ...`
    (MFU and peak GPU memory where known). Collective at those steps: every rank calls `update`.
    """

    def __init__(
        self, start_step: int, max_steps: int, every: int, rank: int, tensorboard: TensorBoard | None
    ) -> None:
        self.max_steps, self.every, self.rank, self.tensorboard = max_steps, every, rank, tensorboard
        self.last_step, self.last_time = start_step, time.perf_counter()

    def update(self, step: int, meter: StepMeter, samples_per_step: int, lr: float) -> None:
        if step % self.every and step != self.max_steps:
            return
        summary = meter.log_summary(samples_per_step)
        now = time.perf_counter()
        per_step = (now - self.last_time) / max(step - self.last_step, 1)  # validation included
        self.last_step, self.last_time = step, now
        if self.tensorboard:
            self.tensorboard.scalars(step, {**summary, "lr": lr}, train=True)
        if self.rank == 0:
            eta = datetime.timedelta(seconds=round(per_step * (self.max_steps - step)))
            text = throughput_text(summary)
            log.info("step %d/%d | loss %.4f | %s | ETA %s", step, self.max_steps, summary["loss"], text, eta)


def throughput_text(summary: dict[str, Any]) -> str:
    """`45.2 samples/s | 3.1 TFLOP/s, MFU 12.3% | peak 10.2 GiB`, from what `summary` has."""
    parts = [f"{summary['samples_per_s']:.1f} samples/s"]
    if "model_tflops" in summary:
        mfu = f", MFU {summary['mfu']:.1%}" if "mfu" in summary else ""
        parts.append(f"{summary['model_tflops']:.3g} TFLOP/s{mfu}")
    if "peak_memory_gib" in summary:
        parts.append(f"peak {summary['peak_memory_gib']:.1f} GiB")
    return " | ".join(parts)


class TensorBoard:
    """A SummaryWriter on a local temp folder whose event files are copied to `<run>/tensorboard/`."""

    def __init__(self, run_url: str, start_step: int, storage_options: dict[str, Any] | None) -> None:
        self.remote = join(run_url, "tensorboard")
        self.storage_options = storage_options
        self.local = tempfile.mkdtemp(prefix="dukd-tb-")
        # purge_step drops events a crashed attempt logged after the checkpoint we resumed from
        self.writer = SummaryWriter(self.local, purge_step=start_step + 1 if start_step else None)
        self.train_tags: set[str] = set()

    def scalars(self, step: int, metrics: dict[str, Any], train: bool = False) -> None:
        """`train`: the `log_every` stream; its tags are then left out of later (validation) calls."""
        for key, value in metrics.items():
            if key != "step" and isinstance(value, (int, float)) and (train or key not in self.train_tags):
                self.writer.add_scalar(key, value, step)
        if train:
            self.train_tags.update(metrics)

    def upload(self) -> None:
        self.writer.flush()
        for name in os.listdir(self.local):
            with open(os.path.join(self.local, name), "rb") as f:
                write_bytes_atomic(join(self.remote, name), f.read(), self.storage_options)

    def close(self) -> None:
        self.upload()
        self.writer.close()
