"""Training checkpoints without Ray: exact RNG round trips, the layout, and which folder a resume picks."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import ray.train
import s3fs
import torch

from dukd_ray.distill import EMA
from dukd_ray.models import build_arch
from dukd_ray.train.checkpoint import (
    capture_rng,
    checkpoint_dir_name,
    latest_complete_checkpoint,
    read_checkpoint,
    replica_digest,
    restore_rng,
    resume_folder,
    write_checkpoint,
)


def _draws(generator: torch.Generator) -> list[float]:
    return [
        random.random(),
        float(np.random.rand()),
        float(torch.rand(1)),
        float(torch.rand(1, generator=generator)),
    ]


def test_rng_states_round_trip_exactly():
    generator = torch.Generator().manual_seed(3)
    state = capture_rng(generator)
    first = _draws(generator)
    restore_rng(state, generator)
    assert _draws(generator) == first


def _write(folder: Path, step: int, history: list[dict]) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(step)
    student = build_arch("edsr", 4, preset="tiny_student")
    ema = EMA(student, 0.9)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [10], 0.1)
    student(torch.rand(1, 3, 8, 8)).mean().backward()
    optimizer.step()
    scheduler.step()
    folder.mkdir(parents=True)
    write_checkpoint(
        str(folder),
        rank=0,
        world_size=1,
        step=step,
        student=student,
        ema=ema.module,
        optimizer=optimizer,
        scheduler=scheduler,
        generator=torch.Generator().manual_seed(step),
        data_state={"epoch": 0, "batch": step},
        history=history,
        resumes=[],
    )
    return student, optimizer


def test_checkpoint_round_trip(tmp_path):
    folder = tmp_path / checkpoint_dir_name(7)
    student, optimizer = _write(folder, 7, [{"step": 7, "val_psnr": 20.5}])
    assert {p.name for p in folder.iterdir()} == {"train_state.pt", "rank_0.pt", "history.json", "meta.json"}
    restored = read_checkpoint(str(folder), rank=0, world_size=1, device=torch.device("cpu"))
    assert (restored.step, restored.history, restored.resumes) == (7, [{"step": 7, "val_psnr": 20.5}], [7])
    assert all(torch.equal(restored.train_state["student"][k], v) for k, v in student.state_dict().items())
    assert restored.train_state["optimizer"]["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert restored.rank_state["data"] == {"epoch": 0, "batch": 7}
    assert restored.rank_state["replica_digest"] == replica_digest(student, _ema_of(restored))
    # another world size: weights restored, per-rank state not (an inexact resume, logged)
    assert read_checkpoint(str(folder), rank=1, world_size=2, device=torch.device("cpu")).rank_state is None


def _ema_of(restored) -> torch.nn.Module:
    ema = build_arch("edsr", 4, preset="tiny_student")
    ema.load_state_dict(restored.train_state["ema"])
    return ema


def test_replica_digest_tells_weights_apart():
    torch.manual_seed(0)
    a, b = build_arch("edsr", 4, preset="tiny_student"), build_arch("edsr", 4, preset="tiny_student")
    assert replica_digest(a) != replica_digest(b)
    b.load_state_dict(a.state_dict())
    assert replica_digest(a) == replica_digest(b)


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """Checkpoints at steps 2 (complete), 4 (complete), 6 (a rank file cut short), 8 (no meta.json)."""
    run = tmp_path / "run"
    for step in (2, 4, 6, 8):
        _write(run / checkpoint_dir_name(step), step, [{"step": step}])
    rank_file = run / checkpoint_dir_name(6) / "rank_0.pt"
    rank_file.write_bytes(rank_file.read_bytes()[:100])
    (run / checkpoint_dir_name(8) / "meta.json").unlink()
    (run / "tensorboard").mkdir()
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    return run


def test_resume_takes_the_newest_complete_checkpoint(run_folder, tmp_path):
    step, _, path, meta = latest_complete_checkpoint(str(run_folder), None)
    assert (step, Path(path).name, meta["step"]) == (4, checkpoint_dir_name(4), 4)
    with resume_folder(None, str(run_folder), None) as folder:  # Ray registered none: the run folder's
        assert read_checkpoint(folder, 0, 1, torch.device("cpu")).step == 4
    registered = ray.train.Checkpoint.from_directory(str(run_folder / checkpoint_dir_name(2)))
    with resume_folder(registered, str(run_folder), None) as folder:  # Ray lost the registration of 4
        assert read_checkpoint(folder, 0, 1, torch.device("cpu")).step == 4
    registered = ray.train.Checkpoint.from_directory(str(run_folder / checkpoint_dir_name(4)))
    with resume_folder(registered, str(run_folder), None) as folder:  # Ray's own, used in place
        assert Path(folder) == run_folder / checkpoint_dir_name(4)
    assert latest_complete_checkpoint(str(tmp_path / "no-such-run"), None) is None
    with resume_folder(None, str(tmp_path / "no-such-run"), None) as folder:
        assert folder is None


def test_resume_scan_on_s3(run_folder, s3_bucket):
    bucket, opts = s3_bucket
    fs = s3fs.S3FileSystem(**opts)
    shutil.rmtree(run_folder / "tensorboard")
    fs.put(str(run_folder), f"{bucket.removeprefix('s3://')}/runs/r", recursive=True)
    with resume_folder(None, f"{bucket}/runs/r", opts) as folder:
        restored = read_checkpoint(folder, 0, 1, torch.device("cpu"))
    assert (restored.step, restored.history) == (4, [{"step": 4}])
