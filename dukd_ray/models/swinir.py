"""SwinIR (Liang et al. 2021), classical SR with the pixelshuffle upsampler, with BasicSR's `SwinIR` names.

Differences from BasicSR that do not touch the state dict:
- `forward` reflect-pads any input to a multiple of `window_size` and crops the output back, so odd
  benchmark images work (BasicSR pads in its model class, the reference DUKD validation does not).
- Attention uses `scaled_dot_product_attention` (same maths: softmax(q k^T * scale + bias + mask) v).
The `relative_position_index` / `attn_mask` buffers are persistent as in BasicSR (so our files load into
BasicSR strictly), but they are derived from the config: the loader ignores them (`DERIVED_BUFFERS`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dukd_ray.models.blocks import MeanShift, Upsample

DERIVED_BUFFERS = ("relative_position_index", "attn_mask")
SWINIR_MEAN = (0.4488, 0.4371, 0.4040)
NUM_FEAT_UPSAMPLE = 64  # BasicSR hard-codes the reconstruction width


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(b, h, w, c) -> (b * num_windows, ws * ws, c)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """(b * num_windows, ws * ws, c) -> (b, h, w, c)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shifted_window_mask(
    h: int, w: int, ws: int, shift: int, device: torch.device | None = None
) -> torch.Tensor:
    """(num_windows, ws*ws, ws*ws) additive mask: -100 between tokens of different regions after the roll."""
    region = torch.zeros(h, w, device=device)
    bounds = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    for i, hs in enumerate(bounds):
        for j, wsl in enumerate(bounds):
            region[hs, wsl] = i * 3 + j
    ids = window_partition(region.view(1, h, w, 1), ws).squeeze(-1)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def relative_position_index(ws: int) -> torch.Tensor:
    """(ws*ws, ws*ws) index into the (2ws-1)^2 relative-position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[:, :, 0] * (2 * ws - 1) + rel[:, :, 1]


class DropPath(nn.Module):
    """Stochastic depth per sample (training only)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window with a learned relative-position bias."""

    def __init__(
        self,
        dim: int,
        ws: int,
        num_heads: int,
        qkv_bias: bool,
        qk_scale: float | None,
        attn_drop: float,
        drop: float,
    ) -> None:
        super().__init__()
        self.ws = ws
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(ws))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bn, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bn, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1)  # heads, n, n
        if mask is not None:  # (nw, n, n); windows vary fastest along the batch axis, so split it
            nw = mask.shape[0]
            q, k, v = (t.view(bn // nw, nw, self.num_heads, n, -1) for t in (q, k, v))
            bias = bias.unsqueeze(0) + mask.unsqueeze(1)  # nw, heads, n, n
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=bias.to(q.dtype),
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )
        out = out.reshape(bn, self.num_heads, n, -1)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(bn, n, c)))


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention + MLP, both pre-norm with residuals."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        if min(input_resolution) <= window_size:  # as BasicSR: one window covers the training patch
            window_size, shift_size = min(input_resolution), 0
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        mask = shifted_window_mask(*input_resolution, window_size, shift_size) if shift_size > 0 else None
        self.register_buffer("attn_mask", mask)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        h, w = x_size
        b, _, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        mask = None
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            if tuple(x_size) == tuple(self.input_resolution):
                mask = self.attn_mask
            else:
                mask = shifted_window_mask(h, w, self.window_size, self.shift_size, device=x.device)
        x = self.attn(window_partition(x, self.window_size), mask)
        x = window_reverse(x, self.window_size, h, w)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """`blocks`: alternating plain and half-window-shifted Swin blocks."""

    def __init__(
        self, depth: int, window_size: int, drop_path: Sequence[float], use_checkpoint: bool, **kw
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                window_size=window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                drop_path=drop_path[i],
                **kw,
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        for blk in self.blocks:
            x = checkpoint(blk, x, x_size, use_reentrant=False) if self.use_checkpoint else blk(x, x_size)
        return x


def residual_conv(dim: int, resi_connection: str) -> nn.Module:
    """The conv closing each RSTB and the body: one 3x3 conv, or BasicSR's parameter-saving 3-conv stack."""
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1),
        )
    raise ValueError(f"resi_connection must be '1conv' or '3conv', got {resi_connection!r}")


def tokens_to_image(x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *x_size)


class RSTB(nn.Module):
    """Residual Swin Transformer block: `residual_group` then `conv` on the image, plus the skip."""

    def __init__(self, dim: int, resi_connection: str, **kw) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim=dim, **kw)
        self.conv = residual_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        y = self.conv(tokens_to_image(self.residual_group(x, x_size), x_size))
        return y.flatten(2).transpose(1, 2) + x


