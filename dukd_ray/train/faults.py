"""Test-only fault injection: make one worker die once, mid-run, to exercise Ray's recovery.

`DUKD_FAULT_INJECT="rank=1,step=3"` in the driver's environment makes rank 1 exit hard right after
training step 3. A marker object in the run folder records that it happened, so the restarted worker
group (which resumes from the last checkpoint and passes step 3 again) trains on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from dukd_ray.storage import exists, join, write_bytes_atomic

ENV_VAR = "DUKD_FAULT_INJECT"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fault:
    rank: int
    step: int

    @classmethod
    def parse(cls, spec: str | None) -> Fault | None:
        """`"rank=R,step=S"` -> Fault; empty -> None; anything else is an error naming the variable."""
        if not spec:
            return None
        try:
            fields = dict(part.split("=", 1) for part in spec.split(","))
            return cls(rank=int(fields["rank"]), step=int(fields["step"]))
        except (KeyError, ValueError):
            raise ValueError(f"{ENV_VAR}={spec!r}: expected 'rank=R,step=S'") from None

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
        log.warning("%s: rank %d exits at step %d", ENV_VAR, rank, step)
        logging.shutdown()
        os._exit(1)
