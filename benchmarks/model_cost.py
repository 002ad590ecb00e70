"""What the student saves: params, MACs, peak memory and CPU latency of teacher vs student, per arch.

    python benchmarks/model_cost.py            # Markdown table (README / docs/deploy.md)
    python benchmarks/model_cost.py --json     # machine-readable, with student/teacher ratios
    python benchmarks/model_cost.py --quick    # time on a 4x smaller LR side (teachers take minutes on CPU)

Params, MACs and peak memory are counted at the reference input (x4, 320x180 LR -> 1280x720) from a
shapes-only forward (`dukd_ray.eval.cost.measure_cost`); latency is measured here, in this run,
on randomly initialised weights (cost does not depend on the weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

from dukd_ray.eval.cost import (
    DEFAULT_LR_SIZE,
    ModelCost,
    cost_ratios,
    format_cost_table,
    measure_cost,
    measure_latency,
)
from dukd_ray.models import ARCHS, PRESET_NAMES, build_arch

QUICK_DIVISOR = 4  # --quick: 80x45 LR instead of 320x180 (1/16 of the pixels)


def _size(text: str) -> tuple[int, int]:
    """'320x180' (width x height, as people write it) -> (h, w)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 320x180, got {text!r}") from None
    return h, w


def measure_arch(
    arch: str,
    scale: int,
    presets: tuple[str, str],
    lr_size: tuple[int, int],
    latency_size: tuple[int, int] | None,
    repeats: int,
) -> dict[str, ModelCost]:
    """{"teacher": cost, "student": cost} of one arch; latency on `latency_size` unless None."""
    costs = {}
    for role, preset in zip(("teacher", "student"), presets, strict=True):
        torch.manual_seed(0)
        model = build_arch(arch, scale, preset).eval()
        cost = measure_cost(model, lr_size)
        if latency_size is not None:
            seconds = measure_latency(model, latency_size, "cpu", repeats=repeats)
            cost = dataclasses.replace(
                cost, latency_s=seconds, latency_lr_size=latency_size, latency_device="cpu"
            )
        costs[role] = cost
    return costs


def _latency_note(setup: dict) -> str:
    if setup["latency_lr_size_wxh"] is None:
        return "latency not measured"
    quick = " (--quick: smaller input than the counts)" if setup["quick"] else ""
    return (
        f"CPU latency ({setup['torch_threads']} threads, median of {setup['repeats']}) "
        f"on LR {setup['latency_lr_size_wxh']}{quick}"
    )


def to_markdown(costs: dict[str, dict[str, ModelCost]], setup: dict) -> str:
    """The cost table and the ratio table, with a line saying what was measured on what."""
    lines = [
        f"x{setup['scale']}, LR {setup['lr_size_wxh']} -> {setup['hr_size_wxh']}; {_latency_note(setup)}",
        "",
        format_cost_table({f"{arch} {role}": c for arch, pair in costs.items() for role, c in pair.items()}),
        "",
        "| arch | student / teacher: params | MACs | peak memory | latency |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for arch, pair in costs.items():
        q = cost_ratios(pair["student"], pair["teacher"])
        lat = "-" if q["latency"] is None else f"{q['latency']:.2f}"
        lines.append(f"| {arch} | {q['params']:.2f} | {q['macs']:.2f} | {q['peak_memory']:.2f} | {lat} |")
    return "\n".join(lines)


def to_json(costs: dict[str, dict[str, ModelCost]], setup: dict) -> str:
    archs = {
        arch: {
            **{role: c.to_dict() for role, c in pair.items()},
            "ratios": cost_ratios(pair["student"], pair["teacher"]),
        }
        for arch, pair in costs.items()
    }
    return json.dumps({**setup, "archs": archs}, indent=2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print JSON instead of the Markdown tables")
    p.add_argument("--quick", action="store_true", help=f"time on the LR size / {QUICK_DIVISOR} per side")
    p.add_argument("--no-latency", action="store_true", help="skip timing (params, MACs, memory only)")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument(
        "--presets",
        nargs=2,
        default=["teacher", "student"],
        choices=PRESET_NAMES,
        metavar=("TEACHER", "STUDENT"),
    )
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--lr-size", type=_size, default=DEFAULT_LR_SIZE, metavar="WxH", help="default 320x180")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per model (median), after one warm-up")
    args = p.parse_args(argv)

    h, w = args.lr_size
    latency_size = None
    if not args.no_latency:
        latency_size = (max(2, h // QUICK_DIVISOR), max(2, w // QUICK_DIVISOR)) if args.quick else (h, w)
    costs = {}
    for arch in args.archs:
        print(f"measuring {arch} ...", file=sys.stderr, flush=True)
        costs[arch] = measure_arch(arch, args.scale, tuple(args.presets), (h, w), latency_size, args.repeats)
    setup = {
        "scale": args.scale,
        "lr_size_wxh": f"{w}x{h}",
        "hr_size_wxh": f"{w * args.scale}x{h * args.scale}",
        "latency_lr_size_wxh": None if latency_size is None else f"{latency_size[1]}x{latency_size[0]}",
        "quick": args.quick,
        "repeats": args.repeats,
        "presets": dict(zip(("teacher", "student"), args.presets, strict=True)),
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(to_json(costs, setup) if args.json else to_markdown(costs, setup))
    return 0


if __name__ == "__main__":
    sys.exit(main())
