"""Tiny real sweeps: Ray Tune driving one Ray Train run per trial on the embedded sample data.

Each trial is the `--tiny` EDSR x4 job for 6 steps, validating every 2 (in the resume test only once, at
the last step: a sweep shorter than one validation interval), with a tiny (untrained) teacher made here.
Trials run one at a time (`--max-concurrent 1`) so the order ASHA sees them in is fixed. The ASHA sweep
also checks what a trial's driver reserves (one `dukd_driver` slot, which the local Ray advertises as a
cluster's head node does) and that Tune restarts a trial whose driver process is killed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import fsspec
import pytest
import ray
from ray import tune

from dukd_ray.train.cli import apply_args, build_parser
from dukd_ray.train.config import JobConfig
from dukd_ray.train.trainer import prepare
from dukd_ray.tune import cli
from dukd_ray.tune.results import BEST_CONFIG, TABLE_CSV
from dukd_ray.tune.sweep import DRIVER_RESOURCE, LOCAL_DRIVER_SLOTS, SweepError, run_sweep

MAX_STEPS = 6
RAY_CPUS = 3  # the 2-core machine: two 1-worker trials side by side (their drivers take no CPU), one spare


@pytest.fixture(scope="module")
def job_args(sample_data, tiny_teacher):
    """The job flags of every trial: tiny nets, the sample data, a tiny teacher, 6 steps."""
    return [
        "--tiny",
        "--teacher", tiny_teacher("edsr", 4),
        "--data", sample_data.train_url,
        "--val-data", sample_data.benchmark_url,
        "--set", "data.val_sets=[Sample]",
        "--max-steps", str(MAX_STEPS),
        "--set", "train.val_every=2",
        "--set", "train.ckpt_every=6",
        "--set", "train.ema_decay=0",  # validate the student itself, so 2 steps already show its lr
        "--max-concurrent", "1",
    ]  # fmt: skip


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


class KillFirstDriverOnce(tune.Callback):
    """SIGKILLs the first trial's driver (the trial function's process, where its Train run's controller
    also runs) at the trial's first report; notes each trial's resource request, the driver slots held
    at each report, and the trials Tune restarted."""

    def __init__(self):
        self.killed: str | None = None
        self.requests: list[dict[str, float]] = []
        self.slots_held: list[float] = []
        self.restarted: list[str] = []

    def on_trial_start(self, iteration, trials, trial, **info):
        self.requests.append(trial.placement_group_factory.required_resources)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.slots_held.append(LOCAL_DRIVER_SLOTS - ray.available_resources().get(DRIVER_RESOURCE, 0))
        if self.killed is None:
            self.killed = trial.trial_id
            os.kill(result["pid"], signal.SIGKILL)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.restarted.append(trial.trial_id)


def test_asha_sweep_on_s3_survives_a_killed_driver_and_best_config_round_trips(
    ray_cluster, job_args, s3_bucket, tmp_path
):
    bucket, opts = s3_bucket
    # First a learning trial, then two whose lr is too small to move the student: ASHA compares each
    # at the step-2 rung with the trials before it and stops them there. The learner's driver is killed
    # at its first report; Tune restarts the trial, whose Train run starts again (no checkpoint yet).
    space = _write(
        tmp_path / "space.yaml", "space:\n  train.lr: {grid: [2.0e-3, 1.0e-9, 2.0e-9]}\n  w_pix: 5.0\n"
    )
    argv = [
        *job_args,
        "--space", space,
        "--num-samples", "1",
        "--scheduler", "asha", "--grace-period", "2", "--reduction-factor", "2",
        "--max-trial-failures", "1",
        "--storage", f"{bucket}/sweeps",
        "--name", "asha",
        "--set", f"data.storage_options={{endpoint_url: {opts['endpoint_url']}}}",
    ]  # fmt: skip
    fault = KillFirstDriverOnce()
    outcome = run_sweep(cli.spec_from_args(cli.build_sweep_parser().parse_args(argv)), tune_callbacks=[fault])

    # every driver (the restarted one too) reserved one driver slot and nothing else
    assert fault.requests and all(r == {DRIVER_RESOURCE: 1} for r in fault.requests)
    assert set(fault.slots_held) == {1}  # one trial at a time (--max-concurrent 1)
    fs = fsspec.filesystem("s3", **opts)
    rows = list(_csv(fs.cat(outcome.files[TABLE_CSV]).decode()))
    assert len(rows) == 3 and {r["status"] for r in rows} == {"terminated"}
    by_lr = {float(r["train.lr"]): r for r in rows}
    learner = by_lr[2e-3]
    assert fault.restarted == [learner["trial_id"]] == [fault.killed]
    assert [int(r["restarts"]) for r in rows] == [1, 0, 0]  # the table says so (rows ranked: learner first)
    assert len(fault.requests) == 4  # three trials and the learner's restart
    assert learner["rank"] == "1" and learner["early_stopped"] == "False"
    assert int(learner["steps_run"]) == MAX_STEPS
    stopped = [r for r in rows if r["early_stopped"] == "True"]
    assert stopped, "ASHA stopped no trial"
    assert all(int(r["steps_run"]) < MAX_STEPS for r in stopped)
    assert fs.exists(f"{bucket}/sweeps/asha/train_runs/{learner['trial_id']}")

    # the best config is the learning trial's full job config and passes the job CLI's checks as-is
    local = tmp_path / "best.yaml"
    local.write_bytes(fs.cat(outcome.files[BEST_CONFIG]))
    cfg = apply_args(
        JobConfig.from_preset("edsr_x4"), build_parser("job").parse_args(["--config", str(local)])
    )
    assert cfg.train.lr == 2e-3 and cfg.distill.w_pix == 5.0 and cfg.train.max_steps == MAX_STEPS
    assert cfg.model.student_preset == "tiny_student" and cfg.data.val_sets == ["Sample"]
    prepare(cfg)  # teacher, data and storage all usable


class InterruptAfterFirstTrial(tune.Callback):
    """Ctrl+C once the first trial completes (Tune then saves the experiment state and returns).

    Tune saves its callbacks with the sweep, so the marker file keeps it from firing again on resume.
    """

    def __init__(self, marker: str):
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGINT)


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_cluster, job_args, tmp_path, caplog):
    space = _write(tmp_path / "space.yaml", "space:\n  w_kd: {grid: [1.0, 0.5]}\n")
    # also a sweep shorter than one validation interval (the --tiny preset's 25 steps), with ASHA's
    # default grace period: each trial validates once, at its last step, and runs to the end
    argv = [*job_args, "--set", "train.val_every=25", "--set", "train.ckpt_every=50"]
    argv += ["--space", space, "--num-samples", "1", "--scheduler", "asha"]
    argv += ["--storage", str(tmp_path / "sweeps"), "--name", "resumable"]
    spec = cli.spec_from_args(cli.build_sweep_parser().parse_args(argv))

    first = run_sweep(spec, tune_callbacks=[InterruptAfterFirstTrial(str(tmp_path / "interrupted"))])
    done = [r for r in first.records if r.status == "terminated"]
    assert len(done) == 1 and done[0].steps_run == MAX_STEPS
    assert len(first.records) < 2 or any(r.status == "unfinished" for r in first.records)
    finished = done[0].trial_id
    exp = tmp_path / "sweeps" / "resumable"
    results_before = (exp / finished / "result.json").read_bytes()
    run_files_before = sorted(p.name for p in (exp / "train_runs" / finished).iterdir())

    with pytest.raises(SweepError, match="already exists.*--resume"):
        run_sweep(spec)
    with pytest.raises(SweepError, match=r"started with different settings \(base\.train\.lr, num_samples\)"):
        run_sweep(
            dataclasses.replace(
                spec, num_samples=2, base={**spec.base, "train": {**spec.base["train"], "lr": 1e-3}}
            ),
            resume=True,
        )

    resumed = cli.main([*argv, "--resume"])
    assert sorted(r.trial_id for r in resumed.records)[0] == finished
    assert len(resumed.records) == 2
    assert all(r.status == "terminated" and r.steps_run == MAX_STEPS for r in resumed.records)
    assert {r.params["distill.w_kd"] for r in resumed.records} == {1.0, 0.5}
    assert all([step for step, _ in r.history] == [MAX_STEPS] for r in resumed.records)
    assert f"--max-steps {MAX_STEPS} is below one validation interval (train.val_every=25)" in caplog.text
    # the finished trial was not run again: its results and its Train run are untouched
    assert (exp / finished / "result.json").read_bytes() == results_before
    assert sorted(p.name for p in (exp / "train_runs" / finished).iterdir()) == run_files_before
    assert json.loads((exp / "sweep.json").read_text())["name"] == "resumable"


def _csv(text: str):
    import csv
    import io

    return csv.DictReader(io.StringIO(text))


@pytest.mark.slow  # beyond the test list: two trials side by side, with restarts (~2.5 min)
def test_pbt_clones_the_strong_trial_into_the_weak_one(ray_cluster, job_args, tmp_path):
    # two trials side by side: one learning, one whose lr is too small to learn; PBT (perturbing at every
    # checkpoint, every 2 steps) restarts the weak one from a copy of the strong one's Train run
    space_yaml = "space:\n  train.lr: {loguniform: [1.0e-9, 1.0e-2]}\n"
    space = _write(tmp_path / "space.yaml", space_yaml + "start: [{train.lr: 2.0e-3}, {train.lr: 1.0e-9}]\n")
    argv = [*job_args, "--space", space, "--num-samples", "2", "--scheduler", "pbt", "--max-concurrent", "2"]
    argv += [
        "--set",
        "train.ckpt_every=2",
        "--storage",
        str(tmp_path / "sweeps"),
        "--name",
        "pbt",
    ]
    outcome = cli.main(argv)

    assert len(outcome.records) == 2 and all(r.status == "terminated" for r in outcome.records)
    runs = tmp_path / "sweeps" / "pbt" / "train_runs"
    clones = sorted(p for p in runs.iterdir() if "-from-" in p.name)
    assert clones, f"PBT cloned no trial: {sorted(p.name for p in runs.iterdir())}"
    weak_id, donor_and_step = clones[0].name.split("-from-")
    donor_id, step = donor_and_step.rsplit("-", 1)
    copied = [int(p.name.removeprefix("checkpoint_")) for p in clones[0].glob("checkpoint_0*")]
    assert copied and max(copied) >= int(step)  # the donor's state, at or after the step PBT cloned
    weak = next(r for r in outcome.records if r.trial_id == weak_id)
    assert weak.params["train.lr"] != 1e-9  # explored from the donor's value
    assert donor_id in {r.trial_id for r in outcome.records}
    # the table's curve of the weak trial holds its own first report (step 2, before any clone) and the
    # clone's reports (from the cloned step on)
    assert weak.history[0][0] == 2 and weak.history[-1][0] >= int(step)
