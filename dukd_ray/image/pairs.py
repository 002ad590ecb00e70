"""Reading an LR/HR pair under the one rule of SR data: HR = scale x LR, after mod-cropping the HR.

Training sources (DIV2K layout, the shard packer) and benchmark sets read pairs the same way, so
a pair that would train also scores, and a skewed pair is an error in both, never a silent crop.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dukd_ray.image.io import read_image
from dukd_ray.storage import basename, redact_url


class PairError(ValueError):
    """An LR/HR pair is incomplete or its sizes disagree with the scale; the message names both files."""


def read_pair(
    hr_url: str, lr_url: str, scale: int, storage_options: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decode (hr, lr) as RGB uint8 HWC, `hr` mod-cropped (a view) so that it is exactly scale x `lr`.

    A missing file is a FileNotFoundError naming it and its partner; disagreeing sizes a PairError.
    """
    lr = _read(lr_url, "LR", f"HR {redact_url(hr_url)}", storage_options)
    hr = _read(hr_url, "HR", f"LR {redact_url(lr_url)}", storage_options)
    check_pair_shapes(hr.shape[:2], lr.shape[:2], scale, hr_url, lr_url)
    return hr[: lr.shape[0] * scale, : lr.shape[1] * scale], lr


def check_pair_shapes(
    hr_hw: tuple[int, int], lr_hw: tuple[int, int], scale: int, hr_url: str, lr_url: str
) -> None:
    """The pair rule: the HR, cropped to multiples of `scale` (mod-crop), is exactly scale x the LR.

    A PairError naming both files otherwise; used on decoded images and on sizes read from headers.
    """
    (hh, hw), (lh, lw) = hr_hw, lr_hw
    cropped = (hh - hh % scale, hw - hw % scale)
    if cropped != (lh * scale, lw * scale):
        raise PairError(
            f"LR/HR size mismatch at x{scale}: LR {redact_url(lr_url)} is {lh}x{lw}, "
            f"HR {redact_url(hr_url)} is {cropped[0]}x{cropped[1]} after mod-crop; sizes disagree "
            f"with scale {scale}: HR {basename(hr_url)} should be {scale}x LR {basename(lr_url)}, "
            f"i.e. {lh * scale}x{lw * scale}"
        )


def _read(url: str, kind: str, partner: str, storage_options: dict[str, Any] | None) -> np.ndarray:
    try:
        return read_image(url, storage_options)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing {kind} image {redact_url(url)} for {partner}") from None
