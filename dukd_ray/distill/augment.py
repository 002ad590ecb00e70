"""Label-consistency ops: per-sample invert / flip-H / flip-W / transpose and their exact inverse.

The student sees `F(z)` and its output is mapped back with `F^-1` before being compared with the
teacher's `T(z)`. Every op is its own inverse, so `F^-1` is the same ops in *reverse* order. (The
reference code re-applies them in forward order, which rotates the output by 180 degrees whenever
transpose meets exactly one flip.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from dukd_ray.image.geometry import GEOMETRIC_OPS

# The canonical (forward) order of the ops; a flag tensor has one column per op in this order.
LC_OPS: tuple[str, ...] = ("invert", "flip_h", "flip_w", "transpose")

# invert is photometric (images are in [0, 1]); the others are the shared geometric ops
_OP_FUNCS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"invert": lambda v: 1.0 - v, **GEOMETRIC_OPS}


def draw_flags(
    num: int, ops: Sequence[str], prob: float, generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(num, 4) bool flags, one Bernoulli(prob) per sample and op, columns in `LC_OPS` order.

    All four columns are always drawn (one `torch.rand(num, 4)` from `generator`), then the columns
    of ops not in `ops` are cleared: switching one op off never changes the draws of the others.
    """
    flags = torch.rand(num, len(LC_OPS), generator=generator) < prob
    flags[:, [i for i, op in enumerate(LC_OPS) if op not in ops]] = False
    return flags.to(device)


def apply_ops(v: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """F(v): for each sample, the flagged ops in the order invert, flip_h, flip_w, transpose."""
    return _apply(v, flags, range(len(LC_OPS)))


def invert_ops(v: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """F^-1(v): the flagged ops in reverse order (each op undoes itself)."""
    return _apply(v, flags, reversed(range(len(LC_OPS))))


def _apply(v: torch.Tensor, flags: torch.Tensor, order: Sequence[int] | range) -> torch.Tensor:
    if v.ndim != 4 or v.shape[-1] != v.shape[-2] or flags.shape != (v.shape[0], len(LC_OPS)):
        raise ValueError(
            f"label-consistency ops need square (B, C, H, H) images and (B, {len(LC_OPS)}) flags, "
            f"got images {tuple(v.shape)} and flags {tuple(flags.shape)}"
        )
    for i in order:
        mask = flags[:, i]
        v = torch.where(mask.view(-1, 1, 1, 1), _OP_FUNCS[LC_OPS[i]](v), v)
    return v
