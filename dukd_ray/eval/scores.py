"""What a benchmark set scored: one shape for the eval CLI, validation during training and the quickstart.

Plain dicts (typed), so the scores cross Ray's collectives and JSON state files as they are.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np


class ImageScores(TypedDict):
    psnr: float  # Y channel, dB
    ssim: float  # Y channel


class SetScores(TypedDict):
    """Image-level means over a set (the literature's convention) and the per-image scores they average."""

    psnr: float
    ssim: float
    images: dict[str, ImageScores]  # in the set's order


def set_scores(images: dict[str, ImageScores]) -> SetScores:
    """The set's means of its images' scores; an empty set has no score."""
    if not images:
        raise ValueError("a set without images has no score")
    return {
        "psnr": float(np.mean([v["psnr"] for v in images.values()])),
        "ssim": float(np.mean([v["ssim"] for v in images.values()])),
        "images": images,
    }
