"""Upscale photos with a trained model: `python -m dukd_ray.upscale --checkpoint CKPT INPUT... --out DIR`.

Why: distillation exists to deploy the student, so applying a run's `.pth` to a folder of photos
must be one command. Inputs and output may be local paths or any fsspec URL; every result is
written atomically as soon as it is ready, and one bad image is reported by name and skipped
without losing the others (the exit status says something was skipped).
"""

from __future__ import annotations

import argparse
import posixpath
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dukd_ray.errors import UserError, add_debug_arg, cli_main
from dukd_ray.eval.inference import InferenceOptions, model_device, super_resolve_uint8
from dukd_ray.image.convert import to_float_tensor
from dukd_ray.image.io import IMAGE_SUFFIXES, is_image_name, read_image, write_png
from dukd_ray.models.cli import (
    add_checkpoint_args,
    location,
    model_from_args,
    refuse_overwriting,
    resolve_device,
)
from dukd_ray.storage import basename, get_fs, join, list_folder, redact_url


@dataclass(frozen=True)
class UpscaleTask:
    """One image to upscale: where it is read from and where its PNG goes."""

    source: str
    dest: str


def find_images(
    inputs: Sequence[str], out: str, storage_options: dict[str, Any] | None = None
) -> list[UpscaleTask]:
    """Expand files and folders (searched recursively for image suffixes) into tasks writing `<stem>.png`.

    A folder's sub-folders are kept under `out`. Two inputs that would write the same PNG, an `out`
    that is an input folder or a file, and a PNG that would replace an input are errors before
    anything runs, so no result silently overwrites another or an original.
    """
    out_fs, out_path = get_fs(out, storage_options)
    if out_fs.isfile(out_path):
        raise UserError(
            f"--out {redact_url(out)} is a file; expected a folder (new or existing) for the PNGs"
        )
    tasks: list[UpscaleTask] = []
    for inp in inputs:
        fs, path = get_fs(inp, storage_options)
        if fs.isdir(path):
            refuse_overwriting(out, inp, "--out", "input folder")
            found = [rel for rel in list_folder(inp, storage_options, recursive=True) if is_image_name(rel)]
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {redact_url(inp)}")
            for rel in found:
                tasks.append(UpscaleTask(join(inp, rel), join(out, _png_name(rel))))
        elif fs.isfile(path):
            tasks.append(UpscaleTask(inp, join(out, _png_name(basename(path)))))
        else:
            raise FileNotFoundError(f"input not found: {redact_url(inp)}")
    by_dest: dict[str, str] = {}
    for t in tasks:
        if t.dest in by_dest:
            raise ValueError(
                f"{redact_url(by_dest[t.dest])} and {redact_url(t.source)} would both be written to "
                f"{redact_url(t.dest)}; rename one or upscale them into different --out folders"
            )
        by_dest[t.dest] = t.source
    sources = {location(t.source, storage_options) for t in tasks}
    for t in tasks:
        if location(t.dest, storage_options) in sources:
            raise UserError(
                f"--out {redact_url(out)}: the result of {redact_url(t.source)} would be written over the "
                f"input {redact_url(t.dest)}; choose another --out"
            )
    return tasks


def _png_name(rel: str) -> str:
    return posixpath.splitext(rel)[0] + ".png"


def upscale_image(
    model: nn.Module, img: np.ndarray, options: InferenceOptions = InferenceOptions()
) -> np.ndarray:
    """Super-resolve one RGB uint8 image with `model` on its own device.

    With `options.tile` the output is assembled tile by tile in uint8 (see `super_resolve_uint8`):
    peak memory is the uint8 result plus the float LR and one tile's work, whatever the image size.
    """
    lr = to_float_tensor(img, device=model_device(model))
    with torch.inference_mode():
        return super_resolve_uint8(model, lr, options)


def upscale_all(
    model: nn.Module,
    tasks: Sequence[UpscaleTask],
    options: InferenceOptions = InferenceOptions(),
    storage_options: dict[str, Any] | None = None,
) -> list[tuple[str, str]]:
    """Upscale every task, writing each PNG as soon as it is ready; returns (source, reason) of skipped ones.

    Per-image problems (corrupt or missing file, too small, out of memory) skip that image only;
    a failing write is not per-image (the destination is unreachable) and stops the run.
    """
    failures: list[tuple[str, str]] = []
    bar = tqdm(tasks, desc="upscaling", unit="img", file=sys.stderr)
    for task in bar:
        name = redact_url(task.source)
        bar.set_postfix_str(posixpath.basename(name))
        try:
            img = read_image(task.source, storage_options)
            sr = upscale_image(model, img, options)
        except torch.OutOfMemoryError:
            reason = "out of memory (try --tile 256, or a smaller tile)"
        except (ValueError, FileNotFoundError) as e:  # ImageDecodeError is a ValueError
            reason = str(e)
        else:
            write_png(task.dest, sr, storage_options)
            continue
        failures.append((name, reason))
        tqdm.write(f"skipped {name}: {reason}", file=sys.stderr)
    return failures


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dukd_ray.upscale",
        description="Upscale PNG/JPEG images (files or folders, local paths or URLs) with an SR model.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (local or URL); PNGs named after the inputs")
    add_checkpoint_args(p)
    p.add_argument(
        "--tile", type=int, help="run in tiles of N LR pixels (for images that don't fit in memory)"
    )
    p.add_argument("--tile-overlap", type=int, default=32, help="LR pixels shared by neighbouring tiles")
    p.add_argument(
        "--self-ensemble", action="store_true", help="average the 8 flip/transpose variants (x8 time)"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    add_debug_arg(p)
    return p


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns 0 if every image was written, 1 if some were skipped, 2 on a setup error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.amp and device.type != "cuda":
        parser.error(f"--amp (bfloat16) needs a CUDA device, got --device {args.device} -> {device}")
    try:
        options = InferenceOptions(
            self_ensemble=args.self_ensemble, tile=args.tile, tile_overlap=args.tile_overlap, amp=args.amp
        )
    except ValueError as e:  # names the field: --tile / --tile-overlap
        parser.error(str(e))
    model = model_from_args(args)
    tasks = find_images(args.inputs, args.out)
    model = model.to(device).eval()
    failures = upscale_all(model, tasks, options)
    written = len(tasks) - len(failures)
    print(f"wrote {written} of {len(tasks)} images to {redact_url(args.out)}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} image(s) skipped:", file=sys.stderr)
        for name, reason in failures:
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
