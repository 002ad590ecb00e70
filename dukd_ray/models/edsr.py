"""EDSR (Lim et al. 2017) with BasicSR's `EDSR` names, so official BasicSR files load as they are."""

from __future__ import annotations

from torch import nn

from dukd_ray.models.blocks import ResidualBlockNoBN, ResidualTrunkSR


class EDSR(ResidualTrunkSR):
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
        super().__init__(
            lambda: nn.Sequential(*(ResidualBlockNoBN(num_feat, res_scale) for _ in range(num_block))),
            upscale,
            num_in_ch,
            num_out_ch,
            num_feat,
            img_range,
            rgb_mean,
        )
