"""imresize throughput: a 16x3x48x48 batch downscaled x1/4 (a DUKD zoom-out step) on this machine.

Prints images/s for the batched call and, as a same-run baseline, for a Python loop calling the
same function once per image, and their ratio.

    python benchmarks/imresize_speed.py [--json] [--device cpu] [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from dukd_ray.image.resize import imresize


def images_per_second(fn: Callable[[], object], n_images: int, repeats: int, device: torch.device) -> float:
    """Best-of-3 throughput over `repeats` calls (after a warm-up that fills the weight cache)."""
    fn()
    best = float("inf")
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return n_images * repeats / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=200)
    args = p.parse_args()
    device = torch.device(args.device)
    batch = torch.rand(16, 3, 48, 48, generator=torch.Generator().manual_seed(0)).to(device)
    batched = images_per_second(lambda: imresize(batch, 1 / 4), len(batch), args.repeats, device)
    looped = images_per_second(
        lambda: [imresize(img, 1 / 4) for img in batch], len(batch), args.repeats, device
    )
    result = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "batch": list(batch.shape),
        "scale": 0.25,
        "batched_images_per_s": round(batched),
        "per_image_loop_images_per_s": round(looped),
        "speedup": round(batched / looped, 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"imresize x1/4 of {tuple(batch.shape)} on {device} ({result['torch_threads']} threads): "
            f"batched {batched:,.0f} images/s, per-image loop {looped:,.0f} images/s, "
            f"ratio {batched / looped:.1f}x"
        )


if __name__ == "__main__":
    main()
