"""to_uint8_hwc: clamp, round(v * 255) in float64, computed a band of rows at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dukd_ray.image import convert
from dukd_ray.image.convert import to_uint8_hwc


def _rule(t: torch.Tensor) -> np.ndarray:
    """The rule on the whole image at once, as it was written before the bands."""
    return (t.double().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _ties() -> torch.Tensor:
    """float32 values within 300 ulps of every k/255 and (k + 0.5)/255, plus the clamp's edges."""
    centres = np.float32(np.arange(511) / 510).view(np.int32)
    near = (centres[:, None] + np.arange(-300, 301, dtype=np.int32)).ravel()
    values = np.concatenate([near[near > 0].view(np.float32), [-0.0, -1e-8, 1.0, 1.5, -np.inf, np.inf]])
    values = np.resize(values.astype(np.float32), 3 * 307 * 1001)
    return torch.from_numpy(values).reshape(3, 307, 1001)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_bands_give_the_whole_image_rule_exactly(dtype, monkeypatch):
    monkeypatch.setattr(convert, "CHUNK_ELEMENTS", 30000)  # bands of 9 rows, a ragged last one
    t = _ties().to(dtype)
    before = t.clone()
    out = to_uint8_hwc(t)
    assert out.shape == (307, 1001, 3) and out.flags.c_contiguous
    assert np.array_equal(out, _rule(t))
    assert torch.equal(t, before)  # the input is not clamped in place (float64 inputs included)
    assert np.array_equal(to_uint8_hwc(t[None].transpose(-1, -2)), _rule(t.transpose(-1, -2)))


def test_float32_alone_would_round_some_ties_the_other_way():
    """Why the rule stays float64: v * 255 needs 32 bits, float32 rounds it onto some .5 ties."""
    t = _ties()
    in_float32 = (t.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert not np.array_equal(in_float32, to_uint8_hwc(t))
