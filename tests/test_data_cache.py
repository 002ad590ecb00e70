"""The node-local shard cache and patches per record: one fetch per node, crash leftovers, the bound."""

from __future__ import annotations

import math
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import s3fs

from dukd_ray.data import build_train_stream
from dukd_ray.data.cache import ShardCache
from dukd_ray.data.pack import pack
from dukd_ray.data.shards import ShardFormatError, load_manifest
from dukd_ray.storage import get_fs, join

SCALE, PATCH = 4, 24


@pytest.fixture
def packed_s3(sample_data, s3_bucket):
    """The sample train set packed (96 px crops) into several shards on moto S3."""
    bucket, opts = s3_bucket
    prefix = join(bucket, "shards")
    pack(sample_data.train_url, prefix, SCALE, 96, 48, shard_size_mb=2, dst_options=opts, progress=False)
    return prefix, opts


def read_through(cache_root: str, prefix: str, opts: dict, max_bytes: int) -> tuple[list[bytes], int]:
    """Every shard's bytes read through a cache at `cache_root`, and the bytes this process fetched."""
    manifest = load_manifest(prefix, SCALE, opts)
    cache = ShardCache(cache_root, max_bytes, [s.sha256 for s in manifest.shards])
    fs, _ = get_fs(prefix, opts)
    out = []
    for info in manifest.shards:
        url = join(prefix, info.name)
        out.append(cache.read(info, url, fs, get_fs(url, opts)[1], 0, info.bytes))
    return out, cache.stats.bytes


def test_concurrent_processes_fetch_each_shard_once_and_read_what_the_store_holds(packed_s3, tmp_path):
    prefix, opts = packed_s3
    manifest = load_manifest(prefix, SCALE, opts)
    total = sum(s.bytes for s in manifest.shards)
    want = [s3fs.S3FileSystem(**opts).cat_file(join(prefix, s.name)) for s in manifest.shards]
    root = str(tmp_path / "cache")
    args = [(root, prefix, opts, 10 * total)] * 2
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(read_through, args)
    assert all(data == want for data, _ in results)
    assert sum(fetched for _, fetched in results) == total  # one download per shard for the node
    assert sorted(os.listdir(root)) == sorted(
        [f"{s.sha256}.bin" for s in manifest.shards]
        + [f"{s.sha256}.bin.lock" for s in manifest.shards]
        + [".lock"]
    )


def test_crash_leftovers_and_damaged_copies_are_fetched_again(packed_s3, tmp_path):
    prefix, opts = packed_s3
    manifest = load_manifest(prefix, SCALE, opts)
    first, second = manifest.shards[:2]
    root = tmp_path / "cache"
    root.mkdir()
    Path(root, f"{first.sha256}.bin.part").write_bytes(b"half a shard")  # a filler killed mid-write
    damaged = bytearray(s3fs.S3FileSystem(**opts).cat_file(join(prefix, second.name)))
    damaged[-1] ^= 0xFF  # same size, one byte off: only the sha256 can tell
    Path(root, f"{second.sha256}.bin").write_bytes(bytes(damaged))
    data, fetched = read_through(str(root), prefix, opts, 10 * sum(s.bytes for s in manifest.shards))
    assert fetched == sum(s.bytes for s in manifest.shards)
    assert data == [s3fs.S3FileSystem(**opts).cat_file(join(prefix, s.name)) for s in manifest.shards]
    assert not any(name.endswith(".part") for name in os.listdir(root))


def test_bound_evicts_other_data_first_and_never_thrashes_the_data_in_use(packed_s3, tmp_path):
    prefix, opts = packed_s3
    manifest = load_manifest(prefix, SCALE, opts)
    sizes = [s.bytes for s in manifest.shards]
    root = tmp_path / "cache"
    root.mkdir()
    stale = root / f"{'0' * 64}.bin"
    stale.write_bytes(b"x" * sizes[0])  # a shard of another data set, least recently used
    bound = sum(sizes[:2]) + sizes[0] // 2
    data, fetched = read_through(str(root), prefix, opts, bound)
    assert not stale.exists()
    fits, used = set(), 0  # in read order, each shard that still fits is kept
    for s in manifest.shards:
        if used + s.bytes <= bound:
            fits.add(f"{s.sha256}.bin")
            used += s.bytes
    assert {n for n in os.listdir(root) if n.endswith(".bin")} == fits and len(fits) < len(sizes)
    _, again = read_through(str(root), prefix, opts, bound)
    assert again == sum(sizes) - used  # the shards beyond the bound come from the store, the rest do not
    store = s3fs.S3FileSystem(**opts)
    assert data == [store.cat_file(join(prefix, s.name)) for s in manifest.shards]


def test_a_store_shard_that_disagrees_with_the_manifest_is_refused(packed_s3, tmp_path):
    prefix, opts = packed_s3
    info = load_manifest(prefix, SCALE, opts).shards[0]
    url = join(prefix, info.name)
    store = s3fs.S3FileSystem(**opts)
    store.pipe_file(url, store.cat_file(url)[:-1] + b"\0")
    with pytest.raises(ShardFormatError, match="sha256"):
        read_through(str(tmp_path / "cache"), prefix, opts, 2**30)
    assert [n for n in os.listdir(tmp_path / "cache") if n.endswith((".bin", ".part"))] == []


def epochs(prefix: str, opts: dict, n: int, **kwargs) -> tuple[list[dict], list[int]]:
    """n epochs of batches (one loader process) and the bytes fetched from the store in each."""
    stream = build_train_stream(prefix, SCALE, PATCH, 8, num_workers=0, storage_options=opts, **kwargs)
    stats = getattr(stream.source, "source", stream.source).fetcher.stats
    it, batches, fetched = iter(stream), [], []
    for _ in range(n):
        before = stats.bytes
        batches += [next(it) for _ in range(stream.batches_per_epoch)]
        fetched.append(stats.bytes - before)
    it.close()
    return batches, fetched


def test_stream_through_the_cache_is_the_same_and_epoch_two_fetches_nothing(packed_s3, tmp_path):
    prefix, opts = packed_s3
    plain, plain_bytes = epochs(prefix, opts, 2)
    cached, cached_bytes = epochs(prefix, opts, 2, cache_dir=str(tmp_path / "c"), cache_bytes=2**30)
    for a, b in zip(plain, cached, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in ("lr", "hr", "index"))
    shards = load_manifest(prefix, SCALE, opts).shards
    assert cached_bytes == [sum(s.bytes for s in shards), 0]
    # without the cache every epoch reads every crop again (and a reader starts on the next one early)
    assert sum(plain_bytes) >= 2 * sum(s.bytes - s.header_bytes for s in shards)
    records = sum(s.records for s in shards)
    twice, twice_bytes = epochs(prefix, opts, 1, patches_per_record=2)
    assert len(twice) == math.ceil(2 * records / 8) and len(plain) == 2 * math.ceil(records / 8)
    # twice the patches for about the bytes of one epoch (padding repeats a few records)
    assert twice_bytes[0] / len(twice) < 0.6 * plain_bytes[0] / (len(plain) / 2)
    ids = np.concatenate([b["index"].numpy() for b in twice])
    assert set(ids.tolist()) == set(range(2 * records))
