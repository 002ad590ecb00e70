"""Population-based training when every trial is a Ray Train run.

PBT clones a strong trial into a weak one: Tune restarts the weak trial from the strong one's Tune
checkpoint with perturbed values. A trial's state lives in its Ray Train run, so the driver reports each
Train checkpoint to Tune as a pointer (`train_run.json`: trial id, Train run name, step) instead of a
copy. A trial restarted from its own pointer (a resumed sweep) continues its Train run; one restarted
from another trial's pointer continues a copy of that run, under a new name (`<trial>-from-<donor>-<step>`),
since Ray Train resumes a run folder from its latest checkpoint. `TuneReportCallback` forwards metrics
only, so here a Train callback hands each report to the driver, which reports it to Tune itself, through a
queue actor kept on the driver's node (like the Train controller): it then lives as long as the driver.
"""

from __future__ import annotations

import json
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any

import ray.train
from ray import tune
from ray.util.queue import Empty, Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from dukd_ray import storage
from dukd_ray.train.config import JobConfig

POINTER = "train_run.json"
_POLL_S = 1.0


class ForwardReports(ray.train.UserCallback):
    """Runs in the Train controller: hands every report (rank 0's metrics, has a checkpoint) to the driver."""

    def __init__(self, reports: Queue):
        self._reports = reports

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self._reports.put((dict(metrics[0]), checkpoint is not None))


def scheduler(hyperparam_mutations: dict[str, Any], perturbation_interval: int) -> Any:
    """Tune's PBT on the reported `step`, perturbing at checkpoint steps (the only states it can clone)."""
    from ray.tune.schedulers import PopulationBasedTraining

    return PopulationBasedTraining(
        time_attr="step",
        perturbation_interval=perturbation_interval,
        hyperparam_mutations=hyperparam_mutations,
    )


def fit_reporting_checkpoints(
    cfg: JobConfig, make_trainer: Callable[[JobConfig, Sequence[Any]], Any]
) -> None:
    """Run this trial's Train run (own, resumed, or cloned) and report its results and pointers to Tune."""
    trial_id = tune.get_context().get_trial_id()
    cfg.run.name = _start_run(trial_id, cfg.run.storage, cfg.data.storage_options or None)
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    reports: Queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})  # beside the driver
    job = make_trainer(cfg, [ForwardReports(reports)])
    outcome: list[Any] = []  # the Train Result, or the exception fit() raised

    def fit() -> None:
        try:
            outcome.append(job.fit())
        except BaseException as e:  # re-raised in the trial's thread, where Tune sees it
            outcome.append(e)

    thread = threading.Thread(target=fit, name="train-run", daemon=True)
    thread.start()
    forwarded = 0
    while thread.is_alive() or not reports.empty():
        try:
            metrics, has_checkpoint = reports.get(timeout=_POLL_S)
        except (Empty, queue.Empty):
            continue
        _report(metrics, has_checkpoint, trial_id, cfg.run.name)
        forwarded += 1
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    if not forwarded and outcome[0].metrics:  # a clone of a finished run: it resumed at its last step
        _report(outcome[0].metrics, True, trial_id, cfg.run.name)


def _report(metrics: dict[str, Any], has_checkpoint: bool, trial_id: str, run_name: str) -> None:
    """Report to Tune; a report with a Train checkpoint carries a pointer to it as the trial's checkpoint."""
    if not has_checkpoint:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, POINTER), "w") as f:
            json.dump({"trial_id": trial_id, "run": run_name, "step": int(metrics["step"])}, f)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _start_run(trial_id: str, runs_url: str, storage_options: dict[str, Any] | None) -> str:
    """The Train run name this (re)start continues; copies the donor's run folder on a PBT clone."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return trial_id
    with checkpoint.as_directory() as folder, open(os.path.join(folder, POINTER)) as f:
        pointer = json.load(f)
    if pointer["trial_id"] == trial_id:
        return pointer["run"]
    name = f"{trial_id}-from-{pointer['trial_id']}-{pointer['step']}"
    fs, src = storage.get_fs(storage.join(runs_url, pointer["run"]), storage_options)
    _, dst = storage.get_fs(storage.join(runs_url, name), storage_options)
    if not fs.exists(dst):  # a restart of this clone finds it already copied (and maybe advanced)
        storage.with_retries(lambda: fs.copy(src, dst, recursive=True), storage.join(runs_url, name))
    return name
