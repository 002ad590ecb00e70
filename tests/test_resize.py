"""imresize against the kernel definition worked out by hand and a loop port of BasicSR's MATLAB clone."""

from __future__ import annotations

import math

import pytest
import torch

from dukd_ray.image.resize import imresize


def _rows_constant(signal: list[float], rows: int) -> torch.Tensor:
    """A (1, rows, W) image whose every row is `signal`: resizing it is a 1-D resize of `signal`."""
    return torch.tensor(signal, dtype=torch.float64).expand(1, rows, len(signal)).clone()


def test_downscale_8_to_4_matches_hand_computed_weights():
    # Scale 1/2 with antialiasing: the a=-0.5 cubic stretched x2, sampled at distances +-0.5, +-1.5, ...
    # (kernel args +-0.25, +-0.75, +-1.25, +-1.75) gives weights [-3, -9, 29, 111, 111, 29, -9, -3] / 256.
    s = [0.3, 0.9, 0.1, 0.5, 0.8, 0.2, 0.7, 0.4]
    padded = s[2::-1] + s + s[:-4:-1]  # symmetric padding by 3: s3 s2 s1 | s1..s8 | s8 s7 s6
    w = [-3, -9, 29, 111, 111, 29, -9, -3]
    expected = [sum(w[k] * padded[2 * j + k] for k in range(8)) / 256 for j in range(4)]
    out = imresize(_rows_constant(s, 8), 0.5)
    assert out.shape == (1, 4, 4)
    torch.testing.assert_close(
        out, torch.tensor(expected, dtype=torch.float64).expand(1, 4, 4), atol=1e-12, rtol=0
    )


def test_upscale_4_to_8_matches_hand_computed_weights():
    # Scale 2: output centres fall at input positions m - 0.25 and m + 0.25, so the taps are
    # cubic(1.75, 0.75, 0.25, 1.25) = [-3, 29, 111, -9] / 128 and its mirror image.
    s = [0.2, 0.6, 1.0, 0.4]
    p = [s[1], s[0], *s, s[3], s[2]]  # symmetric padding by 2
    expected = []
    for m in range(1, 5):
        expected.append((-3 * p[m - 1] + 29 * p[m] + 111 * p[m + 1] - 9 * p[m + 2]) / 128)
        expected.append((-9 * p[m] + 111 * p[m + 1] + 29 * p[m + 2] - 3 * p[m + 3]) / 128)
    out = imresize(_rows_constant(s, 4), 2)
    assert out.shape == (1, 8, 8)
    torch.testing.assert_close(
        out, torch.tensor(expected, dtype=torch.float64).expand(1, 8, 8), atol=1e-12, rtol=0
    )


def test_scale_one_is_identity():
    x = torch.rand(3, 7, 10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(imresize(x, 1), x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3, 4])
def test_constant_image_stays_constant(scale):
    x = torch.full((2, 3, 12, 12), 0.37)
    out = imresize(x, scale)
    assert out.shape == (2, 3, math.ceil(12 * scale), math.ceil(12 * scale))
    torch.testing.assert_close(out, torch.full_like(out, 0.37), atol=1e-6, rtol=0)


def test_antialias_changes_only_shrinking():
    x = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(1))
    for scale in (2, 3):
        torch.testing.assert_close(imresize(x, scale, antialias=False), imresize(x, scale, antialias=True))
    assert (imresize(x, 0.5, antialias=False) - imresize(x, 0.5, antialias=True)).abs().max() > 1e-2


def test_batch_equals_per_image():
    x = torch.rand(4, 3, 24, 20, generator=torch.Generator().manual_seed(2))
    batched = imresize(x, 1 / 3)
    for i in range(4):
        torch.testing.assert_close(batched[i], imresize(x[i], 1 / 3), atol=1e-6, rtol=0)


