"""The job CLI every `jobs/*.py` shares: a preset name in, a trained student (and a report) out.

Precedence, lowest first: the preset (`--tiny` for the smoke-test sizes), `--method`'s recipe,
`--config FILE` (a full config or a partial one, e.g. a sweep's best config), the flags, then
`--set section.key=value`. `--print-config` prints the result as JSON and exits.
Every bad key or value, teacher, data set or storage location is reported before Ray starts.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from dukd_ray.distill import METHODS, recipe
from dukd_ray.errors import add_debug_arg, cli_main
from dukd_ray.models import ARCHS, SUPPORTED_SCALES
from dukd_ray.storage import read_bytes, redact_url
from dukd_ray.train.config import ConfigError, JobConfig, parse_overrides, worker_count
from dukd_ray.train.options import Imported, PathRule, check_paths, import_options, is_option_file
from dukd_ray.train.trainer import TrainResult, run_training


def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    add_input_args(p)
    p.add_argument("--student-init", help="initial student weights (non-strict load, e.g. the x2 student)")
    p.add_argument(
        "--method",
        choices=list(METHODS),
        help="objective and its recipe (default: dukd, or scratch for a teacher)",
    )
    add_run_args(p)
    return p


def add_input_args(p: argparse.ArgumentParser) -> None:
    """`--data --val-data --teacher`: what a run reads."""
    p.add_argument(
        "--data", help="training data: shard prefix or DIV2K-layout root (default: embedded sample)"
    )
    p.add_argument(
        "--val-data", help="benchmark-layout root; all its sets, or --set data.val_sets=[Set5,Urban100]"
    )
    p.add_argument("--teacher", help="teacher checkpoint URL (.pth or .safetensors)")


def add_run_args(
    p: argparse.ArgumentParser,
    print_config_help: str = "print the resolved config as JSON (a valid --config file; secrets shown as "
    "***) and exit: no Ray, no storage",
) -> None:
    """Where and how a run goes, and the config overrides: the flags every job entrypoint shares."""
    p.add_argument("--storage", help="where run folders go: local dir or fsspec URL (default ~/dukd_runs)")
    p.add_argument(
        "--name", help="run name; an existing <storage>/<name> is resumed from its latest checkpoint"
    )
    p.add_argument(
        "--num-workers",
        type=_num_workers,
        metavar="N|MIN-MAX",
        help="Ray Train workers (one GPU each when GPUs exist); MIN-MAX: elastic, e.g. 4-8 on spot nodes",
    )
    p.add_argument("--no-gpu", action="store_true", help="train on CPU workers even if GPUs exist")
    p.add_argument("--max-steps", type=int, help="training iterations")
    p.add_argument("--batch-size", type=int, help="most patches per worker per forward/backward pass")
    p.add_argument(
        "--global-batch-size",
        type=int,
        help="patches per step, all workers together (default: batch size x workers at the first start)",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config field, repeatable"
    )
    p.add_argument("--config", help="YAML config (full, or partial overrides) applied before the flags")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on GPU workers")
    p.add_argument(
        "--tiny", action="store_true", help="tiny nets and short patches: a CPU smoke run in a minute"
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help=print_config_help,
    )
    add_debug_arg(p)


def _num_workers(text: str) -> int | list[int]:
    """`--num-workers 4` or `4-8`; a bad value is argparse's one line naming the flag."""
    try:
        return worker_count(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("run.num_workers: ")) from None


def print_config_if_asked(args: argparse.Namespace, cfg: JobConfig) -> JobConfig:
    """`--print-config`: `cfg` as JSON on stdout (URLs redacted), then exit 0; else `cfg` unchanged.

    Called on the config the job would train (preset, `--config`, flags, `--set`), before preflight:
    nothing is resolved against storage and Ray is not started, so the run name and the embedded
    sample data stay null when not given. The output, written to a file, is a `--config` that
    reproduces it.
    """
    if getattr(args, "print_config", False):
        print(json.dumps(cfg.redacted_dict(), indent=2), flush=True)
        raise SystemExit(0)
    return cfg


