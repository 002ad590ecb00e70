"""What a run tells people while it trains: the rank-0 progress line, TensorBoard, and the step meter.

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
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from dukd_ray.storage import join, write_bytes_atomic
from dukd_ray.train.collective import all_gather

log = logging.getLogger(__name__)  # not print: Ray Train workers echo prints twice


class StepMeter:
    """Loss terms and timings since the last report, averaged over steps (and over ranks by `summary`)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
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

    def summary(self, batch_size: int) -> dict[str, float]:
        """Mean losses, samples/s of the whole group, and the fraction of step time spent waiting for data.

        Collective when distributed: every rank must call it.
        """
        parts = all_gather([self.steps, self.data_s, self.step_s, self.loss_sums])
        steps = sum(p[0] for p in parts)
        step_s = sum(p[2] for p in parts)
        out = {key: sum(p[3][key] for p in parts) / steps for key in self.loss_sums}
        # each rank ran its steps concurrently: group throughput = all samples / mean wall time per rank
        out["samples_per_s"] = steps * batch_size / (step_s / len(parts)) if step_s > 0 else 0.0
        out["data_wait_frac"] = sum(p[1] for p in parts) / step_s if step_s > 0 else 0.0
        self.reset()
        return out


class ProgressLine:
    """`step 120/250000 | loss 0.0312 | 45.2 samples/s | ETA 1 day, 2:11:05`, printed every `every` steps."""

    def __init__(self, start_step: int, max_steps: int, every: int) -> None:
        self.max_steps, self.every = max_steps, every
        self.last_step, self.last_time = start_step, time.perf_counter()

    def update(self, step: int, loss: float, samples_per_step: int) -> None:
        if step % self.every and step != self.max_steps:
            return
        now = time.perf_counter()
        per_step = (now - self.last_time) / max(step - self.last_step, 1)
        self.last_step, self.last_time = step, now
        eta = datetime.timedelta(seconds=round(per_step * (self.max_steps - step)))
        rate = samples_per_step / per_step if per_step > 0 else 0.0
        log.info("step %d/%d | loss %.4f | %.1f samples/s | ETA %s", step, self.max_steps, loss, rate, eta)


class TensorBoard:
    """A SummaryWriter on a local temp folder whose event files are copied to `<run>/tensorboard/`."""

    def __init__(self, run_url: str, start_step: int, storage_options: dict[str, Any] | None) -> None:
        self.remote = join(run_url, "tensorboard")
        self.storage_options = storage_options
        self.local = tempfile.mkdtemp(prefix="dukd-tb-")
        # purge_step drops events a crashed attempt logged after the checkpoint we resumed from
        self.writer = SummaryWriter(self.local, purge_step=start_step + 1 if start_step else None)

    def scalars(self, step: int, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)

    def upload(self) -> None:
        self.writer.flush()
        for name in os.listdir(self.local):
            with open(os.path.join(self.local, name), "rb") as f:
                write_bytes_atomic(join(self.remote, name), f.read(), self.storage_options)

    def close(self) -> None:
        self.upload()
        self.writer.close()
