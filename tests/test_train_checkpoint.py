"""Training state and checkpoints without a Ray run: exact round trips, the on-disk layout, which
folder a resume picks (against Ray's own checkpoint bookkeeping), and which checkpoints Ray keeps."""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import ray.train
import s3fs
import torch
from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import CheckpointManager
from ray.train.v2._internal.execution.training_report import _TrainingReport

from dukd_ray.data import build_train_stream
from dukd_ray.distill import EMA
from dukd_ray.models import build_arch
from dukd_ray.train import JobConfig, build_trainer
from dukd_ray.train.checkpoint import (
    checkpoint_dir_name,
    latest_complete_checkpoint,
    read_checkpoint,
    replica_digest,
    resume_folder,
    run_global_batch,
    write_checkpoint,
)
from dukd_ray.train.preflight import InputError, check_global_batch
from dukd_ray.train.rng import seed_step, step_seed
from dukd_ray.train.state import TrainState


def test_step_draws_are_functions_of_seed_and_step_only():
    """What replaces saved RNG states: every step reseeds torch and makes its distill generator."""
    first = seed_step(10, 5)
    draws = (float(torch.rand(1)), float(torch.rand(1, generator=first)))
    torch.rand(100)  # whatever ran in between
    again = seed_step(10, 5)
    assert (float(torch.rand(1)), float(torch.rand(1, generator=again))) == draws
    assert draws[0] != draws[1]  # the two streams of a step differ
    other_rank = seed_step(10, 5, first_row=4)  # another rank: its own global draws, the same distill ones
    assert float(torch.rand(1)) != draws[0] and float(torch.rand(1, generator=other_rank)) == draws[1]
    seeds = {step_seed(s, k, 0) for s in (10, 11) for k in range(50)}
    assert len(seeds) == 100 and all(0 <= x < 2**63 for x in seeds)


@pytest.fixture
def train_url(sample_data) -> str:
    return sample_data.train_url


def _state(train_url: str, seed: int) -> TrainState:
    """A fresh state as a worker builds it (tiny EDSR x4, one-image batches: 8 per epoch)."""
    torch.manual_seed(seed)
    student = build_arch("edsr", 4, preset="tiny_student")
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-4)
    return TrainState(
        student=student,
        ema=EMA(student, 0.9),
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.MultiStepLR(optimizer, [10], 0.1),
        stream=build_train_stream(train_url, 4, patch_size=16, batch_size=1, num_workers=0),
    )


def _trained(train_url: str, step: int, history: list[dict], resumes: Iterable[int] = ()) -> TrainState:
    """A state after one optimizer step, at `step`, with its stream at batch `step`."""
    state = _state(train_url, step)
    state.student(torch.rand(1, 3, 8, 8)).mean().backward()
    state.optimizer.step()
    state.scheduler.step()
    state.ema.update(state.student)
    state.stream.seek(step)
    state.step, state.history, state.resumes = step, history, list(resumes)
    return state


def _write(folder: Path, state: TrainState) -> None:
    folder.mkdir(parents=True)
    write_checkpoint(str(folder), state, rank=0, world_size=1)


