"""Command-line pieces every CLI that loads a checkpoint shares (upscale, export, eval).

One set of flags, one `--device` parser and one refusal of outputs that would replace an input, so
the commands agree on what `--arch` accepts; which failures are the user's command line (exit
status 2) rather than a bug is `dukd_ray.errors` (SETUP_ERRORS here is its USER_ERRORS).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch
from torch import nn

from dukd_ray.errors import USER_ERRORS, UserError
from dukd_ray.models.blocks import SUPPORTED_SCALES
from dukd_ray.models.checkpoint import build_from_checkpoint
from dukd_ray.models.presets import PRESET_NAMES
from dukd_ray.models.registry import ARCHS
from dukd_ray.storage import get_fs, is_local, redact_url

# what a wrong command line (bad checkpoint, missing input, unreachable storage) raises before any work
SETUP_ERRORS = USER_ERRORS
DEVICES = "auto (CUDA if available), cpu, cuda, cuda:N, mps"


def add_checkpoint_args(
    p: argparse.ArgumentParser, required: bool = True, extra_archs: tuple[str, ...] = ()
) -> None:
    """--checkpoint and, for foreign checkpoints, --arch/--scale/--preset (`extra_archs`: other
    --arch values a CLI understands, such as the eval CLI's `bicubic`, which needs no checkpoint)."""
    p.add_argument(
        "--checkpoint", required=required, help=".pth/.safetensors from a run, or a foreign checkpoint"
    )
    p.add_argument(
        "--arch", choices=[*sorted(ARCHS), *extra_archs], help="only for foreign checkpoints (ours carry it)"
    )
    p.add_argument(
        "--scale", type=int, choices=SUPPORTED_SCALES, help="only for foreign checkpoints (ours carry it)"
    )
    p.add_argument("--preset", choices=PRESET_NAMES, help="model size of a foreign checkpoint")


def model_from_args(args: argparse.Namespace) -> nn.Module:
    """The checkpoint's model in eval mode, on the CPU."""
    return build_from_checkpoint(args.checkpoint, arch=args.arch, scale=args.scale, preset=args.preset)


def resolve_device(name: str) -> torch.device:
    """`--device`: `auto` -> CUDA when available, else CPU; anything else as torch.device reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r}: not a device; expected {DEVICES}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def location(url: str, storage_options: dict[str, Any] | None = None) -> tuple[str, str]:
    """What a path/URL names, comparable: (protocol, path), local paths with links and `..` resolved."""
    if is_local(url):
        return "file", os.path.realpath(url.removeprefix("file://"))
    fs, path = get_fs(url, storage_options)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol, path.rstrip("/")


def same_location(a: str, b: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether two paths/URLs name the same file or folder."""
    return location(a, storage_options) == location(b, storage_options)


def refuse_overwriting(out: str, inp: str, out_flag: str, in_flag: str) -> None:
    """A UserError when the output `out` would replace the input `inp`."""
    if same_location(out, inp):
        raise UserError(
            f"{out_flag} {redact_url(out)} is the {in_flag} {redact_url(inp)}: the output would replace "
            f"the input; choose another {out_flag}"
        )
