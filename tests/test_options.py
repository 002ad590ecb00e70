"""BasicSR / DUKD option files through `jobs/train.py --config` (tests/options/*.yml, written in the shapes
those projects use): each imports to the config its values say, prints the recipe our preset job prints,
lists every unsupported key in one error, refuses Python-object YAML tags, and runs on paired HR/LR
folders with `--path-map` through the driver's preflight. The real training run of such a file is the
`ray job submit` one in tests/test_job_e2e.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from dukd_ray.data.sources import PairedFolders, PngSource, list_paired_pairs, open_source
from dukd_ray.image.pairs import PairError
from dukd_ray.train import cli as job_cli
from dukd_ray.train import preflight
from dukd_ray.train.config import JobConfig
from dukd_ray.train.options import check_paths
from dukd_ray.train.valsets import load_val_sets

OPTIONS = Path(__file__).parent / "options"
DUKD_X4 = str(OPTIONS / "dukd_edsr_x4c256b32_c64b32.yml")
TEACHER_X4 = "/cache/SR/pretrained/EDSR_Lx4_f256b32_DIV2K_official-76ee1c8f.pth"


def imported(*argv: str) -> JobConfig:
    cfg, _ = job_cli.config_job(job_cli.config_parser().parse_args(list(argv)))
    return cfg


def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value and key not in ("val", "student_kwargs", "teacher_kwargs"):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


SAYS: dict[str, dict[str, Any]] = {
    "dukd_edsr_x4c256b32_c64b32.yml": {
        "model.arch": "edsr",
        "model.scale": 4,
        "model.student_preset": "student",
        "model.student_kwargs": {},
        "model.teacher_preset": "teacher",
        "model.teacher": TEACHER_X4,
        "model.student_init": "experiments/dukd_edsr_x2c256b32_c64b32/models/net_g_latest.pth",
        "data.train": "gt=/cache/SR/DIV2K/DIV2K_train_HR,lq=/cache/SR/DIV2K/DIV2K_train_LR_bicubic/X4"
        ",tmpl={}x4",
        "data.val": {
            s: f"gt=/cache/SR/benchmark/{s}/HR,lq=/cache/SR/benchmark/{s}/LR_bicubic/X4,tmpl={{}}x4"
            for s in ("Set5", "Sample")
        },
        "data.patch_size": 48,
        "data.batch_size": 16,
        "data.loader_workers": 6,
        "run.num_workers": 1,
        "distill.method": "dukd",
        "distill.w_pix": 5.0,
        "distill.w_kd": 1.0,
        "distill.n_gt_sub": 1,
        "distill.zoom_out": True,
        "distill.label_consistency": True,
        "distill.lc_prob": 0.3,
        "train.lr": 1e-4,
        "train.milestones": [100_000, 200_000],
        "train.gamma": 0.1,
        "train.max_steps": 250_000,
        "train.ema_decay": 0.999,
        "train.seed": 10,
        "train.val_every": 5000,
        "train.ckpt_every": 5000,
        "run.name": "dukd_edsr_x4c256b32_c64b32",
    },
    "kd_rcan_x2c64g10b20_c64g10b6.yml": {
        "model.arch": "rcan",
        "model.scale": 2,
        "model.student_preset": "student",
        "model.teacher_preset": "teacher",
        "model.student_kwargs": {},
        "model.student_init": None,
        "data.patch_size": 48,
        "run.num_workers": 4,
        "distill.method": "kd",
        "distill.w_pix": 1.0,
        "distill.w_kd": 1.0,
        "train.milestones": [100_000, 200_000],
        "train.ckpt_every": 10_000,
        "data.val": {
            s: f"gt=/cache/SR/benchmark/{s}/HR,lq=/cache/SR/benchmark/{s}/LR_bicubic/X2,tmpl={{}}x2"
            for s in ("Set5", "Set14", "Urban100")
        },
    },
    "fakd_edsr_x3c256b32_c64b32.yml": {
        "model.arch": "edsr",
        "model.scale": 3,
        "data.patch_size": 48,
        "distill.method": "fakd",
        "distill.w_feat": 10.0,
        "distill.fakd_taps": ["conv_first", "body.10", "body.21", "conv_after_body"],
        "train.milestones": [18_750],
        "train.gamma": 0.5,
    },
    # the name says RCAN x3; the network and the scale win, the name is kept as written
    "dukd_swinir_x2c180_c18.yml": {
        "model.arch": "swinir",
        "model.scale": 2,
        "run.name": "dukd_rcan_x3_mislabelled",
        "model.student_preset": "student",
        "model.student_kwargs": {"embed_dim": 18},
        "model.teacher_kwargs": {},
        "run.num_workers": 8,
        "data.batch_size": 4,
        "distill.zoom_out": False,
        "distill.label_consistency": True,
        "train.lr": 2e-4,
        "train.max_steps": 500_000,
        "train.seed": 0,
        "train.val_self_ensemble": True,
        "train.log_every": 200,
    },
    "train_EDSR_Lx3.yml": {  # BasicSR's own SRModel file: the f256b32 net is our teacher preset; no EMA key
        "model.arch": "edsr",
        "model.scale": 3,
        "model.student_preset": "teacher",
        "model.student_kwargs": {},
        "distill.method": "scratch",
        "train.ema_decay": 0.0,
        "train.milestones": [200_000],
        "train.gamma": 0.5,
        "train.max_steps": 300_000,
        "data.val": {"Set5": "gt=datasets/Set5/GTmod12,lq=datasets/Set5/LRbicx3"},
    },
}


@pytest.mark.parametrize("name", sorted(SAYS))
def test_option_file_imports_to_what_it_says(name: str) -> None:
    got = flat(imported("--config", str(OPTIONS / name)).to_dict())
    assert {k: got[k] for k in SAYS[name]} == SAYS[name]


def test_the_dukd_file_has_crlf_lines_nulls_and_float_tags() -> None:
    raw = Path(DUKD_X4).read_bytes()
    assert raw.count(b"\r\n") == raw.count(b"\n") > 100 and b"~\r\n" in raw and b"!!float" in raw


def print_config(capsys: pytest.CaptureFixture[str], main: Any, *argv: str) -> dict[str, Any]:
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
    assert stop.value.code == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("name", "preset", "method"),
    [
        ("dukd_edsr_x4c256b32_c64b32.yml", "edsr_x4", "dukd"),
        ("kd_rcan_x2c64g10b20_c64g10b6.yml", "rcan_x2", "kd"),
        ("fakd_edsr_x3c256b32_c64b32.yml", "edsr_x3", "fakd"),
    ],
)
def test_print_config_is_the_preset_jobs_recipe(capsys, name: str, preset: str, method: str) -> None:
    """Apart from paths, names, workers, loader processes and checkpoint spacing, the file prints what our
    preset job prints for that row."""
    ours = print_config(capsys, job_cli.main_config, "--config", str(OPTIONS / name), "--print-config")
    job = print_config(capsys, lambda a: job_cli.main(preset, a), "--method", method, "--print-config")
    for cfg in (ours, job):
        cfg["model"].pop("teacher"), cfg["model"].pop("student_init")
        cfg["train"].pop("ckpt_every")  # bookkeeping: the RCAN file checkpoints every 1e4
    assert (
        ours["model"] == job["model"] and ours["distill"] == job["distill"] and ours["train"] == job["train"]
    )
    assert {k: ours["data"][k] for k in ("patch_size", "batch_size")} == {"patch_size": 48, "batch_size": 16}
    assert job["data"]["patch_size"] == 48 and job["data"]["batch_size"] == 16


def test_flags_and_set_override_the_file() -> None:
    cfg = imported(
        "--config",
        DUKD_X4,
        "--set",
        "train.lr=3e-4",
        "--batch-size",
        "2",
        "--name",
        "mine",
        "--data",
        "/elsewhere",
        "--set",
        "distill.lc_prob=0.5",
    )
    assert (cfg.train.lr, cfg.data.batch_size, cfg.run.name, cfg.data.train) == (
        3e-4,
        2,
        "mine",
        "/elsewhere",
    )
    assert cfg.distill.lc_prob == 0.5 and cfg.distill.w_pix == 5.0


def test_tiny_keeps_the_files_objective_and_takes_the_tiny_sizes() -> None:
    cfg = imported("--config", str(OPTIONS / "fakd_edsr_x3c256b32_c64b32.yml"), "--tiny")
    assert (cfg.model.student_preset, cfg.model.student_kwargs, cfg.data.patch_size, cfg.train.max_steps) == (
        "tiny_student",
        {},
        24,
        100,
    )
    assert cfg.distill.fakd_taps == ("conv_first", "body.0", "body.1", "conv_after_body")
    assert (cfg.distill.w_feat, cfg.train.milestones, cfg.train.gamma) == (10.0, [18_750], 0.5)


def run_cli(capsys: pytest.CaptureFixture[str], main: Any, *argv: str) -> str:
    """A user error: exit status 2 and one `error:` line on stderr (no traceback)."""
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    lines = [line for line in err.splitlines() if not line.startswith("[dukd]")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_every_unsupported_key_is_in_one_error(capsys) -> None:
    line = run_cli(capsys, job_cli.main_config, "--config", str(OPTIONS / "unsupported_esrgan_x4.yml"))
    offending = [
        "datasets.train.io_backend.type: 'lmdb'",
        "datasets.train.use_rot: False",
        "datasets.train.gt_size: 190",
        "datasets.train.mixup:",
        "network_t.bn:",
        "path.resume_state:",
        "train.scheduler.type: 'CosineAnnealing",
        "train.scheduler.periods:",
        "train.warmup_iter: 5000",
        "train.gan_opt:",
    ]
    assert "11 option keys" in line and all(key in line for key in offending), line
    assert "logger.wandb" not in line  # logging only: listed as ignored, not an error


def test_logging_keys_are_listed_once_as_ignored(capsys) -> None:
    print_config(capsys, job_cli.main_config, "--config", DUKD_X4, "--print-config")
    job_cli.config_job(job_cli.config_parser().parse_args(["--config", DUKD_X4]))
    notes = [line for line in capsys.readouterr().err.splitlines() if "ignored" in line]
    assert len(notes) == 1 and all(k in notes[0] for k in ("logger.wandb", "dist_params", "val.save_img"))


def test_a_python_object_tag_is_refused_and_nothing_runs(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    line = run_cli(capsys, job_cli.main_config, "--config", str(OPTIONS / "python_tag.yml"), "--print-config")
    assert "refused YAML tag tag:yaml.org,2002:python/object/apply:os.system (line 2)" in line
    assert list(tmp_path.iterdir()) == []  # the command in the tag did not run


def test_a_basicsr_file_in_a_preset_job_points_to_jobs_train(capsys) -> None:
    line = run_cli(capsys, lambda a: job_cli.main("edsr_x4", a), "--config", DUKD_X4, "--print-config")
    assert "is a BasicSR option file; run it with jobs/train.py --config FILE" in line


def test_a_missing_path_names_the_key_the_path_and_the_mapping(capsys, tmp_path) -> None:
    line = run_cli(capsys, job_cli.main_config, "--config", DUKD_X4)
    assert "path.pretrain_network_g: experiments/dukd_edsr_x2c256b32_c64b32/models/net_g_latest.pth" in line
    assert "no --path-map matched it" in line
    line = run_cli(
        capsys,
        job_cli.main_config,
        "--config",
        DUKD_X4,
        "--path-map",
        f"/cache/SR={tmp_path}",
        "--set",
        "model.student_init=",
    )
    assert f"path.pretrain_network_t: {tmp_path}/pretrained/EDSR_Lx4" in line
    assert f"--path-map /cache/SR={tmp_path} applied" in line
    with pytest.raises(SystemExit) as stop:
        job_cli.main_config(["--config", DUKD_X4, "--path-map", "no-equals"])
    assert stop.value.code == 2 and "argument --path-map: expected OLD=NEW" in capsys.readouterr().err


def test_paired_folders_train_and_validate_through_the_preflight(sample_data, tiny_teacher) -> None:
    """The DUKD file on the sample photos as separate HR/LR folders: paths mapped (the longest prefix
    wins: Set5 is mapped onto the sample set), teacher loaded, a batch read, the sets loaded."""
    bench = sample_data.benchmark_url
    args = ["--config", DUKD_X4, "--tiny", "--set", "model.student_init=", "--storage", "/tmp/unused"]
    for rule in (
        f"/cache/SR/DIV2K={sample_data.train_url}",
        f"/cache/SR/benchmark={bench}",
        f"/cache/SR/benchmark/Set5={bench}/Sample",
        f"{TEACHER_X4}={tiny_teacher('edsr', 4)}",
    ):
        args += ["--path-map", rule]
    cfg, found = job_cli.config_job(job_cli.config_parser().parse_args(args))
    check_paths(found, cfg.to_dict(), None)
    assert cfg.data.val["Set5"].startswith(f"gt={bench}/Sample/HR,")
    source = open_source(cfg.data.train, 4)
    assert isinstance(source, PngSource) and [p.name for p in source.pairs] == [
        f"{i:04d}" for i in range(1, 9)
    ]
    resolved = preflight.resolve(cfg)
    assert resolved.data.val_sets == ["Set5", "Sample"]
    preflight.check_inputs(resolved)


@pytest.mark.parametrize(
    ("name", "arch", "scale", "teacher"),
    [
        ("dukd_swinir_x2c180_c18.yml", "swinir", 2, "001_classicalSR_DIV2K_s48w8_SwinIR-M_x2.pth"),
        ("kd_rcan_x2c64g10b20_c64g10b6.yml", "rcan", 2, "RCAN_BIX2.pth"),
    ],
)
def test_tiny_swinir_and_rcan_files_pass_the_preflight(sample_data, tiny_teacher, name, arch, scale, teacher):
    """Their `--tiny` nets build, load a tiny teacher through --path-map and read the paired folders
    (training data given by --data in the paired-folders form, over the file's `_sub` folders)."""
    train, bench = sample_data.train_url, sample_data.benchmark_url
    data = f"gt={train}/DIV2K_train_HR,lq={train}/DIV2K_train_LR_bicubic/X{scale},tmpl={{}}x{scale}"
    args = ["--config", str(OPTIONS / name), "--tiny", "--data", data, "--storage", "/tmp/unused"]
    for s in ("Set5", "Set14", "Urban100"):
        args += ["--path-map", f"/cache/SR/benchmark/{s}={bench}/Sample"]
    args += ["--path-map", f"/cache/SR/pretrained/{teacher}={tiny_teacher(arch, scale)}"]
    cfg, found = job_cli.config_job(job_cli.config_parser().parse_args(args))
    check_paths(found, cfg.to_dict(), None)
    assert (cfg.model.arch, cfg.model.student_preset, cfg.model.student_kwargs) == (arch, "tiny_student", {})
    preflight.check_inputs(preflight.resolve(cfg))


def test_paired_folders_name_what_is_missing(tmp_path) -> None:
    with pytest.raises(ValueError, match="expected gt=HR_FOLDER,lq=LR_FOLDER"):
        PairedFolders.parse("gt=/a/HR")
    with pytest.raises(ValueError, match="exactly one"):
        PairedFolders("/a", "/b", "{}x{}")
    (tmp_path / "HR").mkdir(), (tmp_path / "LR").mkdir()
    (tmp_path / "HR" / "0001.png").write_bytes(b"x")
    (tmp_path / "LR" / "0001.png").write_bytes(b"x")
    with pytest.raises(PairError, match="has no LR image 0001x4.png"):
        list_paired_pairs(PairedFolders(str(tmp_path / "HR"), str(tmp_path / "LR"), "{}x4"))


def test_our_own_config_runs_through_jobs_train_from_its_presets_recipe(capsys, tmp_path) -> None:
    """`--print-config` of a preset job, fed to jobs/train.py, prints the same; a partial file of ours
    starts from the preset of its arch and scale and the recipe of its method."""
    job = print_config(capsys, lambda a: job_cli.main("rcan_x3", a), "--method", "fakd", "--print-config")
    (tmp_path / "full.json").write_text(json.dumps(job))
    assert (
        print_config(capsys, job_cli.main_config, "--config", str(tmp_path / "full.json"), "--print-config")
        == job
    )
    (tmp_path / "partial.yaml").write_text("model.arch: rcan\nmodel: {scale: 3}\ndistill: {method: fakd}\n")
    partial = imported("--config", str(tmp_path / "partial.yaml"))
    assert partial.to_dict() == JobConfig.from_dict(job).to_dict()


def test_one_pair_of_folders_is_a_validation_set_named_after_its_parent(sample_data) -> None:
    bench = f"{sample_data.benchmark_url}/Sample"
    cfg = imported("--config", DUKD_X4, "--val-data", f"gt={bench}/HR,lq={bench}/LR_bicubic/X4,tmpl={{}}x4")
    resolved = preflight.resolve(cfg)
    assert resolved.data.val_sets == ["Sample"]
    sets = load_val_sets(resolved.data.val, resolved.data.val_sets, 4)
    assert sorted(p.name for p in sets["Sample"]) == sorted(n[:-4] for n in os.listdir(f"{bench}/HR"))


def test_credentials_inside_paired_folders_are_redacted(capsys) -> None:
    data = "gt=s3://AKIAEXAMPLE:SECRETEXAMPLE@bucket/HR,lq=s3://AKIAEXAMPLE:SECRETEXAMPLE@bucket/LR"
    out = print_config(capsys, job_cli.main_config, "--config", DUKD_X4, "--data", data, "--print-config")
    assert out["data"]["train"] == "gt=s3://***@bucket/HR,lq=s3://***@bucket/LR"
