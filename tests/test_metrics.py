"""PSNR/SSIM against hand-computed values, a direct (non-separable) SSIM transcription and invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from dukd_ray.eval.metrics import psnr, ssim
from dukd_ray.image.convert import to_float_tensor, to_uint8_hwc

C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def _rand_img(seed: int, h: int = 24, w: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_psnr_of_known_mse():
    hr = np.full((10, 12, 3), 100, dtype=np.uint8)
    sr = hr + np.uint8(5)  # every value off by 5: MSE = 25
    assert psnr(sr, hr, crop_border=0, y_channel=False) == pytest.approx(
        10 * math.log10(255**2 / 25), abs=1e-12
    )


def test_psnr_y_channel_is_bt601_without_rounding():
    hr = np.zeros((8, 8, 3), dtype=np.uint8)
    sr = hr.copy()
    sr[..., 0] = 1  # R + 1 moves Y by 65.481/255 = 0.2568: rounding Y would hide it (inf)
    dy = 65.481 / 255
    assert psnr(sr, hr, 0) == pytest.approx(10 * math.log10(255**2 / dy**2), abs=1e-9)
    sr[..., 0], sr[..., 2] = 0, 10  # B + 10 moves Y by 249.66/255
    dy = 249.66 / 255
    assert psnr(sr, hr, 0) == pytest.approx(10 * math.log10(255**2 / dy**2), abs=1e-9)


def test_identical_images_give_inf_psnr_and_unit_ssim():
    img = _rand_img(0)
    assert psnr(img, img, 4) == math.inf
    assert ssim(img, img, 4) == pytest.approx(1.0, abs=1e-12)
    assert ssim(img, img, 4, y_channel=False) == pytest.approx(1.0, abs=1e-12)


def test_crop_border_really_crops():
    hr = _rand_img(1)
    sr = hr.copy()
    sr[:3] = 255 - sr[:3]  # corrupt a 3-pixel top border only
    sr[:, -3:] = 0
    assert psnr(sr, hr, 3) == math.inf
    assert ssim(sr, hr, 3) == pytest.approx(1.0, abs=1e-12)
    assert psnr(sr, hr, 2) < 30 and ssim(sr, hr, 2) < 1


def test_tensor_input_is_quantised_like_a_saved_png():
    hr = _rand_img(2)
    sr = _rand_img(3)
    noise = torch.empty(3, 24, 20).uniform_(-0.49, 0.49, generator=torch.Generator().manual_seed(0))
    sr_t = (torch.from_numpy(sr.copy()).permute(2, 0, 1).double() + noise) / 255  # rounds back to sr
    sr_t[:, 0, 0] = torch.tensor([1.7, -0.3, 1.0])  # clamped to [0, 1]
    sr_q = sr.copy()
    sr_q[0, 0] = [255, 0, 255]
    assert psnr(sr_t.float(), hr, 2) == psnr(sr_q, hr, 2)
    assert ssim(sr_t.float()[None], hr, 2) == ssim(sr_q, hr, 2)


def test_float_tensor_is_channels_first_over_255_and_round_trips():
    img = np.array([[[0, 51, 255], [1, 2, 3]]], dtype=np.uint8)  # 1 x 2 pixels
    t = to_float_tensor(img, torch.float64)
    assert t.shape == (1, 3, 1, 2) and t.dtype == torch.float64
    assert t[0, :, 0, 0].tolist() == [0.0, 0.2, 1.0]
    assert t[0, 2, 0, 1].item() == 3 / 255
    assert np.array_equal(to_uint8_hwc(to_float_tensor(img)), img)


def test_ssim_of_constant_images_is_the_luminance_term():
    # mu = the constant, every variance and covariance 0: SSIM = (2AB + C1) / (A^2 + B^2 + C1).
    a = np.full((16, 16, 3), 90, dtype=np.uint8)
    b = np.full((16, 16, 3), 140, dtype=np.uint8)
    assert ssim(a, b, 0, y_channel=False) == pytest.approx(
        (2 * 90 * 140 + C1) / (90**2 + 140**2 + C1), abs=1e-12
    )
    ya, yb = 16 + 90 * (65.481 + 128.553 + 24.966) / 255, 16 + 140 * (65.481 + 128.553 + 24.966) / 255
    assert ssim(a, b, 0) == pytest.approx((2 * ya * yb + C1) / (ya**2 + yb**2 + C1), abs=1e-12)


def _direct_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. written out: at each valid position, Gaussian-weighted means, variances, covariance."""
    r = np.arange(11) - 5
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + C1) * (2 * cxy + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2)))
    return float(np.mean(vals))


def _y(img: np.ndarray) -> np.ndarray:
    return 16 + img.astype(float) @ np.array([65.481, 128.553, 24.966]) / 255


def test_ssim_matches_direct_transcription():
    hr, sr = _rand_img(4, 15, 17), _rand_img(5, 15, 17)
    sr[..., 1] = hr[..., 1] // 2 + sr[..., 1] // 2  # channels with very different similarity
    per_channel = [_direct_ssim(sr[..., c].astype(float), hr[..., c].astype(float)) for c in range(3)]
    assert ssim(sr, hr, 0, y_channel=False) == pytest.approx(np.mean(per_channel), abs=1e-10)
    cropped = [
        _direct_ssim(sr[1:-1, 1:-1, c].astype(float), hr[1:-1, 1:-1, c].astype(float)) for c in range(3)
    ]
    assert ssim(sr, hr, 1, y_channel=False) == pytest.approx(np.mean(cropped), abs=1e-10)
    assert ssim(sr, hr, 0) == pytest.approx(_direct_ssim(_y(sr), _y(hr)), abs=1e-10)


def test_ssim_agrees_with_scikit_image_gaussian_ssim():
    hr = _rand_img(6, 40, 36)
    sr = np.clip(hr.astype(int) + np.random.default_rng(7).integers(-20, 21, hr.shape), 0, 255).astype(
        np.uint8
    )
    ref = structural_similarity(
        sr, hr, channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(sr, hr, 0, y_channel=False) == pytest.approx(ref, abs=1e-9)


def test_bad_inputs_name_the_problem():
    img = _rand_img(8)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(img, img[:-1], 0)
    with pytest.raises(ValueError, match="sr: expected an RGB uint8 HWC"):
        psnr(img.astype(np.float32), img, 0)
    with pytest.raises(ValueError, match="crop_border=12"):
        psnr(img, img, 12)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(img[:14], img[:14], 2)
