"""The training stream: endless batches of aligned random LR/HR patches, resumable to the batch.

Each DataLoader worker of each rank is one reader of `plan.StreamPlan`: it fetches its records in
order on a read-ahead thread (a few large range reads per run of shard records), cuts a random
aligned patch with BasicSR's augmentation as each record arrives (so the shuffle buffer holds
patches, not whole crops), and emits batches in the plan's shuffled order. `TrainStream` counts
the batches handed out; its `state_dict()` is that position, and iterating after
`load_state_dict()` rebuilds every reader exactly where it was.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dukd_ray.data.plan import StreamPlan
from dukd_ray.data.reuse import prepare_source
from dukd_ray.data.sources import Record, Source, open_source

log = logging.getLogger(__name__)
BATCHES_AHEAD = 2
STATE_VERSION = 1


class PatchError(ValueError):
    """A training image is smaller than the requested patch."""


def random_patch(
    record: Record, scale: int, patch: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """BasicSR paired_random_crop + augment(hflip, rotation): an aligned (lr, hr) patch pair."""
    name, hr, lr = record
    lh, lw = lr.shape[:2]
    if lh < patch or lw < patch:
        raise PatchError(f"LR of {name!r} is {lh}x{lw}, smaller than the patch size {patch}")
    top, left = int(rng.integers(lh - patch + 1)), int(rng.integers(lw - patch + 1))
    lr_p = lr[top : top + patch, left : left + patch]
    hr_p = hr[scale * top : scale * (top + patch), scale * left : scale * (left + patch)]
    hflip, vflip, rot90 = rng.random(3) < 0.5
    if hflip:
        lr_p, hr_p = lr_p[:, ::-1], hr_p[:, ::-1]
    if vflip:
        lr_p, hr_p = lr_p[::-1], hr_p[::-1]
    if rot90:
        lr_p, hr_p = lr_p.transpose(1, 0, 2), hr_p.transpose(1, 0, 2)
    return np.ascontiguousarray(lr_p), np.ascontiguousarray(hr_p)


def _to_tensor(patches: list[np.ndarray]) -> torch.Tensor:
    """uint8 HWC patches -> float32 (B, 3, H, W) in [0, 1]."""
    x = np.ascontiguousarray(np.stack(patches).transpose(0, 3, 1, 2), dtype=np.float32)
    return torch.from_numpy(x).mul_(1.0 / 255.0)


class _ReadAhead:
    """Runs an iterator on a daemon thread, `depth` items ahead of the consumer; errors are re-raised."""

    def __init__(self, items: Iterator[Any], depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), daemon=True)
        self._thread.start()

    def _run(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                if not self._put(("ok", item)):
                    return
            self._put(("end", None))
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(("error", e))

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __next__(self) -> Any:
        kind, item = self._queue.get()
        if kind == "error":
            raise item
        if kind == "end":
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()


class _ReaderEpoch:
    """One reader's batches for one epoch from its batch `first` on, made on background threads.

    One thread fetches records (I/O); another cuts patches into the shuffle buffer and assembles
    batches, so a reader can fill its next epoch's buffer while this epoch's last batches drain.
    """

    def __init__(
        self,
        source: Source,
        plan: StreamPlan,
        epoch: int,
        rank: int,
        reader: int,
        first: int,
        scale: int,
        patch: int,
    ) -> None:
        self.plan, self.epoch, self.scale, self.patch = plan, epoch, scale, patch
        self.next_batch, self.num_batches = first, plan.reader_batches(epoch, reader)
        start, stop = plan.reader_slice(epoch, rank, reader)
        order = plan.epoch_order(epoch)[start:stop]
        emission = plan.emission_order(stop - start, epoch, rank, reader)[first * plan.batch_size :]
        needed = np.sort(emission)  # read order: sequential within each unit
        requests = [(int(u), int(r)) for u, r in order[needed, :2]]
        self.read_all = threading.Event()
        self._records = _ReadAhead(source.iter_records(requests), source.read_ahead)
        batches = self._produce(self._records, needed.tolist(), emission, order[:, 2], start)
        self._batches = _ReadAhead(batches, BATCHES_AHEAD)

    def _produce(
        self, records: _ReadAhead, needed: list[int], emission: np.ndarray, ids: np.ndarray, start: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        held: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        pending = iter(needed)
        taken = 0
        if not needed:
            self.read_all.set()
        for first in range(0, len(emission), self.plan.batch_size):
            picks = emission[first : first + self.plan.batch_size]
            lrs, hrs = [], []
            for i in picks.tolist():
                while i not in held:
                    j = next(pending)
                    rng = self.plan.sample_rng(self.epoch, start + j)
                    held[j] = random_patch(next(records), self.scale, self.patch, rng)
                    taken += 1
                    if taken == len(needed):
                        self.read_all.set()
                lr, hr = held.pop(i)
                lrs.append(lr)
                hrs.append(hr)
            yield {"lr": _to_tensor(lrs), "hr": _to_tensor(hrs), "index": torch.from_numpy(ids[picks])}

    def batch(self) -> dict[str, torch.Tensor]:
        self.next_batch += 1
        return next(self._batches)

    def close(self) -> None:
        self._batches.close()
        self._records.close()


class _RankDataset(IterableDataset):
    """The batches of one rank from global batch `start` on; worker w serves every num_readers-th one."""

    def __init__(
        self, source: Source, plan: StreamPlan, rank: int, start: int, scale: int, patch: int
    ) -> None:
        self.source, self.plan, self.rank, self.start = source, plan, rank, start
        self.scale, self.patch = scale, patch

    def _reader(self, g: int) -> _ReaderEpoch:
        epoch, _, reader, j = self.plan.locate(g)
        return _ReaderEpoch(self.source, self.plan, epoch, self.rank, reader, j, self.scale, self.patch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        g = self.start + (info.id if info is not None else 0)
        step = self.plan.num_readers
        current: _ReaderEpoch | None = None
        upcoming: tuple[int, _ReaderEpoch] | None = None  # this worker's next epoch, started early
        try:
            while True:
                epoch, _, _, j = self.plan.locate(g)
                if current is None or (current.epoch, current.next_batch) != (epoch, j):
                    if current is not None:
                        current.close()
                    current = upcoming[1] if upcoming is not None and upcoming[0] == g else self._reader(g)
                    upcoming = None
                yield current.batch()
                g += step
                if upcoming is None and current.read_all.is_set():
                    g_next = g + step * (current.num_batches - current.next_batch)
                    upcoming = (g_next, self._reader(g_next))
        finally:
            for reader in (current, upcoming[1] if upcoming else None):
                if reader is not None:
                    reader.close()


class TrainStream:
    """Endless training batches for one rank; `state_dict()` is the position of the next batch."""

    def __init__(
        self,
        source: Source,
        plan: StreamPlan,
        rank: int,
        scale: int,
        patch_size: int,
        num_workers: int,
        pin_memory: bool,
    ) -> None:
        self.source, self.plan, self.rank, self.scale = source, plan, rank, scale
        self.patch_size, self.num_workers, self.pin_memory = patch_size, num_workers, pin_memory
        self._next = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.plan.batches_per_epoch

    @property
    def epoch(self) -> int:
        return self._next // self.plan.batches_per_epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        dataset = _RankDataset(self.source, self.plan, self.rank, self._next, self.scale, self.patch_size)
        loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            prefetch_factor=2 if self.num_workers else None,
        )
        batches = iter(loader)
        try:
            for batch in batches:
                self._next += 1
                yield batch
        finally:
            # Stop the workers now: when a worker error's traceback keeps this iterator alive, the garbage
            # collector finalises its queues first and its own shutdown then waits 5 s per worker.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def _fingerprint(self) -> dict[str, int]:
        p = self.plan
        return {
            "num_records": p.num_records,
            "seed": p.seed,
            "world_size": p.world_size,
            "batch_size": p.batch_size,
            "num_workers": self.num_workers,
            "patch_size": self.patch_size,
            "scale": self.scale,
            "shuffle_buffer": p.shuffle_buffer,
        }

    def state_dict(self) -> dict[str, int]:
        epoch, k = divmod(self._next, self.plan.batches_per_epoch)
        return {"version": STATE_VERSION, "epoch": epoch, "batch": k, **self._fingerprint()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at the saved position; the stream's data and layout must be those it was saved with."""
        for key, value in {"version": STATE_VERSION, **self._fingerprint()}.items():
            if state.get(key) != value:
                raise ValueError(
                    f"stream state field {key!r} is {state.get(key)!r}, this stream has {value!r}"
                )
        if not 0 <= state["batch"] < self.plan.batches_per_epoch or state["epoch"] < 0:
            raise ValueError(
                f"stream state position epoch={state['epoch']} batch={state['batch']} is out of range"
            )
        self._next = state["epoch"] * self.plan.batches_per_epoch + state["batch"]


