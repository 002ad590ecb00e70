"""The quickstart: the whole DUKD story on one CPU, in minutes, with no download.

Stages (each one's result is recorded in `<out>/quickstart.json` and reused by a later run with the
same settings, unless `--fresh`):

1. data      the embedded photographs -> a DIV2K-layout train set and a held-out benchmark set
2. pack      the train set -> shards in a local object-store folder (the production packer)
3. teacher   a small teacher trained from scratch (`jobs/train_teacher.py`'s code path), because no
             pretrained weights can be downloaded here
4. students  the same small student trained `scratch`, `kd`, `fakd` and `dukd` with the same steps and seeds,
             each through the Ray Train service (streaming the shards, like a cluster run)
5. evaluate  bicubic, the teacher and the students on the held-out set (Y-PSNR / SSIM, MATLAB rules)
6. report    report.md + report.html, psnr_curves.png, crops.png
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dukd_ray.data.pack import pack
from dukd_ray.data.samples import write_sample_data
from dukd_ray.distill import METHODS
from dukd_ray.errors import UserError, add_debug_arg, cli_main
from dukd_ray.eval.benchmark import (
    Pair,
    evaluate_bicubic,
    evaluate_sets,
    load_benchmark_sets,
)
from dukd_ray.eval.scores import SetScores
from dukd_ray.models import build_from_checkpoint
from dukd_ray.report import Report
from dukd_ray.storage import is_local, redact_url, write_bytes_atomic
from dukd_ray.train.cli import apply_args, build_parser, teacher_config, teacher_parser
from dukd_ray.train.config import JobConfig
from dukd_ray.train.outputs import comparison_panels
from dukd_ray.train.report import crops_png, psnr_curves_png
from dukd_ray.train.trainer import run_training

PRESET = "edsr_x4"
STATE_FILE = "quickstart.json"
LR = 1e-3  # tiny nets on a short budget: 10x the paper's rate converges in a few hundred steps


@dataclass
class Budget:
    """How much training each model gets; the same `steps` and `seeds` for every student."""

    teacher_steps: int
    steps: int
    seeds: tuple[int, ...]
    batch_size: int
    patch_size: int
    val_every: int

    def common_flags(self) -> list[str]:
        return [
            "--tiny",
            "--batch-size",
            str(self.batch_size),
            "--set",
            f"data.patch_size={self.patch_size}",
            "--set",
            f"train.val_every={self.val_every}",
            "--set",
            f"train.ckpt_every={self.val_every}",
        ]


class Stages:
    """Runs stages once: a stage whose key (name + settings) is in the state file is reused."""

    def __init__(self, out: str, fresh: bool) -> None:
        self.path = os.path.join(out, STATE_FILE)
        self.state: dict[str, Any] = {}
        if not fresh and os.path.exists(self.path):
            with open(self.path) as f:
                self.state = json.load(f)

    def run(self, title: str, key: str, fn: Callable[[], Any]) -> Any:
        if key in self.state:
            print(f"[quickstart] {title}: reusing the finished stage ({key})", flush=True)
            return self.state[key]
        print(f"[quickstart] {title} ...", flush=True)
        start = time.monotonic()
        value = fn()
        print(f"[quickstart] {title}: done in {time.monotonic() - start:.0f} s", flush=True)
        self.state[key] = value
        write_bytes_atomic(self.path, json.dumps(self.state, indent=1).encode())
        return value


def run(out: str, budget: Budget, fresh: bool = False) -> dict[str, Any]:
    """All stages; returns the evaluation (per-model scores) and writes the report into `out`."""
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    stages = Stages(out, fresh)
    storage = os.path.join(out, "runs")
    data = stages.run("1/6 sample data", "data", lambda: _data(out))
    shards = stages.run("2/6 pack shards", "pack", lambda: _pack(data["train"], out))
    flags = [*budget.common_flags(), "--data", shards, "--val-data", data["benchmark"], "--storage", storage]

    teacher_key = f"teacher-s{budget.teacher_steps}-b{budget.batch_size}-p{budget.patch_size}"

    def train_teacher() -> dict[str, Any]:
        args = teacher_parser().parse_args(
            [*flags, "--arch", "edsr", "--scale", "4", "--max-steps", str(budget.teacher_steps)]
            + ["--name", teacher_key, "--set", f"train.lr={LR}"]
        )
        return _train(teacher_config(args))

    teacher = stages.run("3/6 train the teacher", teacher_key, train_teacher)
    students: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for seed in budget.seeds:
        for method in METHODS:
            key = (
                f"{method}-seed{seed}-s{budget.steps}-b{budget.batch_size}-p{budget.patch_size}-{teacher_key}"
            )
            argv = [*flags, "--method", method, "--max-steps", str(budget.steps), "--name", key]
            argv += [
                "--teacher",
                teacher["weights"],
                "--set",
                f"train.seed={seed}",
                "--set",
                f"train.lr={LR}",
            ]
            args = build_parser("quickstart student").parse_args(argv)
            title = f"4/6 train the student: {method}, seed {seed}"
            students[method].append(
                stages.run(
                    title, key, lambda a=args: _train(apply_args(JobConfig.from_preset(PRESET, tiny=True), a))
                )
            )
    results = stages.run(
        "5/6 evaluate on the held-out set",
        "evaluate-" + "-".join(r["name"] for runs in students.values() for r in runs),
        lambda: _evaluate(data["benchmark"], teacher, students),
    )
    print("[quickstart] 6/6 write the report ...", flush=True)
    write_quickstart_report(out, data["benchmark"], results, teacher, students, budget)
    print(f"[quickstart] report: {os.path.join(out, 'report.html')} (and report.md)", flush=True)
    return results


def _data(out: str) -> dict[str, Any]:
    sample = write_sample_data(os.path.join(out, "data"), scales=(4,))
    return {"train": sample.train_url, "benchmark": sample.benchmark_url, "sets": list(sample.sets)}


def _pack(train_url: str, out: str) -> str:
    # A local folder addressed by URL stands in for the object store: the same code reads s3://.
    dst = "file://" + os.path.join(out, "object_store", "sample-x4-shards")
    pack(train_url, dst, scale=4, crop=192, step=96, shard_size_mb=2)
    return dst


def _train(cfg: JobConfig) -> dict[str, Any]:
    result = run_training(cfg)
    return {
        "name": result.config.run.name,
        "weights": result.weights_url,
        "report": result.report_url,
        "history": [
            {"step": h["step"], "val_psnr": h["val_psnr"]} for h in result.history if "val_psnr" in h
        ],
    }


def _evaluate(
    benchmark: str, teacher: dict[str, Any], students: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    sets = load_benchmark_sets(benchmark, ["Sample"], scale=4)
    rows: dict[str, Any] = {"bicubic": _scores(evaluate_bicubic(sets, 4))}
    for method, runs in students.items():
        per_seed = [_scores(_evaluate_weights(r["weights"], sets)) for r in runs]
        rows[f"student {method}"] = {
            "psnr": float(np.mean([s["psnr"] for s in per_seed])),
            "ssim": float(np.mean([s["ssim"] for s in per_seed])),
            "psnr_per_seed": [s["psnr"] for s in per_seed],
        }
    rows["teacher"] = _scores(_evaluate_weights(teacher["weights"], sets))
    return rows


def _evaluate_weights(url: str, sets: dict[str, list[Pair]]) -> dict[str, SetScores]:
    return evaluate_sets(build_from_checkpoint(url), sets, 4, progress=True)  # on the CPU


def _scores(per_set: dict[str, SetScores]) -> dict[str, float]:
    s = per_set["Sample"]
    return {"psnr": float(s["psnr"]), "ssim": float(s["ssim"])}


def write_quickstart_report(
    out: str,
    benchmark: str,
    results: dict[str, Any],
    teacher: dict[str, Any],
    students: dict[str, list[dict[str, Any]]],
    budget: Budget,
) -> None:
    """report.md / report.html with the table, the PSNR curves and the crops (PNG files beside them)."""
    curves = {
        method: [(h["step"], h["val_psnr"]) for h in runs[0]["history"]] for method, runs in students.items()
    }
    plot = psnr_curves_png(curves, f"students on the held-out set (EMA weights, seed {budget.seeds[0]})")
    write_bytes_atomic(os.path.join(out, "psnr_curves.png"), plot)
    write_bytes_atomic(os.path.join(out, "crops.png"), _crops(benchmark, teacher, students))
    best = max((r for r in results if r.startswith("student")), key=lambda r: results[r]["psnr"])
    header = ["model", "Y-PSNR (dB)", "SSIM", "PSNR per seed"]
    rows = []
    for name, r in results.items():
        mark = " **(best student)**" if name == best else ""
        seeds = ", ".join(f"{p:.2f}" for p in r.get("psnr_per_seed", []))
        rows.append([name + mark, f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", seeds])
    report = Report("dukd-ray quickstart")
    report.heading("dukd-ray quickstart: scratch vs KD vs FAKD vs DUKD (EDSR x4, tiny nets, CPU)", level=1)
    report.paragraph(_findings(results, budget))
    report.heading("Held-out photographs (set `Sample`)").table(header, rows)
    report.heading("Validation PSNR over steps").image("psnr_curves.png", "psnr curves")
    report.heading("Crops").image("crops.png", "crops")
    report.heading("What DUKD did, and the real thing").paragraph(_EXPLAIN)
    report.write(out, "report")


def _findings(results: dict[str, Any], budget: Budget) -> str:
    """What was measured, in words, claiming no ordering that the seeds' spread does not support."""
    spread = max(
        (max(r["psnr_per_seed"]) - min(r["psnr_per_seed"]) for r in results.values() if "psnr_per_seed" in r),
        default=0.0,
    )

    def gap(a: str, b: str) -> str:
        d = results[a]["psnr"] - results[b]["psnr"]
        verdict = "" if len(budget.seeds) == 1 else (" (within seed noise)" if abs(d) <= spread else "")
        return f"{a} {'+' if d >= 0 else '−'}{abs(d):.2f} dB vs {b}{verdict}"

    if len(budget.seeds) == 1:
        noise = (
            "Only one seed was run, so these gaps carry no noise estimate: "
            "average over seeds with --seeds 10,11,12 before reading a ranking into them."
        )
    else:
        noise = (
            f"Students are averaged over seeds {', '.join(map(str, budget.seeds))}; the largest spread "
            f"between seeds of one method is {spread:.2f} dB, and smaller gaps are marked as noise."
        )
    return (
        f"Every student had {budget.steps} steps (batch {budget.batch_size}, LR patch {budget.patch_size}); "
        f"the teacher had {budget.teacher_steps} steps. Measured: {gap('teacher', 'bicubic')}; "
        f"{gap('student scratch', 'bicubic')}; {gap('student kd', 'student scratch')}; "
        f"{gap('student dukd', 'student scratch')}; {gap('student dukd', 'student kd')}. {noise}"
    )


