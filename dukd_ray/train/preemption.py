"""Preemption-aware checkpoints: a node's drain notice becomes a checkpoint at the current step.

A spot node is reclaimed with a notice (two minutes on AWS); the cloud's termination handler, the
KubeRay or autoscaler drain, or `ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION` tells Ray,
which marks the node as draining with a deadline. Ray Train watches the drains of its worker group's
nodes and tells every worker; `ray.train.get_preemption_info()` hands all ranks the same answer at
the same step (rank 0's view, broadcast: a collective, so every rank asks at every step).

On the notice the loop writes a checkpoint at once (`ray.train.report`, uploaded before it returns)
and this worker group then trains no further: at the deadline Ray ends the group and restarts it
(on the nodes that are left, an elastic run on fewer workers), resuming from that checkpoint. So a
preemption with notice redoes no step; one without (a node lost outright) redoes the steps since
the latest checkpoint, at most `train.ckpt_every`. Ray counts either against
`FailureConfig(max_preemption_failures)` (`run.max_preemptions`), not `run.max_failures`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import ray.train

log = logging.getLogger(__name__)

# past the notice's deadline Ray Train ends the group at once; this long after it, something is wrong
# (the controller is gone): fail rather than hang
_OVERDUE_S = 300.0
_DEADLINE_UNKNOWN_S = 120.0  # Ray Train's own wait when the drain gave no deadline


class PreemptionWatch:
    """Asks Ray once per step whether a node of the run is draining; remembers the first notice."""

    def __init__(self, last_step: int) -> None:
        self.last_step = last_step
        self.notice: ray.train.PreemptionInfo | None = None

    def check(self, step: int) -> ray.train.PreemptionInfo | None:
        """The notice if step `step` is where this worker group stops; collective: every rank, every step.

        The last step needs no stop (its checkpoint and the exports follow anyway), and once a notice
        has been acted on the group is only waiting to be replaced.
        """
        if self.notice is not None or step >= self.last_step:
            return None
        self.notice = ray.train.get_preemption_info()
        return self.notice

    @staticmethod
    def metrics(step: int, world_size: int) -> dict[str, Any]:
        """The preemption checkpoint's report: no new validation (there is no time for one).

        `val_psnr` is NaN so that Ray's retention ranks the checkpoint last (it is kept while it is the
        latest, which is all a resume needs) and a Tune scheduler sees its metric key, but no score.
        """
        return {"step": step, "world_size": world_size, "val_psnr": math.nan, "preempted": 1.0}

    def wait_for_restart(self, rank: int, step: int) -> None:
        """Block until Ray ends this worker group at the notice's deadline (raises if it never does)."""
        notice = self.notice
        assert notice is not None
        now_ms = time.time() * 1000
        deadline_ms = notice.deadline_ms or now_ms + _DEADLINE_UNKNOWN_S * 1000
        if rank == 0:
            log.warning(
                "node(s) %s draining (ranks %s), deadline in %.0f s: checkpoint written at step %d, "
                "waiting for Ray to restart the run",
                ", ".join(n[:12] for n in notice.preempted_node_ids),
                notice.preempted_ranks,
                max(0.0, (deadline_ms - now_ms) / 1000),
                step,
            )
        give_up = deadline_ms / 1000 + _OVERDUE_S
        while time.time() < give_up:
            time.sleep(1.0)
        raise RuntimeError(
            f"a node of this run was draining (deadline {deadline_ms / 1000:.0f}) and Ray Train did not "
            f"restart the worker group {_OVERDUE_S:.0f} s past it"
        )
