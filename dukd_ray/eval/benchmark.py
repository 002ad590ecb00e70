"""Benchmark sets in EDSR's `benchmark` layout, from any fsspec URL, and PSNR/SSIM over them.

Layout: `<root>/<Set>/HR/<name>.png` and `<root>/<Set>/LR_bicubic/X{s}/<name>x{s}.png`. HR images
are mod-cropped to a multiple of the scale; a pair whose sizes still disagree is an error, not a
silently skewed score. Scores are image-level means over a set (the literature's convention).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dukd_ray.eval.device_metrics import psnr_ssim
from dukd_ray.eval.inference import InferenceOptions, model_device, super_resolve
from dukd_ray.eval.scores import ImageScores, SetScores, set_scores
from dukd_ray.eval.setnames import set_aliases
from dukd_ray.image.convert import quantise, to_float_tensor
from dukd_ray.image.io import is_image_name
from dukd_ray.image.pairs import read_pair
from dukd_ray.image.resize import imresize
from dukd_ray.storage import join, list_folder, redact_url


class BenchmarkDataError(FileNotFoundError):
    """A benchmark set, its HR images or an LR file is missing; the message names it."""


@dataclass(frozen=True)
class Pair:
    """One test image: `lr` and `hr` RGB uint8 HWC, `hr` mod-cropped so that hr = scale x lr in size."""

    name: str
    lr: np.ndarray
    hr: np.ndarray


def _list_dirs(url: str, storage_options: dict[str, Any] | None) -> list[str]:
    return list_folder(url, storage_options, folders=True, missing_ok=True)


def list_sets(root_url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The set folders under a benchmark root (those with an `HR` folder)."""
    return [
        d
        for d in _list_dirs(root_url, storage_options)
        if "HR" in _list_dirs(join(root_url, d), storage_options)
    ]


def _resolve_set(root_url: str, name: str, storage_options: dict[str, Any] | None) -> str:
    """The folder name of set `name` under the root, trying known aliases; error lists what exists."""
    available = _list_dirs(root_url, storage_options)
    for candidate in set_aliases(name):
        if candidate in available:
            return candidate
    raise BenchmarkDataError(
        f"benchmark set {name!r} not found under {redact_url(root_url)} "
        f"(sets there: {', '.join(available) or 'none'})"
    )


def load_pair(
    set_url: str, name: str, hr_url: str, scale: int, storage_options: dict[str, Any] | None
) -> Pair:
    """Read one LR/HR pair, mod-crop the HR and check HR = scale x LR (errors name both files)."""
    lr_url = join(set_url, "LR_bicubic", f"X{scale}", f"{name}x{scale}.png")
    try:
        hr, lr = read_pair(hr_url, lr_url, scale, storage_options)
    except FileNotFoundError as e:  # says which of the two is missing
        raise BenchmarkDataError(str(e)) from None
    return Pair(name, np.ascontiguousarray(lr), np.ascontiguousarray(hr))


def load_benchmark_sets(
    root_url: str, set_names: Sequence[str], scale: int, storage_options: dict[str, Any] | None = None
) -> dict[str, list[Pair]]:
    """Load the named sets (keys as requested, e.g. `B100` even if the folder is `BSDS100`)."""
    sets: dict[str, list[Pair]] = {}
    for name in set_names:
        set_url = join(root_url, _resolve_set(root_url, name, storage_options))
        hr_dir = join(set_url, "HR")
        images = [f for f in list_folder(hr_dir, storage_options, missing_ok=True) if is_image_name(f)]
        if not images:
            raise BenchmarkDataError(f"no HR images in {redact_url(hr_dir)}")
        sets[name] = [
            load_pair(set_url, img.rsplit(".", 1)[0], join(hr_dir, img), scale, storage_options)
            for img in images
        ]
    return sets


def _score(sr: torch.Tensor, pair: Pair, scale: int) -> tuple[float, float, np.ndarray]:
    """(PSNR-Y, SSIM-Y, SR as uint8 HWC) of a uint8 (3, H, W) SR image, scored on its own device."""
    shape = (*sr.shape[1:], sr.shape[0])
    if shape != pair.hr.shape:
        raise ValueError(
            f"{pair.name}: output is {shape}, HR is {pair.hr.shape} (wrong scale for this model?)"
        )
    hr = torch.tensor(pair.hr, device=sr.device).permute(2, 0, 1)  # a copy: Ray hands read-only arrays
    return (*psnr_ssim(sr, hr, crop_border=scale), sr.permute(1, 2, 0).cpu().contiguous().numpy())


def evaluate_pair(
    model: nn.Module,
    pair: Pair,
    scale: int,
    options: InferenceOptions = InferenceOptions(),
) -> tuple[float, float, np.ndarray]:
    """Super-resolve one pair: (PSNR-Y, SSIM-Y, SR as RGB uint8 HWC), border `scale` cropped.

    The LR goes to the model's device; the model stays where the caller put it (once, not per image).
    The output is quantised and scored there (`device_metrics`): only the uint8 image comes back.
    """
    lr = to_float_tensor(pair.lr, device=model_device(model))
    out = super_resolve(model, lr, options, scale=scale)
    return _score(quantise(out[0]), pair, scale)


def bicubic_pair(pair: Pair, scale: int) -> tuple[float, float, np.ndarray]:
    """The bicubic baseline for one pair: LR upscaled with MATLAB bicubic, scored like a model."""
    return _score(quantise(imresize(to_float_tensor(pair.lr), scale)[0]), pair, scale)


def _evaluate(
    sets: dict[str, list[Pair]],
    one: Callable[[Pair], tuple[float, float, np.ndarray]],
    progress: bool,
    desc: str,
) -> dict[str, SetScores]:
    results: dict[str, SetScores] = {}
    bar = tqdm(
        total=sum(len(p) for p in sets.values()), desc=desc, unit="img", disable=not progress, leave=False
    )
    for set_name, pairs in sets.items():
        images: dict[str, ImageScores] = {}
        for pair in pairs:
            bar.set_postfix_str(f"{set_name}/{pair.name}")
            p, s, _ = one(pair)
            images[pair.name] = {"psnr": p, "ssim": s}
            bar.update()
        results[set_name] = set_scores(images)
    bar.close()
    return results


def evaluate_sets(
    model: nn.Module,
    sets: dict[str, list[Pair]],
    scale: int,
    options: InferenceOptions = InferenceOptions(),
    progress: bool = False,
) -> dict[str, SetScores]:
    """PSNR/SSIM (Y channel) of `model`, on its device, on every set: per-image scores and set means."""

    def one(pair: Pair) -> tuple[float, float, np.ndarray]:
        return evaluate_pair(model, pair, scale, options)

    return _evaluate(sets, one, progress, "eval")


def evaluate_bicubic(sets: dict[str, list[Pair]], scale: int, progress: bool = False) -> dict[str, SetScores]:
    """The same scores for MATLAB-bicubic upscaling of the LR images (the baseline row of SR tables)."""
    return _evaluate(sets, lambda pair: bicubic_pair(pair, scale), progress, "bicubic")
