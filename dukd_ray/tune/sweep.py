"""A Ray Tune sweep of DUKD settings: one Ray Train run (a `TorchTrainer`) per trial.

Why a TorchTrainer per trial rather than the worker loop inside the trial: each trial then trains exactly
as `jobs/edsr_x4.py` does (same `build_trainer`, checkpoints, fault tolerance, multi-worker DDP with
`--workers-per-trial`), which is the Train V2 + Tune pattern Ray documents. The trial function is only a
driver: it asks Tune for one unit of the `dukd_driver` resource (only the head node advertises it, so
drivers never run on spot nodes; see `driver_resources`) and the workers ask Ray Train for their
CPUs/GPUs through the ScalingConfig; `TuneReportCallback` forwards every validation report (`step`,
`val_psnr`, ...) to Tune, so ASHA can stop a trial at any validation. A trial whose driver fails is
restarted by Tune (`--max-trial-failures`) and its Train run continues from its latest checkpoint.

Layout under `<storage>/<name>/`: Tune's experiment (trial folders, `experiment_state`), `sweep.json`
(the settings, checked on `--resume`), `train_runs/<trial_id>/` (each trial's Train run), and `summary/`
(`trials.csv`, `trials.md`, `val_psnr.png`, `best_config.yaml`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from dukd_ray import storage
from dukd_ray.distill.recipes import recipe
from dukd_ray.storage import is_local
from dukd_ray.train import trainer
from dukd_ray.train.config import SECTIONS, JobConfig
from dukd_ray.tune import pbt, results
from dukd_ray.tune.space import PAPER_POINT, SearchSpace, SpaceError, check_values, parse_space

log = logging.getLogger(__name__)

SEARCHES = ("random", "optuna")
SCHEDULERS = ("asha", "pbt", "fifo")
METRIC, MODE, TIME_ATTR = "val_psnr", "max", "step"
SPEC_FILE = "sweep.json"
TRAIN_RUNS = "train_runs"
SUMMARY = "summary"
# the same for every trial: the schedulers compare trials at the same steps
SCHEDULE_KEYS = ("train.max_steps", "train.val_every", "train.ckpt_every")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# A trial's function only drives its TorchTrainer (the workers reserve CPUs/GPUs through the ScalingConfig;
# Ray Train puts the run's controller on the driver's node). The cluster configs advertise this custom
# resource on the on-demand head node only, each driver reserves one unit, so a lost spot node never takes a
# driver with it and the head's amount is how many drivers it holds at once.
DRIVER_RESOURCE = "dukd_driver"
# A local cluster (one machine, nothing preempted) advertises it too, so a sweep runs there as on a cluster;
# so many that the machine's CPUs/GPUs, never this, limit how many trials run at once.
LOCAL_DRIVER_SLOTS = 1000
# Where the cluster has no driver resource: any node, and the least Tune accepts (it refuses a zero request).
_ANY_NODE_DRIVER = {"CPU": 0.01}
FIELDS = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in SECTIONS.items()}


class SweepError(ValueError):
    """The sweep settings are inconsistent (or don't match the sweep being resumed)."""


@dataclass
class SweepSpec:
    """Everything that defines a sweep: the job config every trial starts from, the space, the search.

    Saved as `sweep.json` next to the experiment; `--resume` must describe the same sweep.
    """

    base: dict[str, Any]  # JobConfig.to_dict(): train.max_steps is each trial's budget
    space_text: str  # the space file's YAML, kept verbatim
    space_source: str
    storage: str  # the sweep lives at <storage>/<name>
    name: str
    num_samples: int = 8
    workers_per_trial: int = 1
    gpus_per_trial: float = 0.0
    search: str = "random"
    scheduler: str = "asha"
    grace_period: int | None = None  # steps before ASHA may stop a trial; None: one validation interval
    reduction_factor: float = 3.0
    max_concurrent: int | None = None  # None: as many as the cluster's CPUs/GPUs and driver slots hold
    max_trial_failures: int = 2  # Tune's restarts of a failed trial (its driver lost, ...); -1: no limit
    seed: int | None = None  # None: the base config's train.seed
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if is_local(self.storage):  # Tune and Train want absolute local paths
            self.storage = os.path.abspath(os.path.expanduser(self.storage.removeprefix("file://")))

    @property
    def url(self) -> str:
        return storage.join(self.storage, self.name)

    def comparable(self) -> dict[str, Any]:
        """What must match on resume (credentials never go to the spec file)."""
        out = dataclasses.asdict(self)
        out.pop("storage_options")
        out["base"] = JobConfig.from_dict(self.base).redacted_dict()
        return out


@dataclass
class SweepOutcome:
    """Where the sweep and its summary are, and what each trial did."""

    url: str
    records: list[results.TrialRecord]
    files: dict[str, str]


def builtin_space(name: str) -> str:
    """Path of a space shipped with the package (`default`, `paper_rows`)."""
    return str(resources.files("dukd_ray.tune").joinpath("spaces", f"{name}.yaml"))


def builtin_space_names() -> list[str]:
    folder = resources.files("dukd_ray.tune").joinpath("spaces")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_space_text(space: str, storage_options: dict[str, Any] | None = None) -> tuple[str, str]:
    """(YAML text, source name) of a shipped space name or a space file URL."""
    source = builtin_space(space) if space in builtin_space_names() else space
    try:
        return storage.read_bytes(source, storage_options).decode("utf-8"), storage.redact_url(source)
    except FileNotFoundError:
        known = ", ".join(builtin_space_names())
        raise SpaceError(
            f"search space not found: {storage.redact_url(space)} (shipped spaces: {known})"
        ) from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise SpaceError(f"--space {storage.redact_url(space)}: not a YAML text file") from None


def resolve_start(space: SearchSpace, base: JobConfig) -> list[dict[str, Any]]:
    """Start points as full points (every searched key); keys a point leaves out keep the base value.

    `paper` is the recipe of the base config's method, arch and scale (docs/distill.md). SpaceError when a
    filled-in value lies outside the space or the job config rejects the point.
    """
    base_values, m = _values(base), base.model
    paper = _values(dataclasses.replace(base, distill=recipe(m.arch, m.scale, base.distill.method).distill))
    points = []
    for i, point in enumerate(space.start, 1):
        given = {k: paper[k] for k in space.keys} if point == PAPER_POINT else dict(point)
        full = {k: given.get(k, base_values[k]) for k in space.keys}
        for p in space.params:
            if not p.contains(full[p.key]):
                raise SpaceError(
                    f"{space.source}: start point {i} ({point if point == PAPER_POINT else 'a mapping'}): "
                    f"{p.key}={full[p.key]!r} is outside its search space"
                )
        try:
            JobConfig.from_dict({**space.constants, **full}, base=base)
        except ValueError as e:
            raise SpaceError(f"{space.source}: start point {i} is rejected by the job config: {e}") from None
        points.append(full)
    return points


def prepare(spec: SweepSpec) -> tuple[JobConfig, SearchSpace, list[dict[str, Any]]]:
    """Check the settings, the space (against the job config) and the job's inputs (teacher, data,
    storage), before Ray starts anything; returns the resolved base config every trial starts from."""
    _check_settings(spec)
    base = JobConfig.from_dict(spec.base)
    space = parse_space(spec.space_text, FIELDS, source=spec.space_source)
    check_values(space, lambda values: JobConfig.from_dict(values, base=base))
    base = JobConfig.from_dict(space.constants, base=base)
    searched = [k for k in SCHEDULE_KEYS if k in space.keys]
    if searched:
        raise SweepError(
            f"{space.source}: {searched[0]} cannot be searched: every trial of a sweep shares one schedule "
            f"(set it with --max-steps or --set {searched[0]}=N)"
        )
    schedule = _schedule(spec, base)
    if schedule.note:
        log.warning(schedule.note)
    base.train.val_every, base.train.ckpt_every = schedule.val_every, schedule.ckpt_every
    points = resolve_start(space, base)
    if spec.search == "optuna" and space.has_grid:
        raise SweepError(f"{space.source}: 'grid' cannot be used with --search optuna (use 'choice')")
    if spec.scheduler == "pbt" and space.has_grid:
        raise SweepError(f"{space.source}: 'grid' cannot be used with --scheduler pbt (PBT mutates values)")
    if spec.search == "random" and space.has_grid and points:
        raise SweepError(f"{space.source}: 'start' points cannot be combined with 'grid' keys")
    base.run.num_workers, base.run.use_gpu = spec.workers_per_trial, spec.gpus_per_trial > 0
    if spec.gpus_per_trial > 0:  # a fraction lets trials share a GPU (then with one worker each)
        base.run.gpus_per_worker = spec.gpus_per_trial / spec.workers_per_trial
    base.run.storage, base.run.name = storage.join(spec.url, TRAIN_RUNS), spec.name
    return trainer.prepare(base), space, points


def run_sweep(spec: SweepSpec, resume: bool = False, tune_callbacks: Sequence[Any] = ()) -> SweepOutcome:
    """Run (or, with `resume`, continue) the sweep, then write its summary; returns where everything is.

    `tune_callbacks` (Tune `Callback`s) are saved with the sweep and come back on resume.
    """
    base, space, points = prepare(spec)
    from ray import tune

    exp_path, exp_fs = trainer.ray_storage(spec.url, spec.storage_options)
    spec_url = storage.join(spec.url, SPEC_FILE)
    exists = tune.Tuner.can_restore(exp_path, storage_filesystem=exp_fs)
    if resume:
        _check_resume(spec, spec_url, exists)
    elif exists or storage.exists(spec_url, spec.storage_options):
        raise SweepError(
            f"a sweep named {spec.name!r} already exists at {storage.redact_url(spec.url)}: "
            "pass --resume to continue it, or choose another --name"
        )
    else:
        saved = json.dumps(spec.comparable(), indent=2).encode()
        storage.write_bytes_atomic(spec_url, saved, spec.storage_options)

    init_ray()
    import ray

    cluster = ray.cluster_resources()
    resources = driver_resources(cluster)
    if DRIVER_RESOURCE not in resources:
        log.warning(
            "[dukd] the cluster has no %s resource: trial drivers may run on any node (spot ones too) and a "
            "trial whose driver is lost restarts (--max-trial-failures); docs/cluster.md shows how to give "
            "the head node one",
            DRIVER_RESOURCE,
        )
    driver = tune.with_parameters(
        _trial_driver,
        base=base.to_dict(),
        space_text=spec.space_text,
        report_checkpoints=spec.scheduler == "pbt",
    )
    trainable = tune.with_resources(driver, resources)
    if resume:
        log.info("resuming the sweep at %s", storage.redact_url(spec.url))
        tuner = tune.Tuner.restore(exp_path, trainable, resume_errored=True, storage_filesystem=exp_fs)
    else:
        root_path, root_fs = trainer.ray_storage(spec.storage, spec.storage_options)
        tuner = tune.Tuner(
            trainable,
            param_space=space.to_tune(),
            tune_config=_tune_config(spec, base, space, points, cluster),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=root_path,
                storage_filesystem=root_fs,
                callbacks=list(tune_callbacks),
                # Ray Train retries its workers (run.max_failures); this covers the trial's driver
                failure_config=tune.FailureConfig(max_failures=spec.max_trial_failures),
                verbose=1,
            ),
        )
    tuner.fit()
    return summarize(spec, space=space)


