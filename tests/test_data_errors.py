"""Bad input gives a clear error naming the file (or shard, or URL without secrets); nothing is dropped."""

from __future__ import annotations

import io
import itertools
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import s3fs
from PIL import Image

from dukd_ray.data import build_train_stream
from dukd_ray.data.pack import pack
from dukd_ray.data.shards import ShardFormatError, load_manifest
from dukd_ray.data.sources import list_div2k_pairs
from dukd_ray.data.stream import PatchError
from dukd_ray.image import io as imageio
from dukd_ray.image.io import ImageDecodeError
from dukd_ray.image.pairs import PairError
from dukd_ray.storage import StorageError

SCALE = 4


@pytest.fixture
def div2k(sample_data, tmp_path) -> Path:
    """A private copy of the sample DIV2K-layout set that a test may damage."""
    root = tmp_path / "div2k"
    shutil.copytree(sample_data.train_url, root)
    return root


@pytest.fixture(scope="module")
def packed_local(sample_data, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("packed") / "shards"
    pack(sample_data.train_url, str(dst), SCALE, crop=192, step=192, shard_size_mb=1, progress=False)
    return dst


def lr_path(root: Path, stem: str) -> Path:
    return root / "DIV2K_train_LR_bicubic" / f"X{SCALE}" / f"{stem}x{SCALE}.png"


def hr_path(root: Path, stem: str) -> Path:
    return root / "DIV2K_train_HR" / f"{stem}.png"


def one_epoch(url: str, storage_options=None, patch: int = 16) -> None:
    stream = build_train_stream(
        url, SCALE, patch, batch_size=4, num_workers=0, storage_options=storage_options
    )
    for _ in itertools.islice(iter(stream), stream.batches_per_epoch):
        pass


def test_truncated_png_is_named_by_the_packer_and_the_stream(div2k, tmp_path):
    bad = lr_path(div2k, "0003")
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(ImageDecodeError, match="0003x4.png.*truncated"):
        pack(str(div2k), str(tmp_path / "out"), SCALE, crop=192, step=192, progress=False)
    stream = build_train_stream(str(div2k), SCALE, 16, batch_size=4, num_workers=1)
    with pytest.raises(ImageDecodeError, match="0003x4.png"):  # raised in a loader worker, re-raised here
        list(itertools.islice(iter(stream), stream.batches_per_epoch))


def test_hr_without_lr(div2k):
    lr_path(div2k, "0005").unlink()
    with pytest.raises(PairError, match=r"HR image .*0005\.png has no LR image 0005x4"):
        build_train_stream(str(div2k), SCALE)


def test_lr_without_hr(div2k):
    hr_path(div2k, "0002").unlink()
    with pytest.raises(PairError, match=r"LR image .*0002x4\.png has no HR image"):
        build_train_stream(str(div2k), SCALE)


def test_sizes_that_disagree_with_the_scale(div2k, tmp_path):
    lr = lr_path(div2k, "0004")
    img = Image.open(lr)
    img.resize((img.width - 3, img.height)).save(lr)
    with pytest.raises(PairError, match=r"disagree with scale 4: HR .*0004\.png .* LR .*0004x4\.png"):
        pack(str(div2k), str(tmp_path / "out"), SCALE, crop=192, step=192, progress=False)


def test_grayscale_and_rgba_are_converted_and_said_once(div2k, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(imageio, "_converted_modes_said", set())
    for stem in ("0001", "0002"):  # both images of 0001 and 0002 grayscale, 0003 RGBA
        for path in (hr_path(div2k, stem), lr_path(div2k, stem)):
            Image.open(path).convert("L").save(path)
    for path in (hr_path(div2k, "0003"), lr_path(div2k, "0003")):
        Image.open(path).convert("RGBA").save(path)
    caplog.set_level(logging.WARNING, logger="dukd_ray.image.io")
    dst = tmp_path / "out"
    pack(str(div2k), str(dst), SCALE, crop=192, step=192, progress=False)
    said = [r.getMessage() for r in caplog.records if "converting" in r.getMessage()]
    assert len(said) == 2 and any("converting L " in m for m in said) and any("RGBA" in m for m in said)
    assert load_manifest(str(dst), SCALE).num_records == 72  # nothing dropped
    stream = build_train_stream(str(dst), SCALE, 16, batch_size=4, num_workers=0)
    assert next(iter(stream))["hr"].shape[1] == 3


def test_16_bit_grayscale_keeps_its_brightness():
    levels = np.array([[0, 257, 1028, 65535], [128, 129, 384, 385]], dtype=np.uint16)
    img = imageio.decode_image(_png16(levels), "gray16.png")
    assert img.shape == (2, 4, 3) and (img == img[..., :1]).all()
    assert img[..., 0].tolist() == [[0, 1, 4, 255], [0, 1, 1, 1]]  # round(v * 255 / 65535)
    dark = imageio.decode_image(_png16(levels // 64), "dark.png")  # at most 1023: stays dark
    assert dark.max() == 4


def test_hidden_files_are_not_images(div2k):
    want = [p.name for p in list_div2k_pairs(str(div2k), SCALE)]
    for path in (hr_path(div2k, "0001"), lr_path(div2k, "0001")):  # macOS resource forks beside the images
        (path.parent / f"._{path.name}").write_bytes(b"\x00\x05\x16\x07 not a png")
    assert [p.name for p in list_div2k_pairs(str(div2k), SCALE)] == want


def _png16(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_missing_and_empty_prefixes(tmp_path, s3_bucket):
    bucket, opts = s3_bucket
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        build_train_stream(str(tmp_path / "nothing-here"), SCALE)
    with pytest.raises(FileNotFoundError, match=bucket):
        build_train_stream(bucket, SCALE, storage_options=opts)
    (tmp_path / "empty" / "DIV2K_train_HR").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images under .*DIV2K_train_HR"):
        build_train_stream(str(tmp_path / "empty"), SCALE)


def upload(local: Path, s3_bucket) -> tuple[str, dict, s3fs.S3FileSystem]:
    bucket, opts = s3_bucket
    fs = s3fs.S3FileSystem(**opts)
    url = f"{bucket}/shards"
    fs.put(str(local), url, recursive=True)
    return url, opts, fs


def test_truncated_shard_is_named(packed_local, s3_bucket):
    url, opts, fs = upload(packed_local, s3_bucket)
    shard = f"{url}/shard-00002.bin"
    fs.pipe_file(shard, fs.cat_file(shard)[:-10])
    with pytest.raises(ShardFormatError, match=r"shard-00002\.bin is \d+ bytes but the manifest says"):
        one_epoch(url, opts)


def test_shard_with_changed_bytes_is_named(packed_local, s3_bucket):
    url, opts, fs = upload(packed_local, s3_bucket)
    shard = f"{url}/shard-00001.bin"
    data = bytearray(fs.cat_file(shard))
    data[-5000] ^= 0xFF  # same size, one payload byte different: sha256 and the record checksum disagree
    fs.pipe_file(shard, bytes(data))
    with pytest.raises(ShardFormatError, match=r"shard .*shard-00001\.bin fails its checksum"):
        one_epoch(url, opts)


def test_shard_with_changed_header_is_named(packed_local, s3_bucket):
    url, opts, fs = upload(packed_local, s3_bucket)
    shard = f"{url}/shard-00004.bin"
    data = fs.cat_file(shard).replace(b'"name": "', b'"name": "X', 1)[:-1]  # same size, other header
    fs.pipe_file(shard, data)
    with pytest.raises(ShardFormatError, match=r"shard-00004\.bin: header sha256 does not match"):
        one_epoch(url, opts)


def test_manifest_of_another_version_or_scale(packed_local, tmp_path):
    dst = tmp_path / "shards"
    shutil.copytree(packed_local, dst)
    with pytest.raises(ShardFormatError, match=r"manifest\.json holds x4 data but scale 2"):
        build_train_stream(str(dst), 2)
    body = json.loads((dst / "manifest.json").read_bytes())
    (dst / "manifest.json").write_text(json.dumps({**body, "version": 99}))
    with pytest.raises(ShardFormatError, match=r"manifest\.json has format version 99"):
        build_train_stream(str(dst), SCALE)


def test_patch_larger_than_the_crops_names_the_record(packed_local):
    with pytest.raises(
        PatchError, match=r"LR of '\d{4}_s\d{3} in .*shard-\d{5}\.bin' is 48x48, smaller than .* 64"
    ):
        one_epoch(str(packed_local), patch=64)


def test_unreachable_storage_names_the_url_without_secrets():
    opts = {
        "endpoint_url": "http://127.0.0.1:9",
        "key": "AKIDEXAMPLE",
        "secret": "hunter2-secret",
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    with pytest.raises(StorageError, match=r"s3://no-such-bucket/prefix") as info:
        build_train_stream("s3://no-such-bucket/prefix", SCALE, storage_options=opts)
    assert "hunter2" not in str(info.value) and "AKIDEXAMPLE" not in str(info.value)


def test_refused_credentials_name_the_url(packed_local, s3_bucket):
    url, opts, _ = upload(packed_local, s3_bucket)
    with pytest.raises(StorageError, match=f"access denied to {url}"):
        build_train_stream(url, SCALE, storage_options={**opts, "anon": True})
