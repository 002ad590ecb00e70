"""More than one training patch per fetched record: `RepeatedSource(source, k)`.

Why: a 480 px x4 crop costs ~0.7 MB to fetch and yields one 48 px patch (~117 KB with its HR) by
default, so the data path moves ~6x more bytes than the step uses. With k > 1 each record counts as
k records to the plan; the k copies sit next to each other in read order, so one fetch serves all
of them, and each copy still gets its own random patch and augmentation (the plan draws them per
position). An epoch then holds k patches of every crop; the plan, the shuffle buffer and the exact
resume are unchanged (a stream state saved with another k is refused: its record count differs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from itertools import groupby

from dukd_ray.data.cache import ShardCache
from dukd_ray.data.sources import Record, ShardSource, Source

log = logging.getLogger(__name__)


class RepeatedSource:
    """`source` with every record listed `k` times in a row; consecutive repeats cost one read."""

    def __init__(self, source: Source, k: int) -> None:
        if k < 1:
            raise ValueError(f"patches per record must be >= 1, got {k}")
        self.source, self.k = source, k
        self.counts = tuple(c * k for c in source.counts)
        self.read_ahead = source.read_ahead

    def describe(self) -> str:
        return f"{self.source.describe()}, {self.k} patches per record"

    def iter_records(self, requests: Iterable[tuple[int, int]]) -> Iterator[Record]:
        wanted = [(unit, r // self.k) for unit, r in requests]
        runs = [(key, len(list(group))) for key, group in groupby(wanted)]
        records = self.source.iter_records([key for key, _ in runs])
        for (_, n), record in zip(runs, records, strict=True):
            for _ in range(n):
                yield record


def prepare_source(
    source: Source, cache_dir: str | None = None, cache_bytes: int = 0, patches_per_record: int = 1
) -> Source:
    """`source` with the fetch options of the stream: a shard cache and patches per record.

    `cache_dir` (shard prefixes only) is a node-local folder holding at most `cache_bytes`;
    `patches_per_record` patches are cut from every fetched record.
    """
    if cache_dir is not None:
        if isinstance(source, ShardSource):
            keep = [s.sha256 for s in source.manifest.shards]
            source.fetcher = ShardCache(cache_dir, cache_bytes, keep)
        else:
            log.warning(
                "data.cache_dir is ignored: it caches shards, and %s is not a shard prefix", source.describe()
            )
    return RepeatedSource(source, patches_per_record) if patches_per_record > 1 else source