class PatchEmbed(nn.Module):
    """Image -> tokens (patch size 1), with BasicSR's optional `patch_embed.norm`."""

    def __init__(self, dim: int, patch_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


def reflect_pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad bottom/right to a multiple; repeated so inputs smaller than the pad still work."""
    while True:
        pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
        if not (pad_h or pad_w):
            return x
        step_h, step_w = min(pad_h, x.shape[-2] - 1), min(pad_w, x.shape[-1] - 1)
        if (pad_h and step_h < 1) or (pad_w and step_w < 1):
            raise ValueError(f"cannot reflect-pad a {tuple(x.shape[-2:])} input (needs at least 2x2 pixels)")
        x = F.pad(x, (0, step_w, 0, step_h), mode="reflect")


class SwinIR(nn.Module):
    """conv_first -> RSTBs + norm -> conv_after_body (+skip) -> conv_before_upsample, upsample, conv_last.

    The defaults are BasicSR's `SwinIR` defaults; the paper's teacher is SwinIR-M for classical SR
    (`teacher` preset: embed 180, six stages of depth 6, window 8, MLP ratio 2, `img_size` 48) and its
    student the small variant (`student`: embed 60, four stages). Inputs of any size work: they are
    reflect-padded to a multiple of `window_size` and the output is cropped back.

    Args:
        upscale: 2, 3 or 4.
        img_size: training patch size; it sizes the attention masks built at construction (64).
        patch_size: must be 1 for SR (each pixel is a token).
        in_chans: input and output channels (3, RGB).
        embed_dim: token channels (96; 180 for SwinIR-M, 60 for the small student).
        depths: Swin blocks per residual stage (RSTB), one entry per stage.
        num_heads: attention heads per stage (same length as `depths`).
        window_size: side of the attention windows (7; 8 for the classical-SR releases).
        mlp_ratio: hidden width of each block's MLP over `embed_dim` (4.0; 2.0 for the releases).
        qkv_bias: learn a bias on the query/key/value projection (True).
        qk_scale: attention scale; None means head_dim ** -0.5.
        drop_rate: dropout after the embedding and in the MLPs (0.0).
        attn_drop_rate: dropout on the attention weights (0.0).
        drop_path_rate: stochastic-depth rate, spread linearly over the blocks (0.1; inactive in eval).
        ape: add an absolute position embedding (False).
        patch_norm: LayerNorm after the patch embedding (True).
        use_checkpoint: activation checkpointing per block, trading compute for memory (False).
        img_range: inputs are scaled to [0, img_range] (1.0).
        upsampler: only "pixelshuffle" (classical SR) is supported.
        resi_connection: "1conv" (one 3x3 conv) or "3conv" closing each stage.
    """

    def __init__(
        self,
        upscale: int,
        img_size: int = 64,
        patch_size: int = 1,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        img_range: float = 1.0,
        upsampler: str = "pixelshuffle",
        resi_connection: str = "1conv",
    ) -> None:
        super().__init__()
        if upsampler != "pixelshuffle":
            raise ValueError(f"upsampler {upsampler!r} is not supported; only 'pixelshuffle' (classical SR)")
        if patch_size != 1:
            raise ValueError(f"patch_size must be 1 for SR (got {patch_size})")
        if len(depths) != len(num_heads):
            raise ValueError(
                f"depths {list(depths)} and num_heads {list(num_heads)} must have the same length"
            )
        self.upscale = upscale
        self.window_size = window_size
        self.shift = MeanShift(SWINIR_MEAN if in_chans == 3 else (0.0,) * in_chans, img_range)
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        self.ape = ape
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, img_size * img_size, embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        total = sum(depths)  # stochastic depth rising linearly over all blocks (torch.linspace, meta-safe)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            RSTB(
                dim=embed_dim,
                resi_connection=resi_connection,
                input_resolution=(img_size, img_size),
                depth=depth,
                num_heads=heads,
                window_size=window_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[start : start + depth],
                use_checkpoint=use_checkpoint,
            )
            for depth, heads, start in zip(depths, num_heads, starts, strict=True)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = residual_conv(embed_dim, resi_connection)
        self.conv_before_upsample = nn.Sequential(
            nn.Conv2d(embed_dim, NUM_FEAT_UPSAMPLE, 3, 1, 1), nn.LeakyReLU(inplace=True)
        )
        self.upsample = Upsample(upscale, NUM_FEAT_UPSAMPLE)
        self.conv_last = nn.Conv2d(NUM_FEAT_UPSAMPLE, in_chans, 3, 1, 1)
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x_size = (x.shape[2], x.shape[3])
        x = self.patch_embed(x)
        if self.ape:
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        for layer in self.layers:
            x = layer(x, x_size)
        return tokens_to_image(self.norm(x), x_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.shift.normalize(reflect_pad_to_multiple(x, self.window_size))
        x = self.conv_first(x)
        x = x + self.conv_after_body(self.forward_features(x))
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        return self.shift.denormalize(x)[..., : h * self.upscale, : w * self.upscale]


def _init_weights(m: nn.Module) -> None:
    """BasicSR's init: truncated-normal Linear weights, zero biases, unit LayerNorm."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
