"""A flaky object store changes nothing: pack, train with checkpoints on S3 and resume through a
proxy that resets, throttles, fails, delays and cuts ~16 % of the requests, and end bit-for-bit
where the same run on a healthy store ends; every checkpoint left in the run folder is complete.
"""

from __future__ import annotations

import io
import json

import s3fs
import torch
from flaky_s3 import FAULTS, FlakyS3Proxy

from dukd_ray.data.pack import pack
from dukd_ray.storage import join, read_bytes
from dukd_ray.train import JobConfig, run_training

BLOCK = 5 << 20  # s3fs's smallest multipart part: shards and checkpoints above two blocks go multipart
STEPS = 6


def _job(data: str, storage: str, name: str, teacher: str, opts: dict, steps: int) -> JobConfig:
    """One worker, a student wide enough (EDSR f64b8, ~1.5 M params) that its state goes multipart."""
    return JobConfig.from_preset("edsr_x4", tiny=True).apply_overrides(
        [
            f"data.train={data}",
            f"data.storage_options={json.dumps(opts)}",
            f"model.teacher={teacher}",
            'model.student_kwargs={"num_feat": 64, "num_block": 8}',
            f"run.storage={storage}",
            f"run.name={name}",
            "run.num_workers=1",
            "run.use_gpu=false",
            f"train.max_steps={steps}",
            "train.val_every=4",
            "train.ckpt_every=4",
        ]
    )


def _weights(url: str, opts: dict) -> dict:
    return torch.load(io.BytesIO(read_bytes(url, opts)), weights_only=True)


def _incomplete_checkpoints(fs: s3fs.S3FileSystem, run: str) -> list[str]:
    """Checkpoint folders whose meta.json is missing or lists a file of another size."""
    bad = []
    for folder in fs.glob(f"{run}/checkpoint_[0-9]*"):
        try:
            meta = json.loads(fs.cat_file(f"{folder}/meta.json"))
        except FileNotFoundError:
            bad.append(folder)
            continue
        if any(fs.size(f"{folder}/{name}") != size for name, size in meta["files"].items()):
            bad.append(folder)
    return bad


def test_pack_train_and_resume_through_a_flaky_store_end_as_on_a_healthy_one(
    ray_cluster, s3_endpoint, s3_bucket, sample_data, tiny_teacher
):
    bucket, opts = s3_bucket
    healthy = {**opts, "default_block_size": BLOCK}
    teacher = tiny_teacher("edsr", 4)
    with FlakyS3Proxy(s3_endpoint, seed=17) as proxy:
        flaky = {"endpoint_url": proxy.endpoint, "default_block_size": BLOCK}
        packed = {}
        for name, options in (("healthy", healthy), ("flaky", flaky)):
            packed[name] = pack(
                sample_data.train_url, f"{bucket}/{name}-pack", 4, shard_size_mb=12, dst_options=options,
                progress=False,
            )  # fmt: skip
        reference = run_training(
            _job(f"{bucket}/healthy-pack", f"{bucket}/runs", "healthy", teacher, healthy, STEPS)
        )
        first = run_training(_job(f"{bucket}/flaky-pack", f"{bucket}/runs", "flaky", teacher, flaky, 4))
        resumed = run_training(_job(f"{bucket}/flaky-pack", f"{bucket}/runs", "flaky", teacher, flaky, STEPS))

    # the pack is the same, byte for byte, and its large shards went up as multipart uploads
    assert [s.sha256 for s in packed["flaky"].shards] == [s.sha256 for s in packed["healthy"].shards]
    assert max(s.bytes for s in packed["flaky"].shards) >= 2 * BLOCK
    # training and its resume end where the healthy run ends
    assert first.step == 4 and resumed.step == reference.step == STEPS
    ours, ref = _weights(resumed.weights_url, healthy), _weights(reference.weights_url, healthy)
    for entry in ("params", "params_ema"):
        for key, value in ref[entry].items():
            assert torch.equal(ours[entry][key], value), f"{entry}.{key}"
    fs = s3fs.S3FileSystem(**opts)
    run = join(bucket, "runs", "flaky").removeprefix("s3://")
    meta = json.loads(fs.cat_file(f"{run}/checkpoint_000000006/meta.json"))
    assert meta["resumes"] == [4]
    assert max(meta["files"].values()) >= 2 * BLOCK  # the train state, too, went up in parts
    assert _incomplete_checkpoints(fs, run) == []
    # and the store really was flaky, every kind of fault, multipart requests included
    assert all(proxy.faults[kind] > 0 for kind in FAULTS), proxy.faults
    assert proxy.requests["POST"] >= 4, proxy.requests  # create + complete, per multipart upload
