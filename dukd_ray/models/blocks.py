"""Building blocks shared by the CNN archs, with BasicSR's module names (`conv1`, `conv2`, `upsample.{i}`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

SUPPORTED_SCALES = (2, 3, 4)


class ResidualBlockNoBN(nn.Module):
    """conv-ReLU-conv with a scaled identity skip (EDSR's residual block, BasicSR's names)."""

    def __init__(self, num_feat: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class Upsample(nn.Sequential):
    """Conv + PixelShuffle stages: one x3 stage, or log2(scale) x2 stages (keys `0`, `2`, ...)."""

    def __init__(self, scale: int, num_feat: int) -> None:
        if scale == 3:
            layers: list[nn.Module] = [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        elif scale in (2, 4):
            layers = []
            for _ in range(scale.bit_length() - 1):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        else:
            raise ValueError(f"upsample scale {scale} is not supported; supported: {SUPPORTED_SCALES}")
        super().__init__(*layers)


class MeanShift(nn.Module):
    """Subtract the data-set mean and multiply by `img_range` (and back), as BasicSR's forward does.

    The mean is a non-persistent buffer: it follows `.to(device)` but is not part of the state dict,
    exactly like BasicSR's plain `self.mean` attribute, so key sets stay identical.
    """

    def __init__(self, rgb_mean: tuple[float, ...] | list[float], img_range: float) -> None:
        super().__init__()
        self.img_range = img_range
        self.register_buffer(
            "mean", torch.tensor(rgb_mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) * self.img_range

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.img_range + self.mean.to(x.dtype)


class ResidualTrunkSR(nn.Module):
    """EDSR/RCAN's shared frame: conv_first -> body -> conv_after_body (+skip) -> upsample -> conv_last.

    `make_body` runs between conv_first and conv_after_body so parameters are created (and seeded
    initialisation draws random numbers) in BasicSR's order.
    """

    def __init__(
        self,
        make_body: Callable[[], nn.Module],
        upscale: int,
        num_in_ch: int,
        num_out_ch: int,
        num_feat: int,
        img_range: float,
        rgb_mean: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.shift = MeanShift(rgb_mean, img_range)
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = make_body()
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(self.shift.normalize(x))
        x = x + self.conv_after_body(self.body(x))
        return self.shift.denormalize(self.conv_last(self.upsample(x)))
