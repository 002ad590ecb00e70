"""Test-only fault injection: make one worker die once, mid-run, to exercise Ray's recovery.

`Hold` instead stops a worker group of a given size in mid-run until Ray replaces it (the elastic
test's way of keeping a shrunk run going until the node it grows onto is back).

`build_trainer(cfg, fault=Fault(rank=1, step=3))` (or `run_training(cfg, fault=...)`) makes rank 1
exit hard right after training step 3. It is an argument, never read from the environment, so no
production run can carry one by accident. A marker object in the run folder records that it
happened, so the restarted worker group (which resumes from the last checkpoint and passes step 3
again) trains on.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import ray.train
from ray.train import CheckpointConsistencyMode

from dukd_ray.storage import exists, join, write_bytes_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fault:
    rank: int  # the worker that dies
    step: int  # right after this training step

    def __post_init__(self) -> None:
        for name, low in (("rank", 0), ("step", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Fault.{name} must be an int >= {low}, got {value!r}")

    def marker_url(self, run_url: str) -> str:
        return join(run_url, f".fault_injected-rank{self.rank}-step{self.step}")

    def maybe_fail(self, rank: int, step: int, run_url: str, storage_options: dict[str, Any] | None) -> None:
        """Exit this process (as a crash would) if this is the faulty rank and step, the first time only."""
        if (rank, step) != (self.rank, self.step):
            return
        marker = self.marker_url(run_url)
        if exists(marker, storage_options):
            return
        write_bytes_atomic(marker, b"injected\n", storage_options)
        # a crash right after a step, not in the middle of the checkpoint uploads Ray runs in the
        # background: blocks until every reported checkpoint is in storage and registered
        ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
        log.warning("fault injection: rank %d exits at step %d", rank, step)
        logging.shutdown()
        os._exit(1)


@dataclass
class Hold:
    """A group of `world_size` workers stops after training `steps` steps, until Ray replaces it.

    At most `max_s` seconds; then it trains on. The group's first step is counted in each process.
    """

    world_size: int
    steps: int
    max_s: float = 300.0
    _first_step: int | None = field(default=None, init=False, repr=False)

    def maybe_fail(self, rank: int, step: int, run_url: str, storage_options: dict[str, Any] | None) -> None:
        if ray.train.get_context().get_world_size() != self.world_size:
            return
        if self._first_step is None:
            self._first_step = step
        if step - self._first_step + 1 == self.steps:
            log.warning("fault injection: the group of %d holds at step %d", self.world_size, step)
            time.sleep(self.max_s)


Injection = Fault | Hold
