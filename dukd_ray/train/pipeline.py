"""Reproduce a row of the paper: every training it needs, in dependency order, as one command.

    python jobs/reproduce.py --arch edsr --scale 4 --teacher URL --teacher-x2 URL --data URL \
        --data-x2 URL --val-data URL --storage URL --name NAME [--methods scratch,kd,fakd,dukd]

The recipe table (`dukd_ray.distill.recipes`) says what each method trains and where its student
starts: EDSR x4 `kd` and `dukd` start from the x2 student of the same method, so the plan holds that
x2 run first and points the x4 run's `model.student_init` at its export. `--tiny` adds the tiny
teachers as runs of their own (trained from scratch on the embedded data, `teacher_config`: the
quickstart's teacher stage), so the whole chain runs on a CPU.

Every run is a Ray Train run of the job service (`run_training`), in `<storage>/<name>/<run>/`;
runs whose prerequisites are done run concurrently as far as the cluster holds them
(`parallel_slots`). A rerun of the same command skips every finished run (`is_finished`: its
export and report are there and its newest complete checkpoint is at `train.max_steps`) and
resumes the unfinished ones. `reproduce.md` / `reproduce.html` in `<storage>/<name>/` compare
the methods, per validation set, beside the paper's numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import ray

from dukd_ray.distill import METHODS, RECIPES, recipe
from dukd_ray.errors import cli_main
from dukd_ray.eval.setnames import set_aliases
from dukd_ray.models import ARCHS, SUPPORTED_SCALES
from dukd_ray.report import Report
from dukd_ray.storage import exists, is_local, join, redact_url, with_retries
from dukd_ray.train.checkpoint import HISTORY, latest_complete_checkpoint
from dukd_ray.train.cli import add_input_args, add_run_args, apply_args, teacher_config
from dukd_ray.train.config import ConfigError, JobConfig
from dukd_ray.train.preflight import check_inputs, resolve
from dukd_ray.train.report import PAPER_X4
from dukd_ray.train.trainer import run_training

log = logging.getLogger(__name__)

REPORT = "reproduce"  # <storage>/<name>/reproduce.md and .html


@dataclass(frozen=True)
class Run:
    """One training of the plan: run folder `<chain>/<name>`, after the runs in `needs`."""

    name: str  # e.g. "edsr_x2-dukd", "teacher_x4"
    role: str  # "student" or "teacher"
    scale: int
    method: str
    config: JobConfig
    needs: tuple[str, ...] = ()

    @property
    def export_url(self) -> str:
        return join(self.config.run.url(), f"{self.config.run.export_name}.pth")


@dataclass
class Plan:
    """The runs in dependency order (every run after its `needs`), and the chain folder."""

    arch: str
    scale: int
    methods: tuple[str, ...]
    url: str  # <storage>/<name>: the run folders, reproduce.md
    runs: list[Run]
    storage_options: dict[str, Any]

    def run(self, name: str) -> Run:
        return next(r for r in self.runs if r.name == name)

    def to_dict(self) -> dict[str, Any]:
        """What `--print-config` prints: every run's config (URLs redacted) and what it waits for."""
        return {
            "chain": redact_url(self.url),
            "runs": [
                {"name": r.name, "needs": list(r.needs), "config": r.config.redacted_dict()}
                for r in self.runs
            ],
        }


@dataclass
class Outcome:
    """A finished run: its folder, export, report and last reported metrics (from its checkpoint)."""

    run: Run
    trained: bool  # False: it was finished before this invocation and skipped
    metrics: dict[str, Any]


def default_methods(arch: str, scale: int) -> tuple[str, ...]:
    """Every method the recipe table has for this arch and scale."""
    return tuple(m for m in METHODS if (arch, scale, m) in RECIPES)


