"""EDSR (Lim et al. 2017) with BasicSR's `EDSR` names, so official BasicSR files load as they are."""

from __future__ import annotations

import torch
from torch import nn

from dukd_ray.models.blocks import MeanShift, ResidualBlockNoBN, Upsample


class EDSR(nn.Module):
    """conv_first -> body (residual blocks) -> conv_after_body (+skip) -> upsample -> conv_last."""

    def __init__(
        self,
        upscale: int,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 16,
        res_scale: float = 1.0,
        img_range: float = 255.0,
        rgb_mean: tuple[float, ...] = (0.4488, 0.4371, 0.4040),
    ) -> None:
        super().__init__()
        self.shift = MeanShift(rgb_mean, img_range)
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(ResidualBlockNoBN(num_feat, res_scale) for _ in range(num_block)))
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(self.shift.normalize(x))
        x = x + self.conv_after_body(self.body(x))
        return self.shift.denormalize(self.conv_last(self.upsample(x)))
