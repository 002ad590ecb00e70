"""Training-data throughput per loader process: BasicSR-style PNG decoding vs our shards over S3.

    python benchmarks/data_throughput.py [--json] [--images 6] [--png-batches 8] [--shard-epochs 2]
        [--reuse 4]

(a) `png`: the DIV2K-layout folder read the BasicSR way: every sample decodes a ~2K HR PNG and
    its LR PNG, then crops a random aligned patch.
(b) `shards`: the same images packed (480 px crops, step 240, BasicSR's extract_subimages
    settings) into shards on a moto S3 server this script starts on 127.0.0.1 (in its own
    process, so it does not share the loader's CPU time), streamed back.
Both run through `build_train_stream` with num_workers=0, so the figure is what one DataLoader
worker process delivers (batch 16, LR patch 48, x4, with augmentation and float conversion),
timed from the first request, so filling the shuffle buffer is included. Shards are timed over
whole epochs (every crop read once per epoch).

(c) `epochs`: the shard path per epoch, three ways: `default`, `cache` (a node-local shard cache,
    `data.cache_dir`) and `patches_per_record_K` (K patches cut from every fetched crop): patches/s
    and the bytes and requests fetched from the store per patch, in epoch 1 and in epoch 2.

The embedded sample photographs are ~500 px; to get DIV2K's work per sample each HR image is a
DIV2K-size (2040 x 1356) mosaic of one photograph and its mirror images (`samples.write_div2k_like`)
and its LR is made with our MATLAB-compatible bicubic.
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

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")  # fake credentials for the local moto server only
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from dukd_ray.data import build_train_stream  # noqa: E402
from dukd_ray.data.pack import pack  # noqa: E402
from dukd_ray.data.samples import DIV2K_HR_SIZE, write_div2k_like  # noqa: E402

SCALE, PATCH, BATCH = 4, 48, 16


def make_div2k_like(root: str, n_images: int) -> tuple[int, int]:
    write_div2k_like(os.path.join(root, "div2k"), n_images, SCALE)
    return DIV2K_HR_SIZE


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


def per_epoch(url: str, storage_options: dict, epochs: int, **options: object) -> list[dict[str, float]]:
    """Per epoch of one loader process: patches/s, and bytes and requests fetched from the store per patch.

    `options` go to `build_train_stream` (cache_dir, cache_bytes, patches_per_record). Epoch
    boundaries are batch counts: a reader that starts on its next epoch early counts it in this one.
    """
    stream = build_train_stream(
        url, SCALE, PATCH, BATCH, num_workers=0, storage_options=storage_options, **options
    )
    stats = getattr(stream.source, "source", stream.source).fetcher.stats
    it, out = iter(stream), []
    for _ in range(epochs):
        requests, fetched, start = stats.requests, stats.bytes, time.perf_counter()
        for _ in range(stream.batches_per_epoch):
            next(it)
        patches = stream.batches_per_epoch * BATCH
        out.append(
            {
                "patches_per_s": round(patches / (time.perf_counter() - start), 1),
                "bytes_per_patch": round((stats.bytes - fetched) / patches),
                "requests_per_patch": round((stats.requests - requests) / patches, 4),
            }
        )
    it.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--png-batches", type=int, default=8, help="batches timed on the PNG path")
    p.add_argument("--shard-epochs", type=int, default=2, help="epochs timed on the shard path")
    p.add_argument("--reuse", type=int, default=4, help="patches per record of the reuse variant")
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
        variants = {
            "default": {},
            "cache": {"cache_dir": os.path.join(tmp, "cache"), "cache_bytes": 2**40},
            f"patches_per_record_{a.reuse}": {"patches_per_record": a.reuse},
        }
        epochs = {name: per_epoch(prefix, opts, 2, **kw) for name, kw in variants.items()}
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
        # per variant, [epoch 1, epoch 2]: what one loader process delivers and fetches from the store
        "epochs": epochs,
        "shard_bytes": sum(s.bytes for s in manifest.shards),
    }
    if a.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")


if __name__ == "__main__":
    main()