def init_ray(**local_init: Any) -> None:
    """Join the cluster of RAY_ADDRESS (`ray job submit`), or start a local one (`ray.init(**local_init)`).

    A local cluster tells its workers its dashboard (State API) address: Ray Train frees the workers of
    a trial that Tune stopped early through the State API, which otherwise cannot tell which cluster is
    meant when other Ray instances run on the same machine, and the stopped trial's CPUs stay reserved.
    It also advertises the trial drivers' resource (`LOCAL_DRIVER_SLOTS`), as a cluster's head node does,
    and is always a new one (`address="local"`): without it Ray joins a cluster that `ray start` left on
    this machine, whose resources are not those.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
    ray.init(
        address="local",
        include_dashboard=True,
        dashboard_port=port,
        runtime_env={"env_vars": env},
        resources={DRIVER_RESOURCE: LOCAL_DRIVER_SLOTS},
        **local_init,
    )


def summarize(spec: SweepSpec, space: SearchSpace | None = None) -> SweepOutcome:
    """(Re)write the summary from what is in storage: works for finished and interrupted sweeps."""
    from ray.tune import ExperimentAnalysis

    space = space or parse_space(spec.space_text, FIELDS, source=spec.space_source)
    exp_path, exp_fs = trainer.ray_storage(spec.url, spec.storage_options)
    analysis = ExperimentAnalysis(exp_path, storage_filesystem=exp_fs)
    records = [_record(trial, space, analysis) for trial in analysis.trials]
    base = JobConfig.from_dict(space.constants, base=JobConfig.from_dict(spec.base))
    ranked = [r for r in results.rank(records) if r.best is not None]
    best_yaml = _best_config_yaml(base, ranked[0], spec.name) if ranked else None
    files = results.write_summary(
        records,
        storage.join(spec.url, SUMMARY),
        max_steps=base.train.max_steps,
        best_config_yaml=best_yaml,
        title=f"{spec.name}: val PSNR per trial",
        storage_options=spec.storage_options,
        early_stopping=spec.scheduler == "asha",
    )
    return SweepOutcome(url=spec.url, records=records, files=files)


def _trial_driver(
    config: dict[str, Any], base: dict[str, Any], space_text: str, report_checkpoints: bool
) -> None:
    """One trial: the base job config + this trial's values, trained by the job's own TorchTrainer."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    space = parse_space(space_text, FIELDS)
    cfg = JobConfig.from_dict(space.decode(config), base=JobConfig.from_dict(base))

    def make_trainer(cfg: JobConfig, callbacks: Sequence[Any]) -> Any:
        return trainer.build_trainer(cfg, callbacks=callbacks, check=False)  # the base config was checked

    if report_checkpoints:  # PBT clones trials from their checkpoints
        pbt.fit_reporting_checkpoints(cfg, make_trainer)
        return
    cfg.run.name = tune.get_context().get_trial_id()  # the same on resume: Train continues that run
    make_trainer(cfg, [TuneReportCallback()]).fit()