def build_train_stream(
    url: str,
    scale: int,
    patch_size: int = 48,
    batch_size: int = 16,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 10,
    num_workers: int = 2,
    storage_options: dict[str, Any] | None = None,
    pin_memory: bool = False,
    *,
    shuffle_buffer: int = 1024,
    cache_dir: str | None = None,
    cache_bytes: int = 0,
    patches_per_record: int = 1,
) -> TrainStream:
    """The training stream of one rank over a shard prefix or a DIV2K-layout root.

    `shuffle_buffer` counts patches held per loader worker (a 48 px x4 patch pair is ~117 KB).
    `cache_dir`, `cache_bytes` and `patches_per_record`: see `reuse.prepare_source`.
    """
    for name, value in (
        ("scale", scale),
        ("patch_size", patch_size),
        ("batch_size", batch_size),
        ("world_size", world_size),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    source = open_source(url, scale, storage_options)
    source = prepare_source(source, cache_dir, cache_bytes, patches_per_record)
    plan = StreamPlan(source.counts, batch_size, world_size, max(1, num_workers), seed, shuffle_buffer)
    if rank == 0:
        log.info(
            "training data: %s; %d batches of %d per rank per epoch",
            source.describe(),
            plan.batches_per_epoch,
            batch_size,
        )
    return TrainStream(source, plan, rank, scale, patch_size, num_workers, pin_memory)