def build_plan(args: argparse.Namespace) -> Plan:
    """The runs `--arch --scale --methods` need, each config built as its job would build it.

    Students: `JobConfig.from_preset(<arch>_x<s>, tiny, method)` (the recipe), then `--config`,
    the flags and `--set` (`apply_args`, every run alike), then the chain's own fields: run folder,
    teacher and data of its scale, `model.student_init` = the export of the run its recipe starts
    from. Nothing is read or written: a plan is only configs.
    """
    arch, scale = args.arch, args.scale
    methods = tuple(args.methods.split(",")) if args.methods else default_methods(arch, scale)
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"--methods: unknown method {m!r}; known: {', '.join(METHODS)}")
    name = args.name or f"reproduce-{arch}_x{scale}{'-tiny' if args.tiny else ''}"  # the same on a rerun
    storage = args.storage or JobConfig().run.storage
    if is_local(storage):  # a plain string operation: the runs' init URLs must be absolute
        storage = os.path.abspath(os.path.expanduser(storage.removeprefix("file://")))
    chain = join(storage, name)
    runs: dict[str, Run] = {}

    def teacher_for(s: int) -> tuple[str | None, tuple[str, ...]]:
        """(teacher URL, the run training it) at scale `s`: the flag, or with --tiny a tiny teacher run."""
        given = args.teacher if s == scale else getattr(args, f"teacher_x{s}", None)
        if given or not args.tiny:
            return given, ()
        name = f"teacher_x{s}"
        if name not in runs:
            cfg = teacher_config(_namespace(args, s, chain, name, teacher=None, student_init=None))
            runs[name] = Run(name, "teacher", s, "scratch", cfg)
        return runs[name].export_url, (name,)

    def student(s: int, method: str) -> Run:
        name = f"{arch}_x{s}-{method}"
        if name in runs:
            return runs[name]
        rec = recipe(arch, s, method)
        needs: tuple[str, ...] = ()
        init = None
        if rec.init_from:
            init_scale, init_method = rec.init_from
            first = student(init_scale, init_method)
            init, needs = first.export_url, (first.name,)
        teacher = None
        if method != "scratch":
            teacher, teacher_run = teacher_for(s)
            if teacher is None:
                flag = "--teacher" if s == scale else f"--teacher-x{s}"
                raise ConfigError(f"{flag}: the {arch} x{s} {method} run needs a teacher at x{s} (or --tiny)")
            needs = (*teacher_run, *needs)
        ns = _namespace(args, s, chain, name, teacher=teacher, student_init=init)
        cfg = apply_args(JobConfig.from_preset(f"{arch}_x{s}", tiny=args.tiny, method=method), ns)
        runs[name] = Run(name, "student", s, method, cfg, needs)
        return runs[name]

    for method in methods:
        student(scale, method)
    depth: dict[str, int] = {}
    for r in runs.values():  # inserted after their needs: a run's depth is 1 + its deepest need's
        depth[r.name] = 1 + max((depth[n] for n in r.needs), default=-1)
    ordered = sorted(runs.values(), key=lambda r: (depth[r.name], r.role != "teacher"))  # stable
    return Plan(arch, scale, methods, chain, ordered, dict(ordered[0].config.data.storage_options))


def _namespace(
    args: argparse.Namespace, scale: int, chain: str, name: str, **fields: Any
) -> argparse.Namespace:
    """The job flags of one run of the chain, for `apply_args` / `teacher_config`."""
    data = args.data if scale == args.scale else getattr(args, f"data_x{scale}", None) or args.data
    values = vars(args) | {"arch": args.arch, "scale": scale, "method": None, "data": data}
    return argparse.Namespace(**values | {"storage": chain, "name": name, **fields})


# ---------------------------------------------------------------- running


def is_finished(cfg: JobConfig) -> dict[str, Any] | None:
    """The last metrics of a finished run (`cfg` resolved), or None when it must (re)start or resume.

    Finished: `<export_name>.pth` and `report.md` (written last, by rank 0 after the final step) are
    in the run folder, and its newest complete checkpoint is at `train.max_steps`. A run stopped
    early, or finished with fewer steps than asked now, is not: `run_training` resumes it.
    """
    opts = cfg.data.storage_options or None
    run_url = cfg.run.url()
    for name in (f"{cfg.run.export_name}.pth", "report.md"):
        if not exists(join(run_url, name), opts):
            return None
    found = latest_complete_checkpoint(run_url, opts)
    if not found or found[0] != cfg.train.max_steps:
        return None
    _, fs, path, _ = found
    history = json.loads(with_retries(lambda: fs.cat_file(f"{path}/{HISTORY}"), f"{path}/{HISTORY}"))
    return history[-1]