def _tune_config(
    spec: SweepSpec,
    base: JobConfig,
    space: SearchSpace,
    points: list[dict[str, Any]],
    cluster: Mapping[str, float],
) -> Any:
    from ray import tune

    seed = base.train.seed if spec.seed is None else spec.seed
    concurrent = spec.max_concurrent or fitting_trials(spec, cluster)
    encoded = [space.encode_point(p) for p in points]
    if spec.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        flat = [
            {f"{s}/{k}": v for s, body in p.items() for k, v in body.items()} for p in encoded
        ]  # Optuna's keys
        search_alg = ConcurrencyLimiter(OptunaSearch(points_to_evaluate=flat or None, seed=seed), concurrent)
    else:
        from ray.tune.search import BasicVariantGenerator

        # Tune ignores TuneConfig.max_concurrent_trials for a BasicVariantGenerator passed in: set it here
        search_alg = BasicVariantGenerator(
            points_to_evaluate=encoded or None, max_concurrent=concurrent, random_state=seed
        )
    return tune.TuneConfig(
        metric=METRIC,
        mode=MODE,
        search_alg=search_alg,
        scheduler=_scheduler(spec, base, space),
        num_samples=spec.num_samples,
        trial_dirname_creator=_trial_dirname,
    )


def _trial_dirname(trial: Any) -> str:
    """Trial folders named by trial id, the same id as the trial's Train run (`train_runs/<id>`)."""
    return trial.trial_id


