"""JobConfig and the job CLI's config layer: paper defaults, overrides, YAML files, errors, redaction.

No Ray here: every check in this file runs on the driver before a worker could start.
"""

from __future__ import annotations

import pytest
import yaml

from dukd_ray.train.cli import apply_args, build_parser, teacher_config, teacher_parser
from dukd_ray.train.config import PRESETS, ConfigError, JobConfig


def test_presets_carry_the_papers_config():
    """docs/distill.md "The paper's recipe": optimiser, schedule, EMA, seed, patch, batch, row weights."""
    cfg = JobConfig.from_preset("edsr_x4")
    t, d, m = cfg.train, cfg.data, cfg.model
    assert (t.lr, t.betas, t.weight_decay) == (1e-4, (0.9, 0.99), 0.0)
    assert (t.milestones, t.gamma, t.ema_decay, t.seed, t.max_steps) == (
        [100_000, 200_000],
        0.1,
        0.999,
        10,
        250_000,
    )
    assert (d.patch_size, d.batch_size) == (48, 16)
    assert (m.arch, m.scale, m.teacher_preset, m.student_preset) == ("edsr", 4, "teacher", "student")
    edsr = cfg.distill
    assert (edsr.method, edsr.w_pix, edsr.w_kd, edsr.n_gt_sub, edsr.zoom_out, edsr.lc_prob) == (
        "dukd",
        5,
        1,
        1,
        True,
        0.3,
    )
    assert JobConfig.from_preset("edsr_x2").distill.n_gt_sub == 2
    rcan2 = JobConfig.from_preset("rcan_x2").distill
    assert (rcan2.w_pix, rcan2.zoom_out, rcan2.label_consistency) == (1, False, False)
    assert JobConfig.from_preset("rcan_x3").distill.w_pix == 2
    assert len(PRESETS) == 9
    tiny = JobConfig.from_preset("swinir_x3", tiny=True)
    assert (tiny.model.teacher_preset, tiny.model.student_preset) == ("tiny_teacher", "tiny_student")
    assert tiny.data.patch_size < 48 and tiny.train.max_steps < 1000


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="edsr_x4.*swinir_x4"):
        JobConfig.from_preset("edsr_x5")


def test_overrides_are_parsed_as_yaml_and_coerced_to_the_field_types():
    cfg = JobConfig.from_preset("edsr_x4").apply_overrides(
        [
            "train.lr=2e-4",  # YAML 1.1 reads this as a string; the field is a float
            "distill.lc_ops=[flip_h,invert]",
            "model.student_kwargs.num_feat=8",
            "run.use_gpu=false",
            "train.betas=[0.8, 0.95]",
            "data.val_sets=[Set5, Urban100]",
        ]
    )
    assert cfg.train.lr == 2e-4 and isinstance(cfg.train.lr, float)
    assert cfg.distill.lc_ops == ("invert", "flip_h")  # the canonical op order
    assert cfg.model.student_kwargs == {"num_feat": 8}
    assert cfg.run.use_gpu is False
    assert cfg.train.betas == (0.8, 0.95)
    assert cfg.data.val_sets == ["Set5", "Urban100"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.bogus=1", r"unknown config key 'train.bogus'; valid keys in 'train': max_steps, lr"),
        ("distill.bogus=1", r"unknown config key 'distill.bogus'; valid keys in 'distill': method"),
        ("trian.lr=1", r"unknown config section 'trian'; valid sections: model, data, distill, train, run"),
        ("lr=1", r"the key needs a section"),
        ("train.lr=fast", r"train.lr: expected a number, got 'fast'"),
        ("train.max_steps=1.5", r"train.max_steps: expected an integer"),
        ("train.ckpt_every=7", r"train.ckpt_every: expected a multiple of val_every"),
        ("model.scale=5", r"model.scale: expected 2, 3 or 4"),
        ("model.student_preset=huge", r"model.student_preset: expected one of"),
        ("distill.method=distil", r"distill.method: unknown method 'distil'"),
        ("distill.n_gt_sub=17", r"n_gt_sub"),
        ("train.milestones=[200, 100]", r"train.milestones: expected increasing"),
        ("run.name=a/b", r"run.name"),
        ("model.arch.x=1", r"model.arch is not a mapping"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        JobConfig.from_preset("edsr_x4").apply_overrides([override])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["run.gpus_per_worker=0"], "a number > 0"),
        (["run.gpus_per_worker=-2"], "a number > 0"),
        (["run.gpus_per_worker=1.5"], "a whole number if above 1"),
        (["run.gpus_per_worker=half"], "expected a number, got 'half'"),
        (["run.num_workers=2", "run.gpus_per_worker=0.5"], "1 or more with run.num_workers > 1"),
    ],
)
def test_bad_gpus_per_worker_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=rf"run\.gpus_per_worker: .*{message}"):
        JobConfig.from_preset("edsr_x4").apply_overrides(overrides)


