"""The training stream: shards packed to a real S3 API (moto), read by 1-3 ranks x 0-2 loader workers."""

from __future__ import annotations

import itertools
import uuid

import numpy as np
import pytest
import s3fs
import torch

from dukd_ray.data import build_train_stream
from dukd_ray.data.pack import pack
from dukd_ray.data.plan import StreamPlan, lane_shares
from dukd_ray.data.sources import ShardSource
from dukd_ray.data.stream import random_patch
from dukd_ray.image.resize import imresize

SCALE, PATCH = 4, 16


@pytest.fixture(scope="module")
def packed(s3_endpoint, sample_data):
    """The sample set uploaded to S3 and packed S3 -> S3 into small shards: (prefix, storage_options)."""
    opts = {"endpoint_url": s3_endpoint}
    fs = s3fs.S3FileSystem(**opts)
    bucket = f"stream-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    src, dst = f"s3://{bucket}/div2k", f"s3://{bucket}/shards"
    fs.put(sample_data.train_url, src, recursive=True)
    manifest = pack(
        src,
        dst,
        SCALE,
        crop=192,
        step=192,
        shard_size_mb=1,
        src_options=opts,
        dst_options=opts,
        progress=False,
    )
    assert len(manifest.shards) > 4  # several shards, not a multiple of the 4 readers
    yield dst, opts, manifest.num_records
    fs.rm(bucket, recursive=True)


def take(stream, n: int) -> list[dict[str, torch.Tensor]]:
    return list(itertools.islice(iter(stream), n))


def rank_streams(prefix, opts, batch_size, seed=10, world_size=2):
    return [
        build_train_stream(
            prefix,
            SCALE,
            PATCH,
            batch_size,
            rank=r,
            world_size=world_size,
            seed=seed,
            num_workers=2,
            storage_options=opts,
        )
        for r in range(world_size)
    ]