@dataclass(frozen=True)
class Schedule:
    """When a sweep's trials validate and checkpoint, and the Tune scheduler that acts on their reports."""

    scheduler: str  # the scheduler to build: "asha", "pbt" or "fifo"
    val_every: int
    ckpt_every: int
    max_t: int | None = None  # ASHA: its last rung, the last validation before a trial's last step
    grace_period: int | None = None  # ASHA
    perturbation_interval: int | None = None  # PBT
    note: str | None = None  # one line saying what was changed for the trials; None: nothing


def resolve_schedule(
    scheduler: str, max_steps: int, val_every: int, ckpt_every: int, grace_period: int | None = None
) -> Schedule:
    """The schedule a sweep's trials follow, from the job config's and the sweep's settings.

    A trial reports to Tune only when it validates: every `val_every` steps and at its last step
    (`max_steps`), with a checkpoint every `ckpt_every` steps and at the last step. So ASHA's rungs and
    PBT's perturbations happen at validations only. A validation interval longer than the run is
    clamped to it (checkpoints too: `ckpt_every` stays a multiple of `val_every`). ASHA's rungs end at
    the last validation before the last step: a trial stopped at its last report would be stopped while
    its Train run writes its exports and report. With no validation before the last step, ASHA has
    nothing to stop a trial at and the trials run as with FIFO. PBT clones checkpoints taken before the
    last step, so it checkpoints at every validation when `ckpt_every` leaves none. SweepError (one
    line naming the flags) for what cannot work.
    """
    m, v, c, g = max_steps, val_every, ckpt_every, grace_period
    if g is not None and scheduler != "asha":
        raise SweepError(f"--grace-period is an ASHA setting; --scheduler {scheduler} has no grace period")
    notes = []
    if v > m:
        notes.append(
            f"--max-steps {m} is below one validation interval (train.val_every={v}): "
            f"validating and checkpointing every {m} steps"
        )
        v = c = m
    last_before_end = v * ((m - 1) // v)  # 0: a trial validates at its last step only
    fix = (
        f"--set train.val_every=N --set train.ckpt_every=N with N < {m}" if m > 1 else "a larger --max-steps"
    )
    only_last = (
        f"with --max-steps {m} and train.val_every={val_every} a trial validates only at its last step"
    )
    if scheduler == "pbt":
        if not last_before_end:
            raise SweepError(f"--scheduler pbt: {only_last}, so PBT has no checkpoint to clone; use {fix}")
        if c >= m:
            notes.append(
                f"PBT clones checkpoints taken before a trial's last step: checkpointing at every validation "
                f"(train.ckpt_every={v} instead of {c})"
            )
            c = v
        return Schedule("pbt", v, c, perturbation_interval=c, note=_note(notes))
    if scheduler == "asha":
        if g is not None and not last_before_end:
            raise SweepError(
                f"--grace-period {g}: {only_last}, so ASHA can stop none early; "
                f"drop --grace-period or use {fix}"
            )
        if g is not None and g > last_before_end:
            raise SweepError(
                f"--grace-period {g} is past a trial's last validation before its last step (step "
                f"{last_before_end}: --max-steps {m}, train.val_every={v}); use --grace-period "
                f"{last_before_end} or less"
            )
        if last_before_end:
            return Schedule("asha", v, c, max_t=last_before_end, grace_period=g or v, note=_note(notes))
        notes.append(
            f"ASHA has no validation before a trial's last step to stop it at: every trial runs {m} steps"
        )
    return Schedule("fifo", v, c, note=_note(notes))


def _note(parts: list[str]) -> str | None:
    return f"[dukd] {'; '.join(parts)}" if parts else None


def _schedule(spec: SweepSpec, base: JobConfig) -> Schedule:
    t = base.train
    return resolve_schedule(spec.scheduler, t.max_steps, t.val_every, t.ckpt_every, spec.grace_period)


def _scheduler(spec: SweepSpec, base: JobConfig, space: SearchSpace) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    schedule = _schedule(spec, base)  # base is prepare()'s: its schedule is already resolved
    if schedule.scheduler == "fifo":
        return FIFOScheduler()
    if schedule.scheduler == "pbt":
        return pbt.scheduler(space.to_tune(), perturbation_interval=schedule.perturbation_interval)
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        max_t=schedule.max_t,
        grace_period=schedule.grace_period,
        reduction_factor=spec.reduction_factor,
        # a trial reaching max_t ends by itself (its Train run then writes the exports and report);
        # stopping it at its last report would kill that run mid-way
        stop_last_trials=False,
    )


