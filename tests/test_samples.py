"""The embedded sample data: layouts, LR = MATLAB bicubic of HR, disjoint sets, idempotence, S3."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from dukd_ray.data.samples import (
    MAX_SIDE,
    TEST_PHOTOS,
    TRAIN_PHOTOS,
    default_sample_data,
    write_sample_data,
)
from dukd_ray.image.io import read_image
from dukd_ray.image.resize import imresize


def _files(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_train_set_has_div2k_layout(sample_data):
    hr_dir = os.path.join(sample_data.train_url, "DIV2K_train_HR")
    stems = sorted(f[:-4] for f in os.listdir(hr_dir))
    assert stems == [f"{i:04d}" for i in range(1, len(TRAIN_PHOTOS) + 1)]
    for stem in stems:
        hr = read_image(os.path.join(hr_dir, f"{stem}.png"))
        assert hr.shape[0] % 12 == 0 and hr.shape[1] % 12 == 0 and max(hr.shape[:2]) <= MAX_SIDE
        for s in (2, 3, 4):
            lr = read_image(
                os.path.join(sample_data.train_url, "DIV2K_train_LR_bicubic", f"X{s}", f"{stem}x{s}.png")
            )
            assert lr.shape == (hr.shape[0] // s, hr.shape[1] // s, 3)


def test_benchmark_set_has_edsr_layout_and_matlab_bicubic_lr(sample_data):
    assert sample_data.sets == ("Sample",)
    set_dir = os.path.join(sample_data.benchmark_url, "Sample")
    names = sorted(f[:-4] for f in os.listdir(os.path.join(set_dir, "HR")))
    assert names == sorted(TEST_PHOTOS) and len(names) == 5
    colour = 0
    for name in names:
        hr = read_image(os.path.join(set_dir, "HR", f"{name}.png"))
        colour += int(not (np.array_equal(hr[..., 0], hr[..., 1]) and np.array_equal(hr[..., 1], hr[..., 2])))
        hr_f = torch.from_numpy(hr.copy()).permute(2, 0, 1).double() / 255
        for s in (2, 3, 4):
            lr = read_image(os.path.join(set_dir, "LR_bicubic", f"X{s}", f"{name}x{s}.png"))
            expected = (
                (imresize(hr_f, 1 / s).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            )
            np.testing.assert_array_equal(lr, expected)
    assert colour >= 3  # real colour photographs, not just grey ones


def test_train_and_test_photographs_are_disjoint():
    train_sources = {p.source for p in TRAIN_PHOTOS}
    assert not train_sources & {p.source for p in TEST_PHOTOS.values()}
    assert len(train_sources) == len(TRAIN_PHOTOS)


def test_rebuild_is_skipped_when_complete_and_redone_when_not(sample_data, tmp_path):
    root = os.path.dirname(sample_data.train_url)
    before = {f: os.stat(os.path.join(root, f)).st_mtime_ns for f in _files(root)}
    assert write_sample_data(root) == sample_data
    assert {f: os.stat(os.path.join(root, f)).st_mtime_ns for f in _files(root)} == before

    partial = tmp_path / "partial"  # as if a first build had been interrupted: no marker, a file missing
    shutil.copytree(root, partial)
    os.remove(partial / "_complete.json")
    os.remove(partial / "benchmark" / "Sample" / "HR" / "coins.png")
    write_sample_data(str(partial))
    assert _files(str(partial)) == _files(root)


def test_default_sample_data_honours_env(sample_data, monkeypatch):
    monkeypatch.setenv("DUKD_SAMPLES_DIR", os.path.dirname(sample_data.train_url))
    assert default_sample_data() == sample_data


def test_bad_scale_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="scales must divide 12"):
        write_sample_data(str(tmp_path), scales=(5,))


def test_writes_to_s3(s3_bucket):
    bucket, opts = s3_bucket
    data = write_sample_data(f"{bucket}/samples", scales=(4,), storage_options=opts)
    assert data.benchmark_url == f"{bucket}/samples/benchmark"
    lr = read_image(f"{data.benchmark_url}/Sample/LR_bicubic/X4/chelseax4.png", opts)
    hr = read_image(f"{data.benchmark_url}/Sample/HR/chelsea.png", opts)
    assert (lr.shape[0] * 4, lr.shape[1] * 4) == hr.shape[:2]
