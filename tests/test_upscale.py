"""`python -m dukd_ray.upscale` end to end on real photographs, with a tiny model trained here."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from dukd_ray.eval.metrics import psnr
from dukd_ray.image.convert import to_float_tensor, to_uint8_hwc
from dukd_ray.image.io import encode_png, read_image, write_png
from dukd_ray.image.resize import imresize
from dukd_ray.models import build_arch, save_weights
from dukd_ray.storage import write_bytes_atomic
from dukd_ray.upscale import main

SCALE = 2


def _downscale(hr: np.ndarray) -> np.ndarray:
    """The LR photo a user would have: MATLAB-bicubic downscale, saved as 8-bit."""
    return to_uint8_hwc(imresize(to_float_tensor(hr), 1 / SCALE))


def _bicubic_psnr(lr: np.ndarray, hr: np.ndarray) -> float:
    return psnr(imresize(to_float_tensor(lr), SCALE), hr, crop_border=SCALE)


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> str:
    """A tiny EDSR x2 trained with L1 + Adam for 400 steps on patches of the astronaut photograph.

    A fixture, not the product: just enough learning that beating bicubic on *other* photographs
    proves the CLI applies the trained weights at the right scale.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is faster than two fighting other work for 2 cores
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    hr = to_float_tensor(data.astronaut())[0]
    lr = imresize(hr, 1 / SCALE)
    model = build_arch("edsr", SCALE, "tiny_student")
    steps, batch, patch = 400, 8, 16
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        ys = torch.randint(0, lr.shape[1] - patch, (batch,), generator=gen).tolist()
        xs = torch.randint(0, lr.shape[2] - patch, (batch,), generator=gen).tolist()
        lr_b = torch.stack([lr[:, y : y + patch, x : x + patch] for y, x in zip(ys, xs, strict=True)])
        hr_b = torch.stack(
            [
                hr[:, y * SCALE : (y + patch) * SCALE, x * SCALE : (x + patch) * SCALE]
                for y, x in zip(ys, xs, strict=True)
            ]
        )
        loss = (model(lr_b) - hr_b).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    torch.set_num_threads(threads)
    prefix = tmp_path_factory.mktemp("ckpt") / "edsr_tiny_x2"
    pth, _ = save_weights(str(prefix), model, arch_spec=model.arch_spec)
    return pth


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    """HR crops of photographs the model never saw (sizes divisible by the scale)."""
    return {"chelsea": data.chelsea()[40:200, 100:340], "coffee": data.coffee()[100:220, 150:330]}


def test_cli_upscales_a_photograph_better_than_bicubic(trained_checkpoint, photos, tmp_path):
    hr = photos["chelsea"]
    lr = _downscale(hr)
    src = tmp_path / "in" / "chelsea.png"
    write_png(str(src), lr)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dukd_ray.upscale",
            "--checkpoint",
            trained_checkpoint,
            str(src),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    sr = read_image(str(out / "chelsea.png"))
    assert sr.shape == (lr.shape[0] * SCALE, lr.shape[1] * SCALE, 3) == hr.shape
    assert psnr(sr, hr, crop_border=SCALE) > _bicubic_psnr(lr, hr) + 0.2


def test_tiled_matches_whole_image_without_seams(trained_checkpoint, photos, tmp_path):
    hr = photos["coffee"]
    lr = _downscale(hr)  # 60 x 90 LR: several 24-pixel tiles each way
    write_png(str(tmp_path / "coffee.png"), lr)
    runs = {
        "whole": [],
        "tiled": ["--tile", "24", "--tile-overlap", "16"],
        "seamy": ["--tile", "24", "--tile-overlap", "0"],
    }
    sr = {}
    for name, opts in runs.items():
        rc = main(
            [
                "--checkpoint",
                trained_checkpoint,
                str(tmp_path / "coffee.png"),
                "--out",
                str(tmp_path / name),
                *opts,
            ]
        )
        assert rc == 0
        sr[name] = read_image(str(tmp_path / name / "coffee.png")).astype(int)
    assert (
        abs(psnr(sr["tiled"].astype(np.uint8), hr, SCALE) - psnr(sr["whole"].astype(np.uint8), hr, SCALE))
        < 0.05
    )
    assert np.abs(sr["tiled"] - sr["whole"]).max() <= 1  # no seam: every pixel within one grey level
    # the same comparison does see seams when tiles share no context (so the check above can fail)
    assert np.abs(sr["seamy"] - sr["whole"]).max() > 8