def test_float32_agrees_with_float64():
    x = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for scale in (1 / 4, 3):
        out64 = imresize(x, scale)
        out32 = imresize(x.float(), scale)
        assert out64.dtype == torch.float64 and out32.dtype == torch.float32
        torch.testing.assert_close(out32.double(), out64, atol=1e-6, rtol=0)


def test_size_argument_uses_out_over_in_scale():
    x = torch.rand(3, 24, 36, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(imresize(x, None, size=(12, 18)), imresize(x, 0.5))
    assert imresize(x, None, size=(48, 9)).shape == (3, 48, 9)


def test_bad_input_errors_are_clear():
    with pytest.raises(TypeError, match="floating-point"):
        imresize(torch.zeros(3, 4, 4, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        imresize(torch.zeros(4, 4), 2)
    with pytest.raises(ValueError, match="scale must be > 0"):
        imresize(torch.zeros(3, 4, 4), 0)


# --- A straightforward loop transcription of BasicSR's basicsr/utils/matlab_functions.py ---------------


def _ref_cubic(x: float) -> float:
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def _ref_weights_indices(
    in_len: int, out_len: int, scale: float
) -> tuple[list[list[float]], list[list[int]]]:
    width = 4 / scale if scale < 1 else 4.0
    p = math.ceil(width) + 2
    weights, indices = [], []
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        idx = [left + k for k in range(p)]
        if scale < 1:
            w = [scale * _ref_cubic((u - i) * scale) for i in idx]
        else:
            w = [_ref_cubic(u - i) for i in idx]
        total = sum(w)
        weights.append([v / total for v in w])
        indices.append(idx)
    # trim the first / last tap column when it has zero weight (BasicSR's test on the column)
    if any(row[0] == 0 for row in weights):
        weights, indices = [r[1:] for r in weights], [r[1:] for r in indices]
    if any(row[-1] == 0 for row in weights):
        weights, indices = [r[:-1] for r in weights], [r[:-1] for r in indices]
    return weights, indices


def _ref_resize_1d(signal: list[float], scale: float) -> list[float]:
    n = len(signal)
    weights, indices = _ref_weights_indices(n, math.ceil(n * scale), scale)
    lo = -min(min(r) for r in indices) + 1  # BasicSR's sym_len_s / sym_len_e symmetric copies
    hi = max(max(r) for r in indices) - n
    tail = signal[n - hi :][::-1] if hi > 0 else []
    padded = signal[:lo][::-1] + signal + tail
    return [
        sum(w * padded[i + lo - 1] for w, i in zip(ws, idx, strict=True))
        for ws, idx in zip(weights, indices, strict=True)
    ]


def _ref_imresize(img: list[list[list[float]]], scale: float) -> list[list[list[float]]]:
    out = []
    for channel in img:  # H first, then W (equal scales), as BasicSR and MATLAB do
        cols = [_ref_resize_1d([row[j] for row in channel], scale) for j in range(len(channel[0]))]
        rows_h = [[cols[j][i] for j in range(len(cols))] for i in range(len(cols[0]))]
        out.append([_ref_resize_1d(row, scale) for row in rows_h])
    return out


@pytest.mark.parametrize(
    ("scale", "h", "w"),
    [
        (1 / 2, 24, 18),
        (1 / 3, 24, 21),
        (1 / 4, 24, 28),
        (2, 6, 5),
        (3, 5, 6),
        (4, 4, 5),
        (0.7, 20, 23),
        (1.5, 7, 6),
    ],
)
def test_agrees_with_basicsr_loop_transcription(scale, h, w):
    # 0.7 and 1.5 are not integer ratios: there the kernel weights do not sum to 1 before normalising.
    x = torch.rand(3, h, w, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = torch.tensor(_ref_imresize(x.tolist(), scale), dtype=torch.float64)
    out = imresize(x.float(), scale)
    assert out.shape == expected.shape
    assert (out.double() - expected).abs().max() < 1e-5
