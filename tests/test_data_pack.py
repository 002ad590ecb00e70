"""The shard packer: BasicSR sub-image positions, exact crops, manifest, S3 -> S3, resume after a failure."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import s3fs

from dukd_ray.data.pack import crop_starts, main, pack
from dukd_ray.data.shards import FORMAT_VERSION, decode_header, decode_record, header_length, load_manifest
from dukd_ray.image.io import read_image
from dukd_ray.storage import join

SCALE, CROP, STEP = 4, 96, 48


def basicsr_positions(length: int, crop: int, step: int) -> list[int]:
    """Transcribed from BasicSR scripts/data_preparation/extract_subimages.py (thresh_size=0)."""
    space = np.arange(0, length - crop + 1, step)
    if length - (space[-1] + crop) > 0:
        space = np.append(space, length - crop)
    return space.tolist()


@pytest.mark.parametrize(
    "length,crop,step", [(10, 4, 2), (11, 4, 2), (480, 120, 60), (509, 120, 60), (4, 4, 2)]
)
def test_crop_starts_match_basicsr(length, crop, step):
    assert crop_starts(length, crop, step) == basicsr_positions(length, crop, step)


def test_crop_starts_keep_small_images_whole():
    assert crop_starts(30, 48, 24) == [0]


def read_all_records(prefix: str, storage_options=None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Every record of a packed prefix, in shard order, through the plain shard decoder."""
    manifest = load_manifest(prefix, SCALE, storage_options)
    fs = s3fs.S3FileSystem(**storage_options) if storage_options else None
    out = []
    for info in manifest.shards:
        url = join(prefix, info.name)
        data = fs.cat_file(url) if fs else Path(url).read_bytes()
        assert len(data) == info.bytes and hashlib.sha256(data).hexdigest() == info.sha256
        for rec in decode_header(data[: header_length(data, url)], url):
            hr, lr = decode_record(data, rec.offset, rec, url)
            out.append((rec.name, hr, lr))
    return out