def _assert_same(ours: Any, ref: Any, where: str = "state") -> None:
    """Nested dicts/lists/tuples equal, tensors bit for bit."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(ours, torch.Tensor) and torch.equal(ours, ref), where
    elif isinstance(ref, dict):
        assert ours.keys() == ref.keys(), where
        for key in ref:
            _assert_same(ours[key], ref[key], f"{where}.{key}")
    elif isinstance(ref, (list, tuple)):
        assert len(ours) == len(ref), where
        for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
            _assert_same(a, b, f"{where}[{i}]")
    else:
        assert ours == ref, where


def test_train_state_round_trip_restores_every_entry(train_url):
    """Student, EMA, optimizer, scheduler, stream position, step, history, resumes."""
    source = _trained(train_url, 7, [{"step": 5, "val_psnr": 20.5}], resumes=[3])
    saved = copy.deepcopy(source.state_dict())
    source.student(torch.rand(1, 3, 8, 8)).mean().backward()  # move on, so nothing is left equal by chance
    source.optimizer.step()
    source.scheduler.step()

    target = _state(train_url, seed=99)
    target.load_state_dict(saved)
    _assert_same(target.state_dict(), saved)
    assert target.stream.state_dict()["step"] == 7 and target.scheduler.last_epoch == 1
    assert target.optimizer.state_dict()["state"][0]["step"] == 1
    assert (target.step, target.history, target.resumes) == (7, [{"step": 5, "val_psnr": 20.5}], [3])
    target.history.append({"step": 9})
    assert saved["history"] == [{"step": 5, "val_psnr": 20.5}]  # no list is shared with the snapshot
    with pytest.raises(ValueError, match="data position 7 is not step 8"):
        target.load_state_dict({**saved, "step": 8})


def test_train_state_without_data_continues_the_stream_at_its_step(train_url):
    """An older checkpoint's state (no global data position): the stream goes on at the state's step."""
    saved = _trained(train_url, 5, []).state_dict()
    target = _state(train_url, seed=1)
    target.load_state_dict({k: v for k, v in saved.items() if k != "data"})
    assert target.step == 5 and target.stream.state_dict()["step"] == 5
    _assert_same(target.student.state_dict(), saved["student"])


def test_train_state_is_validated(train_url):
    state = _state(train_url, 0)
    with pytest.raises(ValueError, match="step"):
        TrainState(**{**vars(state), "step": -1})
    other = torch.optim.SGD(state.student.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="scheduler"):
        TrainState(**{**vars(state), "optimizer": other})


def _read(folder: str, train_url: str, rank: int = 0, world_size: int = 1) -> TrainState:
    state = _state(train_url, seed=0)
    read_checkpoint(folder, state, rank=rank, world_size=world_size)
    return state


def test_checkpoint_round_trip(tmp_path, train_url):
    folder = tmp_path / checkpoint_dir_name(7)
    written = _trained(train_url, 7, [{"step": 7, "val_psnr": 20.5}])
    _write(folder, written)
    assert {p.name for p in folder.iterdir()} == {"train_state.pt", "history.json", "meta.json"}
    train_state = torch.load(folder / "train_state.pt", weights_only=True)
    meta = json.loads((folder / "meta.json").read_text())
    assert list(train_state) == ["step", "student", "ema", "optimizer", "scheduler", "data"]
    assert list(meta) == [
        "format",
        "step",
        "world_size",
        "global_batch_size",
        "arch_spec",
        "resumes",
        "files",
    ]
    assert (meta["format"], meta["global_batch_size"]) == (2, 1)
    assert meta["files"] == {p.name: p.stat().st_size for p in folder.iterdir() if p.name != "meta.json"}

    for world_size in (1, 2):  # nothing per rank: any world size resumes the same state
        restored = _read(str(folder), train_url, rank=world_size - 1, world_size=world_size)
        assert (restored.step, restored.history, restored.resumes) == (
            7,
            [{"step": 7, "val_psnr": 20.5}],
            [7],
        )
        _assert_same(restored.student.state_dict(), written.student.state_dict())
        _assert_same(restored.ema.state_dict(), written.ema.state_dict())
        _assert_same(restored.optimizer.state_dict(), written.optimizer.state_dict())
        assert restored.stream.state_dict() == written.stream.state_dict()


def test_a_resubmission_with_another_global_batch_fails_on_the_driver(tmp_path, train_url):
    cfg = JobConfig.from_preset("edsr_x4", tiny=True)
    cfg.run.storage, cfg.run.name, cfg.data.batch_size = str(tmp_path), "run", 1
    check_global_batch(cfg)  # no checkpoint yet: nothing recorded, nothing to contradict
    _write(tmp_path / "run" / checkpoint_dir_name(7), _trained(train_url, 7, []))  # recorded global batch: 1
    check_global_batch(cfg)  # unset: the run keeps its recorded batch
    cfg.data.global_batch_size = 4
    with pytest.raises(InputError, match=r"checkpoint at step 7\): data.global_batch_size is 4, but .* of 1"):
        check_global_batch(cfg)


def test_a_per_rank_checkpoint_of_the_older_format_still_resumes_with_a_warning(tmp_path, train_url, caplog):
    """Format 1: train_state.pt without data, rank_<r>.pt with per-rank RNGs and positions, no format."""
    folder = tmp_path / checkpoint_dir_name(7)
    written = _trained(train_url, 7, [{"step": 7}])
    _write(folder, written)
    saved = torch.load(folder / "train_state.pt", weights_only=True)
    torch.save(
        {k: saved[k] for k in ("step", "student", "ema", "optimizer", "scheduler")}, folder / "train_state.pt"
    )
    torch.save({"step": 7, "data": {"version": 1, "epoch": 0, "batch": 3}}, folder / "rank_0.pt")
    meta = json.loads((folder / "meta.json").read_text())
    old = {"step": 7, "world_size": 2, "arch_spec": meta["arch_spec"], "resumes": [], "files": {}}
    (folder / "meta.json").write_text(json.dumps(old))
    assert run_global_batch(None, 16, 4, old) == 32  # its run had batch_size per worker on 2 workers
    with caplog.at_level("WARNING"):
        restored = _read(str(folder), train_url)
    assert "older format" in caplog.text and "not an exact resume" in caplog.text
    assert restored.step == 7 and restored.stream.state_dict()["step"] == 7
    _assert_same(restored.student.state_dict(), written.student.state_dict())


def test_the_global_batch_is_the_recorded_one_then_the_configured_one_then_batch_times_workers():
    recorded = {"format": 2, "step": 4, "world_size": 2, "global_batch_size": 6}
    assert run_global_batch(None, 4, 1, recorded) == 6  # resumed on fewer workers: kept
    assert run_global_batch(6, 4, 3, recorded) == 6
    assert run_global_batch(5, 4, 3, None) == 5
    assert run_global_batch(None, 4, 3, None) == 12
    with pytest.raises(ValueError, match="started with a global batch of 6"):
        run_global_batch(8, 4, 2, recorded)
    with pytest.raises(ValueError, match="smaller than the 3 workers"):
        run_global_batch(2, 4, 3, None)


def test_replica_digest_tells_weights_apart():
    torch.manual_seed(0)
    a, b = build_arch("edsr", 4, preset="tiny_student"), build_arch("edsr", 4, preset="tiny_student")
    assert replica_digest(a) != replica_digest(b)
    b.load_state_dict(a.state_dict())
    assert replica_digest(a) == replica_digest(b)


@pytest.fixture
def run_folder(tmp_path, train_url) -> Path:
    """Checkpoints at steps 2 (complete), 4 (complete), 6 (a state file cut short), 8 (no meta.json)."""
    run = tmp_path / "run"
    for step in (2, 4, 6, 8):
        _write(run / checkpoint_dir_name(step), _trained(train_url, step, [{"step": step}]))
    state_file = run / checkpoint_dir_name(6) / "train_state.pt"
    state_file.write_bytes(state_file.read_bytes()[:100])
    (run / checkpoint_dir_name(8) / "meta.json").unlink()
    (run / "tensorboard").mkdir()
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    return run


def test_resume_takes_the_newest_complete_checkpoint(run_folder, tmp_path, train_url):
    step, _, path, meta = latest_complete_checkpoint(str(run_folder), None)
    assert (step, Path(path).name, meta["step"]) == (4, checkpoint_dir_name(4), 4)
    with resume_folder(None, str(run_folder), None) as folder:  # Ray registered none: the run folder's
        assert _read(folder, train_url).step == 4
    registered = ray.train.Checkpoint.from_directory(str(run_folder / checkpoint_dir_name(2)))
    with resume_folder(registered, str(run_folder), None) as folder:  # Ray lost the registration of 4
        assert _read(folder, train_url).step == 4
    registered = ray.train.Checkpoint.from_directory(str(run_folder / checkpoint_dir_name(4)))
    with resume_folder(registered, str(run_folder), None) as folder:  # Ray's own, in a folder of this process
        assert Path(folder) != run_folder / checkpoint_dir_name(4) and _read(folder, train_url).step == 4
    assert latest_complete_checkpoint(str(tmp_path / "no-such-run"), None) is None
    with resume_folder(None, str(tmp_path / "no-such-run"), None) as folder:
        assert folder is None


def test_resume_scan_on_s3(run_folder, s3_bucket, train_url):
    bucket, opts = s3_bucket
    fs = s3fs.S3FileSystem(**opts)
    shutil.rmtree(run_folder / "tensorboard")
    fs.put(str(run_folder), f"{bucket.removeprefix('s3://')}/runs/r", recursive=True)
    with resume_folder(None, f"{bucket}/runs/r", opts) as folder:
        restored = _read(folder, train_url)
    assert (restored.step, restored.history) == (4, [{"step": 4}])


@pytest.fixture
def ray_run(tmp_path, sample_data) -> Any:
    """The RunConfig `build_trainer` gives a run (keep_best=2), and Ray's checkpoint manager for it.

    Ray's own controller-side bookkeeping (`CheckpointManager`, Ray 2.60), fed the reports a run
    makes, stands in for a Ray run: what it registers, deletes and hands to the workers is Ray's.
    """
    cfg = JobConfig.from_preset("edsr_x4", tiny=True).apply_overrides(
        [
            f"data.train={sample_data.train_url}",
            f"data.val={sample_data.benchmark_url}",
            f"run.storage={tmp_path / 'runs'}",
            "run.name=r",
            "run.use_gpu=false",
            "train.keep_best=2",
        ]
    )
    run_config = build_trainer(cfg, check=False).run_config
    return run_config, CheckpointManager(run_config.checkpoint_config, run_config.storage_context)


def _report(ray_run: Any, state: TrainState, val_psnr: float, *, registered: bool = True) -> Path:
    """What `ray.train.report(metrics, checkpoint)` leaves: the files in the run folder, then (unless
    the report dies with its worker) the registration."""
    run_config, manager = ray_run
    storage = run_config.storage_context
    path = storage.build_checkpoint_path_from_name(checkpoint_dir_name(state.step))
    _write(Path(path), state)
    if registered:
        checkpoint = ray.train.Checkpoint(path, filesystem=storage.storage_filesystem)
        report = _TrainingReport(checkpoint, {"step": state.step, "val_psnr": val_psnr}, validation=False)

        async def register() -> None:  # the manager notifies its listeners on the running event loop
            manager.register_checkpoint(report)

        asyncio.run(register())
    return Path(path).parent


def test_ray_keeps_the_best_checkpoints_by_val_psnr_and_the_latest(ray_run, train_url):
    """`train.keep_best=2`: after a run the run folder holds the two best by val_psnr and the last."""
    for step, val_psnr in ((2, 20.0), (4, 22.0), (6, 21.0), (8, 19.0)):
        run = _report(ray_run, _trained(train_url, step, [{"step": step}]), val_psnr)
    assert sorted(p.name for p in run.glob("checkpoint_0*")) == [checkpoint_dir_name(s) for s in (4, 6, 8)]


def test_resume_finds_the_checkpoint_ray_lost_and_skips_a_half_uploaded_one(ray_run, train_url):
    """Why the run folder is scanned (see `resume_folder`): checkpoint 6's files are all uploaded but its
    report died with its worker; checkpoint 8 is half uploaded. Ray hands a restarted (or resubmitted)
    run checkpoint 4, the resume takes 6."""
    _report(ray_run, _trained(train_url, 2, [{"step": 2}]), 20.0)
    run = _report(ray_run, _trained(train_url, 4, [{"step": 4}]), 21.0)
    _report(ray_run, _trained(train_url, 6, [{"step": 6}]), 22.0, registered=False)
    _report(ray_run, _trained(train_url, 8, [{"step": 8}]), 23.0, registered=False)
    (run / checkpoint_dir_name(8) / "meta.json").unlink()

    run_config, _ = ray_run
    resubmitted = CheckpointManager(run_config.checkpoint_config, run_config.storage_context)  # the snapshot
    given = resubmitted.before_init_train_context(workers=[None])["checkpoint"][0]  # = get_checkpoint()
    assert Path(given.path).name == checkpoint_dir_name(4)
    with resume_folder(given, str(run), None) as folder:
        assert _read(folder, train_url).resumes == [6]
