"""Self-ensemble and tiled inference: exactness on models where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as photos
from torch import nn

from dukd_ray.eval import inference
from dukd_ray.eval.inference import InferenceOptions, super_resolve, super_resolve_uint8
from dukd_ray.image.convert import to_float_tensor, to_uint8_hwc


class ConvSR(nn.Module):
    """Three 3x3 convs (receptive field 7x7) and a pixel shuffle: a tiny, non-symmetric SR model."""

    def __init__(self, scale: int = 2, feat: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, feat, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(feat, feat, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(feat, 3 * scale * scale, 3, padding=1),
            nn.PixelShuffle(scale),
        )
        self.arch_spec = {"arch": "test", "scale": scale, "kwargs": {}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SymmetricSR(nn.Module):
    """Convs with kernels symmetric under flips and transposition, then nearest upsampling: equivariant."""

    def __init__(self, scale: int = 3) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 3, 3, padding=1)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                k = conv.weight
                k.copy_((k + k.flip(-1) + k.flip(-2) + k.flip(-1, -2)) / 4)
                k.copy_((k + k.transpose(-1, -2)) / 2)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        return nn.functional.interpolate(y, scale_factor=self.scale, mode="nearest")


class ResidualSR(ConvSR):
    """ConvSR's output as a correction to nearest upsampling: photo-like values, some outside [0, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        near = nn.functional.interpolate(x, scale_factor=self.arch_spec["scale"], mode="nearest")
        return near + self.body(x)


def _lr(b: int = 2, h: int = 13, w: int = 17, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_self_ensemble_of_equivariant_model_equals_plain_output():
    torch.manual_seed(0)
    model, lr = SymmetricSR(), _lr()
    plain = super_resolve(model, lr)
    assert plain.shape == (2, 3, 39, 51)
    torch.testing.assert_close(
        super_resolve(model, lr, InferenceOptions(self_ensemble=True)), plain, atol=1e-5, rtol=0
    )


def test_self_ensemble_averages_the_eight_dihedral_variants():
    torch.manual_seed(1)
    model, lr = ConvSR(), _lr(h=10, w=12)
    with torch.no_grad():  # the 8 symmetries as rotations by k*90 degrees, with and without a mirror
        outs = []
        for k in range(4):
            outs.append(torch.rot90(model(torch.rot90(lr, k, (2, 3))), -k, (2, 3)))
            mirrored = torch.rot90(lr.flip(3), k, (2, 3))
            outs.append(torch.rot90(model(mirrored), -k, (2, 3)).flip(3))
    expected = torch.stack(outs).mean(0)
    result = super_resolve(model, lr, InferenceOptions(self_ensemble=True))
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=0)
    assert (result - super_resolve(model, lr)).abs().max() > 1e-4  # the model is not equivariant


@pytest.mark.parametrize(("tile", "overlap"), [(8, 6), (11, 8), (16, 7)])
def test_tiled_equals_whole_image_when_receptive_field_fits_the_overlap(tile, overlap):
    torch.manual_seed(2)
    model, lr = ConvSR(), _lr(h=30, w=23)
    seen: list[tuple[int, int]] = []
    model.register_forward_hook(lambda _m, inp, _out: seen.append(tuple(inp[0].shape[-2:])))
    whole = super_resolve(model, lr)
    seen.clear()
    tiled = super_resolve(model, lr, InferenceOptions(tile=tile, tile_overlap=overlap))
    assert len(seen) > 4 and max(max(s) for s in seen) <= tile  # it really ran on tiles
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("photo", "self_ensemble"), [("astronaut", False), ("coffee", True), ("chelsea", False)]
)
def test_streamed_uint8_tiles_equal_the_float_tiled_output_bit_for_bit(photo, self_ensemble, monkeypatch):
    """Photographs (scikit-image): tiles quantised into the uint8 output as they are made give exactly
    the image that quantising the stitched float output gives; the model sees tiles only, and no
    float array bigger than one tile's output is quantised."""
    torch.manual_seed(6)
    model = ResidualSR(scale=3)
    lr = to_float_tensor(getattr(photos, photo)()[:70, :95])
    tile, overlap = 24, 8
    options = InferenceOptions(self_ensemble=self_ensemble, tile=tile, tile_overlap=overlap)
    expected = to_uint8_hwc(super_resolve(model, lr, options))

    seen, quantised = [], []
    model.register_forward_pre_hook(lambda _m, inp: seen.append(tuple(inp[0].shape[-2:])))

    def recording(img, what="image"):
        quantised.append(tuple(img.shape[-2:]))
        return to_uint8_hwc(img, what)

    monkeypatch.setattr(inference, "to_uint8_hwc", recording)
    streamed = super_resolve_uint8(model, lr, options)
    assert streamed.dtype == np.uint8 and streamed.shape == expected.shape == (210, 285, 3)
    assert np.array_equal(streamed, expected)
    tiles = 4 * 6  # rows of tiles start at 0, 16, 32, 46; columns at 0, 16, ..., 64, 71
    assert len(seen) == tiles * (8 if self_ensemble else 1) and max(max(s) for s in seen) <= tile
    assert len(quantised) == tiles and max(max(q) for q in quantised) <= 3 * tile
    # and the tiles stitch to the whole-image result: floats within 1e-5, so at most one level apart
    whole = super_resolve_uint8(model, lr, InferenceOptions(self_ensemble=self_ensemble))
    diff = np.abs(streamed.astype(int) - whole)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    raw = super_resolve(model, lr)
    assert (raw < 0).any() and (raw > 1).any()  # the clamp is exercised too


