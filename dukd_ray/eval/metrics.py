"""PSNR and SSIM exactly as the SR literature reports them (MATLAB conventions, see docs/evaluation.md).

Inputs are RGB uint8 HWC numpy arrays, or float CHW tensors in [0, 1] that are first quantised
like a saved image (clamp, round(v * 255)), so a model's output scores what its PNG would score.
Everything is computed in float64; the Y channel is BT.601 without rounding. This numpy version is
the reference; `device_metrics` computes the same numbers in torch on the model's device.
"""

from __future__ import annotations

import math

import numpy as np

from dukd_ray.image.convert import Image, to_uint8_hwc

Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2
SSIM_SIZE, _SSIM_SIGMA = 11, 1.5


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of RGB in [0, 255] (MATLAB `rgb2ycbcr` Y, kept unrounded), float64 (H, W)."""
    return 16.0 + img.astype(np.float64) @ Y_WEIGHTS


def check_pair(sr_shape: tuple[int, ...], hr_shape: tuple[int, ...], crop_border: int) -> None:
    """Both images (H, W, C) the same shape, and `crop_border` leaves some of them."""
    if sr_shape != hr_shape:
        raise ValueError(f"sr and hr differ in shape: sr {sr_shape} vs hr {hr_shape}")
    if crop_border < 0 or 2 * crop_border >= min(sr_shape[:2]):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {sr_shape[0]}x{sr_shape[1]} image")


def check_ssim_size(height: int, width: int) -> None:
    """SSIM's valid region needs a whole window."""
    if min(height, width) < SSIM_SIZE:
        raise ValueError(
            f"SSIM needs at least {SSIM_SIZE}x{SSIM_SIZE} pixels after cropping, got {(height, width)}"
        )


def _prepare(sr: Image, hr: Image, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Quantise, check shapes, crop borders and pick Y or RGB: two float64 (H, W, C) arrays."""
    a, b = to_uint8_hwc(sr, "sr"), to_uint8_hwc(hr, "hr")
    check_pair(a.shape, b.shape, crop_border)
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        return rgb_to_y(a)[..., None], rgb_to_y(b)[..., None]
    return a.astype(np.float64), b.astype(np.float64)


def psnr(sr: Image, hr: Image, crop_border: int, y_channel: bool = True) -> float:
    """PSNR in dB (peak 255) after cropping `crop_border` pixels per side; +inf for identical images."""
    a, b = _prepare(sr, hr, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def gaussian_window() -> np.ndarray:
    """SSIM's 1-D window (the 2-D one is its outer product), summing to 1."""
    x = np.arange(SSIM_SIZE, dtype=np.float64) - (SSIM_SIZE - 1) / 2
    g = np.exp(-(x**2) / (2 * _SSIM_SIGMA**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The 'valid' 2-D correlation with the separable window outer(g, g) (MATLAB `filter2(..., 'valid')`)."""
    rows = np.lib.stride_tricks.sliding_window_view(img, g.size, axis=0) @ g
    return np.lib.stride_tricks.sliding_window_view(rows, g.size, axis=1) @ g


def _ssim_channel(a: np.ndarray, b: np.ndarray, g: np.ndarray) -> float:
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a**2
    var_b = _filter_valid(b * b, g) - mu_b**2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return float(np.mean(num / den))


def ssim(sr: Image, hr: Image, crop_border: int, y_channel: bool = True) -> float:
    """SSIM (Wang et al. 2004; 11x11 Gaussian, sigma 1.5, valid region); RGB: mean of per-channel SSIM."""
    a, b = _prepare(sr, hr, crop_border, y_channel)
    check_ssim_size(*a.shape[:2])
    g = gaussian_window()
    return float(np.mean([_ssim_channel(a[..., c], b[..., c], g) for c in range(a.shape[2])]))