def test_gpus_per_worker_takes_fractions_and_whole_gpus():
    cfg = JobConfig.from_preset("edsr_x4")
    assert cfg.run.gpus_per_worker == 1.0
    assert cfg.apply_overrides(["run.gpus_per_worker=0.25"]).run.gpus_per_worker == 0.25
    assert cfg.apply_overrides(["run.num_workers=2", "run.gpus_per_worker=2"]).run.gpus_per_worker == 2.0


def test_yaml_files_full_partial_and_flat(tmp_path):
    """A full dump round-trips; a partial nested file and a flat dotted file (a sweep's best config) apply."""
    original = JobConfig.from_preset("rcan_x3", tiny=True).apply_overrides(["train.lr=3e-4", "run.name=r1"])
    full = tmp_path / "full.yaml"
    full.write_text(original.to_yaml())
    assert JobConfig.from_preset("edsr_x4").update_from_yaml(str(full)).to_dict() == original.to_dict()

    partial = tmp_path / "partial.yaml"
    partial.write_text("train:\n  lr: 5.0e-4\ndistill:\n  step_mode: joint\n")
    cfg = JobConfig.from_preset("edsr_x4").update_from_yaml(str(partial))
    assert (cfg.train.lr, cfg.distill.step_mode, cfg.train.max_steps) == (5e-4, "joint", 250_000)

    flat = tmp_path / "best.yaml"
    flat.write_text(yaml.safe_dump({"distill.w_kd": 0.5, "distill.lc_prob": 0.1, "train.lr": 2e-4}))
    cfg = JobConfig.from_preset("edsr_x4").update_from_yaml(str(flat))
    assert (cfg.distill.w_kd, cfg.distill.lc_prob, cfg.train.lr) == (0.5, 0.1, 2e-4)

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1.0e-4\n  warmup: 10\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*unknown config key 'train.warmup'"):
        JobConfig.from_preset("edsr_x4").update_from_yaml(str(bad))


def test_yaml_config_from_s3(s3_bucket):
    import s3fs

    bucket, opts = s3_bucket
    s3fs.S3FileSystem(**opts).pipe_file(
        f"{bucket}/cfg.yaml".removeprefix("s3://"), b"train:\n  max_steps: 77\n"
    )
    cfg = JobConfig.from_preset("edsr_x4").update_from_yaml(f"{bucket}/cfg.yaml", storage_options=opts)
    assert cfg.train.max_steps == 77


def test_redacted_config_hides_credentials():
    cfg = JobConfig.from_preset("edsr_x4").apply_overrides(
        [
            "data.storage_options={key: AKIAEXAMPLE, secret: s3cr3t, endpoint_url: 'http://u:pw@127.0.0.1:9000'}",
            "model.teacher=https://user:hunter2@example.com/t.pth",
        ]
    )
    text = yaml.safe_dump(cfg.redacted_dict())
    for secret in ("AKIAEXAMPLE", "s3cr3t", "pw@", "hunter2"):
        assert secret not in text
    assert "127.0.0.1:9000" in text and cfg.data.storage_options["secret"] == "s3cr3t"


def test_cli_precedence_preset_then_config_then_flags_then_set(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  lr: 1.0e-3\n  max_steps: 50\ndata:\n  batch_size: 8\n")
    args = build_parser("t").parse_args(
        [
            "--tiny",
            "--config",
            str(config),
            "--batch-size",
            "2",
            "--method",
            "kd",
            "--no-gpu",
            "--amp",
            "--num-workers",
            "3",
            "--set",
            "train.lr=3e-4",
            "--val-data",
            "/data/benchmark",
            "--data",
            "s3://b/div2k",
            "--name",
            "run-1",
        ]
    )
    cfg = apply_args(JobConfig.from_preset("edsr_x4", tiny=args.tiny), args)
    assert cfg.model.student_preset == "tiny_student"  # preset (tiny)
    assert cfg.train.max_steps == 50  # --config
    assert cfg.data.batch_size == 2  # flag beats --config
    assert cfg.train.lr == 3e-4  # --set beats --config
    assert (cfg.distill.method, cfg.run.use_gpu, cfg.train.amp, cfg.run.num_workers) == ("kd", False, True, 3)
    assert (cfg.data.train, cfg.data.val, cfg.data.val_sets) == ("s3://b/div2k", "/data/benchmark", None)
    assert cfg.run.name == "run-1"


def test_train_teacher_config_trains_the_teacher_net_from_scratch():
    cfg = teacher_config(teacher_parser().parse_args(["--arch", "rcan", "--scale", "2", "--tiny"]))
    assert (cfg.model.arch, cfg.model.scale, cfg.model.student_preset) == ("rcan", 2, "tiny_teacher")
    assert (cfg.distill.method, cfg.run.export_name) == ("scratch", "teacher")
