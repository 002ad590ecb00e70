"""uint8 images <-> float tensors: the one quantisation rule between files and models.

Files and metrics hold RGB uint8 HWC arrays; models take float (B, 3, H, W) in [0, 1]. A model's
output becomes an image the way a saved PNG does (clamp, round(v * 255)), so what is scored is
what would be written.
"""

from __future__ import annotations

import numpy as np
import torch

Image = np.ndarray | torch.Tensor
# float64 elements quantised at a time: float32 (v * 255) would round some v to a .5 tie and back
# (the product needs 32 bits), so the rule runs in float64, a band of rows at a time, never whole images
CHUNK_ELEMENTS = 1 << 22


def to_float_tensor(
    img: np.ndarray, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """RGB uint8 HWC -> float (1, 3, H, W) in [0, 1]: the model-input side of `to_uint8_hwc`."""
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].to(device=device, dtype=dtype) / 255.0


def quantise(t: torch.Tensor) -> torch.Tensor:
    """Float values in [0, 1] -> uint8 of the same shape on the same device: clamp, round(v * 255).

    In float64, a band of rows at a time, so no float64 copy of a whole image is ever made.
    """
    t = t.detach()
    out = torch.empty(t.shape, dtype=torch.uint8, device=t.device)
    rows = max(1, CHUNK_ELEMENTS // max(1, t[..., :1, :].numel()))
    for top in range(0, t.shape[-2], rows):
        band = t[..., top : top + rows, :].to(torch.float64, copy=True)
        out[..., top : top + rows, :] = band.clamp_(0, 1).mul_(255.0).round_()
    return out


def to_uint8_hwc(img: Image, what: str = "image") -> np.ndarray:
    """An RGB uint8 HWC array from uint8 HWC numpy or a float (C, H, W) / (1, C, H, W) tensor in [0, 1]."""
    if isinstance(img, torch.Tensor):
        t = img.detach()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3 or not t.is_floating_point():
            raise ValueError(
                f"{what}: expected a float (C, H, W) tensor, got dtype={t.dtype} shape={tuple(t.shape)}"
            )
        return quantise(t).permute(1, 2, 0).cpu().contiguous().numpy()
    if isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3:
        return img
    raise ValueError(
        f"{what}: expected an RGB uint8 HWC numpy array or a float CHW tensor in [0, 1], "
        f"got {type(img).__name__} dtype={getattr(img, 'dtype', None)} shape={getattr(img, 'shape', None)}"
    )
