"""`python -m dukd_ray.eval`: PSNR/SSIM of a checkpoint (and/or bicubic) on benchmark sets.

    python -m dukd_ray.eval --arch edsr --scale 4 --preset student --checkpoint ckpt.pth \\
        --data s3://bucket/benchmark --sets Set5,Set14 [--self-ensemble] [--tile 256] [--bicubic]

`--checkpoint` files exported by dukd-ray carry their arch, so `--arch/--scale/--preset` are then
optional; `--arch bicubic` scores the bicubic baseline alone. Without `--data`, the embedded sample
benchmark set is used (built on first use).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dukd_ray.errors import UserError, add_debug_arg, cli_main
from dukd_ray.eval.benchmark import evaluate_bicubic, evaluate_sets, list_sets, load_benchmark_sets
from dukd_ray.eval.inference import InferenceOptions, model_scale
from dukd_ray.eval.scores import SetScores
from dukd_ray.models import build_from_checkpoint
from dukd_ray.models.cli import add_checkpoint_args, resolve_device
from dukd_ray.storage import redact_url

BICUBIC = "bicubic"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dukd_ray.eval", description=__doc__.split("\n\n")[0])
    add_checkpoint_args(p, required=False, extra_archs=(BICUBIC,))
    p.add_argument("--data", help="benchmark root (<Set>/HR, <Set>/LR_bicubic/X<s>); default: the sample set")
    p.add_argument("--sets", help="comma-separated set names (default: every set under --data)")
    p.add_argument("--self-ensemble", action="store_true", help="x8 flip/transpose self-ensemble")
    p.add_argument("--tile", type=int, help="run on LR tiles of this size (large images, little memory)")
    p.add_argument("--tile-overlap", type=int, default=32, help="tile overlap in LR pixels")
    p.add_argument("--bicubic", action="store_true", help="add the bicubic baseline column")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--per-image", action="store_true", help="also print every image's scores")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    add_debug_arg(p)
    return p


def format_table(results: dict[str, dict[str, SetScores]], scale: int, per_image: bool = False) -> str:
    """One row per set, one `PSNR / SSIM` column per method (Y channel, `scale` border cropped)."""
    methods = list(results)
    sets = list(next(iter(results.values())))
    width = max(12, *(len(m) for m in methods))
    lines = [f"x{scale}  PSNR (dB) / SSIM on Y, {scale}-pixel border cropped"]
    lines.append(f"{'set':<16}{'images':>7}  " + "  ".join(f"{m:<{width + 7}}" for m in methods))
    for s in sets:
        rows = [(s, len(results[methods[0]][s]["images"]), {m: results[m][s] for m in methods})]
        if per_image:
            rows += [
                (f"  {n}", 1, {m: results[m][s]["images"][n] for m in methods})
                for n in results[methods[0]][s]["images"]
            ]
        for label, count, scores in rows:
            cells = "  ".join(
                f"{scores[m]['psnr']:>7.4f} / {scores[m]['ssim']:.4f}".ljust(width + 7) for m in methods
            )
            lines.append(f"{label:<16}{count:>7}  {cells}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> str:
    """Evaluate as the arguments say and return the table."""
    if args.arch != BICUBIC and not args.checkpoint:
        raise UserError("--checkpoint is required (or use --arch bicubic for the bicubic baseline)")
    device = resolve_device(args.device)
    options = InferenceOptions(
        self_ensemble=args.self_ensemble, tile=args.tile, tile_overlap=args.tile_overlap, amp=args.bf16
    )
    model = None
    scale = args.scale
    if args.arch != BICUBIC:
        model = build_from_checkpoint(args.checkpoint, args.arch, args.scale, args.preset).to(device)
        scale = scale or model_scale(model)
    if scale is None:
        raise UserError("--scale is required for --arch bicubic")
    data = args.data
    if data is None:
        from dukd_ray.data.samples import default_sample_data

        data = default_sample_data().benchmark_url
    names = [s for s in args.sets.split(",") if s] if args.sets else list_sets(data)
    if not names:
        raise FileNotFoundError(f"no benchmark sets (folders with HR/) under {redact_url(data)}")
    sets = load_benchmark_sets(data, names, scale)
    results: dict[str, dict[str, SetScores]] = {}
    if model is None or args.bicubic:
        results[BICUBIC] = evaluate_bicubic(sets, scale, progress=True)
    if model is not None:
        label = model.arch_spec["arch"] + (" +x8" if args.self_ensemble else "")
        results[label] = evaluate_sets(model, sets, scale, options, progress=True)
    return format_table(results, scale, args.per_image)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """0 with the table printed; 2 (one `error:` line) on a bad flag, file or data set."""
    print(run(build_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