def driver_resources(cluster: Mapping[str, float]) -> dict[str, float]:
    """What each trial's driver asks Tune for, on a cluster with these total resources.

    One `DRIVER_RESOURCE` where the cluster advertises it (the head node, and a local cluster), and no CPU:
    the head's CPUs stay free and nothing else is drawn to it. On a cluster without it (one not made from
    `cluster/`), a driver may run on any node: 0.01 CPU.
    """
    return {DRIVER_RESOURCE: 1} if cluster.get(DRIVER_RESOURCE, 0) >= 1 else dict(_ANY_NODE_DRIVER)


def fitting_trials(spec: SweepSpec, cluster: Mapping[str, float]) -> int:
    """How many trials the cluster holds at once: their workers' CPUs/GPUs, and a driver each.

    More would only queue Train runs in drivers, or drivers waiting for a driver slot. (Ray's Train + Tune
    guide: set max_concurrent_trials from the limiting resource.)
    """
    driver = driver_resources(cluster)
    slots = cluster[DRIVER_RESOURCE] / driver[DRIVER_RESOURCE] if DRIVER_RESOURCE in driver else math.inf
    if spec.gpus_per_trial > 0:
        by_workers = cluster.get("GPU", 0) / spec.gpus_per_trial
    else:  # CPU workers take run.cpus_per_worker CPUs each (Ray's 1 when unset)
        cpus = spec.workers_per_trial * (spec.base.get("run", {}).get("cpus_per_worker") or 1)
        by_workers = cluster.get("CPU", 1) / (cpus + driver.get("CPU", 0))
    return max(1, math.floor(min(by_workers, slots) + 1e-9))


