"""The upcycled inputs of DUKD: zoom-in cells of the HR patch and the zoomed-out LR patch."""

from __future__ import annotations

import torch

from dukd_ray.image.resize import imresize


def draw_cells(scale: int, n_gt_sub: int, generator: torch.Generator) -> torch.Tensor:
    """`n_gt_sub` distinct indices into the scale x scale grid (row-major), one draw for the batch.

    The draw is `torch.randperm(scale**2, generator=generator)[:n_gt_sub]` (CPU).
    """
    return torch.randperm(scale * scale, generator=generator)[:n_gt_sub]


def zoom_in_cells(hr: torch.Tensor, scale: int, cells: torch.Tensor) -> torch.Tensor:
    """Cut `hr` (B, C, s*h, s*w) into its s x s grid of h x w cells and stack the chosen ones.

    Cell k is grid row k // s, column k % s. The result is (n*B, C, h, w), cell-major: rows
    [j*B, (j+1)*B) hold cell `cells[j]` of every sample. Real HR pixels, used as student *inputs*.
    """
    b, c, hh, ww = hr.shape
    h, w = hh // scale, ww // scale
    grid = hr.view(b, c, scale, h, scale, w).permute(2, 4, 0, 1, 3, 5).reshape(scale * scale, b, c, h, w)
    return grid[cells.to(hr.device)].reshape(-1, c, h, w)


def zoom_out_input(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The LR patch shrunk by 1/scale with MATLAB bicubic, batched on the tensor's own device.

    The output is exactly (h/s, w/s) so that S(x_down) has the LR patch's size; other sizes are an error.
    """
    h, w = lr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(
            f"zoom-out needs the LR patch size ({h}x{w}) divisible by the scale {scale}, so that the "
            "student's output on the shrunk patch matches the patch; use a patch size multiple of the scale"
        )
    return imresize(lr, None, size=(h // scale, w // scale))