def test_tiles_without_enough_overlap_differ():
    torch.manual_seed(3)
    model, lr = ConvSR(), _lr(h=30, w=23)
    assert (
        super_resolve(model, lr, InferenceOptions(tile=10, tile_overlap=0)) - super_resolve(model, lr)
    ).abs().max() > 1e-4


def test_tiled_self_ensemble_and_scale_without_arch_spec():
    torch.manual_seed(4)
    model, lr = SymmetricSR(scale=2), _lr(b=1, h=20, w=14)
    expected = super_resolve(model, lr, InferenceOptions(self_ensemble=True))
    torch.testing.assert_close(
        super_resolve(model, lr, InferenceOptions(self_ensemble=True, tile=9, tile_overlap=6)),
        expected,
        atol=1e-5,
        rtol=0,
    )
    torch.testing.assert_close(
        super_resolve(model, lr, InferenceOptions(tile=9, tile_overlap=6), scale=2), super_resolve(model, lr)
    )


def test_runs_in_eval_mode_without_grad_and_restores_mode():
    model = nn.Sequential(nn.Dropout(0.9), ConvSR())
    model.arch_spec = {"scale": 2}
    model.train()
    lr = _lr(b=1, h=8, w=8)
    a, b = super_resolve(model, lr), super_resolve(model, lr)
    torch.testing.assert_close(a, b)  # dropout off
    assert not a.requires_grad and model.training


def test_bf16_autocast_is_close_and_returns_float32():
    torch.manual_seed(5)
    model, lr = ConvSR(), _lr()
    out = super_resolve(model, lr, InferenceOptions(amp=True))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, super_resolve(model, lr), atol=3e-2, rtol=0)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="tile > tile_overlap"):
        super_resolve(ConvSR(), _lr(), InferenceOptions(tile=8, tile_overlap=8))
    with pytest.raises(ValueError, match=r"\(B, 3, h, w\)"):
        super_resolve(ConvSR(), _lr()[0])
    with pytest.raises(ValueError, match=r"\(1, 3, h, w\)"):
        super_resolve_uint8(ConvSR(), _lr(b=2), InferenceOptions(tile=8, tile_overlap=4))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tile": 0}, "tile must"),
        ({"tile": -4}, "tile must"),
        ({"tile": 24.0}, "tile must"),
        ({"tile": 16, "tile_overlap": 16}, "tile_overlap must"),
        ({"tile": 16, "tile_overlap": 20}, "tile_overlap must"),
        ({"tile_overlap": -1}, "tile_overlap must"),
    ],
)
def test_inference_options_name_the_bad_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        InferenceOptions(**kwargs)


def test_inference_options_accept_whole_images_and_tiles():
    assert InferenceOptions().tile is None and InferenceOptions().amp_dtype is None
    assert InferenceOptions(tile=16, tile_overlap=15).tile_overlap == 15
    assert InferenceOptions(amp=True).amp_dtype == torch.bfloat16
