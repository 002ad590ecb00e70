"""Which records make the global batch of every step: pure index arithmetic, no I/O.

Why a separate plan: the sample sequence is a function of (seed, record counts, global batch
size) only -- never of the rank, the world size or the number of loader workers -- so a run on W
workers trains on exactly the batches a run on one worker would, each worker computes its share
without talking to the others, and a resumed run (on any number of workers) jumps to any step by
recomputing the plan instead of replaying the data.

Epoch `e`: the units (shards, or images for PNG sources) are permuted by (seed, e) and their
records concatenated (records of a unit stay sequential, so reads are sequential). That order,
padded by wrapping around to `global_batch * steps_per_epoch` records, is cut into `global_batch`
*lanes* of `steps_per_epoch` contiguous records. Each lane passes its records through its own
shuffle buffer (simulated on indices, seeded by (seed, e, lane)); the global batch of step k of
the epoch is sample k of every lane, in lane order. A rank serves a contiguous range of lanes
(its rows of the global batch, `lane_shares`), each lane read front to back in large requests.
Each sample's patch position and augmentation are drawn from (seed, e, its position in the epoch
order), so they too are the same whoever reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_PERMUTE, _BUFFER, _SAMPLE = 0, 1, 2  # separate random streams derived from (seed, epoch)


@dataclass(frozen=True)
class StreamPlan:
    counts: tuple[int, ...]
    global_batch: int
    seed: int
    shuffle_buffer: int  # patches held over all lanes together (each lane holds its share)

    @property
    def num_records(self) -> int:
        return sum(self.counts)

    @property
    def steps_per_epoch(self) -> int:
        """Samples per lane = global batches per epoch (the epoch is padded up to a whole global batch)."""
        return math.ceil(self.num_records / self.global_batch)

    @property
    def lane_buffer(self) -> int:
        return max(1, self.shuffle_buffer // self.global_batch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """(T, 3) int64 rows (unit, record in unit, record id) for the whole padded epoch."""
        counts = np.asarray(self.counts, dtype=np.int64)
        first_id = np.concatenate([[0], np.cumsum(counts)[:-1]])
        units = np.random.default_rng((self.seed, epoch, _PERMUTE)).permutation(len(counts))
        unit_col = np.repeat(units, counts[units])
        starts = np.repeat(np.cumsum(counts[units]) - counts[units], counts[units])
        rec_col = np.arange(len(unit_col)) - starts
        order = np.stack([unit_col, rec_col, first_id[unit_col] + rec_col], axis=1)
        total = self.global_batch * self.steps_per_epoch
        return order[np.arange(total) % len(order)]

    def lane_start(self, lane: int) -> int:
        """Position of the lane's first record in the epoch order; its steps_per_epoch records follow."""
        return lane * self.steps_per_epoch

    def emission_order(self, epoch: int, lane: int) -> np.ndarray:
        """The order the lane's shuffle buffer emits its records (indices into the lane), one per step."""
        n, size = self.steps_per_epoch, self.lane_buffer
        rng = np.random.default_rng((self.seed, epoch, _BUFFER, lane))
        picks = rng.integers(0, size, max(0, n - size))
        buf = list(range(min(size, n)))
        out = []
        for i, pick in zip(range(size, n), picks, strict=True):
            out.append(buf[pick])
            buf[pick] = i
        rng.shuffle(buf)
        return np.asarray(out + buf, dtype=np.int64)

    def sample_rng(self, epoch: int, position: int) -> np.random.Generator:
        """Randomness of the sample at `position` of the epoch order (patch location, augmentation)."""
        return np.random.default_rng((self.seed, epoch, _SAMPLE, position))


def lane_shares(global_batch: int, world_size: int) -> list[range]:
    """The lanes (= rows of the global batch) of each rank: contiguous, sizes differing by at most one."""
    if not 1 <= world_size <= global_batch:
        raise ValueError(f"a global batch of {global_batch} cannot be shared by {world_size} workers")
    base, extra = divmod(global_batch, world_size)
    bounds = np.cumsum([0] + [base + (r < extra) for r in range(world_size)])
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
