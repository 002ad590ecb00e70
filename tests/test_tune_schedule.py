"""A sweep's schedule for any --max-steps: validations, checkpoints and scheduler agree, or one line says no.

`resolve_schedule` is pure (no Ray); the last tests check that `prepare` applies it to the trials' config
and that the CLI refuses, before Ray starts, what cannot work.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
import ray

from dukd_ray.train.config import JobConfig
from dukd_ray.tune import cli
from dukd_ray.tune.sweep import Schedule, SweepError, SweepSpec, builtin_space, prepare, resolve_schedule

CLAMP_8 = (
    "[dukd] --max-steps 8 is below one validation interval (train.val_every=25): validating and "
    "checkpointing every 8 steps"
)
NO_RUNG_8 = "ASHA has no validation before a trial's last step to stop it at: every trial runs 8 steps"


def _pbt_at_every_validation(val_every: int, was: int) -> Schedule:
    note = (
        "[dukd] PBT clones checkpoints taken before a trial's last step: checkpointing at every validation "
        f"(train.ckpt_every={val_every} instead of {was})"
    )
    return Schedule("pbt", val_every, val_every, perturbation_interval=val_every, note=note)


# (scheduler, max_steps, val_every, ckpt_every, grace_period) -> Schedule
WORKS = [
    # ASHA: the grace period defaults to one validation interval; rungs end at the last validation
    # before the last step (100 -> 75, 110 -> 100, 6 with val_every 2 -> 4)
    (("asha", 100, 25, 50, None), Schedule("asha", 25, 50, max_t=75, grace_period=25)),
    (("asha", 110, 25, 50, None), Schedule("asha", 25, 50, max_t=100, grace_period=25)),
    (("asha", 6, 2, 6, 2), Schedule("asha", 2, 6, max_t=4, grace_period=2)),
    (("asha", 100, 25, 50, 75), Schedule("asha", 25, 50, max_t=75, grace_period=75)),
    # a grace period between validations: its rung is decided at the next validation
    (("asha", 100, 25, 50, 10), Schedule("asha", 25, 50, max_t=75, grace_period=10)),
    # checkpoints rarer than the run is long: the last step checkpoints anyway
    (("asha", 60, 25, 5000, None), Schedule("asha", 25, 5000, max_t=50, grace_period=25)),
    # one validation per trial: nothing to stop a trial at, so every trial runs to the end
    (("asha", 8, 25, 50, None), Schedule("fifo", 8, 8, note=f"{CLAMP_8}; {NO_RUNG_8}")),
    (
        ("asha", 25, 25, 50, None),
        Schedule("fifo", 25, 50, note=f"[dukd] {NO_RUNG_8.replace('8 steps', '25 steps')}"),
    ),
    (
        ("asha", 1, 1, 1, None),
        Schedule("fifo", 1, 1, note=f"[dukd] {NO_RUNG_8.replace('8 steps', '1 steps')}"),
    ),
    # PBT perturbs at checkpoints; one before the last step is needed, so it checkpoints at every
    # validation when train.ckpt_every leaves none
    (("pbt", 100, 25, 50, None), Schedule("pbt", 25, 50, perturbation_interval=50)),
    (("pbt", 6, 2, 2, None), Schedule("pbt", 2, 2, perturbation_interval=2)),
    (("pbt", 100, 25, 100, None), _pbt_at_every_validation(25, was=100)),
    (("pbt", 40, 25, 5000, None), _pbt_at_every_validation(25, was=5000)),
    # FIFO only needs the validation interval to fit the run
    (("fifo", 100, 25, 50, None), Schedule("fifo", 25, 50)),
    (("fifo", 8, 25, 50, None), Schedule("fifo", 8, 8, note=CLAMP_8)),
    (("fifo", 8, 500, 5000, None), Schedule("fifo", 8, 8, note=CLAMP_8.replace("=25", "=500"))),
]

REFUSED = [
    # ASHA can only act at a validation before the last step
    (
        ("asha", 8, 25, 50, 4),
        "--grace-period 4: with --max-steps 8 and train.val_every=25 a trial validates only",
    ),
    (("asha", 25, 25, 50, 10), "drop --grace-period or use --set train.val_every=N --set train.ckpt_every=N"),
    (("asha", 100, 25, 50, 76), "--grace-period 76 is past a trial's last validation before its last step"),
    (("asha", 100, 25, 50, 100), "use --grace-period 75 or less"),
    (("asha", 100, 25, 50, 500), "(step 75: --max-steps 100, train.val_every=25)"),
    # PBT needs a checkpoint before the last step to clone
    (
        ("pbt", 8, 25, 50, None),
        "--scheduler pbt: with --max-steps 8 and train.val_every=25 a trial validates",
    ),
    (("pbt", 25, 25, 25, None), "so PBT has no checkpoint to clone; use --set train.val_every=N"),
    (("pbt", 1, 1, 1, None), "so PBT has no checkpoint to clone; use a larger --max-steps"),
    # --grace-period belongs to ASHA
    (("pbt", 100, 25, 50, 25), "--grace-period is an ASHA setting; --scheduler pbt has no grace period"),
    (("fifo", 100, 25, 50, 25), "--scheduler fifo has no grace period"),
]


@pytest.mark.parametrize(("settings", "expected"), WORKS, ids=[str(s) for s, _ in WORKS])
def test_every_workable_combination_resolves(settings, expected):
    schedule = resolve_schedule(*settings)
    assert schedule == expected
    max_steps = settings[1]
    assert schedule.val_every <= max_steps and schedule.ckpt_every % schedule.val_every == 0
    if schedule.scheduler == "asha":  # Ray's own checks, and every rung is decided before the last step
        assert 0 < schedule.grace_period <= schedule.max_t < max_steps
        assert schedule.max_t % schedule.val_every == 0
    if schedule.scheduler == "pbt":
        assert schedule.perturbation_interval == schedule.ckpt_every < max_steps
    # the Tune scheduler is built from the resolved settings: resolving them again changes nothing
    again = resolve_schedule(settings[0], max_steps, schedule.val_every, schedule.ckpt_every, settings[4])
    assert dataclasses.replace(again, note=None) == dataclasses.replace(schedule, note=None)


@pytest.mark.parametrize(("settings", "match"), REFUSED, ids=[str(s) for s, _ in REFUSED])
def test_unworkable_combinations_are_refused_in_one_line(settings, match):
    with pytest.raises(SweepError) as e:
        resolve_schedule(*settings)
    assert match in str(e.value) and "\n" not in str(e.value)


def _spec(tmp_path, **train):
    base = JobConfig.from_preset("edsr_x4", tiny=True).apply_overrides(
        ["distill.method=scratch", *(f"train.{k}={v}" for k, v in train.items())]
    )
    with open(builtin_space("default")) as f:
        text = f.read()
    return SweepSpec(base.to_dict(), text, "default", str(tmp_path), "s")


def test_prepare_gives_the_trials_the_clamped_schedule_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="dukd_ray.tune.sweep"):
        cfg, _, _ = prepare(_spec(tmp_path, max_steps=8))  # tiny: val_every 25, ckpt_every 50
    assert (cfg.train.max_steps, cfg.train.val_every, cfg.train.ckpt_every) == (8, 8, 8)
    assert [r.getMessage() for r in caplog.records] == [f"{CLAMP_8}; {NO_RUNG_8}"]
    caplog.clear()
    cfg, _, _ = prepare(_spec(tmp_path))  # nothing to change: nothing said
    assert (cfg.train.val_every, cfg.train.ckpt_every) == (25, 50) and not caplog.records
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--max-steps", "8", "--grace-period", "4"], "--grace-period 4: with --max-steps 8"),
        (["--max-steps", "8", "--scheduler", "pbt"], "--scheduler pbt: with --max-steps 8"),
        (["--scheduler", "fifo", "--grace-period", "2"], "--scheduler fifo has no grace period"),
    ],
)
def test_cli_refuses_an_unworkable_schedule_before_ray_starts(capsys, tmp_path, extra, match):
    with pytest.raises(SystemExit) as e:
        cli.main(["--tiny", "--storage", str(tmp_path), "--name", "s", *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2 and match in err and err.count("\n") == 1
    assert not ray.is_initialized()


def test_a_space_cannot_search_the_schedule(capsys, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  train.val_every: {choice: [5, 10]}\n")
    with pytest.raises(SystemExit):
        cli.main(["--tiny", "--storage", str(tmp_path), "--name", "s", "--space", str(space)])
    assert "train.val_every cannot be searched: every trial of a sweep shares one schedule" in (
        capsys.readouterr().err
    )
