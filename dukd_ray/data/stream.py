"""The training stream: endless batches of aligned random LR/HR patches, resumable to the step.

A rank's lanes of `plan.StreamPlan` are split among its DataLoader workers (contiguous groups);
each worker fetches its lanes' records in order on a read-ahead thread (a few large range reads
per run of shard records), cuts a random aligned patch with BasicSR's augmentation as each record
arrives (so the shuffle buffers hold patches, not whole crops), and yields its rows of each step;
the main process concatenates the workers' rows in lane order. `TrainStream` counts the steps
handed out; its `state_dict()` is that global position, and iterating after `load_state_dict()`
(or `seek`) rebuilds every reader exactly there, whatever the world size was when it was saved.
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

from dukd_ray.data.plan import StreamPlan, lane_shares
from dukd_ray.data.reuse import prepare_source
from dukd_ray.data.sources import Record, Source, open_source

log = logging.getLogger(__name__)
BATCHES_AHEAD = 2
STATE_VERSION = 2  # 1: per-rank positions (epoch, batch of that rank)


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


class _LanesEpoch:
    """One reader's lanes for one epoch from step `first` on: per step, its rows of the global batch.

    One thread fetches records (I/O): every lane is read front to back through its own iterator
    over the source (so each lane's reads stay large range reads), the lanes interleaved in the
    order their samples are needed. Another thread cuts patches into the lanes' shuffle buffers and
    assembles each step's rows, so a reader can fill its next epoch's buffers while this epoch's
    last steps drain.
    """

    def __init__(
        self, source: Source, plan: StreamPlan, epoch: int, lanes: range, first: int, scale: int, patch: int
    ) -> None:
        self.plan, self.epoch, self.scale, self.patch = plan, epoch, scale, patch
        self.next_step = first
        order = plan.epoch_order(epoch)
        self._emission = [plan.emission_order(epoch, lane)[first:] for lane in lanes]
        self._starts = [plan.lane_start(lane) for lane in lanes]
        self._needed = [np.sort(e) for e in self._emission]  # read order: sequential within the lane
        self._ids = order[:, 2]
        lane_reads = [
            source.iter_records([(int(u), int(r)) for u, r in order[start + needed, :2]])
            for start, needed in zip(self._starts, self._needed, strict=True)
        ]
        schedule = self._read_schedule()
        self.read_all = threading.Event()
        if not schedule:
            self.read_all.set()
        reads = ((lane, next(lane_reads[lane])) for lane in schedule)
        self._records = _ReadAhead(reads, source.read_ahead)
        self._steps = _ReadAhead(self._produce(self._records, len(schedule)), BATCHES_AHEAD)

    def _read_schedule(self) -> list[int]:
        """The lane of every record fetch, in the order the samples need them (by step, then lane)."""
        keys = []
        for lane, (emission, needed) in enumerate(zip(self._emission, self._needed, strict=True)):
            # reads needed by step t: all of `needed` up to the furthest record emitted by then
            required = np.maximum.accumulate(np.searchsorted(needed, emission)) + 1
            need_step = np.searchsorted(required, np.arange(len(needed)) + 1)
            keys.append(np.stack([need_step, np.full(len(needed), lane)], axis=1))
        if not keys or not sum(len(k) for k in keys):
            return []
        merged = np.concatenate(keys)
        return merged[np.lexsort((merged[:, 1], merged[:, 0])), 1].tolist()

    def _produce(self, records: _ReadAhead, total: int) -> Iterator[dict[str, torch.Tensor]]:
        held: list[dict[int, tuple[np.ndarray, np.ndarray]]] = [{} for _ in self._emission]
        taken = [0] * len(self._emission)
        for t in range(len(self._emission[0]) if self._emission else 0):
            lrs, hrs, ids = [], [], []
            for lane, emission in enumerate(self._emission):
                i = int(emission[t])
                while i not in held[lane]:
                    got, record = next(records)
                    j = int(self._needed[got][taken[got]])
                    taken[got] += 1
                    position = self._starts[got] + j
                    patch = random_patch(
                        record, self.scale, self.patch, self.plan.sample_rng(self.epoch, position)
                    )
                    held[got][j] = patch
                    total -= 1
                    if total == 0:
                        self.read_all.set()
                lr, hr = held[lane].pop(i)
                lrs.append(lr)
                hrs.append(hr)
                ids.append(self._ids[self._starts[lane] + i])
            yield {
                "lr": _to_tensor(lrs),
                "hr": _to_tensor(hrs),
                "index": torch.tensor(ids, dtype=torch.int64),
            }

    def rows(self) -> dict[str, torch.Tensor]:
        self.next_step += 1
        return next(self._steps)

    def close(self) -> None:
        self._steps.close()
        self._records.close()


class _RankDataset(IterableDataset):
    """A rank's rows of every global batch from step `start` on; loader worker w serves lane group w."""

    def __init__(
        self, source: Source, plan: StreamPlan, groups: list[range], start: int, scale: int, patch: int
    ) -> None:
        self.source, self.plan, self.groups, self.start = source, plan, groups, start
        self.scale, self.patch = scale, patch

    def _reader(self, lanes: range, step: int) -> _LanesEpoch:
        epoch, k = divmod(step, self.plan.steps_per_epoch)
        return _LanesEpoch(self.source, self.plan, epoch, lanes, k, self.scale, self.patch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        lanes = self.groups[info.id if info is not None else 0]
        per_epoch = self.plan.steps_per_epoch
        step = self.start
        current = self._reader(lanes, step)
        upcoming: _LanesEpoch | None = None  # the next epoch, started once this one has read everything
        try:
            while True:
                if current.next_step == per_epoch:
                    current.close()
                    current, upcoming = upcoming or self._reader(lanes, step), None
                yield current.rows()
                step += 1
                if upcoming is None and current.read_all.is_set():
                    upcoming = self._reader(lanes, (current.epoch + 1) * per_epoch)
        finally:
            for reader in (current, upcoming):
                if reader is not None:
                    reader.close()


class TrainStream:
    """Endless training batches: this rank's rows of every global batch; `state_dict()` is the step."""

    def __init__(
        self,
        source: Source,
        plan: StreamPlan,
        lanes: range,
        scale: int,
        patch_size: int,
        num_workers: int,
        pin_memory: bool,
    ) -> None:
        self.source, self.plan, self.lanes, self.scale = source, plan, lanes, scale
        self.patch_size, self.num_workers, self.pin_memory = patch_size, num_workers, pin_memory
        self._next = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    @property
    def epoch(self) -> int:
        return self._next // self.plan.steps_per_epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # loader worker w reads lane group w and yields its rows of each step in turn; the DataLoader
        # hands items out round-robin, so each run of len(groups) items is one step's rows, in order
        readers = min(max(1, self.num_workers), len(self.lanes))
        groups = [
            range(self.lanes.start + g.start, self.lanes.start + g.stop)
            for g in lane_shares(len(self.lanes), readers)
        ]
        dataset = _RankDataset(self.source, self.plan, groups, self._next, self.scale, self.patch_size)
        workers = readers if self.num_workers else 0
        loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            pin_memory=self.pin_memory,
            prefetch_factor=2 if workers else None,
        )
        items = iter(loader)
        try:
            while True:
                parts = [next(items) for _ in groups]
                self._next += 1
                yield parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        finally:
            # Stop the workers now: when a worker error's traceback keeps this iterator alive, the garbage
            # collector finalises its queues first and its own shutdown then waits 5 s per worker.
            shutdown = getattr(items, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def _fingerprint(self) -> dict[str, int]:
        p = self.plan
        return {
            "num_records": p.num_records,
            "seed": p.seed,
            "global_batch": p.global_batch,
            "patch_size": self.patch_size,
            "scale": self.scale,
            "shuffle_buffer": p.shuffle_buffer,
        }

    def state_dict(self) -> dict[str, int]:
        """The global position (steps consumed): the same on every rank, whatever the world size."""
        return {"version": STATE_VERSION, "step": self._next, **self._fingerprint()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at the saved step; the stream's data and global batch must be those it was saved with."""
        for key, value in {"version": STATE_VERSION, **self._fingerprint()}.items():
            if state.get(key) != value:
                raise ValueError(
                    f"stream state field {key!r} is {state.get(key)!r}, this stream has {value!r}"
                )
        self.seek(state["step"])

    def seek(self, step: int) -> None:
        """Continue with global batch `step` (0-based), whatever world size the run had before."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"stream position {step!r} is not a step >= 0")
        self._next = step


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
    global_batch: int | None = None,
    shuffle_buffer: int = 1024,
    cache_dir: str | None = None,
    cache_bytes: int = 0,
    patches_per_record: int = 1,
) -> TrainStream:
    """The training stream of one rank over a shard prefix or a DIV2K-layout root.

    Every step is one `global_batch` (default `batch_size * world_size`) of which this rank yields
    its rows (`plan.lane_shares`); the sequence does not depend on `world_size` or `num_workers`.
    `shuffle_buffer` counts patches held over all lanes of the global batch (a 48 px x4 patch pair
    is ~117 KB), each rank holding its lanes' part. `cache_dir`, `cache_bytes` and
    `patches_per_record`: see `reuse.prepare_source`.
    """
    global_batch = batch_size * world_size if global_batch is None else global_batch
    for name, value in (
        ("scale", scale),
        ("patch_size", patch_size),
        ("batch_size", batch_size),
        ("world_size", world_size),
        ("global_batch", global_batch),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    lanes = lane_shares(global_batch, world_size)[rank]
    source = open_source(url, scale, storage_options)
    source = prepare_source(source, cache_dir, cache_bytes, patches_per_record)
    plan = StreamPlan(source.counts, global_batch, seed, shuffle_buffer)
    if rank == 0:
        log.info(
            "training data: %s; %d steps of a global batch of %d per epoch",
            source.describe(),
            plan.steps_per_epoch,
            global_batch,
        )
    return TrainStream(source, plan, lanes, scale, patch_size, num_workers, pin_memory)
