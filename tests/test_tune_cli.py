"""The sweep CLI's checks, all before Ray starts, and the fractional-GPU trainer of a trial."""

from __future__ import annotations

import pytest
import ray

from dukd_ray.train.config import JobConfig
from dukd_ray.train.trainer import build_trainer
from dukd_ray.tune import cli


@pytest.fixture
def args(tmp_path):
    return ["--tiny", "--storage", str(tmp_path / "sweeps"), "--name", "s"]


def _exit_message(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--space", "nope"], "search space not found: nope (shipped spaces: default, paper_rows)"),
        (["--gpus-per-trial", "0.5", "--workers-per-trial", "2"], "DDP ranks cannot share a GPU"),
        (["--gpus-per-trial", "3", "--workers-per-trial", "2"], "one GPU per worker"),
        (["--num-samples", "0"], "--num-samples: expected an integer >= 1"),
        (["--scheduler", "pbt", "--search", "optuna"], "--scheduler pbt explores by itself"),
        (["--reduction-factor", "1"], "--reduction-factor: expected a number > 1"),
        (["--max-trial-failures", "-2"], "--max-trial-failures: expected an integer >= -1 (-1: no limit)"),
        (["--name", "a/b"], "run.name: expected a name of letters"),
        (["--set", "distill.w_pixel=2"], "unknown config key 'distill.w_pixel'"),
        (
            ["--num-workers", "2"],
            "--num-workers is a job flag; a sweep sizes each trial with --workers-per-trial",
        ),
        (["--no-gpu"], "--no-gpu is a job flag; a sweep sizes each trial with --gpus-per-trial 0"),
    ],
)
def test_bad_settings_exit_before_ray_starts(capsys, args, extra, match):
    assert match in _exit_message(capsys, [*args, *extra])
    assert not ray.is_initialized()


def test_bad_space_exits_naming_file_and_key(capsys, args, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  w_pix: {uniform: [1, 5]}\n  lc_ops: {subsets: [invert, rotate]}\n")
    err = _exit_message(capsys, [*args, "--space", str(space)])
    assert f"{space}: key 'distill.lc_ops' value ['rotate']" in err and "unknown op" in err
    space.write_text("space:\n  w_pix: {choice: []}\n")
    assert f"{space}: key 'w_pix': 'choice' needs a non-empty list" in _exit_message(
        capsys, [*args, "--space", str(space)]
    )
    assert not ray.is_initialized()


def test_missing_teacher_exits_before_ray_starts(capsys, args, tmp_path):
    err = _exit_message(capsys, [*args, "--teacher", str(tmp_path / "missing.pth")])
    assert "model.teacher" in err and "missing.pth" in err
    assert not ray.is_initialized()


def test_fractional_gpu_trial_reserves_its_share_of_a_gpu(tmp_path):
    """`--gpus-per-trial 0.5`: each trial's job config, and so its trainer, reserves half a GPU per worker."""
    from dukd_ray.tune.sweep import SweepSpec, builtin_space
    from dukd_ray.tune.sweep import prepare as prepare_sweep

    with open(builtin_space("default")) as f:
        text = f.read()
    base = JobConfig.from_preset("edsr_x4", tiny=True).apply_overrides(["distill.method=scratch"])
    spec = SweepSpec(base.to_dict(), text, "default", str(tmp_path), "s", gpus_per_trial=0.5)
    cfg, _, _ = prepare_sweep(spec)
    assert (cfg.run.use_gpu, cfg.run.num_workers, cfg.run.gpus_per_worker) == (True, 1, 0.5)
    cfg.run.name = "trial"
    scaling = build_trainer(cfg, check=False).scaling_config
    assert scaling.use_gpu and scaling.num_gpus_per_worker == 0.5
    assert scaling.total_resources == {"GPU": 0.5}  # two such trials fit one GPU

    cfg.run.gpus_per_worker = 1.0  # whole GPUs: Ray's default request, one per worker
    whole = build_trainer(cfg, check=False).scaling_config
    assert whole.resources_per_worker is None and whole.num_gpus_per_worker == 1
    assert not ray.is_initialized()


def test_optuna_starts_from_the_paper_point(tmp_path):
    """Optuna's first suggestion is the `start` point (here the paper's row), op sets included."""
    from dukd_ray.tune.space import parse_space
    from dukd_ray.tune.sweep import FIELDS, SweepSpec, _tune_config, builtin_space, resolve_start

    with open(builtin_space("default")) as f:
        text = f.read()
    base = JobConfig.from_preset("edsr_x2", tiny=True)
    spec = SweepSpec(base.to_dict(), text, "default", str(tmp_path), "s", search="optuna", max_concurrent=2)
    space = parse_space(text, FIELDS)
    (paper,) = resolve_start(space, base)
    search_alg = _tune_config(spec, base, space, [paper], cluster={}).search_alg  # max_concurrent given
    search_alg.set_search_properties("val_psnr", "max", space.to_tune())
    first = search_alg.suggest("t0")
    assert space.decode(first) == paper
    assert paper["distill.n_gt_sub"] == 2 and paper["distill.w_pix"] == 5.0  # EDSR x2 row


@pytest.mark.parametrize(
    ("cluster", "workers", "gpus", "driver", "fits"),
    [
        # cluster/aws-gpu.yaml grown to 5 g5.12xlarge: 20 GPUs, but 16 driver slots on the head
        ({"CPU": 242, "GPU": 20, "dukd_driver": 16}, 1, 1, {"dukd_driver": 1}, 16),
        ({"CPU": 242, "GPU": 20, "dukd_driver": 16}, 2, 2, {"dukd_driver": 1}, 10),
        # a local cluster: its driver slots never bind, and the drivers take no CPU
        ({"CPU": 3, "dukd_driver": 1000}, 1, 0, {"dukd_driver": 1}, 3),
        # a cluster without the resource: drivers anywhere, 0.01 CPU each
        ({"CPU": 3}, 1, 0, {"CPU": 0.01}, 2),
        ({"CPU": 8, "dukd_driver": 1000}, 2, 0, {"dukd_driver": 1}, 4),
        ({"CPU": 2, "GPU": 1}, 1, 0.5, {"CPU": 0.01}, 2),
    ],
)
def test_trial_drivers_use_the_head_resource_where_the_cluster_has_it(cluster, workers, gpus, driver, fits):
    """What each trial's driver asks for, and how many trials fit with it (no Ray: the totals are given)."""
    from dukd_ray.tune.sweep import SweepSpec, driver_resources, fitting_trials

    spec = SweepSpec({}, "", "s", "/tmp", "s", workers_per_trial=workers, gpus_per_trial=gpus)
    assert driver_resources(cluster) == driver
    assert fitting_trials(spec, cluster) == fits
    if not gpus:  # CPU workers asking for more CPUs (run.cpus_per_worker) fit fewer trials
        spec.base = {"run": {"cpus_per_worker": 2}}
        assert fitting_trials(spec, cluster) == max(1, fits // 2)
