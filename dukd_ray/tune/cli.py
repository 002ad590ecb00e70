"""`python jobs/tune_upcycling.py --preset edsr_x4 --space default --num-samples 16 ...`

The sweep flags, plus the job flags a trial needs, taken from the shared job CLI (`--teacher`, `--data`,
`--val-data`, `--tiny`, `--set`, ...) so a trial is configured exactly like `jobs/<preset>.py`.
`--storage`/`--name` name the sweep; each trial's workers are `--workers-per-trial`/`--gpus-per-trial`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dukd_ray.errors import cli_main
from dukd_ray.storage import redact_url
from dukd_ray.train.cli import apply_args, build_parser, print_config_if_asked
from dukd_ray.train.config import PRESETS, JobConfig
from dukd_ray.tune.results import BEST_CONFIG, PLOT_PNG, TABLE_MD
from dukd_ray.tune.sweep import (
    SCHEDULERS,
    SEARCHES,
    SweepOutcome,
    SweepSpec,
    read_space_text,
    run_sweep,
)

_TRIAL_RESOURCE_FLAGS = {"num_workers": "--workers-per-trial", "no_gpu": "--gpus-per-trial 0"}


def build_sweep_parser() -> argparse.ArgumentParser:
    p = build_parser(
        "Search DUKD's loss weights and augmentation sets with Ray Tune (a Ray Train run per trial). "
        "--storage/--name name the sweep (<storage>/<name>); trials are sized with --workers-per-trial and "
        "--gpus-per-trial instead of the job flags --num-workers/--no-gpu."
    )
    g = p.add_argument_group("sweep")
    g.add_argument("--preset", default="edsr_x4", choices=PRESETS, help="job preset every trial starts from")
    g.add_argument(
        "--space", default="default", help="search space: a shipped name (default, paper_rows) or YAML URL"
    )
    g.add_argument(
        "--num-samples", type=int, default=8, help="trials (with 'grid' keys: samples per grid point)"
    )
    g.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers of each trial")
    g.add_argument(
        "--gpus-per-trial",
        type=float,
        default=0.0,
        help="0 = CPU; 0.5 = two trials share a GPU; W = a GPU per worker",
    )
    g.add_argument("--search", choices=SEARCHES, default="random", help="random sampling or Optuna (TPE)")
    g.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default="asha",
        help="asha: stop poor trials early; pbt: restart weak trials from strong ones; fifo: run all",
    )
    g.add_argument(
        "--grace-period", type=int, help="steps before ASHA may stop a trial (default: train.val_every)"
    )
    g.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA keeps the top 1/rf at each rung")
    g.add_argument(
        "--max-concurrent", type=int, help="trials at once (default: as many as the cluster holds)"
    )
    g.add_argument(
        "--max-trial-failures",
        type=int,
        default=SweepSpec.max_trial_failures,
        help="times Tune restarts a failed trial, e.g. one whose driver was lost (-1: no limit; default: "
        "%(default)s); each restart continues the trial's Train run from its latest checkpoint",
    )
    g.add_argument("--seed", type=int, help="search seed (default: train.seed)")
    g.add_argument("--resume", action="store_true", help="continue the sweep <storage>/<name> (same command)")
    return p


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    """The sweep described by the command line (job flags -> the base config every trial starts from)."""
    base = print_config_if_asked(args, apply_args(JobConfig.from_preset(args.preset, tiny=args.tiny), args))
    opts = base.data.storage_options or None
    space_text, space_source = read_space_text(args.space, opts)
    return SweepSpec(
        base=base.to_dict(),
        space_text=space_text,
        space_source=space_source,
        storage=args.storage or base.run.storage,
        name=args.name or f"tune_{args.preset}",
        num_samples=args.num_samples,
        workers_per_trial=args.workers_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        search=args.search,
        scheduler=args.scheduler,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        max_concurrent=args.max_concurrent,
        max_trial_failures=args.max_trial_failures,
        seed=args.seed,
        storage_options=dict(base.data.storage_options),
    )


@cli_main(returns_status=False)
def main(argv: Sequence[str] | None = None) -> SweepOutcome:
    """Run the sweep; a bad flag, file or config is one `error:` line and status 2, before Ray starts."""
    parser = build_sweep_parser()
    args = parser.parse_args(argv)
    for dest, instead in _TRIAL_RESOURCE_FLAGS.items():
        if getattr(args, dest):
            parser.error(f"--{dest.replace('_', '-')} is a job flag; a sweep sizes each trial with {instead}")
    outcome = run_sweep(spec_from_args(args), resume=args.resume)  # ConfigError, SweepError, ...: cli_main
    files = outcome.files
    print(f"[dukd] sweep {redact_url(outcome.url)}: {len(outcome.records)} trials")
    print(f"[dukd] table: {redact_url(files[TABLE_MD])}  plot: {redact_url(files[PLOT_PNG])}")
    if BEST_CONFIG in files:
        print(f"[dukd] best config: {redact_url(files[BEST_CONFIG])}")
    return outcome


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run the job file: python jobs/tune_upcycling.py --help")