@pytest.mark.parametrize("batch_size", [4, 5])
def test_every_epoch_covers_every_crop_with_equal_batches_per_rank(packed, batch_size):
    prefix, opts, n = packed
    streams = rank_streams(prefix, opts, batch_size)
    per_epoch = streams[0].batches_per_epoch
    assert per_epoch == streams[1].batches_per_epoch == -(-n // (2 * batch_size))
    batches = [take(s, 2 * per_epoch) for s in streams]
    for s in streams:
        assert s.state_dict()["step"] == 2 * per_epoch
    padding = 2 * per_epoch * batch_size - n
    for epoch in range(2):
        chunk = slice(epoch * per_epoch, (epoch + 1) * per_epoch)
        ids = [torch.cat([b["index"] for b in rank[chunk]]).tolist() for rank in batches]
        assert set(ids[0]) | set(ids[1]) == set(range(n))
        assert len(ids[0]) == len(ids[1]) == per_epoch * batch_size
        if padding == 0:
            assert not set(ids[0]) & set(ids[1])  # the ranks' shares are disjoint
        assert len(ids[0]) + len(ids[1]) - len(set(ids[0] + ids[1])) == padding
    first, second = (
        torch.cat([b["index"] for b in batches[0][c]]) for c in (slice(0, per_epoch), slice(per_epoch, None))
    )
    assert not torch.equal(first, second)  # each epoch is reshuffled


def global_batches(prefix, opts, world_size, loader_workers, steps, start=0, global_batch=5, state=None):
    """The first `steps` global batches from step `start` (or `state`): every rank's rows concatenated."""
    streams = [
        build_train_stream(
            prefix,
            SCALE,
            PATCH,
            1,
            rank=r,
            world_size=world_size,
            num_workers=loader_workers,
            storage_options=opts,
            global_batch=global_batch,
            shuffle_buffer=16,
        )
        for r in range(world_size)
    ]
    for s in streams:
        s.load_state_dict(state) if state else s.seek(start)
    per_rank = [take(s, steps) for s in streams]
    out = [
        {k: torch.cat([rank[i][k] for rank in per_rank]) for k in ("lr", "hr", "index")} for i in range(steps)
    ]
    return out, streams[0].state_dict()


def test_global_batches_do_not_depend_on_world_size_or_loader_workers(packed):
    """Global batch 5: 1 rank reading alone, or 2 ranks (3 + 2 rows) x 2 loader workers (2 + 1, 1 + 1
    lanes), across an epoch boundary."""
    prefix, opts, n = packed
    steps = -(-n // 5) + 2  # into the second epoch
    alone, _ = global_batches(prefix, opts, 1, 0, steps)
    shared, state = global_batches(prefix, opts, 2, 2, steps)
    assert alone[0]["lr"].shape == (5, 3, PATCH, PATCH)
    for want, got in zip(alone, shared, strict=True):
        assert torch.equal(want["index"], got["index"])
        assert torch.equal(want["lr"], got["lr"]) and torch.equal(want["hr"], got["hr"])
    # the 2-rank position resumes on 3 ranks (2 + 2 + 1 rows) with the same next batches
    later, _ = global_batches(prefix, opts, 1, 0, 3, start=steps)
    resumed, _ = global_batches(prefix, opts, 3, 1, 3, state=state)
    for want, got in zip(later, resumed, strict=True):
        assert torch.equal(want["index"], got["index"]) and torch.equal(want["lr"], got["lr"])


@pytest.mark.parametrize("epoch_steps", [1, 2])  # short epochs: the next one is read before this one ends
def test_the_stream_yields_the_plans_global_batches_epoch_after_epoch(packed, epoch_steps):
    prefix, opts, n = packed
    global_batch = -(-n // epoch_steps)
    stream = build_train_stream(
        prefix,
        SCALE,
        PATCH,
        global_batch,
        num_workers=0,
        storage_options=opts,
        shuffle_buffer=4 * global_batch,
    )
    plan = stream.plan
    assert plan.steps_per_epoch == epoch_steps
    for step, batch in enumerate(take(stream, 4 * epoch_steps)):
        epoch, k = divmod(step, epoch_steps)
        order = plan.epoch_order(epoch)
        lanes = range(global_batch)
        want = [order[plan.lane_start(lane) + plan.emission_order(epoch, lane)[k], 2] for lane in lanes]
        assert batch["index"].tolist() == want, step


def test_patches_are_aligned_floats_cut_from_the_indexed_crops(packed):
    prefix, opts, _ = packed
    source = ShardSource(prefix, SCALE, opts)
    requests = [(u, r) for u, n in enumerate(source.counts) for r in range(n)]
    crops = [lr for _, _, lr in source.iter_records(requests)]  # LR crops by record id
    (stream,) = rank_streams(prefix, opts, 4, world_size=1)
    for batch in take(stream, 3):
        for lr, idx in zip(batch["lr"], batch["index"].tolist(), strict=True):
            patch = (lr.permute(1, 2, 0) * 255).round().byte().numpy()
            _which_transform(crops[idx], patch)  # raises unless the patch is a flipped/transposed crop
        lr, hr = batch["lr"], batch["hr"]
        assert lr.dtype == hr.dtype == torch.float32
        assert lr.shape == (4, 3, PATCH, PATCH) and hr.shape == (4, 3, SCALE * PATCH, SCALE * PATCH)
        assert lr.min() >= 0 and lr.max() <= 1
        down = imresize(hr, 1 / SCALE)
        inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
        err = (down - lr)[inner].abs().mean()
        shifted = (down[..., 1:] - lr[..., :-1])[inner].abs().mean()
        assert err < 1.5 / 255, err
        assert shifted > 2 * err


def test_same_seed_same_batches_other_seed_other_batches(packed):
    prefix, opts, _ = packed
    a, b = (take(rank_streams(prefix, opts, 4, seed=3)[1], 5) for _ in range(2))
    c = take(rank_streams(prefix, opts, 4, seed=4)[1], 5)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["lr"], y["lr"]) and torch.equal(x["hr"], y["hr"])
    assert not all(torch.equal(x["lr"], z["lr"]) for x, z in zip(a, c, strict=True))


@pytest.mark.parametrize("stop", [5, 10])  # mid-epoch, and just past the epoch boundary (9 batches)
def test_restored_state_continues_exactly(packed, stop):
    prefix, opts, _ = packed
    full = take(rank_streams(prefix, opts, 4)[1], 13)
    first = rank_streams(prefix, opts, 4)[1]
    take(first, stop)
    state = first.state_dict()
    resumed = rank_streams(prefix, opts, 4)[1]
    resumed.load_state_dict(state)
    rest = take(resumed, 13 - stop)
    for want, got in zip(full[stop:], rest, strict=True):
        assert torch.equal(want["index"], got["index"])
        assert torch.equal(want["lr"], got["lr"]) and torch.equal(want["hr"], got["hr"])


def test_state_from_another_layout_is_refused(packed):
    prefix, opts, _ = packed
    state = rank_streams(prefix, opts, 4)[0].state_dict()
    other = rank_streams(prefix, opts, 8)[0]
    with pytest.raises(ValueError, match="global_batch"):
        other.load_state_dict(state)


def test_png_folder_source_streams_the_basicsr_way(sample_data):
    stream = build_train_stream(sample_data.train_url, SCALE, PATCH, batch_size=4, num_workers=2)
    per_epoch = stream.batches_per_epoch
    batches = take(stream, per_epoch)
    n_images = 8
    assert per_epoch == n_images // 4
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(n_images))
    err = (imresize(batches[0]["hr"], 1 / SCALE) - batches[0]["lr"])[..., 2:-2, 2:-2].abs().mean()
    assert err < 1.5 / 255


def test_plan_cuts_each_padded_epoch_into_lanes_one_sample_each_per_step():
    plan = StreamPlan(counts=(5, 1, 7, 2), global_batch=4, seed=1, shuffle_buffer=8)
    assert plan.steps_per_epoch == 4 and plan.lane_buffer == 2  # 15 records -> 16 slots: one repeated
    epochs = []
    for epoch in range(3):
        order = plan.epoch_order(epoch)
        assert len(order) == 16 and set(order[:, 2].tolist()) == set(range(15))
        runs = [order[order[:, 0] == u, 1] for u in range(4)]
        assert all(np.array_equal(r[: len(set(r))], np.sort(r[: len(set(r))])) for r in runs)  # sequential
        batches = [
            [order[plan.lane_start(lane) + plan.emission_order(epoch, lane)[k], 2] for lane in range(4)]
            for k in range(plan.steps_per_epoch)
        ]
        ids = [i for b in batches for i in b]
        assert sorted(ids) == sorted(order[:, 2].tolist())  # every slot exactly once
        for lane in range(4):
            assert sorted(plan.emission_order(epoch, lane).tolist()) == list(range(4))
        epochs.append(ids)
    assert epochs[0] != epochs[1] != epochs[2]


@pytest.mark.parametrize(("global_batch", "world_size"), [(3, 2), (8, 3), (4, 4), (16, 1)])
def test_lane_shares_are_contiguous_and_differ_by_at_most_one(global_batch, world_size):
    shares = lane_shares(global_batch, world_size)
    assert [s.start for s in shares] == [0] + [s.stop for s in shares[:-1]]
    assert shares[-1].stop == global_batch
    assert max(map(len, shares)) - min(map(len, shares)) <= 1 and min(map(len, shares)) >= 1


def test_a_global_batch_smaller_than_the_world_is_refused():
    with pytest.raises(ValueError, match="global batch of 2 cannot be shared by 3 workers"):
        lane_shares(2, 3)


def test_random_patch_keeps_lr_and_hr_aligned_under_every_augmentation():
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    hr = lr.repeat(SCALE, axis=0).repeat(SCALE, axis=1)  # each LR pixel is an HR block
    variants = set()
    for seed in range(64):
        lr_p, hr_p = random_patch(("x", hr, lr), SCALE, 8, np.random.default_rng(seed))
        np.testing.assert_array_equal(hr_p[::SCALE, ::SCALE], lr_p)
        np.testing.assert_array_equal(hr_p[SCALE - 1 :: SCALE, SCALE - 1 :: SCALE], lr_p)
        variants.add(_which_transform(lr, lr_p))
    assert len(variants) == 8  # hflip x vflip x transpose all occur


def _which_transform(image: np.ndarray, patch: np.ndarray) -> tuple[bool, bool, bool]:
    p = patch.shape[0]
    for top, left in itertools.product(range(image.shape[0] - p + 1), range(image.shape[1] - p + 1)):
        crop = image[top : top + p, left : left + p]
        for h, v, t in itertools.product((False, True), repeat=3):
            x = crop[:, ::-1] if h else crop
            x = x[::-1] if v else x
            x = x.transpose(1, 0, 2) if t else x
            if np.array_equal(x, patch):
                return h, v, t
    raise AssertionError("patch is not a flipped/transposed crop of the image")