def parallel_slots(runs: Sequence[Run], resources: dict[str, float]) -> int:
    """How many of `runs` the cluster holds at once (at least 1).

    A run takes `num_workers` CPUs for its Ray Train workers plus `data.loader_workers` decode
    processes each, which Ray does not reserve but which need cores too; GPU runs also
    `num_workers x gpus_per_worker` GPUs. So 2 CPUs hold one tiny CPU run (1 worker + 1 loader).
    """
    gpus = resources.get("GPU", 0.0)
    slots = []
    for r in runs:
        c = r.config
        cpus = c.run.max_workers * (1 + c.data.loader_workers)  # an elastic run can grow to its max
        n = resources.get("CPU", 0.0) // cpus
        if c.run.use_gpu is True or (c.run.use_gpu == "auto" and gpus >= 1):
            n = min(n, gpus // (c.run.max_workers * c.run.gpus_per_worker))
        slots.append(n)
    return max(1, int(min(slots, default=1)))


def check_external_inputs(todo: list[Run], runs: dict[str, Run]) -> None:
    """The preflight of every run to train, before Ray starts or any run trains: a bad --teacher,
    --data or --storage is one line now, not after hours of the runs before it.

    What another run of the plan will produce (a tiny teacher, an x2 student's export) cannot be
    checked yet: it is left out of that run's check (its own preflight checks it when it starts).
    """
    for r in todo:
        produced = {runs[n].export_url for n in r.needs}
        cfg = JobConfig.from_dict(r.config.to_dict())
        if cfg.model.student_init in produced:
            cfg.model.student_init = None
        if cfg.model.teacher in produced:
            cfg.model.teacher = None
            cfg.with_method("scratch")
        check_inputs(cfg)


def run_plan(
    plan: Plan,
    max_parallel: int | None = None,
    train: Callable[[JobConfig], Any] = run_training,
    say: Callable[[str], None] = lambda line: print(line, flush=True),
) -> dict[str, Outcome]:
    """Train every unfinished run once its `needs` are done; returns every run's outcome, by name.

    Finished runs are skipped without starting Ray. Independent runs go concurrently (threads, each
    a `run_training`), at most `max_parallel` (default: `parallel_slots` of the cluster). The first
    failure stops new runs; the ones already running finish, then it is raised.
    """
    resolved = {r.name: dataclasses.replace(r, config=resolve(r.config)) for r in plan.runs}
    outcomes: dict[str, Outcome] = {}
    todo: list[Run] = []
    for name, r in resolved.items():
        metrics = is_finished(r.config)
        if metrics is None:
            todo.append(r)
        else:
            outcomes[name] = Outcome(r, trained=False, metrics=metrics)
            say(f"[reproduce] {name}: finished ({metrics['step']} steps), skipped")
    if not todo:
        return outcomes
    check_external_inputs(todo, resolved)
    if not ray.is_initialized():
        ray.init()  # once, here: concurrent runs' threads must not race to start it
    if max_parallel is None:
        max_parallel = parallel_slots(todo, ray.cluster_resources())
    say(f"[reproduce] {len(todo)} run(s) to train, at most {max_parallel} at once")

    lock = threading.Lock()

    def say_one(line: str) -> None:  # whole lines, from concurrent runs' threads
        with lock:
            say(line)

    def start(r: Run) -> Outcome:
        began = time.monotonic()
        waits = f" (after {', '.join(r.needs)})" if r.needs else ""
        say_one(f"[reproduce] {r.name}: training{waits} -> {redact_url(r.config.run.url())}")
        result = train(r.config)
        say_one(f"[reproduce] {r.name}: done in {time.monotonic() - began:.0f} s")
        return Outcome(r, trained=True, metrics=dict(result.metrics))

    def ready() -> list[Run]:
        return [r for r in todo if all(n in outcomes for n in r.needs)]

    if max_parallel <= 1:  # in this thread, in plan order (dependencies first)
        for r in todo:
            outcomes[r.name] = start(r)
        return outcomes
    for r in todo:  # runs side by side share the nodes: 1 CPU per worker, as parallel_slots counts them
        r.config.run.cpus_per_worker = r.config.run.cpus_per_worker or 1
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_parallel, thread_name_prefix="reproduce") as pool:
        running: dict[Future[Outcome], Run] = {}
        while todo or running:
            for r in ready()[: max_parallel - len(running)] if failure is None else []:
                todo.remove(r)
                running[pool.submit(start, r)] = r
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                r = running.pop(future)
                try:
                    outcomes[r.name] = future.result()
                except BaseException as e:  # noqa: BLE001  (re-raised once the running ones are done)
                    failure = failure or e
    if failure is not None:
        raise failure
    return outcomes


# ---------------------------------------------------------------- the report


