"""Running an SR model for evaluation: x8 self-ensemble and tiled inference for large images.

Tiling is crop-and-stitch: tiles overlap by `tile_overlap` LR pixels and every output pixel is
taken from the one tile in which it lies at least `tile_overlap // 2` pixels from a cut edge, so
the result equals whole-image inference exactly whenever the model's receptive field is smaller
than the overlap (averaging overlapping tiles would not be exact, and it would cost more).
`super_resolve_uint8` streams the tiles' cores, quantised, into the uint8 image: memory then
holds that image, the float LR and one tile's work, never the float output.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dukd_ray.image.convert import to_uint8_hwc
from dukd_ray.image.geometry import D4, apply_geometry, undo_geometry

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class InferenceOptions:
    """How a model runs at test time: one vocabulary for the eval CLI, validation and upscaling.

    `tile`: LR tile side for images that do not fit in memory (None: whole images); `tile_overlap`:
    LR pixels neighbouring tiles share (see the module doc); `amp`: bfloat16 autocast on the
    input's device (the CLIs' `--amp` / `--bf16`).
    """

    self_ensemble: bool = False
    tile: int | None = None
    tile_overlap: int = 32
    amp: bool = False

    def __post_init__(self) -> None:
        if self.tile is not None and (not isinstance(self.tile, int) or self.tile <= 0):
            raise ValueError(f"tile must be a positive integer (LR pixels) or None, got tile={self.tile!r}")
        if not isinstance(self.tile_overlap, int) or not 0 <= self.tile_overlap < (self.tile or math.inf):
            raise ValueError(
                "tile_overlap must be an integer with tile > tile_overlap >= 0, "
                f"got tile={self.tile!r} tile_overlap={self.tile_overlap!r}"
            )

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.amp else None


def ensemble_x8(forward: Forward) -> Forward:
    """x8 geometric self-ensemble: run the 8 flip/transpose variants, undo each, average."""

    def run(x: torch.Tensor) -> torch.Tensor:
        total = None
        for ops in D4:
            y = undo_geometry(forward(apply_geometry(x, ops)), ops).float()
            total = y if total is None else total + y
        return total / len(D4)

    return run


def _tile_plan(length: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """Per tile along one dimension: (tile start, core start, core end); cores partition [0, length)."""
    if length <= tile:
        return [(0, 0, length)]
    starts = list(range(0, length - tile, tile - overlap)) + [length - tile]
    cuts = [0] + [(a + tile + b) // 2 for a, b in zip(starts, starts[1:], strict=False)] + [length]
    return [(s, cuts[i], cuts[i + 1]) for i, s in enumerate(starts)]


def _tiles(
    forward: Forward, x: torch.Tensor, tile: int, overlap: int, scale: int | None = None
) -> Iterator[tuple[int, slice, slice, torch.Tensor]]:
    """(scale, output rows, output columns, float32 core) of each tile of `x`, in raster order.

    `forward` runs on overlapping `tile` x `tile` LR crops (see the module doc); `tile` and
    `overlap` come from a validated `InferenceOptions`; `scale` None: read off the first tile.
    """
    h, w = x.shape[-2:]
    s = scale
    for ty, cy0, cy1 in _tile_plan(h, tile, overlap):
        for tx, cx0, cx1 in _tile_plan(w, tile, overlap):
            y = forward(x[..., ty : ty + tile, tx : tx + tile]).float()
            if s is None:
                s = y.shape[-1] // min(tile, w)
            core = y[..., (cy0 - ty) * s : (cy1 - ty) * s, (cx0 - tx) * s : (cx1 - tx) * s]
            yield s, slice(cy0 * s, cy1 * s), slice(cx0 * s, cx1 * s), core


def model_scale(model: nn.Module) -> int | None:
    """The upscaling factor recorded in `model.arch_spec` (every model from `build_arch` has one)."""
    spec = getattr(model, "arch_spec", None)
    return int(spec["scale"]) if isinstance(spec, dict) and "scale" in spec else None


def model_device(model: nn.Module) -> torch.device:
    """Where `model` lives, so inputs go to it (the CPU for a model without parameters or buffers)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def super_resolve(
    model: nn.Module,
    lr: torch.Tensor,
    options: InferenceOptions = InferenceOptions(),
    scale: int | None = None,
) -> torch.Tensor:
    """Upscale float (B, 3, h, w) LR in [0, 1] (on the model's device) to float32 (B, 3, s*h, s*w).

    Runs in eval mode without autograd (the model's train/eval mode is restored afterwards). The
    output is not clamped; the metrics quantise it like a saved PNG.
    """
    if options.tile is not None:
        return _stitch(model, lr, options, scale, quantise=False)
    forward = _forward(model, lr, options)
    with _inference(model, lr, options):
        return forward(lr).float()


def super_resolve_uint8(
    model: nn.Module,
    lr: torch.Tensor,
    options: InferenceOptions = InferenceOptions(),
    scale: int | None = None,
) -> np.ndarray:
    """`to_uint8_hwc(super_resolve(...))` for one image (lr (1, 3, h, w)), bit for bit, as RGB uint8 HWC.

    With `options.tile` each tile's core is quantised and written into the uint8 output as it is
    made, so a large image never exists as float (16000x12000 output: 576 MB, not 2.3 GB of float32
    and its float64 conversion); the self-ensemble, if on, runs per tile.
    """
    if lr.ndim != 4 or lr.shape[0] != 1:
        raise ValueError(f"super_resolve_uint8 expects a (1, 3, h, w) tensor, got shape {tuple(lr.shape)}")
    if options.tile is None:
        return to_uint8_hwc(super_resolve(model, lr, options, scale), "super-resolved image")
    return _stitch(model, lr, options, scale, quantise=True)


def _stitch(
    model: nn.Module, lr: torch.Tensor, options: InferenceOptions, scale: int | None, quantise: bool
) -> torch.Tensor | np.ndarray:
    """Run tile by tile, writing each core into the output as it is made: float32 (B, 3, sh, sw), or
    with `quantise` the uint8 HWC image (of a (1, 3, h, w) input), each core quantised on its own."""
    forward = _forward(model, lr, options)
    h, w = lr.shape[-2:]
    out = None
    with _inference(model, lr, options):
        for s, rows, cols, core in _tiles(
            forward, lr, options.tile, options.tile_overlap, scale or model_scale(model)
        ):
            if quantise:
                out = np.empty((h * s, w * s, core.shape[1]), np.uint8) if out is None else out
                out[rows, cols] = to_uint8_hwc(core, "super-resolved tile")
            else:
                out = core.new_empty(*core.shape[:-2], h * s, w * s) if out is None else out
                out[..., rows, cols] = core
    return out


def _forward(model: nn.Module, lr: torch.Tensor, options: InferenceOptions) -> Forward:
    if lr.ndim != 4:
        raise ValueError(f"super_resolve expects a (B, 3, h, w) tensor, got shape {tuple(lr.shape)}")
    return ensemble_x8(model) if options.self_ensemble else model


@contextmanager
def _inference(model: nn.Module, lr: torch.Tensor, options: InferenceOptions) -> Iterator[None]:
    """Eval mode (restored afterwards), no autograd, and bfloat16 autocast on `lr`'s device if asked."""
    amp_dtype = options.amp_dtype
    autocast = torch.autocast(lr.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast:
            yield
    finally:
        model.train(was_training)
