"""`--print-config`, the student init as BasicSR does it, and the x2 -> x4 chain (`jobs/reproduce.py`).

The print-config tests come first: they assert that nothing has started Ray, and the chain test's
module-scoped cluster would have. The chain runs the tiny presets for 2 steps with 1 worker.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import ray
import torch

from dukd_ray.models import CheckpointError, build_arch, load_student_init, save_weights
from dukd_ray.train import InputError, JobConfig, pipeline, prepare
from dukd_ray.train import cli as job_cli
from dukd_ray.tune import cli as tune_cli

ENTRYPOINTS = {
    "jobs/edsr_x4.py": lambda argv: job_cli.main("edsr_x4", argv),
    "jobs/rcan_x3.py": lambda argv: job_cli.main("rcan_x3", argv),
    "jobs/train_teacher.py": lambda argv: job_cli.main_teacher(["--arch", "swinir", "--scale", "2", *argv]),
    "jobs/tune_upcycling.py": tune_cli.main,
}


def _printed(main, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--print-config"])
    assert e.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("job", sorted(ENTRYPOINTS))
def test_print_config_round_trips_through_config_without_ray_or_storage(job, tmp_path, capsys):
    storage = tmp_path / "never_created"
    argv = ["--tiny", "--method", "kd", "--storage", str(storage), "--max-steps", "7"]
    argv += ["--set", "train.lr=2e-4", "--set", "data.val_sets=[Set5]"]
    first = _printed(ENTRYPOINTS[job], argv, capsys)
    cfg = json.loads(first)
    assert cfg["distill"]["method"] == "kd" and cfg["train"]["lr"] == 2e-4 and cfg["train"]["max_steps"] == 7
    assert cfg["distill"]["w_pix"] == 1.0  # kd's own recipe, not DUKD's pixel weight
    config = tmp_path / "printed.json"  # YAML reads JSON
    config.write_text(first)
    again = _printed(ENTRYPOINTS[job], ["--config", str(config)], capsys)
    assert again == first
    assert JobConfig.from_dict(json.loads(again)).to_dict() == cfg
    assert not storage.exists()
    assert not ray.is_initialized()


def test_reproduce_print_config_shows_the_plan(tmp_path, capsys):
    argv = ["--arch", "edsr", "--scale", "4", "--tiny", "--storage", str(tmp_path / "runs"), "--name", "row"]
    plan = json.loads(_printed(pipeline.main, argv, capsys))
    runs = {r["name"]: r for r in plan["runs"]}
    order = list(runs)
    assert set(runs) >= {"teacher_x2", "teacher_x4", "edsr_x2-kd", "edsr_x2-dukd", "edsr_x4-scratch"}
    chain = str(tmp_path / "runs" / "row")
    for method in ("kd", "dukd"):  # the recipe: x4 starts from the x2 student of the same method
        x4 = runs[f"edsr_x4-{method}"]
        assert x4["config"]["model"]["student_init"] == f"{chain}/edsr_x2-{method}/student.pth"
        assert x4["needs"] == ["teacher_x4", f"edsr_x2-{method}"]
        assert order.index(f"edsr_x2-{method}") < order.index(f"edsr_x4-{method}")
        assert runs[f"edsr_x2-{method}"]["config"]["model"]["scale"] == 2
        assert runs[f"edsr_x2-{method}"]["config"]["model"]["teacher"] == f"{chain}/teacher_x2/teacher.pth"
    assert runs["edsr_x4-scratch"]["config"]["model"]["student_init"] is None
    assert runs["teacher_x4"]["config"]["run"]["export_name"] == "teacher"
    assert not (tmp_path / "runs").exists() and not ray.is_initialized()


def test_reproduce_needs_the_x2_teacher_outside_tiny(capsys):
    argv = ["--arch", "edsr", "--scale", "4", "--methods", "dukd", "--teacher", "t.pth", "--name", "row"]
    with pytest.raises(SystemExit) as e:
        pipeline.main(argv)
    assert e.value.code == 2
    assert "--teacher-x2" in capsys.readouterr().err
    # RCAN x4 starts from scratch: no x2 run, no x2 teacher needed
    plan = json.loads(
        _printed(
            pipeline.main, ["--arch", "rcan", "--scale", "4", "--teacher", "t.pth", "--name", "r"], capsys
        )
    )
    assert all(r["config"]["model"]["scale"] == 4 for r in plan["runs"])


def test_a_bad_input_of_any_run_fails_the_chain_before_anything_trains(tmp_path, tiny_teacher, capsys):
    """The x4 teacher is missing: the x2 runs would have trained first; now nothing starts."""
    argv = ["--arch", "edsr", "--scale", "4", "--tiny", "--methods", "scratch,kd", "--storage", str(tmp_path)]
    argv += ["--teacher", str(tmp_path / "missing_x4.pth"), "--teacher-x2", tiny_teacher("edsr", 2)]
    with pytest.raises(SystemExit) as e:
        pipeline.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: model.teacher" in err and "missing_x4.pth" in err and "Traceback" not in err
    assert not ray.is_initialized() and not list(tmp_path.rglob("checkpoint_*"))


def test_parallel_slots_count_workers_loaders_and_gpus():
    def plan(*overrides: str) -> list[pipeline.Run]:
        cfg = JobConfig.from_preset("edsr_x4", tiny=True).apply_overrides(list(overrides))
        return [pipeline.Run("r", "student", 4, "dukd", cfg)]

    assert pipeline.parallel_slots(plan(), {"CPU": 2}) == 1  # 1 worker + 1 loader process
    assert pipeline.parallel_slots(plan(), {"CPU": 16}) == 8
    gpu = ("run.use_gpu=true", "run.num_workers=2", "data.loader_workers=2")
    assert pipeline.parallel_slots(plan(*gpu), {"CPU": 64, "GPU": 8}) == 4
    half = ("run.use_gpu=true", "run.gpus_per_worker=0.5")  # one worker each, two runs per GPU
    assert pipeline.parallel_slots(plan(*half), {"CPU": 64, "GPU": 2}) == 4
    assert pipeline.parallel_slots(plan(*gpu), {"CPU": 1, "GPU": 0}) == 1


# ---------------------------------------------------------------- student init


def _seeded(arch: str, scale: int, preset: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_arch(arch, scale, preset=preset)


def test_student_init_loads_params_into_the_student_and_params_ema_into_the_ema(tmp_path):
    params, ema = _seeded("edsr", 2, "tiny_student", 0), _seeded("edsr", 2, "tiny_student", 1)
    pth, st = save_weights(str(tmp_path / "x2"), params, ema, params.arch_spec)
    student = _seeded("edsr", 4, "tiny_student", 2)
    student_ema = copy.deepcopy(student)
    init = load_student_init(student, pth, ema=student_ema)
    assert (init.student.entry, init.ema.entry) == ("params", "params_ema")
    assert init.skipped == ["upsample.2.bias", "upsample.2.weight"]
    for key in init.student.loaded:
        assert torch.equal(student.state_dict()[key], params.state_dict()[key]), key
        assert torch.equal(student_ema.state_dict()[key], ema.state_dict()[key]), key
    assert "params_ema -> EMA" in init.describe()
    # the .safetensors export has one set of weights: the EMA starts as the initialised student
    init = load_student_init(student, st, ema=student_ema)
    assert init.ema is None
    for key, value in student.state_dict().items():
        assert torch.equal(student_ema.state_dict()[key], value), key


@pytest.mark.parametrize(
    ("source", "keys"),
    [(("edsr", 2, "tiny_teacher"), r"conv_first\.weight"), (("rcan", 2, "tiny_student"), r"body\.0\.")],
)
def test_student_init_skipping_more_than_the_upsampler_is_an_error(tmp_path, sample_data, source, keys):
    pth, _ = save_weights(str(tmp_path / "other"), _seeded(*source, 0))
    student = _seeded("edsr", 4, "tiny_student", 1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"outside the upsampler \(upsample\.\*\): .*{keys}"):
        load_student_init(student, pth)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # nothing loaded
    cfg = JobConfig.from_preset("edsr_x4", tiny=True).apply_overrides(
        [
            f"data.train={sample_data.train_url}",
            f"data.val={sample_data.benchmark_url}",
            "distill.method=scratch",
            f"model.student_init={pth}",
            f"run.storage={tmp_path / 'runs'}",
        ]
    )
    with pytest.raises(InputError, match=rf"model\.student_init \(.*other\.pth\).*{keys}"):
        prepare(cfg)  # the driver's preflight, before Ray starts


# ---------------------------------------------------------------- the chain on Ray


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _teacher(folder: Path, scale: int) -> str:
    model = _seeded("edsr", scale, "tiny_teacher", scale)
    return save_weights(str(folder / f"teacher_x{scale}"), model, arch_spec=model.arch_spec)[0]


def test_the_chain_starts_x4_from_the_x2_export_and_a_rerun_skips_finished_runs(
    ray_cluster, sample_data, tmp_path, capsys
):
    storage = tmp_path / "runs"
    argv = ["--arch", "edsr", "--scale", "4", "--tiny", "--methods", "scratch,dukd", "--max-steps", "2"]
    argv += ["--data", sample_data.train_url, "--val-data", sample_data.benchmark_url]
    argv += ["--teacher", _teacher(tmp_path, 4), "--teacher-x2", _teacher(tmp_path, 2)]
    argv += ["--storage", str(storage), "--name", "row", "--max-parallel", "2"]
    outcomes = pipeline.main(argv)
    chain = storage / "row"
    assert set(outcomes) == {"edsr_x4-scratch", "edsr_x2-dukd", "edsr_x4-dukd"}
    assert all(o.trained and o.metrics["step"] == 2 for o in outcomes.values())
    x4 = outcomes["edsr_x4-dukd"].run.config
    assert x4.model.student_init == str(chain / "edsr_x2-dukd" / "student.pth")
    assert x4.distill.method == "dukd" and outcomes["edsr_x2-dukd"].run.config.model.scale == 2
    report = (chain / "edsr_x4-dukd" / "report.md").read_text()
    section = report.split("## Student initialisation")[1].split("##")[0]
    assert "edsr_x2-dukd/student.pth" in section and "`params_ema` -> EMA" in section
    assert "`upsample.2.bias`, `upsample.2.weight`" in section
    assert "from scratch" in (chain / "edsr_x4-scratch" / "report.md").read_text()

    table = (chain / "reproduce.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert {"bicubic", "scratch", "dukd"} <= set(rows)
    assert "`edsr_x2-dukd/student.pth`" in rows["dukd"] and "edsr_x4-dukd/report.md" in rows["dukd"]
    assert "random init" in rows["scratch"]
    assert (chain / "reproduce.html").stat().st_size > 0

    stamps = {p: p.stat().st_mtime_ns for p in chain.rglob("*") if p.name in ("meta.json", "report.md")}
    capsys.readouterr()
    again = pipeline.main(argv)
    out = capsys.readouterr().out
    assert not any(o.trained for o in again.values())
    assert out.count("skipped") == 3 and "training" not in out
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}  # no run folder was touched
