"""What each of our fixes of the reference code is worth: held-out Y-PSNR with and without it.

At the quickstart's scale (tiny EDSR x4 nets, the embedded photographs, lr 1e-3, a few hundred steps of the
tiny preset's batch of 4 patches of 24 px, about 5 CPU-minutes with `--swinir`), a
teacher is trained from scratch, then every student twice from the same seed, init and batches: once
with `distill.reference_compat` off (ours) and once on (what the reference computes). Rows:

- true inverse: `dukd` (EDSR x4 recipe); compat maps the zoom-in output back in forward order.
- eval-mode teacher: EDSR has no train-mode randomness (no dropout, batch norm or drop-path), so the
  teacher's outputs are identical in both modes (checked here); `--swinir` measures it with a tiny SwinIR
  teacher (drop-path 0.1) and `kd` students, where train mode is the only difference.
- FAKD feature gradient: `fakd` (EDSR x4 recipe, tiny taps); compat detaches the feature term.

Plain loop, no Ray: `distill.train_step` on `build_train_stream` batches, the student's EMA evaluated with
`dukd_ray.eval` on the held-out `Sample` set. `python benchmarks/reference_fixes.py [--swinir]`
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import os
import statistics
import tempfile
import time

import torch
from torch import nn

from dukd_ray.data.samples import write_sample_data
from dukd_ray.data.stream import build_train_stream
from dukd_ray.distill import EMA, FAKD_TAPS, DistillConfig, freeze_teacher, recipe, train_step
from dukd_ray.eval.benchmark import evaluate_sets, load_benchmark_sets
from dukd_ray.models import build_arch

SCALE = 4
LR = 1e-3  # the quickstart's rate for tiny nets
EMA_DECAY = 0.9  # the tiny preset's


@dataclasses.dataclass(frozen=True)
class Setup:
    """The experiment's fixed settings."""

    train_url: str
    sets: dict
    patch_size: int
    batch_size: int
    steps: int
    seeds: tuple[int, ...]


def train(
    student: nn.Module, teacher: nn.Module | None, cfg: DistillConfig, run: Setup, steps: int, seed: int
):
    """`steps` steps of `cfg` from `student`'s state; returns the EMA copy (what is validated)."""
    opt = torch.optim.Adam(student.parameters(), LR, betas=(0.9, 0.99))
    ema, generator = EMA(student, EMA_DECAY), torch.Generator().manual_seed(seed)
    stream = build_train_stream(
        run.train_url, SCALE, run.patch_size, run.batch_size, seed=seed, num_workers=0
    )
    for batch in itertools.islice(iter(stream), steps):
        train_step(student, teacher, opt, batch, cfg, generator, memory_format=torch.contiguous_format)
        ema.update(student)
    averaged = copy.deepcopy(student)
    averaged.load_state_dict(ema.state_dict())
    return averaged.eval()


def psnr(model: nn.Module, run: Setup) -> float:
    return float(evaluate_sets(model, run.sets, SCALE)["Sample"]["psnr"])


def compare(name: str, teacher: nn.Module, cfg: DistillConfig, run: Setup) -> dict:
    """Held-out PSNR of ours and of compat per seed, from identical initial (tiny EDSR) students."""
    ours, compat = [], []
    for seed in run.seeds:
        torch.manual_seed(seed)
        init = build_arch("edsr", SCALE, preset="tiny_student")
        for reference, scores in ((False, ours), (True, compat)):
            student_cfg = dataclasses.replace(cfg, reference_compat=reference)
            scores.append(psnr(train(copy.deepcopy(init), teacher, student_cfg, run, run.steps, seed), run))
        print(f"  {name} seed {seed}: ours {ours[-1]:.3f} dB, reference {compat[-1]:.3f} dB", flush=True)
    return {"row": name, "ours": ours, "reference": compat}


def trained_teacher(arch: str, run: Setup, steps: int) -> nn.Module:
    torch.manual_seed(0)
    teacher = build_arch(arch, SCALE, preset="tiny_teacher")
    teacher = train(teacher, None, DistillConfig(method="scratch"), run, steps, 0)
    print(f"  {arch} teacher: {psnr(teacher, run):.3f} dB", flush=True)
    return freeze_teacher(teacher)


def same_in_both_modes(teacher: nn.Module, run: Setup) -> bool:
    x = torch.rand(2, 3, run.patch_size, run.patch_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        evaluated = teacher(x)
        teacher.train()
        trained = teacher(x)
        teacher.eval()
    return torch.equal(evaluated, trained)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher-steps", type=int, default=300)
    p.add_argument("--steps", type=int, default=300, help="steps of every student")
    p.add_argument("--seeds", default="10,11")
    p.add_argument("--batch-size", type=int, default=4, help="the tiny preset's")
    p.add_argument("--patch-size", type=int, default=24, help="LR patch side")
    p.add_argument("--swinir", action="store_true", help="also measure the eval-mode teacher with SwinIR")
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.monotonic()
    sample = write_sample_data(os.path.join(tempfile.gettempdir(), "dukd_reference_fixes"), scales=(SCALE,))
    sets = load_benchmark_sets(sample.benchmark_url, ["Sample"], scale=SCALE)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    run = Setup(sample.train_url, sets, args.patch_size, args.batch_size, args.steps, seeds)

    teacher = trained_teacher("edsr", run, args.teacher_steps)
    print(f"  EDSR teacher identical in train and eval mode: {same_in_both_modes(teacher, run)}")
    rows = [compare("true inverse (dukd)", teacher, recipe("edsr", SCALE, "dukd").distill, run)]
    if args.swinir:
        swinir = trained_teacher("swinir", run, args.teacher_steps)
        rows.append(
            compare("eval-mode teacher (SwinIR, kd)", swinir, recipe("swinir", SCALE, "kd").distill, run)
        )
    fakd = recipe("edsr", SCALE, "fakd").distill
    fakd = dataclasses.replace(fakd, fakd_taps=FAKD_TAPS["edsr"]["tiny_student"])
    rows.append(compare("FAKD feature gradient", teacher, fakd, run))

    print("\n| fix | ours (dB) | reference (dB) | gain (dB) | per seed |\n|---|---|---|---|---|")
    for r in rows:
        gains = [a - b for a, b in zip(r["ours"], r["reference"], strict=True)]
        per_seed = ", ".join(f"{g:+.3f}" for g in gains)
        ours, ref, gain = (statistics.mean(v) for v in (r["ours"], r["reference"], gains))
        print(f"| {r['row']} | {ours:.3f} | {ref:.3f} | {gain:+.3f} | {per_seed} |")
    print(f"\n{len(seeds)} seeds, {args.steps} student steps, {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