def expected_crops(train_url: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The sub-images BasicSR would cut, computed from the source PNGs independently of the packer."""
    out = []
    hr_dir = os.path.join(train_url, "DIV2K_train_HR")
    for name in sorted(os.listdir(hr_dir)):
        stem = name[:-4]
        hr = read_image(os.path.join(hr_dir, name))
        lr = read_image(os.path.join(train_url, "DIV2K_train_LR_bicubic", f"X{SCALE}", f"{stem}x{SCALE}.png"))
        lc, ls = CROP // SCALE, STEP // SCALE
        i = 0
        for y in basicsr_positions(lr.shape[0], lc, ls):
            for x in basicsr_positions(lr.shape[1], lc, ls):
                i += 1
                hr_crop = hr[SCALE * y : SCALE * y + CROP, SCALE * x : SCALE * x + CROP]
                out.append((f"{stem}_s{i:03d}", hr_crop, lr[y : y + lc, x : x + lc]))
    return out


def test_pack_local_to_local_stores_exact_basicsr_crops(sample_data, tmp_path):
    dst = str(tmp_path / "shards")
    manifest = pack(sample_data.train_url, dst, SCALE, CROP, STEP, shard_size_mb=0.5, progress=False)
    got, want = read_all_records(dst), expected_crops(sample_data.train_url)
    assert [n for n, _, _ in got] == [n for n, _, _ in want]
    for (name, hr, lr), (_, hr_want, lr_want) in zip(got, want, strict=True):
        assert hr.shape == (CROP, CROP, 3) and lr.shape == (CROP // SCALE, CROP // SCALE, 3), name
        np.testing.assert_array_equal(hr, hr_want, err_msg=name)
        np.testing.assert_array_equal(lr, lr_want, err_msg=name)
    body = json.loads(Path(dst, "manifest.json").read_bytes())
    assert body["version"] == FORMAT_VERSION and body["scale"] == SCALE
    assert body["num_records"] == len(want) == sum(s["records"] for s in body["shards"])
    assert body["hr_shapes"] == {f"{CROP}x{CROP}": len(want)}
    assert len(manifest.shards) > 3
    assert all(s.bytes <= 0.5 * 2**20 for s in manifest.shards)
    assert sorted(os.listdir(dst)) == ["manifest.json"] + [s.name for s in manifest.shards]  # no temp files


def upload(local: str, bucket_url: str, storage_options: dict) -> str:
    url = join(bucket_url, "div2k")
    s3fs.S3FileSystem(**storage_options).put(local, url, recursive=True)
    return url


def test_pack_s3_to_s3_resumes_after_a_failure(sample_data, tmp_path, s3_bucket, caplog, capsys):
    bucket, opts = s3_bucket
    src = upload(sample_data.train_url, bucket, opts)
    dst = join(bucket, "shards")
    fs = s3fs.S3FileSystem(**opts)
    bad = join(src, "DIV2K_train_HR", "0006.png")
    good_png = fs.cat_file(bad)
    fs.pipe_file(bad, good_png[:200])  # truncated: the first run dies on image 6
    args = [
        src,
        dst,
        "--scale",
        str(SCALE),
        "--crop",
        str(CROP),
        "--step",
        str(STEP),
        "--shard-size-mb",
        "0.4",
        "--no-progress",
        "--workers",
        "1",
        "--src-storage-options",
        json.dumps(opts),
        "--dst-storage-options",
        json.dumps(opts),
    ]
    assert main(args) == 2  # one line naming the image, no traceback
    err = capsys.readouterr().err
    assert "0006.png" in err and "Traceback" not in err
    assert not fs.exists(join(dst, "manifest.json"))  # a manifest only exists for a complete pack
    first = sorted(p for p in fs.ls(dst) if p.endswith(".bin"))
    assert len(first) >= 2
    stamps = {p: fs.info(p)["LastModified"] for p in first}
    fs.pipe_file(bad, good_png)
    fs.pipe_file(first[-1], b"garbage")  # a damaged shard is re-packed, the others are kept
    caplog.set_level(logging.WARNING)
    assert main(args) == 0
    assert f"resuming: {len(first) - 1} shard(s)" in caplog.text
    for p in first[:-1]:
        assert fs.info(p)["LastModified"] == stamps[p]
    got, want = read_all_records(dst, opts), expected_crops(sample_data.train_url)
    assert [n for n, _, _ in got] == [n for n, _, _ in want]
    assert all(
        np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2]) for a, b in zip(got, want, strict=True)
    )
    assert not fs.exists(join(dst, "_pack_progress.json"))


def test_parallel_pack_resumed_is_the_sequential_pack(sample_data, tmp_path):
    """Two decoding processes, interrupted by a bad image and resumed: the shards of one process."""
    fresh, resumed = str(tmp_path / "fresh"), str(tmp_path / "resumed")
    src = str(tmp_path / "src")
    shutil.copytree(sample_data.train_url, src)
    pack(src, fresh, SCALE, CROP, STEP, shard_size_mb=0.4, progress=False)
    victim = Path(src, "DIV2K_train_LR_bicubic", f"X{SCALE}", "0004x4.png")
    data = victim.read_bytes()
    victim.write_bytes(data[:100])
    with pytest.raises(ValueError, match="0004x4.png"):
        pack(src, resumed, SCALE, CROP, STEP, shard_size_mb=0.4, progress=False, workers=2)
    assert Path(resumed, "_pack_progress.json").exists() and not Path(resumed, "manifest.json").exists()
    victim.write_bytes(data)
    pack(src, resumed, SCALE, CROP, STEP, shard_size_mb=0.4, progress=False, workers=2)
    a, b = load_manifest(fresh), load_manifest(resumed)
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    assert sorted(os.listdir(resumed)) == ["manifest.json"] + [s.name for s in b.shards]


@pytest.mark.parametrize("flag,value", [("--crop", 90), ("--step", 50), ("--crop", 0)])
def test_pack_rejects_crops_off_the_lr_grid(sample_data, tmp_path, flag, value):
    kwargs = {"crop": CROP, "step": STEP, flag[2:]: value}
    with pytest.raises(ValueError, match=flag):
        pack(sample_data.train_url, str(tmp_path / "x"), SCALE, progress=False, **kwargs)


def test_repacking_over_a_pack_of_another_version_needs_overwrite(sample_data, tmp_path):
    dst = tmp_path / "shards"
    pack(sample_data.train_url, str(dst), SCALE, 192, 192, shard_size_mb=1, progress=False)
    body = json.loads((dst / "manifest.json").read_bytes())
    (dst / "manifest.json").write_text(json.dumps({**body, "version": 99}))
    with pytest.raises(ValueError, match=r"manifest\.json unreadable.*--overwrite"):
        pack(sample_data.train_url, str(dst), SCALE, 192, 192, shard_size_mb=1, progress=False)
    pack(sample_data.train_url, str(dst), SCALE, 192, 192, shard_size_mb=1, progress=False, overwrite=True)
    assert load_manifest(str(dst), SCALE).num_records == body["num_records"]
