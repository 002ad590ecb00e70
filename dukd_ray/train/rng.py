"""Every random number a training step consumes is a function of (seed, step): no RNG state to save.

Why: a resumed run -- on any number of workers -- must draw what the uninterrupted run drew, and
per-rank generator states cannot be carried from W ranks to W' ranks. So each step reseeds
torch's global generator (what model internals such as drop-path use) and makes the distill
method's generator afresh, both from (seed, step) through numpy's SeedSequence; the data stream's
draws are per sample (`data.plan.StreamPlan.sample_rng`).
"""

from __future__ import annotations

import numpy as np
import torch

_GLOBAL, _DISTILL = 0, 1  # separate streams per step


def step_seed(seed: int, step: int, stream: int, *more: int) -> int:
    """A 63-bit seed for `stream` (and `more` keys) of step `step` of a run seeded `seed`."""
    return int(np.random.SeedSequence((seed, step, stream, *more)).generate_state(1, np.uint64)[0] >> 1)


def seed_step(seed: int, step: int, first_row: int = 0) -> torch.Generator:
    """Reseed torch's global RNG (CUDA too) for `step`; returns the distill generator of that step.

    The global RNG is keyed by this worker's first row of the global batch too, so ranks do not draw
    the same masks for their different samples; the distill generator is the same on every rank.
    """
    torch.manual_seed(step_seed(seed, step, _GLOBAL, first_row))
    return torch.Generator().manual_seed(step_seed(seed, step, _DISTILL))
