"""Architectures: shapes, parameter counts, BasicSR key names, SwinIR maths and padding, build_arch errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from dukd_ray.models import PRESET_NAMES, build_arch
from dukd_ray.models.swinir import WindowAttention, relative_position_index, shifted_window_mask

ARCHS = ("edsr", "rcan", "swinir")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(cin: int, cout: int, k: int = 3) -> int:
    return cin * cout * k * k + cout


def meta_model(arch: str, scale: int, preset: str) -> torch.nn.Module:
    with torch.device("meta"):  # full-size presets: no memory, no init time
        return build_arch(arch, scale, preset)


@pytest.mark.parametrize("arch", ARCHS)
def test_output_shape_every_scale(arch):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 10, 13)  # not a multiple of SwinIR's tiny window (4)
    for preset in ("tiny_teacher", "tiny_student"):
        for scale in (2, 3, 4):
            model = build_arch(arch, scale, preset).eval()
            with torch.no_grad():
                y = model(x)
            assert y.shape == (2, 3, 10 * scale, 13 * scale), (preset, scale)
            assert torch.isfinite(y).all()


def edsr_params(f: int, b: int, scale: int) -> int:
    """Hand count: head, b residual blocks of two convs, conv_after_body, pixel-shuffle stages, tail."""
    up = conv(f, 9 * f) if scale == 3 else (scale // 2) * conv(f, 4 * f)
    return conv(3, f) + b * 2 * conv(f, f) + conv(f, f) + up + conv(f, 3)


def rcan_params(f: int, g: int, b: int, squeeze: int, scale: int) -> int:
    rcab = 2 * conv(f, f) + conv(f, f // squeeze, 1) + conv(f // squeeze, f, 1)
    up = conv(f, 9 * f) if scale == 3 else (scale // 2) * conv(f, 4 * f)
    return conv(3, f) + g * (b * rcab + conv(f, f)) + conv(f, f) + up + conv(f, 3)


@pytest.mark.parametrize("scale", (2, 3, 4))
def test_cnn_parameter_counts_match_hand_count(scale):
    for preset, (f, b) in {
        "teacher": (256, 32),
        "student": (64, 32),
        "tiny_teacher": (32, 4),
        "tiny_student": (16, 2),
    }.items():
        assert n_params(meta_model("edsr", scale, preset)) == edsr_params(f, b, scale), preset
    for preset, (f, g, b, r) in {
        "teacher": (64, 10, 20, 16),
        "student": (64, 10, 6, 16),
        "tiny_teacher": (16, 2, 2, 4),
        "tiny_student": (16, 1, 2, 4),
    }.items():
        assert n_params(meta_model("rcan", scale, preset)) == rcan_params(f, g, b, r, scale), preset


def test_measured_parameter_counts_x4():
    measured = {arch: {p: n_params(meta_model(arch, 4, p)) for p in PRESET_NAMES} for arch in ARCHS}
    assert measured == {
        "edsr": {
            "teacher": 43_089_923,
            "student": 2_699_267,
            "tiny_teacher": 158_979,
            "tiny_student": 31_043,
        },
        "rcan": {"teacher": 15_592_355, "student": 5_171_315, "tiny_teacher": 45_555, "tiny_student": 33_659},
        "swinir": {
            "teacher": 11_900_199,
            "student": 1_235_439,
            "tiny_teacher": 347_315,
            "tiny_student": 309_895,
        },
    }
    # published sizes: EDSR 43 M, RCAN 15.6 M, SwinIR-M (classical) 11.9 M
    assert 42.5e6 < measured["edsr"]["teacher"] < 43.5e6
    assert 2.6e6 < measured["edsr"]["student"] < 2.8e6
    assert 15.5e6 < measured["rcan"]["teacher"] < 15.7e6
    assert 11.8e6 < measured["swinir"]["teacher"] < 12.0e6


def test_basicsr_key_names():
    edsr = build_arch("edsr", 4, "tiny_student").state_dict()
    assert {"conv_first.weight", "body.1.conv2.bias", "conv_after_body.weight", "upsample.2.weight"} <= set(
        edsr
    )
    assert "conv_last.bias" in edsr and not any("mean" in k for k in edsr)
    edsr3 = build_arch("edsr", 3, "tiny_student").state_dict()
    assert "upsample.0.weight" in edsr3 and "upsample.2.weight" not in edsr3
    rcan = build_arch("rcan", 2, "tiny_teacher").state_dict()
    assert {
        "body.1.residual_group.1.rcab.0.weight",
        "body.1.residual_group.1.rcab.2.weight",
        "body.1.residual_group.1.rcab.3.attention.1.weight",
        "body.1.residual_group.1.rcab.3.attention.3.bias",
        "body.1.conv.weight",
        "conv_after_body.weight",
    } <= set(rcan)
    swin = build_arch("swinir", 4, "tiny_teacher").state_dict()
    block = "layers.1.residual_group.blocks.1."
    assert {
        "patch_embed.norm.weight",
        "norm.weight",
        "conv_before_upsample.0.weight",
        "upsample.2.weight",
        "layers.1.conv.weight",
        block + "attn_mask",
        block + "attn.relative_position_bias_table",
        block + "attn.relative_position_index",
        block + "attn.qkv.weight",
        block + "mlp.fc2.bias",
        block + "norm2.weight",
    } <= set(swin)
    assert "layers.0.residual_group.blocks.0.attn_mask" not in swin  # unshifted blocks have none, as BasicSR


def test_arch_spec_is_complete_json_and_rebuilds():
    model = build_arch("swinir", 3, "tiny_student", embed_dim=16)
    spec = json.loads(json.dumps(model.arch_spec))
    assert spec["arch"] == "swinir" and spec["scale"] == 3
    assert spec["kwargs"]["embed_dim"] == 16  # kwargs override the preset
    assert spec["kwargs"]["window_size"] == 4 and spec["kwargs"]["drop_path_rate"] == 0.1  # preset + default
    again = build_arch(spec["arch"], spec["scale"], **spec["kwargs"])
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    edsr = build_arch("edsr", 2).arch_spec["kwargs"]
    assert edsr["rgb_mean"] == [0.4488, 0.4371, 0.4040] and edsr["img_range"] == 255.0


def test_build_arch_errors():
    with pytest.raises(ValueError, match=r"num_blocks.*valid arguments: .*num_block"):
        build_arch("edsr", 4, num_blocks=3)
    with pytest.raises(ValueError, match=r"scale 5 .*supported scales"):
        build_arch("rcan", 5)
    with pytest.raises(ValueError, match=r"unknown arch 'vdsr'.*edsr, rcan, swinir"):
        build_arch("vdsr", 4)
    with pytest.raises(ValueError, match=r"unknown preset 'big'.*tiny_student"):
        build_arch("swinir", 4, preset="big")
    with pytest.raises(ValueError, match="scale"):
        build_arch("swinir", 4, upscale=2)


def test_mean_shift_matches_basicsr_convention():
    """EDSR/RCAN normalise as (x - mean) * 255 and undo it: a zero network returns the mean image."""
    model = build_arch("edsr", 2, "tiny_student")
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    y = model(torch.rand(1, 3, 4, 4))
    assert torch.allclose(y, torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1).expand_as(y))


def test_relative_position_index_by_hand():
    # tokens (0,0),(0,1),(1,0),(1,1); index = (dh + 1) * 3 + (dw + 1)
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(relative_position_index(2), expected)


def test_shifted_window_mask_regions():
    mask = shifted_window_mask(8, 8, ws=4, shift=2)
    assert mask.shape == (4, 16, 16)
    zeros_per_row = (mask == 0).sum(-1)
    assert (zeros_per_row[0] == 16).all()  # top-left window: one region
    assert (zeros_per_row[1] == 8).all() and (zeros_per_row[2] == 8).all()  # two 4x2 / 2x4 regions
    assert (zeros_per_row[3] == 4).all()  # bottom-right: four 2x2 regions
    assert set(mask.unique().tolist()) == {-100.0, 0.0}


def test_window_attention_matches_explicit_formula():
    """softmax(q k^T * scale + bias[index] + mask) v, per window, as in BasicSR's WindowAttention."""
    torch.manual_seed(0)
    ws, heads, dim, b = 4, 2, 8, 3
    attn = WindowAttention(dim, ws, heads, qkv_bias=True, qk_scale=None, attn_drop=0.0, drop=0.0).eval()
    mask = shifted_window_mask(8, 8, ws, 2)  # 4 windows
    x = torch.randn(b * 4, ws * ws, dim)
    q, k, v = attn.qkv(x).reshape(b * 4, ws * ws, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    bias = attn.relative_position_bias_table[attn.relative_position_index.view(-1)].view(16, 16, heads)
    logits = (q * (dim // heads) ** -0.5) @ k.transpose(-2, -1) + bias.permute(2, 0, 1)
    logits = logits + mask.repeat(b, 1, 1).unsqueeze(1)  # window index varies fastest along the batch
    expected = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(b * 4, ws * ws, dim))
    assert torch.allclose(attn(x, mask), expected, atol=1e-5)


def test_swinir_pads_reflect_and_crops_back():
    torch.manual_seed(0)
    model = build_arch("swinir", 2, "tiny_student").eval()
    x = torch.rand(1, 3, 10, 7)  # window 4: pad to 12 x 8
    with torch.no_grad():
        y = model(x)
        full = model(F.pad(x, (0, 1, 0, 2), mode="reflect"))
        other = model(F.pad(x, (0, 1, 0, 2), mode="replicate"))
    assert y.shape == (1, 3, 20, 14)
    assert torch.allclose(y, full[..., :20, :14], atol=1e-6)
    assert not torch.allclose(y, other[..., :20, :14], atol=1e-6)  # the padding really is reflect


def test_swinir_tiny_input_smaller_than_window():
    model = build_arch("swinir", 4, "tiny_student", window_size=8, img_size=16).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 3, 5)).shape == (1, 3, 12, 20)


def test_swinir_trains_with_and_without_activation_checkpointing():
    """Gradients reach the relative-position table through the shifted-window mask path; checkpointing
    (recomputation in backward) changes nothing numerically."""
    x = torch.rand(2, 3, 16, 16)  # == img_size: the cached mask buffer is used
    grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(0)
        model = build_arch("swinir", 2, "tiny_student", use_checkpoint=use_checkpoint, drop_path_rate=0.0)
        model(x).mean().backward()
        table = model.layers[0].residual_group.blocks[1].attn.relative_position_bias_table
        assert table.grad is not None and table.grad.abs().sum() > 0
        grads.append(table.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
