"""Bad teacher, bad data, bad config: one clear error naming the key and file, and no Ray worker started."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from fake_images import bomb_png
from PIL import Image

from dukd_ray.data.pack import pack
from dukd_ray.models import build_arch, save_weights
from dukd_ray.train import InputError, JobConfig, prepare, run_training
from dukd_ray.train.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def config(sample_data, tmp_path, tiny_teacher):
    """Factory: the tiny EDSR x4 job on the sample data with a tiny teacher, plus `overrides`."""

    def make(**overrides: str) -> JobConfig:
        values = {
            "data.train": sample_data.train_url,
            "data.val": sample_data.benchmark_url,
            "run.storage": str(tmp_path / "runs"),
            "model.teacher": tiny_teacher("edsr", 4),
            **overrides,
        }
        overridden = (f"{k}={v}" for k, v in values.items())
        return JobConfig.from_preset("edsr_x4", tiny=True).apply_overrides(overridden)

    return make


@pytest.fixture(autouse=True)
def _no_ray_before():
    assert not ray.is_initialized()
    yield
    assert not ray.is_initialized(), "an input error must be raised before Ray (and any worker) starts"


@pytest.mark.parametrize(
    ("teacher", "message"),
    [
        ("missing.pth", r"model.teacher \(.*missing.pth\).*not found"),
        ("rcan_x4", r"model.teacher \(.*rcan_x4_teacher.pth\)"),  # another arch's weights
        ("edsr_x2", r"model.teacher \(.*edsr_x2_teacher.pth\).*upsample"),  # another scale's weights
        ("garbage", r"model.teacher \(.*garbage.pth\)"),
    ],
)
def test_bad_teacher(tiny_teacher, config, sample_data, tmp_path, teacher, message):
    if teacher == "missing.pth":
        url = str(tmp_path / "missing.pth")
    elif teacher == "garbage":
        url = str(tmp_path / "garbage.pth")
        Path(url).write_bytes(b"not a checkpoint")
    else:
        arch, scale = teacher.split("_x")
        url = tiny_teacher(arch, int(scale))
    with pytest.raises(InputError, match=message):
        run_training(config(**{"model.teacher": url}))


def test_student_init_loads_non_strictly_but_must_fit(config, sample_data, tmp_path):
    """The paper starts the x4 student from the x2 one (upsampler differs); a non-checkpoint fails."""
    x2 = build_arch("edsr", 2, preset="tiny_student")
    save_weights(str(tmp_path / "x2_student"), x2.state_dict(), arch_spec=x2.arch_spec)
    cfg = config(**{"model.student_init": str(tmp_path / "x2_student.pth")})
    assert prepare(cfg).model.student_init.endswith("x2_student.pth")
    assert not (tmp_path / "runs").exists()  # the storage probe removes what it wrote
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(InputError, match=r"model.student_init \(.*notes.pth\)"):
        prepare(config(**{"model.student_init": str(tmp_path / "notes.pth")}))


def test_a_distillation_method_needs_a_teacher(config, sample_data, tmp_path):
    with pytest.raises(InputError, match=r"model.teacher: distill.method='kd' needs a teacher"):
        run_training(config(**{"model.teacher": "null", "distill.method": "kd"}))


def test_bad_training_data(config, sample_data, tmp_path):
    with pytest.raises(InputError, match=r"data.train \(.*nowhere\)"):
        run_training(config(**{"data.train": str(tmp_path / "nowhere")}))
    # the data has no x4 LR images: a scale mismatch between the preset and the data
    x2_only = tmp_path / "x2_only"
    shutil.copytree(sample_data.train_url, x2_only)
    shutil.rmtree(x2_only / "DIV2K_train_LR_bicubic" / "X4")
    with pytest.raises(InputError, match=r"data.train \(.*x2_only\)"):
        run_training(config(**{"data.train": str(x2_only)}))
    # every image unreadable
    corrupt = tmp_path / "corrupt"
    shutil.copytree(sample_data.train_url, corrupt)
    for png in corrupt.rglob("*.png"):
        png.write_bytes(b"\x89PNG truncated")
    with pytest.raises(InputError, match=r"data.train \(.*corrupt\).*\.png"):
        run_training(config(**{"data.train": str(corrupt)}))


def _copy(sample_data, tmp_path: Path) -> Path:
    root = tmp_path / "div2k"
    shutil.copytree(sample_data.train_url, root)
    return root


def _truncated_png(sample_data, tmp_path: Path) -> dict[str, str]:
    root = _copy(sample_data, tmp_path)
    png = root / "DIV2K_train_HR" / "0003.png"
    png.write_bytes(png.read_bytes()[:-4096])  # header intact, decodes up to the cut
    return {"data.train": str(root)}


def _bomb_png(sample_data, tmp_path: Path) -> dict[str, str]:
    root = _copy(sample_data, tmp_path)
    (root / "DIV2K_train_HR" / "0004.png").write_bytes(bomb_png())
    return {"data.train": str(root)}


def _empty_png(sample_data, tmp_path: Path) -> dict[str, str]:
    root = _copy(sample_data, tmp_path)
    (root / "DIV2K_train_LR_bicubic" / "X4" / "0005x4.png").write_bytes(b"")
    return {"data.train": str(root)}


def _skewed_pair(sample_data, tmp_path: Path) -> dict[str, str]:
    root = _copy(sample_data, tmp_path)
    lr = root / "DIV2K_train_LR_bicubic" / "X4" / "0006x4.png"
    with Image.open(lr) as img:
        img.crop((0, 0, img.width - 1, img.height)).save(lr)
    return {"data.train": str(root)}


def _packed(sample_data, tmp_path: Path) -> Path:
    dst = tmp_path / "shards"
    pack(sample_data.train_url, str(dst), 4, crop=192, step=192, shard_size_mb=1, progress=False)
    return dst


def _shard_grown(sample_data, tmp_path: Path) -> dict[str, str]:
    dst = _packed(sample_data, tmp_path)
    with open(sorted(dst.glob("shard-*.bin"))[-1], "ab") as f:
        f.write(b"\0")
    return {"data.train": str(dst)}


def _shard_missing(sample_data, tmp_path: Path) -> dict[str, str]:
    dst = _packed(sample_data, tmp_path)
    sorted(dst.glob("shard-*.bin"))[1].unlink()
    return {"data.train": str(dst)}


def _storage_is_a_file(sample_data, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "runs.txt").write_text("not a folder")
    return {"run.storage": str(tmp_path / "runs.txt")}


def _storage_read_only(sample_data, tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root writes anyway: a folder no one may create anything in
        folder = Path("/sys/dukd-runs")
    return {"run.storage": str(folder)}


def _patch_not_multiple_of_scale(sample_data, tmp_path: Path) -> dict[str, str]:
    return {"data.patch_size": "26"}  # zoom-out shrinks the LR patch by 1/4 exactly


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            _patch_not_multiple_of_scale,
            r"^data.patch_size=26 is not a multiple of model.scale=4.*distill.zoom_out",
        ),
        (_truncated_png, r"^data.train \(.*div2k\): ImageDecodeError: .*0003.png: truncated PNG"),
        (_bomb_png, r"^data.train \(.*div2k\): ImageDecodeError: image .*0004.png is .* over the limit"),
        (_empty_png, r"^data.train \(.*div2k\): ImageDecodeError: .*0005x4.png: the file is empty"),
        (_skewed_pair, r"^data.train \(.*div2k\): PairError: .* LR .*0006x4.png is \d+x\d+, HR .*0006.png"),
        (_shard_grown, r"^data.train \(.*shards\): ShardFormatError: shard .*shard-\d+.bin is \d+ bytes but"),
        (_shard_missing, r"^data.train \(.*shards\): FileNotFoundError: .*missing: .*shard-00001.bin"),
        (_storage_is_a_file, r"^run.storage \(.*runs.txt\): NotADirectoryError"),
        (_storage_read_only, r"^run.storage \(.*\): StorageError: access denied to .*dukd-write-probe"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else "",
)
def test_bad_input_is_one_line_before_ray_starts(config, sample_data, tmp_path, make, message):
    """Inputs that used to pass the preflight, then fail every worker attempt (minutes, hundreds of lines)."""
    cfg = config(**make(sample_data, tmp_path))
    with pytest.raises(InputError, match=message) as failure:
        run_training(cfg)
    assert "\n" not in str(failure.value)
    assert not (tmp_path / "runs").exists()  # the storage probe leaves nothing behind


def test_bad_validation_data(config, sample_data, tmp_path):
    with pytest.raises(InputError, match=r"data.val \(.*\).*Set5"):
        run_training(config(**{"data.val_sets": "[Set5]"}))
    with pytest.raises(InputError, match=r"data.val \(.*empty\).*no benchmark sets"):
        (tmp_path / "empty").mkdir()
        run_training(config(**{"data.val": str(tmp_path / "empty")}))


def test_cli_reports_config_errors_with_status_2(sample_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main("edsr_x4", ["--tiny", "--set", "train.warmup=5", "--data", sample_data.train_url])
    assert exit_info.value.code == 2
    assert "unknown config key 'train.warmup'; valid keys in 'train'" in capsys.readouterr().err


def test_job_script_runs_from_the_repo_root_and_fails_cleanly(tmp_path):
    """`python jobs/edsr_x4.py` with a missing teacher: status 2, one line naming the key, no traceback."""
    proc = subprocess.run(
        [sys.executable, "jobs/edsr_x4.py", "--tiny", "--teacher", str(tmp_path / "t.pth")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "error: model.teacher" in proc.stderr and "Traceback" not in proc.stderr
    # the reference starts EDSR x4 dukd from the x2 dukd student: without --student-init, that is said
    assert "starts this dukd student from the x2 dukd student" in proc.stderr
