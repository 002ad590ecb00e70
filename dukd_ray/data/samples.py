"""Embedded sample data: a DIV2K-layout train set and a benchmark-layout test set, no download.

Built from the real photographs that ship with scikit-image, with LR images made by our
MATLAB-compatible bicubic (as DIV2K and the benchmark sets were), so the quickstart, the tests and
a first training run all work offline. Train and test photographs are disjoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dukd_ray.image.convert import to_float_tensor, to_uint8_hwc
from dukd_ray.image.io import write_png
from dukd_ray.image.resize import imresize
from dukd_ray.storage import exists, join, read_bytes, write_bytes_atomic

SET_NAME = "Sample"
MAX_SIDE = 512  # keeps the whole data set a few MB and its build a few seconds
MOD = 12  # HR sides are multiples of 12, so x2, x3 and x4 LR images all exist
# Bump when the images or their preparation change: an older cache is then rebuilt.
VERSION = 1
_MARKER = "_complete.json"


@dataclass(frozen=True)
class SampleData:
    """Where the sample data lives: `train_url` (DIV2K layout), `benchmark_url` (benchmark layout)."""

    train_url: str
    benchmark_url: str
    sets: tuple[str, ...]


@dataclass(frozen=True)
class Photo:
    """One scikit-image photograph: `skimage.data.<source>()` (item `pick` of a tuple), shrunk `shrink` x."""

    source: str
    pick: int | None = None
    shrink: int = 1

    def load(self) -> np.ndarray:
        """The photograph as RGB uint8, centre-cropped to at most MAX_SIDE and to a multiple of MOD."""
        try:
            from skimage import data
        except ImportError:
            raise ImportError(
                "the embedded sample data needs scikit-image: pip install 'dukd-ray[samples]'"
            ) from None
        img = getattr(data, self.source)()
        if self.pick is not None:
            img = img[self.pick]
        if img.ndim == 2:  # grayscale photographs become 3 equal channels
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = img[:, :, :3]
        if self.shrink > 1:
            img = bicubic_lr(img, self.shrink)
        return _center_crop(img)


# DIV2K-style numbered training photographs and named test photographs (disjoint sources).
TRAIN_PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut"),
    Photo("rocket"),
    Photo("hubble_deep_field"),
    Photo("immunohistochemistry"),
    Photo("retina", shrink=3),
    Photo("brick"),
    Photo("gravel"),
    Photo("moon"),
)
TEST_PHOTOS: dict[str, Photo] = {
    "chelsea": Photo("chelsea"),
    "motorcycle": Photo("stereo_motorcycle", pick=1),
    "coffee": Photo("coffee"),
    "coins": Photo("coins"),
    "camera": Photo("camera"),
}


def _center_crop(img: np.ndarray) -> np.ndarray:
    """Centre crop to at most MAX_SIDE per side, then down to a multiple of MOD."""
    h, w = (min(s, MAX_SIDE) // MOD * MOD for s in img.shape[:2])
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return np.ascontiguousarray(img[top : top + h, left : left + w])


def bicubic_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """The x`scale` LR image of an RGB uint8 HR image, as MATLAB's `imresize(hr, 1/scale)` makes it.

    Resized in float64 and stored back as uint8 the way MATLAB stores a uint8 result (saturate, round).
    """
    return to_uint8_hwc(imresize(to_float_tensor(hr, torch.float64), 1 / scale))


def _read_marker(url: str, storage_options: dict[str, Any] | None) -> set[int]:
    """Scales a previous build of this VERSION completed (empty when none)."""
    try:
        info = json.loads(read_bytes(url, storage_options))
    except (FileNotFoundError, ValueError):
        return set()
    return set(info.get("scales", [])) if info.get("version") == VERSION else set()


def write_sample_data(
    root: str, scales: Sequence[int] = (2, 3, 4), storage_options: dict[str, Any] | None = None
) -> SampleData:
    """Write the sample train set under `root/train` and the `Sample` test set under `root/benchmark`.

    Idempotent: returns at once when a previous build covered `scales`. Every file is written
    atomically and the completion marker last, so an interrupted build is simply redone.
    """
    scales = sorted({int(s) for s in scales})
    if not scales or any(s < 1 or MOD % s for s in scales):
        raise ValueError(f"sample data scales must divide {MOD}, got scales={scales}")
    train_url, bench_url = join(root, "train"), join(root, "benchmark")
    result = SampleData(train_url, bench_url, (SET_NAME,))
    marker = join(root, _MARKER)
    done = _read_marker(marker, storage_options)
    if set(scales) <= done:
        return result

    def write_pair(hr: np.ndarray, hr_url: str, lr_url: Callable[[int], str]) -> None:
        write_png(hr_url, hr, storage_options)
        for s in scales:
            write_png(lr_url(s), bicubic_lr(hr, s), storage_options)

    for i, photo in enumerate(TRAIN_PHOTOS, start=1):
        stem = f"{i:04d}"
        write_pair(
            photo.load(),
            join(train_url, "DIV2K_train_HR", f"{stem}.png"),
            lambda s, stem=stem: join(train_url, "DIV2K_train_LR_bicubic", f"X{s}", f"{stem}x{s}.png"),
        )
    set_url = join(bench_url, SET_NAME)
    for name, photo in TEST_PHOTOS.items():
        write_pair(
            photo.load(),
            join(set_url, "HR", f"{name}.png"),
            lambda s, name=name: join(set_url, "LR_bicubic", f"X{s}", f"{name}x{s}.png"),
        )
    info = {"version": VERSION, "scales": sorted(done | set(scales))}
    write_bytes_atomic(marker, json.dumps(info).encode(), storage_options)
    return result


def default_sample_data() -> SampleData:
    """The sample data, built once under ~/.cache/dukd_ray/samples (or $DUKD_SAMPLES_DIR)."""
    root = os.environ.get("DUKD_SAMPLES_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "dukd_ray", "samples"
    )
    return write_sample_data(root)


DIV2K_HR_SIZE = (1356, 2040)  # (h, w): DIV2K's most common landscape size (its long side is always 2040)


def div2k_like_image(index: int, size: tuple[int, int] = DIV2K_HR_SIZE) -> np.ndarray:
    """A DIV2K-size RGB uint8 image: a mosaic of one training photograph and its mirror images.

    Why: measuring the packer, the loader and validation at DIV2K's sizes needs images of that size,
    and no download is possible. The photograph cycles with `index` and the mosaic is shifted by it,
    so no two images are the same.
    """
    photo = TRAIN_PHOTOS[index % len(TRAIN_PHOTOS)].load()
    row = np.concatenate([photo, photo[:, ::-1]], axis=1)
    tile = np.concatenate([row, row[::-1]], axis=0)
    h, w = size
    shift = (index * 37) % tile.shape[0], (index * 53) % tile.shape[1]
    reps = (-(-(h + shift[0]) // tile.shape[0]), -(-(w + shift[1]) // tile.shape[1]), 1)
    big = np.tile(tile, reps)
    return np.ascontiguousarray(big[shift[0] : shift[0] + h, shift[1] : shift[1] + w])


def write_div2k_like(
    root: str, num_images: int, scale: int = 4, size: tuple[int, int] = DIV2K_HR_SIZE
) -> str:
    """A DIV2K-layout root of `num_images` DIV2K-size HR images and their x`scale` LR images; its URL.

    Idempotent per image: an image already written (HR and LR present) is kept.
    """
    if size[0] % scale or size[1] % scale:
        raise ValueError(f"image size {size} must be a multiple of the scale {scale}")
    for i in range(num_images):
        stem = f"{i + 1:04d}"
        hr_url = join(root, "DIV2K_train_HR", f"{stem}.png")
        lr_url = join(root, "DIV2K_train_LR_bicubic", f"X{scale}", f"{stem}x{scale}.png")
        if exists(hr_url) and exists(lr_url):
            continue
        hr = div2k_like_image(i, size)
        write_png(lr_url, bicubic_lr(hr, scale))
        write_png(hr_url, hr)
    return root
