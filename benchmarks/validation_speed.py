"""Validation cost of one Urban100-size image: scores in torch on the model's device vs the numpy reference.

The image is a 1024x768 crop of scikit-image's retina photograph (Urban100's HR images are about
1024x768), its LR made with the project's MATLAB bicubic. `before` is how validation scored an image
until the torch path: the float output copied to the host as uint8 (`to_uint8_hwc`), then numpy
`metrics.psnr` and `metrics.ssim`. `after` is `eval.benchmark.evaluate_pair` as validation runs it now
(quantise, PSNR and SSIM on the model's device, `eval/device_metrics`). Both are timed on the same
model output (metrics alone) and with the forward (the whole image), alternating, median of `--repeats`;
`ratio` = after / before; the scores of both must agree (printed).

    python benchmarks/validation_speed.py [--json] [--device cuda] [--preset student] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from dukd_ray.data.samples import bicubic_lr
from dukd_ray.eval.benchmark import Pair, evaluate_pair
from dukd_ray.eval.device_metrics import psnr_ssim
from dukd_ray.eval.inference import super_resolve
from dukd_ray.eval.metrics import psnr, ssim
from dukd_ray.image.convert import quantise, to_float_tensor, to_uint8_hwc
from dukd_ray.models import build_arch

SCALE = 4
URBAN100_IMAGES = 100


def urban100_size_pair() -> Pair:
    from skimage import data

    hr = np.ascontiguousarray(data.retina()[300:1068, 200:1224, :3])  # 768 x 1024
    return Pair("retina_1024x768", bicubic_lr(hr, SCALE), hr)


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    value = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, value


def run(args: argparse.Namespace) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_arch("edsr", SCALE, preset=args.preset).to(device).eval()
    pair = urban100_size_pair()
    lr = to_float_tensor(pair.lr, device=device)
    hr = torch.from_numpy(pair.hr).to(device).permute(2, 0, 1)

    def metrics_before(out: torch.Tensor) -> tuple[float, float]:
        sr = to_uint8_hwc(out[0])
        return psnr(sr, pair.hr, SCALE), ssim(sr, pair.hr, SCALE)

    def metrics_after(out: torch.Tensor) -> tuple[float, float]:
        return psnr_ssim(quantise(out[0]), hr, SCALE)

    def image_before() -> tuple[float, float]:
        return metrics_before(super_resolve(model, lr, scale=SCALE))

    def image_after() -> tuple[float, float]:
        return evaluate_pair(model, pair, SCALE)[:2]

    out = super_resolve(model, lr, scale=SCALE)
    cases = {
        "metrics_before": lambda: metrics_before(out),
        "metrics_after": lambda: metrics_after(out),
        "image_before": image_before,
        "image_after": image_after,
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    scores = {}
    for i in range(args.repeats + 1):  # the first round warms up kernels and allocators
        for name, fn in cases.items():
            seconds, scores[name] = _timed(fn, device)
            if i:
                times[name].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0],
        "image": f"{pair.name}: HR {pair.hr.shape[1]}x{pair.hr.shape[0]}, x{SCALE}, edsr {args.preset}",
        "repeats": args.repeats,
        "seconds": med,
        "forward_s": med["image_after"] - med["metrics_after"],
        "ratio_metrics": med["metrics_after"] / med["metrics_before"],
        "ratio_image": med["image_after"] / med["image_before"],
        "urban100_validation_s": {
            "before": URBAN100_IMAGES * med["image_before"],
            "after": URBAN100_IMAGES * med["image_after"],
        },
        "scores_before": scores["image_before"],
        "scores_after": scores["image_after"],
        "max_abs_diff": {
            "psnr": abs(scores["image_after"][0] - scores["image_before"][0]),
            "ssim": abs(scores["image_after"][1] - scores["image_before"][1]),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="tiny_student", help="EDSR preset of the model validated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    s = result["seconds"]
    print(f"{result['image']} on {result['device']} ({result['torch_threads']} threads)")
    print(f"metrics only: before {s['metrics_before']:.3f} s, after {s['metrics_after']:.3f} s, ", end="")
    print(f"ratio {result['ratio_metrics']:.3f}")
    print(f"whole image:  before {s['image_before']:.3f} s, after {s['image_after']:.3f} s, ", end="")
    print(f"ratio {result['ratio_image']:.3f} (forward {result['forward_s']:.3f} s)")
    u = result["urban100_validation_s"]
    print(f"100 such images: {u['before']:.1f} s -> {u['after']:.1f} s; score diff {result['max_abs_diff']}")


if __name__ == "__main__":
    main()
