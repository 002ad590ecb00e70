"""The packer on a DIV2K-shaped set: images/s sequential vs parallel, bytes per image, DIV2K x4's time.

    python benchmarks/pack_div2k.py [--json] [--images 40] [--workers 1,2]

DIV2K's train set is 800 HR images of about 2040 x 1356 with their x4 LR images; no download is
possible here, so `--images` DIV2K-size images (2040 x 1356, mosaics of the embedded photographs,
`samples.write_div2k_like`; 40 = 5 % of DIV2K) are built, and the figures for 800 images are
extrapolated linearly (the packer's work is per image and the shards are written one after the
other, so time and bytes are proportional to the image count). Each `--workers` value packs the
same folder into a fresh local prefix (x4, 480 px crops, step 240, 256 MB shards) and must produce
the same shards. Storage: the PNG bytes of HR + LR per image against the shard bytes per image.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from dukd_ray.data.pack import pack
from dukd_ray.data.samples import DIV2K_HR_SIZE, write_div2k_like
from dukd_ray.data.sources import list_div2k_pairs

SCALE, DIV2K_IMAGES = 4, 800


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--workers", default="1,2", help="decoding processes to compare, comma-separated")
    a = p.parse_args()
    counts = [int(w) for w in a.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "div2k")
        start = time.perf_counter()
        write_div2k_like(root, a.images, SCALE)
        build_s = time.perf_counter() - start
        png_bytes = sum(
            os.path.getsize(p.hr_url) + os.path.getsize(p.lr_url) for p in list_div2k_pairs(root, SCALE)
        )
        runs, digests = {}, set()
        for workers in counts:
            start = time.perf_counter()
            manifest = pack(
                root, os.path.join(tmp, f"shards-{workers}"), SCALE, progress=False, workers=workers
            )
            seconds = time.perf_counter() - start
            digests.add(tuple(s.sha256 for s in manifest.shards))
            runs[workers] = {
                "seconds": round(seconds, 1),
                "images_per_s": round(a.images / seconds, 2),
                "div2k_x4_minutes": round(DIV2K_IMAGES / (a.images / seconds) / 60, 1),
            }
        shard_bytes = sum(s.bytes for s in manifest.shards)
    base = runs[counts[0]]["seconds"]
    result = {
        "images": a.images,
        "image_hr_size": list(DIV2K_HR_SIZE),
        "fraction_of_div2k": a.images / DIV2K_IMAGES,
        "build_seconds": round(build_s, 1),
        "cpus": os.cpu_count(),
        "runs_by_workers": runs,
        "speedup": {w: round(base / r["seconds"], 2) for w, r in runs.items()},
        "same_shards": len(digests) == 1,
        "crops": manifest.num_records,
        "crops_per_image": manifest.num_records / a.images,
        "png_bytes_per_image": round(png_bytes / a.images),
        "shard_bytes_per_image": round(shard_bytes / a.images),
        "shard_over_png": round(shard_bytes / png_bytes, 2),
        "div2k_x4_shard_gib": round(shard_bytes / a.images * DIV2K_IMAGES / 2**30, 2),
        "div2k_x4_png_gib": round(png_bytes / a.images * DIV2K_IMAGES / 2**30, 2),
    }
    print(json.dumps(result, indent=None if a.json else 1))


if __name__ == "__main__":
    main()
