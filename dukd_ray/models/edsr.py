"""EDSR (Lim et al. 2017) with BasicSR's `EDSR` names, so official BasicSR files load as they are."""

from __future__ import annotations

from torch import nn

from dukd_ray.models.blocks import ResidualBlockNoBN, ResidualTrunkSR


class EDSR(ResidualTrunkSR):
    """conv_first -> body (residual blocks) -> conv_after_body (+skip) -> upsample -> conv_last.

    The defaults are BasicSR's `EDSR` defaults (its "baseline" f64b16); the paper's sizes are the
    `teacher` (f256b32) and `student` (f64b32) presets, both with `res_scale=0.1`.

    Args:
        upscale: 2, 3 or 4; x4 is two x2 pixel-shuffle stages (`upsample.0`, `upsample.2`).
        num_in_ch: input channels (3, RGB).
        num_out_ch: output channels (3, RGB).
        num_feat: channels of every body conv (64; 256 in the official large EDSR).
        num_block: residual blocks in the body (16; 32 in the large EDSR).
        res_scale: residual branch multiplier (1.0; the large EDSR uses 0.1 to train stably).
        img_range: the network works on inputs scaled to [0, img_range] (255, as EDSR was trained).
        rgb_mean: mean subtracted before and added after the network, per channel in [0, 1]
            (DIV2K's RGB mean, as in BasicSR).
    """

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
        super().__init__(
            lambda: nn.Sequential(*(ResidualBlockNoBN(num_feat, res_scale) for _ in range(num_block))),
            upscale,
            num_in_ch,
            num_out_ch,
            num_feat,
            img_range,
            rgb_mean,
        )