def write_reproduce_report(plan: Plan, outcomes: dict[str, Outcome]) -> str:
    """`reproduce.md` / `.html` in the chain folder: one row per method; returns the .md URL."""
    rows_runs = [outcomes[f"{plan.arch}_x{plan.scale}-{m}"] for m in plan.methods]
    final = rows_runs[0].metrics
    sets = sorted(k.removeprefix("psnr/") for k in final if k.startswith("psnr/"))
    full_size = all(
        (o.run.config.model.teacher_preset, o.run.config.model.student_preset) == ("teacher", "student")
        for o in rows_runs
    )
    paper = {model: values for _, model, values in PAPER_X4.get(plan.arch, [])}
    paper = paper if plan.scale == 4 and full_size else {}
    paper_sets = {s: _paper_set(s, paper) for s in sets}
    header = ["method", "init (x4 student started from)" if plan.scale == 4 else "init"]
    for s in sets:
        header += [f"{s} PSNR / SSIM"] + ([f"{s} paper PSNR"] if paper_sets[s] else [])
    header.append("run report")

    def cells(metrics: dict[str, Any], prefix: str, method: str | None) -> list[str]:
        out = []
        for s in sets:
            key = f"{prefix}psnr/{s}"
            out.append(f"{metrics[key]:.2f} / {metrics[f'{prefix}ssim/{s}']:.4f}" if key in metrics else "—")
            if paper_sets[s]:
                value = paper.get(method or "", {}).get(paper_sets[s])
                out.append(f"{value:.2f}" if value is not None else "—")
        return out

    rows = [["bicubic", "—", *cells(final, "bicubic/", None), "—"]]
    teacher = next((o for o in rows_runs if f"teacher/psnr/{sets[0]}" in o.metrics), None)
    if teacher:
        weights = _relative(plan, teacher.run.config.model.teacher or "")
        rows.append([f"teacher ({weights})", "—", *cells(teacher.metrics, "teacher/", "teacher"), "—"])
    for o in rows_runs:
        init = o.run.config.model.student_init
        start = _relative(plan, init) if init else f"random init (seed {o.run.config.train.seed})"
        report = f"{o.run.name}/report.md"
        rows.append([o.run.method, start, *cells(o.metrics, "", o.run.method), report])

    title = f"Reproduce {plan.arch} x{plan.scale}: {', '.join(plan.methods)}"
    doc = Report(title).heading(title, level=1)
    doc.paragraph(
        "Each method trained with its recipe (`dukd_ray.distill.recipes`); students scored with their EMA "
        "weights at the last step (Y-PSNR dB / SSIM). "
        + (
            "Paper columns: the published x4 numbers (docs/distill.md)."
            if paper
            else "No paper columns: the paper's numbers are for the full-size x4 nets."
        )
    )
    doc.heading("Results").table(header, rows)
    doc.heading("Runs (dependency order)").bullets([_run_line(plan, outcomes[r.name]) for r in plan.runs])
    doc.write(plan.url, REPORT, plan.storage_options or None)
    return join(plan.url, f"{REPORT}.md")


def _paper_set(name: str, paper: dict[str, dict[str, float]]) -> str | None:
    """The paper's name for our set `name` if any paper row has it (B100 = BSD100 = BSDS100)."""
    names = {n for values in paper.values() for n in values}
    return next((n for n in set_aliases(name) if n in names), None)


def _relative(plan: Plan, url: str) -> str:
    """`url` relative to the chain folder when it is inside it (the report moves with the folder)."""
    prefix = plan.url.rstrip("/") + "/"
    return f"`{url.removeprefix(prefix)}`" if url.startswith(prefix) else f"`{redact_url(url)}`"


def _run_line(plan: Plan, o: Outcome) -> str:
    r, cfg = o.run, o.run.config
    what = f"{cfg.run.export_name}.pth" if r.role == "teacher" else f"{r.method} student"
    init = f", init {_relative(plan, cfg.model.student_init)}" if cfg.model.student_init else ""
    state = "trained now" if o.trained else "finished before, skipped"
    return f"`{r.name}/`: {r.role} x{r.scale} ({what}{init}), {o.metrics['step']} steps, {state}"


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(
            "Reproduce a row of the paper: train every run it needs (x2 students first where the recipe "
            "starts x4 from x2), resumably, and write <storage>/<name>/reproduce.md. The job flags "
            "apply to every run; --teacher/--data are the target scale's, --teacher-x2/--data-x2 "
            "the x2 runs'."
        )
    )
    p.add_argument("--arch", required=True, choices=list(ARCHS))
    p.add_argument("--scale", required=True, type=int, choices=SUPPORTED_SCALES)
    p.add_argument(
        "--methods", help=f"comma-separated, of {','.join(METHODS)} (default: every method with a recipe)"
    )
    add_input_args(p)
    p.add_argument("--teacher-x2", help="teacher at x2, for the x2 students the x4 runs start from")
    p.add_argument("--data-x2", help="x2 training data (default: --data, fine for a DIV2K-layout root)")
    add_run_args(p, print_config_help="print the plan (every run's config, what it waits for) as JSON, exit")
    p.add_argument(
        "--max-parallel", type=int, help="runs at once (default: as many as the cluster's CPUs/GPUs hold)"
    )
    return p


@cli_main(returns_status=False)
def main(argv: Sequence[str] | None = None) -> dict[str, Outcome]:
    """`python jobs/reproduce.py --arch edsr --scale 4 ...`: plan, train what is unfinished, report."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_parallel is not None and args.max_parallel < 1:
        parser.error("--max-parallel: expected an integer >= 1")
    plan = build_plan(args)
    if args.print_config:
        print(json.dumps(plan.to_dict(), indent=2), flush=True)
        raise SystemExit(0)
    outcomes = run_plan(plan, args.max_parallel)
    url = write_reproduce_report(plan, outcomes)
    print(f"[reproduce] report: {redact_url(url)} (and {REPORT}.html)", flush=True)
    return outcomes
