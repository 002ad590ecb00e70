"""Training-data throughput per loader process: BasicSR-style PNG decoding vs our shards over S3.

    python benchmarks/data_throughput.py [--json] [--images 6] [--png-batches 8] [--shard-epochs 2]

(a) `png`: the DIV2K-layout folder read the BasicSR way: every sample decodes a ~2K HR PNG and
    its LR PNG, then crops a random aligned patch.
(b) `shards`: the same images packed (480 px crops, step 240, BasicSR's extract_subimages
    settings) into shards on a moto S3 server this script starts on 127.0.0.1 (in its own
    process, so it does not share the loader's CPU time), streamed back.
Both run through `build_train_stream` with num_workers=0, so the figure is what one DataLoader
worker process delivers (batch 16, LR patch 48, x4, with augmentation and float conversion),
timed from the first request, so filling the shuffle buffer is included. Shards are timed over
whole epochs (every crop read once per epoch).

The embedded sample photographs are ~500 px; to get DIV2K-like work per sample each HR image is
a 4 x 3 mosaic of one photograph and its flips (2016 x 1512, like DIV2K's 2040 x 1356) and its LR
is made with our MATLAB-compatible bicubic.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

import numpy as np

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")  # fake credentials for the local moto server only
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from dukd_ray.data import build_train_stream  # noqa: E402
from dukd_ray.data.pack import pack  # noqa: E402
from dukd_ray.data.samples import bicubic_lr, write_sample_data  # noqa: E402
from dukd_ray.data.sources import HR_DIR, LR_DIR, list_div2k_pairs  # noqa: E402
from dukd_ray.image.io import read_image, write_png  # noqa: E402

SCALE, PATCH, BATCH = 4, 48, 16


def mosaic(img: np.ndarray) -> np.ndarray:
    """A 3 x 4 tiling of the image and its flips, cut to a multiple of 12 (DIV2K-like size)."""
    row = np.concatenate([img, img[:, ::-1], img, img[:, ::-1]], axis=1)
    tiled = np.concatenate([row, row[::-1], row], axis=0)
    h, w = (s - s % 12 for s in tiled.shape[:2])
    return np.ascontiguousarray(tiled[:h, :w])


def make_div2k_like(root: str, n_images: int) -> tuple[int, int]:
    sample = write_sample_data(os.path.join(root, "samples"), scales=(SCALE,))
    pairs = list_div2k_pairs(sample.train_url, SCALE)
    for i in range(n_images):
        hr = mosaic(read_image(pairs[i % len(pairs)].hr_url))
        lr = bicubic_lr(hr, SCALE)
        write_png(os.path.join(root, "div2k", HR_DIR, f"{i + 1:04d}.png"), hr)
        write_png(os.path.join(root, "div2k", LR_DIR, f"X{SCALE}", f"{i + 1:04d}x{SCALE}.png"), lr)
    return hr.shape[:2]


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server in a child process on a free 127.0.0.1 port; yields its endpoint URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def patches_per_second(
    url: str, batches: int | None, storage_options: dict | None = None, epochs: int = 1
) -> float:
    """Patches/s of one loader process from the first request (`batches`, or else whole `epochs`)."""
    stream = build_train_stream(url, SCALE, PATCH, BATCH, num_workers=0, storage_options=storage_options)
    batches = batches or epochs * stream.batches_per_epoch
    start = time.perf_counter()
    it = iter(stream)
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - start
    it.close()
    return batches * BATCH / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--png-batches", type=int, default=8, help="batches timed on the PNG path")
    p.add_argument("--shard-epochs", type=int, default=2, help="epochs timed on the shard path")
    a = p.parse_args()

    import s3fs

    with moto_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
        opts = {"endpoint_url": endpoint}
        size = make_div2k_like(tmp, a.images)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3fs.S3FileSystem(**opts).mkdir(bucket)
        prefix = f"s3://{bucket}/div2k-x{SCALE}"
        t = time.perf_counter()
        manifest = pack(
            os.path.join(tmp, "div2k"),
            prefix,
            SCALE,
            480,
            240,
            shard_size_mb=64,
            dst_options=opts,
            progress=False,
        )
        pack_s = time.perf_counter() - t
        png = patches_per_second(os.path.join(tmp, "div2k"), a.png_batches)
        shards = patches_per_second(prefix, None, opts, epochs=a.shard_epochs)
    result = {
        "png_patches_per_s": round(png, 1),
        "shards_s3_patches_per_s": round(shards, 1),
        "ratio": round(shards / png, 2),
        "images": a.images,
        "image_hr_size": list(size),
        "crops": manifest.num_records,
        "shards": len(manifest.shards),
        "pack_seconds": round(pack_s, 1),
        "batch_size": BATCH,
        "lr_patch": PATCH,
        "scale": SCALE,
        "png_patches_timed": a.png_batches * BATCH,
        "shard_epochs_timed": a.shard_epochs,
        "loader_processes": 1,
    }
    if a.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")


if __name__ == "__main__":
    main()