def _crops(benchmark: str, teacher: dict[str, Any], students: dict[str, list[dict[str, Any]]]) -> bytes:
    pairs = load_benchmark_sets(benchmark, ["Sample"], scale=4)["Sample"]
    pair = max(pairs, key=_colourfulness)  # a colour photograph shows artefacts best
    weights = [(m, runs[0]["weights"]) for m, runs in students.items()] + [("teacher", teacher["weights"])]
    models = [(label, build_from_checkpoint(url)) for label, url in weights]
    return crops_png(comparison_panels(pair, 4, models), crop=160)


def _colourfulness(pair: Pair) -> float:
    hr = pair.hr.astype(np.float32)
    return float(np.abs(hr[..., 0] - hr[..., 1]).mean() + np.abs(hr[..., 1] - hr[..., 2]).mean())


_EXPLAIN = (
    "DUKD trains the student on more than the LR/HR pairs: besides ordinary knowledge distillation "
    "(matching the teacher's output on the LR patch), it feeds HR sub-patches to both networks as new LR "
    "inputs (zoom-in, the teacher's output is the target), feeds the bicubic-downscaled LR patch with the "
    "LR patch itself as target (zoom-out), and asks the student to give consistent answers under random "
    "invertible augmentations (label consistency). This quickstart uses tiny networks and a few hundred "
    "steps on a handful of photographs, so its numbers only show the pipeline working end to end. "
    "The real thing: pack DIV2K to object storage with `python -m dukd_ray.data.pack`, then "
    "`ray job submit --working-dir . -- python jobs/edsr_x4.py --data s3://… --teacher s3://… "
    "--storage s3://…` on a GPU cluster (see README and docs/cluster.md)."
)


