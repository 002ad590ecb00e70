"""Command-line pieces every CLI that loads a checkpoint shares (upscale, export, eval).

One set of flags and one list of setup errors, so the commands agree on what `--arch` accepts and
on which failures are the user's command line (exit status 2) rather than a bug.
"""

from __future__ import annotations

import argparse

from torch import nn

from dukd_ray.models.checkpoint import CheckpointError, build_from_checkpoint
from dukd_ray.models.presets import PRESET_NAMES
from dukd_ray.models.registry import ARCHS
from dukd_ray.storage import StorageError

# what a wrong command line (bad checkpoint, missing input, unreachable storage) raises before any work
SETUP_ERRORS = (CheckpointError, FileNotFoundError, ValueError, StorageError)


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """--checkpoint and, for foreign checkpoints, --arch/--scale/--preset."""
    p.add_argument(
        "--checkpoint", required=True, help=".pth/.safetensors from a run, or a foreign checkpoint"
    )
    p.add_argument("--arch", choices=sorted(ARCHS), help="only for foreign checkpoints (ours carry it)")
    p.add_argument("--scale", type=int, help="only for foreign checkpoints (ours carry it)")
    p.add_argument("--preset", choices=PRESET_NAMES, help="model size of a foreign checkpoint")


def model_from_args(args: argparse.Namespace) -> nn.Module:
    """The checkpoint's model in eval mode, on the CPU."""
    return build_from_checkpoint(args.checkpoint, arch=args.arch, scale=args.scale, preset=args.preset)