def test_self_ensemble_through_cli(trained_checkpoint, photos, tmp_path):
    hr = photos["coffee"]
    lr = _downscale(hr)
    write_png(str(tmp_path / "coffee.png"), lr)
    rc = main(
        [
            "--checkpoint",
            trained_checkpoint,
            str(tmp_path / "coffee.png"),
            "--out",
            str(tmp_path / "o"),
            "--self-ensemble",
        ]
    )
    assert rc == 0
    sr = read_image(str(tmp_path / "o" / "coffee.png"))
    assert sr.shape == hr.shape
    assert psnr(sr, hr, crop_border=SCALE) > _bicubic_psnr(lr, hr)


def test_corrupt_image_is_named_and_the_others_are_written(trained_checkpoint, photos, tmp_path, capsys):
    lr = _downscale(photos["coffee"])
    folder = tmp_path / "in"
    write_png(str(folder / "a_good.png"), lr)
    (folder / "b_broken.png").write_bytes(encode_png(lr)[:200])  # truncated mid-file
    (folder / "nested").mkdir()
    Image.fromarray(lr).save(folder / "nested" / "c_good.jpg", quality=95)
    rc = main(["--checkpoint", trained_checkpoint, str(folder), "--out", str(tmp_path / "out")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "b_broken.png" in err and "skipped" in err
    assert "a_good.png" not in err.split("skipped:")[-1]
    for rel in ("a_good.png", "nested/c_good.png"):
        assert read_image(str(tmp_path / "out" / rel)).shape == photos["coffee"].shape
    assert not (tmp_path / "out" / "b_broken.png").exists()


def test_foreign_checkpoint_needs_arch_and_scale(tmp_path, capsys):
    model = build_arch("edsr", SCALE, "tiny_student")
    bare = tmp_path / "foreign.pth"
    torch.save(model.state_dict(), bare)
    img = data.rocket()[:30, :40]
    write_png(str(tmp_path / "r.png"), img)
    assert main(["--checkpoint", str(bare), str(tmp_path / "r.png"), "--out", str(tmp_path / "o")]) == 2
    assert "arch" in capsys.readouterr().err
    args = ["--arch", "edsr", "--scale", str(SCALE), "--preset", "tiny_student"]
    assert (
        main(["--checkpoint", str(bare), str(tmp_path / "r.png"), "--out", str(tmp_path / "o"), *args]) == 0
    )
    assert read_image(str(tmp_path / "o" / "r.png")).shape == (60, 80, 3)


def test_inputs_that_would_overwrite_each_other_are_refused(trained_checkpoint, tmp_path, capsys):
    img = data.rocket()[:20, :20]
    write_png(str(tmp_path / "in" / "x.png"), img)
    Image.fromarray(img).save(tmp_path / "in" / "x.jpg")
    assert main(["--checkpoint", trained_checkpoint, str(tmp_path / "in"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "x.png" in err and "x.jpg" in err
    assert not (tmp_path / "o").exists()


def test_amp_needs_cuda(trained_checkpoint, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(
            [
                "--checkpoint",
                trained_checkpoint,
                str(tmp_path),
                "--out",
                str(tmp_path),
                "--device",
                "cpu",
                "--amp",
            ]
        )
    assert e.value.code == 2


def test_s3_folder_in_and_out(trained_checkpoint, s3_bucket, monkeypatch):
    bucket, opts = s3_bucket
    monkeypatch.setenv("DUKD_S3_ENDPOINT_URL", opts["endpoint_url"])
    img = data.rocket()[100:140, 200:250]
    write_png(f"{bucket}/photos/rocket.png", img, opts)
    ckpt = f"{bucket}/ckpt/model.pth"
    with open(trained_checkpoint, "rb") as f:
        write_bytes_atomic(ckpt, f.read(), opts)
    assert main(["--checkpoint", ckpt, f"{bucket}/photos", "--out", f"{bucket}/sr"]) == 0
    assert read_image(f"{bucket}/sr/rocket.png", opts).shape == (80, 100, 3)


def test_missing_input_is_an_error_naming_it(trained_checkpoint, tmp_path, capsys):
    missing = tmp_path / "nope.png"
    assert main(["--checkpoint", trained_checkpoint, str(missing), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err
