"""MATLAB-compatible bicubic `imresize` on float tensors, vectorised for any device.

Why not `torch.nn.functional.interpolate`: SR benchmarks and DIV2K's LR images are made with
MATLAB's `imresize` (a = -0.5 cubic kernel, stretched when shrinking, symmetric borders). Models
trained or evaluated on anything else lose tenths of a dB, so we reproduce MATLAB exactly.

Each dimension is resized by one dense (out x in) weight matrix: the kernel taps, with
out-of-range taps mirrored back onto the image (symmetric padding) and their weights summed in.
Applying it is one matmul per dimension over the whole batch; the matrices are cached because
training resizes the same patch sizes millions of times.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

_KERNEL_WIDTH = 4.0  # the a = -0.5 cubic is supported on [-2, 2]


def cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's `cubic`)."""
    ax = x.abs()
    ax2, ax3 = ax**2, ax**3
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def _mirror(idx: torch.Tensor, length: int) -> torch.Tensor:
    """Map 0-based indices outside [0, length) back inside by symmetric (edge-repeating) reflection."""
    period = 2 * length
    idx = torch.remainder(idx, period)
    return torch.where(idx < length, idx, period - 1 - idx)


@lru_cache(maxsize=256)
def _weight_matrix_cpu64(in_len: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    """The (out_len, in_len) float64 matrix M with resized = M @ signal (MATLAB's contributions)."""
    shrink_aa = scale < 1 and antialias
    width = _KERNEL_WIDTH / scale if shrink_aa else _KERNEL_WIDTH
    x = torch.arange(1, out_len + 1, dtype=torch.float64)  # 1-based output coordinates
    u = x / scale + 0.5 * (1 - 1 / scale)  # matching 1-based input coordinate
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    indices = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    distance = u[:, None] - indices
    weights = scale * cubic(distance * scale) if shrink_aa else cubic(distance)
    weights = weights / weights.sum(dim=1, keepdim=True)
    # MATLAB trims all-zero weight columns; in a dense matrix they add nothing, so no trim is needed.
    cols = _mirror(indices.long() - 1, in_len)
    matrix = torch.zeros(out_len, in_len, dtype=torch.float64)
    matrix.scatter_add_(1, cols, weights)
    return matrix


@lru_cache(maxsize=256)
def _weight_matrix(
    in_len: int, out_len: int, scale: float, antialias: bool, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    return _weight_matrix_cpu64(in_len, out_len, scale, antialias).to(device=device, dtype=dtype)


def weight_matrix(
    in_len: int,
    out_len: int,
    scale: float,
    antialias: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The cached (out_len, in_len) resize matrix for one dimension (do not modify it in place)."""
    return _weight_matrix(in_len, out_len, float(scale), bool(antialias), torch.device(device), dtype)


def imresize(
    x: torch.Tensor,
    scale: float | None,
    antialias: bool = True,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resize (C, H, W) or (B, C, H, W) floats like MATLAB's `imresize(img, scale, 'bicubic')`.

    Output size is `ceil(H * scale), ceil(W * scale)` unless `size=(out_h, out_w)` is given (then the
    per-dimension scale is `out / in`, as in MATLAB). The dimension with the smaller scale is resized
    first, as MATLAB does (on floats the order changes only the cost, not the result). Values are not
    clamped: bicubic overshoots slightly, like MATLAB on doubles.
    """
    if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4):
        raise ValueError(f"imresize expects a (C, H, W) or (B, C, H, W) tensor, got {_describe(x)}")
    if not x.is_floating_point():
        raise TypeError(f"imresize expects a floating-point tensor, got dtype={x.dtype}")
    in_h, in_w = x.shape[-2:]
    if size is not None:
        out_h, out_w = (int(s) for s in size)
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"imresize size must be positive, got size={size}")
        scales = (out_h / in_h, out_w / in_w)
    else:
        if scale is None or not scale > 0:
            raise ValueError(f"imresize scale must be > 0 (or give size=), got scale={scale}")
        scales = (float(scale), float(scale))
        out_h, out_w = math.ceil(in_h * scale), math.ceil(in_w * scale)
    m_h = weight_matrix(in_h, out_h, scales[0], antialias, x.device, x.dtype)
    m_w = weight_matrix(in_w, out_w, scales[1], antialias, x.device, x.dtype)
    if scales[1] < scales[0]:
        return m_h @ (x @ m_w.T)
    return (m_h @ x) @ m_w.T


def _describe(x: object) -> str:
    shape = getattr(x, "shape", None)
    return f"{type(x).__name__} with shape {tuple(shape)}" if shape is not None else type(x).__name__
