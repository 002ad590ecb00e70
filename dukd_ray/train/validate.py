"""Validation during training: the eval CLI's per-image numbers, with the images spread over the ranks.

Rank r scores images r, r + W, r + 2W, ... of every set with `evaluate_pair` (the function the eval
CLI uses); the per-image scores are gathered and averaged in the sets' own order, so a checkpoint gets
the same PSNR/SSIM here as from `python -m dukd_ray.eval`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from dukd_ray.eval.benchmark import Pair, evaluate_pair
from dukd_ray.eval.inference import InferenceOptions
from dukd_ray.eval.scores import SetScores, set_scores
from dukd_ray.train.collective import all_gather, rank_and_world


def evaluate_distributed(
    model: nn.Module,
    sets: dict[str, list[Pair]],
    scale: int,
    options: InferenceOptions = InferenceOptions(),
) -> dict[str, SetScores]:
    """Y-PSNR/SSIM per set of `model` on its device; collective when distributed (every rank must call it)."""
    rank, world = rank_and_world()
    local: dict[str, list[tuple[int, float, float]]] = {}
    with torch.no_grad():
        for name, pairs in sets.items():
            local[name] = []
            for i in range(rank, len(pairs), world):
                psnr, ssim, _ = evaluate_pair(model, pairs[i], scale, options)
                local[name].append((i, float(psnr), float(ssim)))
    parts = all_gather(local)
    out: dict[str, SetScores] = {}
    for name, pairs in sets.items():
        rows = sorted(row for part in parts for row in part[name])
        out[name] = set_scores({pairs[i].name: {"psnr": p, "ssim": s} for i, p, s in rows})
    return out


def flatten(scores: dict[str, SetScores], prefix: str = "") -> dict[str, float]:
    """`{prefix}psnr/<set>`, `{prefix}ssim/<set>` and their means over sets, `{prefix}val_psnr|val_ssim`."""
    out: dict[str, Any] = {}
    for name, values in scores.items():
        out[f"{prefix}psnr/{name}"] = values["psnr"]
        out[f"{prefix}ssim/{name}"] = values["ssim"]
    out[f"{prefix}val_psnr"] = float(np.mean([v["psnr"] for v in scores.values()]))
    out[f"{prefix}val_ssim"] = float(np.mean([v["ssim"] for v in scores.values()]))
    return out