def _check_settings(spec: SweepSpec) -> None:
    if spec.search not in SEARCHES:
        raise SweepError(f"--search: expected one of {', '.join(SEARCHES)}, got {spec.search!r}")
    if spec.scheduler not in SCHEDULERS:
        raise SweepError(f"--scheduler: expected one of {', '.join(SCHEDULERS)}, got {spec.scheduler!r}")
    if spec.scheduler == "pbt" and spec.search != "random":
        raise SweepError(
            "--scheduler pbt explores by itself (it perturbs the values it clones): use --search random"
        )
    if spec.num_samples < 1:
        raise SweepError(f"--num-samples: expected an integer >= 1, got {spec.num_samples}")
    if spec.workers_per_trial < 1:
        raise SweepError(f"--workers-per-trial: expected an integer >= 1, got {spec.workers_per_trial}")
    if spec.reduction_factor <= 1:
        raise SweepError(f"--reduction-factor: expected a number > 1, got {spec.reduction_factor}")
    if spec.max_trial_failures < -1:
        raise SweepError(
            f"--max-trial-failures: expected an integer >= -1 (-1: no limit), got {spec.max_trial_failures}"
        )
    if spec.grace_period is not None and spec.grace_period < 1:
        raise SweepError(f"--grace-period: expected an integer >= 1 (steps), got {spec.grace_period}")
    g, w = spec.gpus_per_trial, spec.workers_per_trial
    if g < 0 or (0 < g < 1 and w > 1) or (g >= 1 and g != w):
        raise SweepError(
            f"--gpus-per-trial {g} with --workers-per-trial {w}: use 0 (CPU), a fraction with one worker "
            "(trials share a GPU), or one GPU per worker (equal to --workers-per-trial); DDP ranks cannot "
            "share a GPU"
        )
    if not _NAME_RE.match(spec.name):
        raise SweepError(f"--name: expected a name of letters, digits, '.', '_', '-', got {spec.name!r}")


