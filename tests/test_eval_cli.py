"""Benchmark-set loading (layout, aliases, mod-crop, errors, S3), the set evaluators and the eval CLI."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from dukd_ray.data.samples import bicubic_lr
from dukd_ray.eval.__main__ import main
from dukd_ray.eval.benchmark import (
    BenchmarkDataError,
    evaluate_bicubic,
    evaluate_pair,
    evaluate_sets,
    list_sets,
    load_benchmark_sets,
)
from dukd_ray.eval.inference import InferenceOptions
from dukd_ray.image.convert import to_float_tensor
from dukd_ray.image.io import read_image, write_png
from dukd_ray.image.pairs import PairError
from dukd_ray.image.resize import imresize
from dukd_ray.models import build_arch, save_weights


def _write_set(root: str, set_name: str, hr_shapes: dict[str, tuple[int, int]], scale: int) -> None:
    """A benchmark set whose LR images are random (their content does not matter to the loader)."""
    rng = np.random.default_rng(0)
    for name, (h, w) in hr_shapes.items():
        write_png(f"{root}/{set_name}/HR/{name}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        lr = rng.integers(0, 256, (h // scale, w // scale, 3), dtype=np.uint8)
        write_png(f"{root}/{set_name}/LR_bicubic/X{scale}/{name}x{scale}.png", lr)


class Oracle(nn.Module):
    """Returns the HR image whatever the input: scores must be a perfect inf / 1.0."""

    def __init__(self, hr: np.ndarray, scale: int) -> None:
        super().__init__()
        self.hr = to_float_tensor(hr)
        self.arch_spec = {"arch": "oracle", "scale": scale, "kwargs": {}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hr.to(x.device)


class BicubicModel(nn.Module):
    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return imresize(x, self.scale)


def test_loads_sample_set_with_sizes_consistent(sample_data):
    assert list_sets(sample_data.benchmark_url) == ["Sample"]
    pairs = load_benchmark_sets(sample_data.benchmark_url, ["Sample"], 3)["Sample"]
    assert sorted(p.name for p in pairs) == ["camera", "chelsea", "coffee", "coins", "motorcycle"]
    for p in pairs:
        assert p.lr.dtype == np.uint8 and p.hr.shape == (p.lr.shape[0] * 3, p.lr.shape[1] * 3, 3)


def test_hr_is_mod_cropped_and_aliases_resolve(tmp_path):
    root = str(tmp_path)
    _write_set(root, "BSDS100", {"odd": (50, 38)}, 4)
    pair = load_benchmark_sets(root, ["B100"], 4)["B100"][0]
    assert pair.lr.shape == (12, 9, 3) and pair.hr.shape == (48, 36, 3)
    np.testing.assert_array_equal(pair.hr, read_image(f"{root}/BSDS100/HR/odd.png")[:48, :36])


def test_missing_set_lr_and_size_mismatch_errors_name_the_file(tmp_path):
    root = str(tmp_path)
    _write_set(root, "Set5", {"baby": (24, 24), "bird": (24, 24)}, 4)
    with pytest.raises(BenchmarkDataError, match=r"'Set14' not found .*sets there: Set5"):
        load_benchmark_sets(root, ["Set14"], 4)
    with pytest.raises(BenchmarkDataError, match=r"missing LR image .*Set5/LR_bicubic/X2/babyx2\.png"):
        load_benchmark_sets(root, ["Set5"], 2)
    write_png(f"{root}/Set5/LR_bicubic/X4/birdx4.png", np.zeros((5, 6, 3), dtype=np.uint8))
    with pytest.raises(PairError, match=r"size mismatch at x4: LR .*birdx4\.png is 5x6, HR .*bird\.png"):
        load_benchmark_sets(root, ["Set5"], 4)


def test_loads_from_s3(s3_bucket, tmp_path):
    bucket, opts = s3_bucket
    _write_set(str(tmp_path), "Set5", {"baby": (24, 28)}, 2)
    import s3fs

    s3fs.S3FileSystem(**opts).put(str(tmp_path / "Set5"), f"{bucket}/bench/Set5", recursive=True)
    remote = load_benchmark_sets(f"{bucket}/bench", ["Set5"], 2, storage_options=opts)["Set5"][0]
    local = load_benchmark_sets(str(tmp_path), ["Set5"], 2)["Set5"][0]
    np.testing.assert_array_equal(remote.hr, local.hr)
    np.testing.assert_array_equal(remote.lr, local.lr)


def test_oracle_scores_perfectly_and_bicubic_model_matches_bicubic_baseline(sample_data):
    sets = load_benchmark_sets(sample_data.benchmark_url, ["Sample"], 4)
    pair = sets["Sample"][0]
    p, s, sr = evaluate_pair(Oracle(pair.hr, 4), pair, 4)
    assert p == math.inf and s == pytest.approx(1.0) and np.array_equal(sr, pair.hr)
    baseline = evaluate_bicubic(sets, 4)
    as_model = evaluate_sets(BicubicModel(4), sets, 4)
    assert as_model == baseline
    scores = baseline["Sample"]
    assert scores["psnr"] == pytest.approx(np.mean([v["psnr"] for v in scores["images"].values()]))
    assert 20 < scores["psnr"] < 40 and 0.5 < scores["ssim"] < 1  # bicubic x4 on real photographs


def test_wrong_scale_model_is_a_clear_error(sample_data):
    pair = load_benchmark_sets(sample_data.benchmark_url, ["Sample"], 4)["Sample"][0]
    with pytest.raises(ValueError, match=f"{pair.name}: output is .*wrong scale"):
        evaluate_pair(BicubicModel(2), pair, 4)


def test_tiled_evaluation_gives_the_same_images(mini_root):
    torch.manual_seed(0)
    model = build_arch("edsr", 4, preset="tiny_student")  # receptive field radius 8 LR pixels < 16 / 2
    for pair in load_benchmark_sets(mini_root, ["Mini"], 4)["Mini"]:
        p_whole, _, whole = evaluate_pair(model, pair, 4)
        p_tiled, _, tiled = evaluate_pair(model, pair, 4, InferenceOptions(tile=18, tile_overlap=16))
        assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1  # float noise may flip a rounding
        assert p_tiled == pytest.approx(p_whole, abs=1e-3)


@pytest.fixture(scope="module")
def mini_root(sample_data, tmp_path_factory) -> str:
    """A 2-image x4 benchmark set (96x96 HR crops of the sample photographs) for the slower paths."""
    root = str(tmp_path_factory.mktemp("mini"))
    for name in ("chelsea", "coins"):
        hr = read_image(f"{sample_data.benchmark_url}/Sample/HR/{name}.png")[100:196, 100:196]
        write_png(f"{root}/Mini/HR/{name}.png", hr)
        write_png(f"{root}/Mini/LR_bicubic/X4/{name}x4.png", bicubic_lr(hr, 4))
    return root


def _row(out: str, label: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.split()[:1] == [label])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_arch("edsr", 4, preset="tiny_student")
    prefix = str(tmp_path_factory.mktemp("ckpt") / "tiny")
    save_weights(prefix, model, arch_spec=model.arch_spec)
    return prefix, model


def test_cli_end_to_end_with_our_checkpoint(sample_data, tiny_checkpoint, capsys):
    prefix, model = tiny_checkpoint
    data = sample_data.benchmark_url
    rc = main(
        ["--checkpoint", f"{prefix}.pth", "--data", data, "--sets", "Sample", "--bicubic", "--per-image"]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "img/s" not in out  # the progress bar goes to stderr
    sets = load_benchmark_sets(data, ["Sample"], 4)
    expected_bicubic, expected_model = (
        evaluate_bicubic(sets, 4)["Sample"],
        evaluate_sets(model, sets, 4)["Sample"],
    )
    row = _row(out, "Sample")
    assert row[1] == "5"
    assert row[2:5] == [f"{expected_bicubic['psnr']:.4f}", "/", f"{expected_bicubic['ssim']:.4f}"]
    assert row[5:8] == [f"{expected_model['psnr']:.4f}", "/", f"{expected_model['ssim']:.4f}"]
    assert _row(out, "coins")[5] == f"{expected_model['images']['coins']['psnr']:.4f}"


def test_cli_foreign_checkpoint_self_ensemble_as_a_subprocess(mini_root, tiny_checkpoint, tmp_path):
    prefix, model = tiny_checkpoint
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)  # a foreign file: no arch_spec, so arch/scale/preset are needed
    cmd = [
        sys.executable,
        "-m",
        "dukd_ray.eval",
        "--arch",
        "edsr",
        "--scale",
        "4",
        "--preset",
        "tiny_student",
    ]
    cmd += ["--checkpoint", str(bare), "--data", mini_root, "--self-ensemble"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    assert proc.returncode == 0, proc.stderr
    expected = evaluate_sets(
        model, load_benchmark_sets(mini_root, ["Mini"], 4), 4, InferenceOptions(self_ensemble=True)
    )
    assert "edsr +x8" in proc.stdout
    assert _row(proc.stdout, "Mini")[2] == f"{expected['Mini']['psnr']:.4f}"


def test_cli_bicubic_only_and_errors(sample_data, capsys, tmp_path):
    assert main(["--arch", "bicubic", "--scale", "2", "--data", sample_data.benchmark_url]) == 0
    expected = evaluate_bicubic(load_benchmark_sets(sample_data.benchmark_url, ["Sample"], 2), 2)["Sample"]
    assert _row(capsys.readouterr().out, "Sample")[2] == f"{expected['psnr']:.4f}"

    assert (
        main(["--arch", "bicubic", "--scale", "2", "--data", sample_data.benchmark_url, "--sets", "Set5"])
        == 2
    )
    assert "'Set5' not found" in capsys.readouterr().err
    assert main(["--arch", "edsr", "--scale", "4", "--data", sample_data.benchmark_url]) == 2
    assert "--checkpoint is required" in capsys.readouterr().err
    missing = str(tmp_path / "nope.pth")
    assert main(["--checkpoint", missing, "--data", sample_data.benchmark_url]) == 2
    assert "nope.pth" in capsys.readouterr().err