@cli_main(returns_status=False)
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description="DUKD quickstart: teacher, then scratch/kd/fakd/dukd students, then a report."
    )
    p.add_argument("--out", default="quickstart_out", help="output folder (reused stages live here)")
    p.add_argument("--fresh", action="store_true", help="ignore finished stages and run everything again")
    p.add_argument("--teacher-steps", type=int, default=500)
    p.add_argument("--steps", type=int, default=300, help="training steps of each student")
    p.add_argument("--seeds", default="10", help="comma-separated seeds; student scores are averaged")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--patch-size", type=int, default=24, help="LR patch side")
    p.add_argument("--val-every", type=int, default=50)
    add_debug_arg(p)
    args = p.parse_args(argv)
    if not is_local(args.out):  # its Ray runs and report live on this machine
        raise UserError(
            f"--out {redact_url(args.out)}: expected a local folder (the quickstart runs on this machine; "
            "jobs/*.py and jobs/reproduce.py take object-store URLs)"
        )
    if os.path.isfile(args.out):
        raise UserError(
            f"--out {args.out} is a file; expected a folder (new or one of an earlier quickstart)"
        )
    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
    except ValueError:
        raise UserError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 10,11") from None
    for flag, value in (("--steps", args.steps), ("--teacher-steps", args.teacher_steps),
                        ("--batch-size", args.batch_size), ("--patch-size", args.patch_size),
                        ("--val-every", args.val_every)):  # fmt: skip
        if value < 1:
            raise UserError(f"{flag} {value}: expected an integer >= 1")
    budget = Budget(
        teacher_steps=args.teacher_steps,
        steps=args.steps,
        seeds=seeds,
        batch_size=args.batch_size,
        patch_size=args.patch_size,
        val_every=args.val_every,
    )
    return run(args.out, budget, fresh=args.fresh)
