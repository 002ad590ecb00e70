"""Every CLI meets bad input with one line: non-zero exit, no traceback, the culprit named, nothing left.

The CLIs run in-process through their `main(argv)` (fast); two run as `python -m ...` to prove the
real entry point's exit status and stderr. The job CLIs get inputs the preflight refuses before
Ray starts, so no test here starts Ray.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fake_images import bomb_png

from dukd_ray import errors, export, quickstart, upscale
from dukd_ray.data import pack
from dukd_ray.data.shards import load_manifest
from dukd_ray.eval import __main__ as eval_cli
from dukd_ray.image.io import MAX_IMAGE_PIXELS, read_image, write_png
from dukd_ray.models import build_arch, save_weights
from dukd_ray.train import cli as job_cli
from dukd_ray.tune import cli as tune_cli

REPO = Path(__file__).resolve().parents[1]
SECRET = "SECRETEXAMPLE"
CREDENTIAL_URL = f"s3://AKIAEXAMPLE:{SECRET}@bucket/x"
AS_X4 = ["--arch", "edsr", "--scale", "4", "--preset", "tiny_student"]  # a foreign file read as x4


@pytest.fixture(scope="module")
def files(sample_data, tmp_path_factory) -> dict[str, str]:
    """The inputs of the table: checkpoints good and bad, photos, a bomb, broken DIV2K and benchmark sets."""
    root = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    x2 = build_arch("edsr", 2, "tiny_student")
    pth, _ = save_weights(str(root / "model_x2"), x2, arch_spec=x2.arch_spec)
    foreign = root / "foreign_x2.pth"
    torch.save({"params": x2.state_dict()}, foreign)
    crafted_spec = {**x2.arch_spec, "kwargs": {**x2.arch_spec["kwargs"], "num_feat": 4000}}
    crafted, _ = save_weights(str(root / "crafted"), x2, arch_spec=crafted_spec)

    photos = root / "photos"
    photo = read_image(os.path.join(sample_data.train_url, "DIV2K_train_LR_bicubic", "X4", "0001x4.png"))
    photo = photo[:24, :24]
    for name in ("a.png", "c.png"):
        write_png(str(photos / name), photo)
    (photos / "b_bomb.png").write_bytes(bomb_png())

    truncated = root / "div2k_truncated"
    shutil.copytree(sample_data.train_url, truncated)
    victim = truncated / "DIV2K_train_LR_bicubic" / "X4" / "0003x4.png"
    victim.write_bytes(victim.read_bytes()[:300])
    bombed = root / "div2k_bomb"
    shutil.copytree(sample_data.train_url, bombed)
    (bombed / "DIV2K_train_HR" / "0002.png").write_bytes(bomb_png())

    bench = root / "benchmark_bomb"
    shutil.copytree(sample_data.benchmark_url, bench)
    lr_dir = bench / "Sample" / "LR_bicubic" / "X2"
    bench_bomb = lr_dir / sorted(os.listdir(lr_dir))[0]
    bench_bomb.write_bytes(bomb_png())

    existing = root / "existing_pack"
    pack.pack(sample_data.train_url, str(existing), 4, crop=192, step=192, shard_size_mb=1, progress=False)
    binary = root / "binary.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 8)
    a_file = root / "a_file.txt"
    a_file.write_text("not a folder\n")
    return {
        "root": str(root),
        "ckpt": pth,
        "foreign_x2": str(foreign),
        "crafted": crafted,
        "photos": str(photos),
        "truncated": str(truncated),
        "bombed": str(bombed),
        "bench_bomb": str(bench),
        "bench_bomb_name": bench_bomb.name,
        "existing_pack": str(existing),
        "binary": str(binary),
        "a_file": str(a_file),
        "folder": str(root),
        "train": sample_data.train_url,
        "val": sample_data.benchmark_url,
    }


def _snapshot(root: str) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}


def _pack_args(src: str, dst: str, *extra: str) -> list[str]:
    return [src, dst, "--scale", "4", "--crop", "96", "--step", "96", "--no-progress", *extra]


# (id, CLI main, argv from the files, what the output must name)
CASES: list[tuple[str, Callable, Callable[[dict, str], list[str]], list[str]]] = [
    (
        "pack truncated PNG",
        pack.main,
        lambda f, o: _pack_args(f["truncated"], o),
        ["0003x4.png", "truncated"],
    ),
    ("pack bomb", pack.main, lambda f, o: _pack_args(f["bombed"], o), ["0002.png", "decompression bomb"]),
    (
        "pack into another pack",
        pack.main,
        lambda f, o: _pack_args(f["train"], f["existing_pack"]),
        ["existing_pack", "--overwrite", "crop 192 (now 96)"],
    ),
    ("pack --scale 0", pack.main, lambda f, o: _pack_args(f["train"], o)[:2] + ["--scale", "0"], ["--scale"]),
    ("pack --scale 5", pack.main, lambda f, o: _pack_args(f["train"], o)[:2] + ["--scale", "5"], ["--scale"]),
    (
        "pack DST a file",
        pack.main,
        lambda f, o: _pack_args(f["train"], f["a_file"]),
        ["a_file.txt", "is a file"],
    ),
    (
        "pack bad storage options",
        pack.main,
        lambda f, o: _pack_args(f["train"], o, "--dst-storage-options", "{nope"),
        ["--dst-storage-options", "JSON"],
    ),
    ("pack credential URL", pack.main, lambda f, o: _pack_args(CREDENTIAL_URL, o), ["credentials"]),
    (
        "eval bomb",
        eval_cli.main,
        lambda f, o: ["--checkpoint", f["ckpt"], "--data", f["bench_bomb"]],
        ["X2/camerax2.png", "decompression bomb"],
    ),
    (
        "eval --device banana",
        eval_cli.main,
        lambda f, o: ["--checkpoint", f["ckpt"], "--data", f["val"], "--device", "banana"],
        ["--device 'banana'"],
    ),
    (
        "eval x2 checkpoint for x4",
        eval_cli.main,
        lambda f, o: ["--checkpoint", f["foreign_x2"], *AS_X4],
        ["foreign_x2.pth", "this checkpoint is x2"],
    ),
    (
        "eval crafted arch_spec",
        eval_cli.main,
        lambda f, o: ["--checkpoint", f["crafted"], "--data", f["val"]],
        ["crafted.pth", "arch_spec", "4000"],
    ),
    ("eval --scale 0", eval_cli.main, lambda f, o: ["--arch", "bicubic", "--scale", "0"], ["--scale"]),
    (
        "eval credential URL",
        eval_cli.main,
        lambda f, o: ["--checkpoint", f["ckpt"], "--data", CREDENTIAL_URL],
        ["credentials"],
    ),
    (
        "upscale --out is the input folder",
        upscale.main,
        lambda f, o: ["--checkpoint", f["ckpt"], f["photos"], "--out", f["photos"]],
        ["photos", "would replace"],
    ),
    (
        "upscale output is an input file",
        upscale.main,
        lambda f, o: ["--checkpoint", f["ckpt"], os.path.join(f["photos"], "a.png"), "--out", f["photos"]],
        ["a.png", "would be written over the input"],
    ),
    (
        "upscale --out a file",
        upscale.main,
        lambda f, o: ["--checkpoint", f["ckpt"], f["photos"], "--out", f["a_file"]],
        ["a_file.txt", "is a file"],
    ),
    (
        "upscale --device banana",
        upscale.main,
        lambda f, o: ["--checkpoint", f["ckpt"], f["photos"], "--out", o, "--device", "banana"],
        ["--device 'banana'", "cpu"],
    ),
    (
        "upscale --scale 0",
        upscale.main,
        lambda f, o: ["--checkpoint", f["foreign_x2"], f["photos"], "--out", o, "--scale", "0"],
        ["--scale"],
    ),
    (
        "upscale x2 checkpoint for x4",
        upscale.main,
        lambda f, o: ["--checkpoint", f["foreign_x2"], f["photos"], "--out", o, *AS_X4],
        ["foreign_x2.pth", "this checkpoint is x2"],
    ),
    (
        "upscale credential URL",
        upscale.main,
        lambda f, o: ["--checkpoint", f["ckpt"], CREDENTIAL_URL, "--out", o],
        ["credentials"],
    ),
    (
        "export --out is --checkpoint",
        export.main,
        lambda f, o: ["--checkpoint", f["ckpt"], "--format", "torchscript", "--out", f["ckpt"]],
        ["model_x2.pth", "would replace"],
    ),
    (
        "export --out a folder",
        export.main,
        lambda f, o: ["--checkpoint", f["ckpt"], "--format", "torchscript", "--out", f["folder"]],
        ["is a folder"],
    ),
    (
        "export crafted arch_spec",
        export.main,
        lambda f, o: ["--checkpoint", f["crafted"], "--format", "onnx", "--out", o + ".onnx"],
        ["crafted.pth", "does not describe its tensors"],
    ),
    (
        "export credential URL",
        export.main,
        lambda f, o: ["--checkpoint", CREDENTIAL_URL, "--format", "onnx", "--out", o + ".onnx"],
        ["credentials"],
    ),
    (
        "job --config missing",
        lambda argv: job_cli.main("edsr_x4", argv),
        lambda f, o: ["--tiny", "--config", os.path.join(f["root"], "nope.yaml")],
        ["--config", "nope.yaml", "no such file"],
    ),
    (
        "job --config binary",
        lambda argv: job_cli.main("edsr_x4", argv),
        lambda f, o: ["--tiny", "--config", f["binary"]],
        ["--config", "binary.yaml", "not a text file"],
    ),
    (
        "job --config a folder",
        lambda argv: job_cli.main("edsr_x4", argv),
        lambda f, o: ["--tiny", "--config", f["folder"]],
        ["--config", "is a folder"],
    ),
    (
        "job --set model.scale=0",
        lambda argv: job_cli.main("edsr_x4", argv),
        lambda f, o: ["--tiny", "--data", f["train"], "--val-data", f["val"], "--set", "model.scale=0"],
        ["model.scale"],
    ),
    (
        "job credential teacher URL",
        lambda argv: job_cli.main("edsr_x4", argv),
        lambda f, o: ["--tiny", "--data", f["train"], "--val-data", f["val"], "--teacher", CREDENTIAL_URL],
        ["model.teacher", "credentials"],
    ),
    (
        "teacher job --scale 5",
        job_cli.main_teacher,
        lambda f, o: ["--tiny", "--arch", "edsr", "--scale", "5"],
        ["--scale"],
    ),
    (
        "tune --config binary",
        tune_cli.main,
        lambda f, o: ["--tiny", "--config", f["binary"], "--storage", o],
        ["--config", "not a text file"],
    ),
    (
        "tune --space missing",
        tune_cli.main,
        lambda f, o: ["--tiny", "--space", os.path.join(f["root"], "nope.yaml"), "--storage", o],
        ["nope.yaml", "search space not found"],
    ),
    (
        "quickstart --out a file",
        quickstart.main,
        lambda f, o: ["--out", f["a_file"]],
        ["a_file.txt", "is a file"],
    ),
    (
        "tune --space binary",
        tune_cli.main,
        lambda f, o: ["--tiny", "--space", f["binary"], "--storage", o],
        ["--space", "not a YAML text file"],
    ),
    ("quickstart --seeds", quickstart.main, lambda f, o: ["--seeds", "ten"], ["--seeds", "'ten'"]),
    ("quickstart --patch-size", quickstart.main, lambda f, o: ["--patch-size", "0"], ["--patch-size 0"]),
    (
        "quickstart --out a credential URL",
        quickstart.main,
        lambda f, o: ["--out", CREDENTIAL_URL],
        ["s3://***@bucket/x", "expected a local folder"],
    ),
]


@pytest.mark.parametrize(("main", "argv", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(files, tmp_path, capsys, monkeypatch, main, argv, named):
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    out = str(tmp_path / "out")
    before = _snapshot(files["root"])
    try:
        status = main(argv(files, out))
    except SystemExit as e:
        status = e.code
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert status not in (0, None), text
    assert "Traceback" not in text and SECRET not in text, text
    for culprit in named:
        assert culprit in text, f"{culprit!r} not in {text!r}"
    error_lines = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(error_lines) == 1, captured.err
    assert _snapshot(files["root"]) == before, "an input was changed"
    left = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()]
    assert not left, f"half-written output left behind: {left}"


def test_our_errors_exit_2_and_argparse_errors_too(files, tmp_path, capsys):
    assert upscale.main(["--checkpoint", files["ckpt"], files["photos"], "--out", files["photos"]]) == 2
    with pytest.raises(SystemExit) as e:
        job_cli.main("edsr_x4", ["--tiny", "--config", files["binary"]])
    assert e.value.code == errors.EXIT_USER_ERROR
    with pytest.raises(SystemExit) as e:
        pack.main(_pack_args(files["train"], str(tmp_path / "o"))[:2] + ["--scale", "0"])
    assert e.value.code == 2
    capsys.readouterr()


def test_a_bomb_is_skipped_by_upscale_and_the_batch_goes_on(files, tmp_path, capsys):
    out = tmp_path / "sr"
    assert upscale.main(["--checkpoint", files["ckpt"], files["photos"], "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "skipped" in err and "b_bomb.png" in err and f"{MAX_IMAGE_PIXELS:,}" in err
    assert "Traceback" not in err
    assert sorted(os.listdir(out)) == ["a.png", "c.png"]  # the images after the bomb were upscaled


def test_pack_overwrite_replaces_the_other_pack_and_its_stale_shards(files, sample_data, tmp_path):
    dst = tmp_path / "pack"
    shutil.copytree(files["existing_pack"], dst)
    for i in range(20, 23):  # shards an older, larger pack left behind
        (dst / f"shard-{i:05d}.bin").write_bytes(b"old")
    (dst / "notes.txt").write_text("mine")
    assert pack.main(_pack_args(files["train"], str(dst), "--overwrite", "--shard-size-mb", "0.5")) == 0
    manifest = load_manifest(str(dst))
    assert manifest.meta["pack"]["params"]["crop"] == 96
    shards = sorted(n for n in os.listdir(dst) if n.startswith("shard-"))
    assert shards == [s.name for s in manifest.shards]  # no stale shard of the old pack is left
    assert (dst / "notes.txt").read_text() == "mine"  # nothing but our shards is ever removed


def test_pack_overwrite_that_fails_leaves_no_manifest_of_replaced_shards(files, tmp_path):
    dst = tmp_path / "pack"
    shutil.copytree(files["existing_pack"], dst)
    assert pack.main(_pack_args(files["truncated"], str(dst), "--overwrite", "--shard-size-mb", "0.3")) == 2
    assert not (dst / "manifest.json").exists()  # the old manifest went first: it described old shards


def test_debug_shows_the_traceback(files, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    assert pack.main(_pack_args(files["truncated"], str(tmp_path / "o"), "--debug")) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: ")
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    assert upscale.main(["--checkpoint", files["ckpt"], files["photos"], "--out", files["photos"]]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_internal_errors_keep_their_traceback(files, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not the user's input")

    monkeypatch.setattr(upscale, "upscale_all", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        upscale.main(["--checkpoint", files["ckpt"], files["photos"], "--out", str(tmp_path / "o")])


def test_describe_redacts_and_keeps_one_line():
    e = errors.UserError(f"cannot read {CREDENTIAL_URL}\n  nor AKIAEXAMPLE:{SECRET}@bucket", hint="check it")
    text = errors.describe(e)
    assert SECRET not in text and text.count("\n") == 1
    assert text.startswith("error: cannot read s3://***@bucket/x nor ***@bucket") and text.endswith(
        "hint: check it"
    )


def _run_module(args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != errors.DEBUG_ENV}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )


def test_python_m_pack_exits_2_with_one_line(files, tmp_path):
    proc = _run_module(["dukd_ray.data.pack", *_pack_args(files["truncated"], str(tmp_path / "o"))])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot decode image")
    assert "0003x4.png" in proc.stderr


def test_python_m_export_exits_2_with_one_line(files):
    before = Path(files["ckpt"]).read_bytes()
    proc = _run_module(
        ["dukd_ray.export", "--checkpoint", files["ckpt"], "--format", "onnx", "--out", files["ckpt"]]
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().startswith("error: --out") and proc.stderr.count("\n") == 1
    assert Path(files["ckpt"]).read_bytes() == before
