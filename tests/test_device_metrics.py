"""Torch PSNR/SSIM (eval/device_metrics) against the numpy reference (eval/metrics) on real photographs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dukd_ray.data.samples import TEST_PHOTOS, Photo, bicubic_lr
from dukd_ray.eval.benchmark import Pair, bicubic_pair, evaluate_pair
from dukd_ray.eval.device_metrics import psnr_ssim
from dukd_ray.eval.inference import super_resolve
from dukd_ray.eval.metrics import psnr, ssim
from dukd_ray.image.convert import to_float_tensor, to_uint8_hwc
from dukd_ray.image.resize import imresize
from dukd_ray.models import build_arch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SCALE = 4


def _chw(img: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).to(device)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    """The test photographs (up to 512 px), and an Urban100-size (1024x768) crop of scikit-image's retina."""
    out = {name: photo.load() for name, photo in TEST_PHOTOS.items()}
    from skimage import data

    out["retina_1024x768"] = np.ascontiguousarray(data.retina()[300:1068, 200:1224, :3])
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_device_scores_equal_the_numpy_reference_on_photographs(photos, device):
    """SR = bicubic x4 of the photograph's bicubic LR, unquantised float: quantised, Y and RGB, cropped."""
    for name, hr in photos.items():
        hr = hr[: hr.shape[0] // SCALE * SCALE, : hr.shape[1] // SCALE * SCALE]
        sr = imresize(to_float_tensor(bicubic_lr(hr, SCALE)), SCALE)[0]  # float, slightly out of [0, 1]
        assert sr.min() < 0 or sr.max() > 1  # the clamp is exercised
        for y_channel in (True, False):
            ref_psnr, ref_ssim = psnr(sr, hr, SCALE, y_channel), ssim(sr, hr, SCALE, y_channel)
            got_psnr, got_ssim = psnr_ssim(sr.to(device), _chw(hr, device), SCALE, y_channel)
            assert abs(got_psnr - ref_psnr) < 1e-6, (name, y_channel, got_psnr, ref_psnr)
            assert abs(got_ssim - ref_ssim) < 1e-7, (name, y_channel, got_ssim, ref_ssim)
        assert 15 < ref_psnr < 50 and 0.2 < ref_ssim < 1  # real, imperfect reconstructions


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_pair_scores_on_the_models_device_like_the_reference(photos, device):
    """The eval CLI's and validation's per-image function: its SR image and scores are the reference's."""
    torch.manual_seed(0)
    model = build_arch("edsr", SCALE, preset="tiny_student").to(device).eval()
    hr = photos["chelsea"][:96, :120]
    pair = Pair("chelsea", bicubic_lr(hr, SCALE), hr)
    p, s, sr = evaluate_pair(model, pair, SCALE)
    expected = to_uint8_hwc(super_resolve(model, to_float_tensor(pair.lr, device=device), scale=SCALE)[0])
    assert sr.flags.c_contiguous and np.array_equal(sr, expected)
    assert abs(p - psnr(sr, hr, SCALE)) < 1e-6 and abs(s - ssim(sr, hr, SCALE)) < 1e-7
    p, s, sr = bicubic_pair(pair, SCALE)
    assert abs(p - psnr(sr, hr, SCALE)) < 1e-6 and abs(s - ssim(sr, hr, SCALE)) < 1e-7


def test_identical_images_and_bad_inputs():
    hr = Photo("coins").load()[:64, :64]
    t = _chw(hr, "cpu")
    p, s = psnr_ssim(t, t, SCALE)
    assert p == math.inf and s == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"differ in shape: sr \(63, 64, 3\) vs hr \(64, 64, 3\)"):
        psnr_ssim(t[:, :-1], t, 0)
    with pytest.raises(ValueError, match="sr: expected a uint8 or float"):
        psnr_ssim(t.to(torch.int32), t, 0)
    with pytest.raises(ValueError, match="crop_border=32"):
        psnr_ssim(t, t, 32)
    with pytest.raises(ValueError, match="at least 11x11"):
        psnr_ssim(t[:, :14], t[:, :14], 2)
