"""Image decode/encode with errors that name the file.

All images inside dukd-ray are RGB uint8 HWC numpy arrays. Grayscale and RGBA inputs are
converted (and said once per source, not once per image, so logs stay readable).

An image of more than `MAX_IMAGE_PIXELS` (2**28, about 268 M pixels: 16384 x 16384, eight times an
8K photograph) is refused before it is decoded: a small file whose header claims a huge size (a
decompression bomb) would otherwise take the whole memory. PIL's own check is set to the same limit.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from dukd_ray.storage import basename, read_bytes, redact_url, write_bytes_atomic

log = logging.getLogger(__name__)
_converted_modes_said: set[str] = set()

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_IMAGE_PIXELS = 2**28
# PIL warns above its limit and raises above twice it; ours is checked first, from the header alone
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def is_image_name(path: str) -> bool:
    """An image suffix and not a hidden file (macOS `._name.png` resource forks are not images)."""
    name = basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


class ImageDecodeError(ValueError):
    """An image file is corrupt, truncated or not an image."""


def open_image(data: bytes, name: str) -> Image.Image:
    """The image's header read (nothing decoded yet), its size checked against `MAX_IMAGE_PIXELS`;
    an undecodable header or a decompression bomb is an ImageDecodeError naming `name`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our check below says it
            img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:  # over twice the limit: PIL refuses before we see the size
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(name, f"{int(pixels.group(1)):,}" if pixels else "more than") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise _undecodable(name, e) from None
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise _too_large(name, f"{width}x{height} = {width * height:,}")
    return img


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode bytes to RGB uint8 HWC; `name` is used in errors and the conversion notice."""
    img = open_image(data, name)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise _undecodable(name, e) from None
    if img.mode != "RGB":
        if img.mode not in _converted_modes_said:
            _converted_modes_said.add(img.mode)
            log.warning("converting %s images to RGB (first: %s)", img.mode, redact_url(name))
        if img.mode in ("I;16", "I;16L", "I;16B", "I", "F"):
            arr = np.asarray(img).astype(np.float64)
            # 16-bit has a known full scale; a per-image stretch would brighten an HR and its LR differently
            full_scale = 65535.0 if img.mode.startswith("I;16") else max(arr.max(), 1)
            arr = np.clip(arr / full_scale * 255.0, 0, 255).round().astype(np.uint8)
            img = Image.fromarray(arr)
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _undecodable(name: str, e: BaseException) -> ImageDecodeError:
    return ImageDecodeError(
        f"cannot decode image {redact_url(name)}: {type(e).__name__}: {e} (corrupt or truncated file?)"
    )


def _too_large(name: str, pixels: str) -> ImageDecodeError:
    return ImageDecodeError(
        f"image {redact_url(name)} is {pixels} pixels, over the limit of {MAX_IMAGE_PIXELS:,} (2**28) "
        "pixels: a decompression bomb, or a picture to downscale first"
    )


def read_image(url: str, storage_options: dict[str, Any] | None = None) -> np.ndarray:
    """Read and decode one image from any fsspec URL."""
    return decode_image(read_bytes(url, storage_options), url)


def encode_png(img: np.ndarray) -> bytes:
    """RGB uint8 HWC -> PNG bytes."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 HWC array, got dtype={img.dtype} shape={img.shape}")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def write_png(url: str, img: np.ndarray, storage_options: dict[str, Any] | None = None) -> None:
    """Write an RGB uint8 HWC image as PNG, atomically."""
    write_bytes_atomic(url, encode_png(img), storage_options)