def apply_args(cfg: JobConfig, args: argparse.Namespace) -> JobConfig:
    """`--method`'s recipe, `--config`, then the flags and `--set` together (so --val-data and
    data.val_sets agree).

    `--method` switches the whole `distill` section and the optimiser schedule to that method's recipe
    (no weight carries over from the preset's method); a `--config` file or `--set` still changes them.
    """
    if args.method:
        cfg.with_method(args.method)
    if args.config:
        cfg = _update_from_config_file(cfg, args.config)
    return apply_flags(cfg, args)


def apply_flags(cfg: JobConfig, args: argparse.Namespace) -> JobConfig:
    """The flags and `--set` on top of `cfg` (a `--val-data` root drops the sets of an earlier config)."""
    flags: dict[str, Any] = {
        "data.train": args.data,
        "data.val": args.val_data,
        "model.teacher": args.teacher,
        "model.student_init": args.student_init,
        "run.storage": args.storage,
        "run.name": args.name,
        "run.num_workers": args.num_workers,
        "train.max_steps": args.max_steps,
        "data.batch_size": args.batch_size,
        "data.global_batch_size": args.global_batch_size,
        "run.use_gpu": False if args.no_gpu else None,
        "train.amp": True if args.amp else None,
    }
    values = {k: v for k, v in flags.items() if v is not None} | parse_overrides(args.set)
    if args.val_data and "data.val_sets" not in values:
        values["data.val_sets"] = None  # every set under the new root, not those of an earlier config
    return JobConfig.from_dict(values, base=cfg)


def _update_from_config_file(cfg: JobConfig, url: str) -> JobConfig:
    """`--config FILE` on top of `cfg`; a BasicSR option file is pointed to `jobs/train.py`."""
    values = load_config_values(url)
    if is_option_file(values):
        raise ConfigError(
            f"--config {redact_url(url)}: is a BasicSR option file; run it with "
            "jobs/train.py --config FILE (arch and scale come from the file)"
        )
    try:
        return JobConfig.from_dict(values, base=cfg)
    except ConfigError as e:
        raise ConfigError(f"--config {redact_url(url)}: {e}") from None


def load_config_values(url: str) -> Any:
    """The YAML of `--config FILE` (local or any fsspec URL), read with `yaml.safe_load` only: a tag that
    would construct a Python object is refused. Missing, a folder, not text or not YAML: one line."""
    where = f"--config {redact_url(url)}"
    try:
        text = read_bytes(url).decode("utf-8")
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a folder (expected a YAML config file)") from None
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{where}: no such file (expected a YAML config file)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not a text file (expected a YAML config file)") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.constructor.ConstructorError as e:
        tag = " " + "".join(re.findall(r"'([^']*)'", e.problem or "")[:1])
        mark = f" (line {e.problem_mark.line + 1})" if e.problem_mark else ""
        raise ConfigError(f"{where}: refused YAML tag{tag}{mark}: only plain YAML values are read") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(e).split())}") from None


@cli_main(returns_status=False)
def main(preset: str, argv: Sequence[str] | None = None) -> TrainResult:
    """`python jobs/<preset>.py [flags]`: distil the preset's student from its teacher."""
    parser = build_parser(f"Distil the {preset} student (DUKD paper config) on Ray Train.")
    args = parser.parse_args(argv)
    return _run(
        lambda: _note_recipe_init(
            print_config_if_asked(args, apply_args(JobConfig.from_preset(preset, tiny=args.tiny), args))
        ),
    )


def _note_recipe_init(cfg: JobConfig) -> JobConfig:
    """Say so when the reference starts this student from another run (EDSR x4 kd/dukd from x2) and
    no `--student-init` was given: the run is then a from-scratch variant of the reference's."""
    init = recipe(cfg.model.arch, cfg.model.scale, cfg.distill.method).init_from
    if init and not cfg.model.student_init:
        scale, method = init
        print(
            f"[dukd] note: the reference starts this {method} student from the x{scale} {method} student; "
            "without --student-init it trains from scratch (jobs/reproduce.py runs the whole chain)",
            file=sys.stderr,
        )
    return cfg


@cli_main(returns_status=False)
def main_config(argv: Sequence[str] | None = None) -> TrainResult:
    """`python jobs/train.py --config FILE [flags]`: train what the file (ours, or BasicSR's) says."""
    args = config_parser().parse_args(argv)

    def config() -> JobConfig:
        cfg, imported = config_job(args)
        print_config_if_asked(args, cfg)
        if imported is not None:
            check_paths(imported, cfg.to_dict(), cfg.data.storage_options or None)
        return _note_recipe_init(cfg)

    return _run(config)


