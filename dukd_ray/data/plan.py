"""Who reads which records in which order: pure index arithmetic, no I/O.

Why a separate plan: the order is a function of (seed, epoch, rank, reader) and the record counts
only, so every reader can compute its share without talking to the others, and a resumed run can
jump to any batch by recomputing the plan instead of replaying the data.

Epoch `e`: the units (shards, or images for PNG sources) are permuted by (seed, e) and their
records concatenated (records of a unit stay sequential, so reads are sequential). The sequence
is padded by wrapping around to `world_size * batches_per_epoch * batch_size` records (every rank
gets the same number of batches; at most one batch per rank is padding) and cut into contiguous
rank slices, each cut into contiguous reader slices (one per DataLoader worker). A reader passes
its slice through a shuffle buffer (simulated on indices) and emits batches. The DataLoader takes
batches round-robin from its workers, so global batch g = e * batches_per_epoch + k comes from
reader g mod num_readers; each reader's slice holds exactly the batches it will be asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_PERMUTE, _BUFFER, _SAMPLE = 0, 1, 2  # separate random streams derived from (seed, epoch)


@dataclass(frozen=True)
class StreamPlan:
    counts: tuple[int, ...]
    batch_size: int
    world_size: int
    num_readers: int
    seed: int
    shuffle_buffer: int

    @property
    def num_records(self) -> int:
        return sum(self.counts)

    @property
    def batches_per_epoch(self) -> int:
        """Batches each rank yields per epoch (the epoch is padded up to a whole batch on every rank)."""
        return math.ceil(self.num_records / (self.world_size * self.batch_size))

    def locate(self, g: int) -> tuple[int, int, int, int]:
        """Global batch index -> (epoch, batch in epoch, reader, batch index within that reader's slice)."""
        epoch, k = divmod(g, self.batches_per_epoch)
        reader = g % self.num_readers
        return epoch, k, reader, (k - self._first_batch(epoch, reader)) // self.num_readers

    def _first_batch(self, epoch: int, reader: int) -> int:
        return (reader - epoch * self.batches_per_epoch) % self.num_readers

    def reader_batches(self, epoch: int, reader: int) -> int:
        first = self._first_batch(epoch, reader)
        return max(0, -(-(self.batches_per_epoch - first) // self.num_readers))

    def epoch_order(self, epoch: int) -> np.ndarray:
        """(T, 3) int64 rows (unit, record in unit, record id) for the whole padded epoch."""
        counts = np.asarray(self.counts, dtype=np.int64)
        first_id = np.concatenate([[0], np.cumsum(counts)[:-1]])
        units = np.random.default_rng((self.seed, epoch, _PERMUTE)).permutation(len(counts))
        unit_col = np.repeat(units, counts[units])
        starts = np.repeat(np.cumsum(counts[units]) - counts[units], counts[units])
        rec_col = np.arange(len(unit_col)) - starts
        order = np.stack([unit_col, rec_col, first_id[unit_col] + rec_col], axis=1)
        total = self.world_size * self.batches_per_epoch * self.batch_size
        return order[np.arange(total) % len(order)]

    def reader_slice(self, epoch: int, rank: int, reader: int) -> tuple[int, int]:
        """[start, stop) of this reader's records in the epoch order."""
        start = rank * self.batches_per_epoch * self.batch_size
        start += self.batch_size * sum(self.reader_batches(epoch, r) for r in range(reader))
        return start, start + self.batch_size * self.reader_batches(epoch, reader)

    def emission_order(self, n: int, epoch: int, rank: int, reader: int) -> np.ndarray:
        """The order a shuffle buffer of `shuffle_buffer` items emits n items read in order 0..n-1."""
        rng = np.random.default_rng((self.seed, epoch, _BUFFER, rank, reader))
        size = max(1, self.shuffle_buffer)
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
