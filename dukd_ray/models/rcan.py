"""RCAN (Zhang et al. 2018) with BasicSR's `RCAN` parameter names.

Official EDSR-PyTorch-style RCAN files use other names; `checkpoint.py` maps them on load.
"""

from __future__ import annotations

import torch
from torch import nn

from dukd_ray.models.blocks import ResidualTrunkSR


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation gate; `attention.1` / `attention.3` are the two 1x1 convs."""

    def __init__(self, num_feat: int, squeeze_factor: int) -> None:
        super().__init__()
        if num_feat // squeeze_factor < 1:
            raise ValueError(f"squeeze_factor {squeeze_factor} leaves no channels of num_feat {num_feat}")
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(num_feat, num_feat // squeeze_factor, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat // squeeze_factor, num_feat, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class RCAB(nn.Module):
    """Residual channel attention block: `rcab.0` conv, ReLU, `rcab.2` conv, `rcab.3` attention."""

    def __init__(self, num_feat: int, squeeze_factor: int, res_scale: float) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.rcab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat, 3, 1, 1),
            nn.ReLU(True),
            nn.Conv2d(num_feat, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeeze_factor),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.rcab(x) * self.res_scale


class ResidualGroup(nn.Module):
    """`residual_group` (RCABs) then the group's `conv`, with a skip over the whole group."""

    def __init__(self, num_feat: int, num_block: int, squeeze_factor: int, res_scale: float) -> None:
        super().__init__()
        self.residual_group = nn.Sequential(
            *(RCAB(num_feat, squeeze_factor, res_scale) for _ in range(num_block))
        )
        self.conv = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.residual_group(x))


class RCAN(ResidualTrunkSR):
    """conv_first -> body (residual groups) -> conv_after_body (+skip) -> upsample -> conv_last.

    The defaults are BasicSR's `RCAN` defaults; the paper's teacher is the original RCAN (10 groups of
    20 blocks, the `teacher` preset), its student has 6 blocks per group (`student`).

    Args:
        upscale: 2, 3 or 4; x4 is two x2 pixel-shuffle stages (`upsample.0`, `upsample.2`).
        num_in_ch: input channels (3, RGB).
        num_out_ch: output channels (3, RGB).
        num_feat: channels of every body conv (64).
        num_group: residual groups in the body (10).
        num_block: residual channel-attention blocks per group (16; 20 in the original RCAN).
        squeeze_factor: channel reduction inside each attention gate (16).
        res_scale: residual branch multiplier of each block (1.0).
        img_range: the network works on inputs scaled to [0, img_range] (255).
        rgb_mean: mean subtracted before and added after the network, per channel in [0, 1]
            (DIV2K's RGB mean, as in BasicSR).
    """

    def __init__(
        self,
        upscale: int,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_group: int = 10,
        num_block: int = 16,
        squeeze_factor: int = 16,
        res_scale: float = 1.0,
        img_range: float = 255.0,
        rgb_mean: tuple[float, ...] = (0.4488, 0.4371, 0.4040),
    ) -> None:
        super().__init__(
            lambda: nn.Sequential(
                *(ResidualGroup(num_feat, num_block, squeeze_factor, res_scale) for _ in range(num_group))
            ),
            upscale,
            num_in_ch,
            num_out_ch,
            num_feat,
            img_range,
            rgb_mean,
        )