def config_parser() -> argparse.ArgumentParser:
    parser = build_parser(
        "Train what a config file says on Ray Train: our YAML, or a BasicSR / DUKD option file "
        "(arch, scale and method from the file; docs/training.md has the mapping)."
    )
    next(a for a in parser._actions if a.dest == "config").required = True
    parser.add_argument(
        "--path-map",
        action="append",
        default=[],
        type=_path_rule,
        metavar="OLD=NEW",
        help="rewrite the option file's paths starting with OLD (e.g. /cache/SR=s3://bucket/SR), repeatable",
    )
    return parser


def _path_rule(text: str) -> PathRule:
    try:
        return PathRule.parse(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"--path-map {text!r}: ")) from None


def config_job(args: argparse.Namespace) -> tuple[JobConfig, Imported | None]:
    """The config of `--config`: its arch, scale and method's preset (`--tiny` sizes), the file, the flags.

    A BasicSR option file is translated first (`options.import_options`); what it ignores is listed
    once on stderr. Our own YAML starts from the preset of its `model.arch` / `model.scale`.
    """
    where = f"--config {redact_url(args.config)}"
    values, imported = load_config_values(args.config), None
    try:
        if is_option_file(values):
            imported = import_options(values, args.path_map, tiny=args.tiny)
            preset, method, values = imported.preset, imported.method, imported.values
            if imported.ignored:
                print(f"[dukd] {where}: ignored: {'; '.join(imported.ignored)}", file=sys.stderr)
        else:
            preset, method = _preset_of(values)
        cfg = JobConfig.from_preset(preset, tiny=args.tiny, method=args.method or method)
        cfg = JobConfig.from_dict(values, base=cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return apply_flags(cfg, args), imported


def _preset_of(values: Any) -> tuple[str, str]:
    """(preset, method) a config of ours names, nested (`model: {arch: ...}`) or dotted (`model.arch`)."""
    if not isinstance(values, dict):
        return "edsr_x4", "dukd"

    def value(section: str, key: str, default: Any) -> Any:
        nested = values.get(section)
        found = nested.get(key, default) if isinstance(nested, dict) else default
        return values.get(f"{section}.{key}", found)

    preset = f"{value('model', 'arch', 'edsr')}_x{value('model', 'scale', 4)}"
    return preset, value("distill", "method", "dukd")


@cli_main(returns_status=False)
def main_teacher(argv: Sequence[str] | None = None) -> TrainResult:
    """`python jobs/train_teacher.py --arch edsr --scale 4 [flags]`: train a teacher from scratch."""
    parser = teacher_parser()
    args = parser.parse_args(argv)
    return _run(lambda: print_config_if_asked(args, teacher_config(args)))


def teacher_parser() -> argparse.ArgumentParser:
    parser = build_parser("Train a teacher from scratch on Ray Train (for custom data or missing weights).")
    parser.add_argument("--arch", required=True, choices=list(ARCHS))
    parser.add_argument("--scale", required=True, type=int, choices=SUPPORTED_SCALES)
    return parser


def teacher_config(args: argparse.Namespace) -> JobConfig:
    """The preset's teacher network trained alone (method scratch), exported as `<run>/teacher.pth`."""
    cfg = JobConfig.from_preset(f"{args.arch}_x{args.scale}", tiny=args.tiny)
    m = cfg.model
    m.student_preset, m.student_kwargs = m.teacher_preset, m.teacher_kwargs
    cfg.with_method("scratch").run.export_name = "teacher"
    return apply_args(cfg, args)


def _run(config: Any) -> TrainResult:
    """Build the config and train; config/input errors are one line and status 2 (`cli_main`)."""
    result = run_training(config())
    psnr, where = result.metrics["val_psnr"], redact_url(result.run_url)
    print(f"[dukd] done: {result.step} steps, val_psnr {psnr:.2f} dB (EMA weights) in {where}")
    print(f"[dukd] weights: {redact_url(result.weights_url)}, {redact_url(result.safetensors_url)}")
    print(
        f"[dukd] report: {redact_url(result.report_url)}  tensorboard: {redact_url(result.tensorboard_url)}"
    )
    return result