def _check_resume(spec: SweepSpec, spec_url: str, exists: bool) -> None:
    if not exists:
        raise SweepError(f"--resume: no sweep to resume at {storage.redact_url(spec.url)}")
    try:
        saved = json.loads(storage.read_bytes(spec_url, spec.storage_options))
    except FileNotFoundError:
        raise SweepError(
            f"--resume: {storage.redact_url(spec_url)} is missing; was this sweep made here?"
        ) from None
    saved, now = _flatten(saved), _flatten(json.loads(json.dumps(spec.comparable())))
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        raise SweepError(
            f"--resume: the sweep at {storage.redact_url(spec.url)} was started with different settings "
            f"({', '.join(diff)}); rerun the original command with --resume"
        )


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": value}, so a settings mismatch names the exact key."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _values(cfg: JobConfig) -> dict[str, Any]:
    """`section.field` -> value of a config, as plain YAML values."""
    return {f"{s}.{k}": v for s, body in cfg.to_dict().items() for k, v in body.items()}


def _record(trial: Any, space: SearchSpace, analysis: Any) -> results.TrialRecord:
    from ray.tune.experiment import Trial

    status = {Trial.TERMINATED: "terminated", Trial.ERROR: "error"}.get(trial.status, "unfinished")
    return results.TrialRecord(
        trial.trial_id, space.decode(trial.config), _history(trial, analysis), status, trial.num_failures
    )


def _history(trial: Any, analysis: Any) -> list[tuple[int, float]]:
    """(step, val_psnr) of every report, from both of Tune's per-trial logs.

    Tune's analysis reads `result.json` only, which a restarted trial (a PBT clone) starts afresh, while
    `progress.csv` keeps the reports from before the restart; their union is the whole curve.
    """
    import pandas as pd

    frames = [analysis.trial_dataframes.get(trial.trial_id)]
    fs, csv_path = trial.storage.storage_filesystem, f"{trial.storage.trial_fs_path}/progress.csv"
    if fs.get_file_info(csv_path).type.name == "File":
        with fs.open_input_stream(csv_path) as f:
            frames.append(pd.read_csv(io.BytesIO(f.readall())))
    rows = set()
    for df in frames:
        if df is not None and METRIC in df and TIME_ATTR in df:
            pairs = df[[TIME_ATTR, METRIC]].dropna(subset=[TIME_ATTR]).itertuples(index=False)
            rows |= {(int(s), round(float(v), 6)) for s, v in pairs}
    return sorted(rows)


def _best_config_yaml(base: JobConfig, best: results.TrialRecord, sweep_name: str) -> str:
    """The best trial's full job config, validated, ready for `jobs/<preset>.py --config FILE`."""
    cfg = JobConfig.from_dict(best.params, base=base)
    cfg.run.name = None  # a fresh run, not the trial's (that one lives under the sweep)
    header = (
        f"# best trial {best.trial_id} of sweep {sweep_name}: val_psnr {best.best[1]:.4f} dB at step "
        f"{best.best[0]}\n# run it: python jobs/{cfg.model.arch}_x{cfg.model.scale}.py --config THIS_FILE "
        "(add --max-steps N for a longer run)\n"
    )
    return header + cfg.to_yaml()
