"""Real Ray Train runs on 2 CPU workers (gloo) with the tiny EDSR x4 presets and the sample data.

One uninterrupted baseline run is the reference for three claims: the DDP replicas stay bit-identical,
a worker killed mid-run is replaced and the run ends exactly where the baseline ends, and a run
stopped at step k and resubmitted under the same name+storage also ends exactly there. A fourth run
shows that a corrupt training record is not retried like a lost worker: it fails the run once.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import ray
import torch

from dukd_ray.data.pack import pack
from dukd_ray.data.shards import decode_header, header_length
from dukd_ray.eval.benchmark import evaluate_sets, load_benchmark_sets
from dukd_ray.models import build_arch, build_from_checkpoint
from dukd_ray.storage import exists, join, read_bytes
from dukd_ray.train import InputError, JobConfig, TrainResult, run_training
from dukd_ray.train import trainer as trainer_module
from dukd_ray.train.checkpoint import checkpoint_dir_name
from dukd_ray.train.faults import Fault

STEPS = 6
# wall-clock metrics (and the workers' torch threads, sized per run): the only ones allowed to differ
TIMING = ("samples_per_s", "data_wait_frac", "model_tflops", "mfu", "peak_memory_gib", "torch_threads")
# weights of runs on different world sizes (gradients summed in another order): measured max |diff|
# 1.5e-8 (1 vs 2 workers), 7.5e-9 (2 -> 1), 8.7e-7 (global batch 3: 1 -> 2 vs 2 workers); rows weighted
# per worker instead of per sample would differ by ~2e-3
EQUIVALENT = 5e-6


@pytest.fixture(scope="module")
def teacher_url(tiny_teacher) -> str:
    return tiny_teacher("edsr", 4)


@pytest.fixture(scope="module")
def job(sample_data, teacher_url):
    def make(storage: str, name: str, *overrides: str) -> JobConfig:
        return JobConfig.from_preset("edsr_x4", tiny=True).apply_overrides(
            [
                f"data.train={sample_data.train_url}",
                f"data.val={sample_data.benchmark_url}",
                f"model.teacher={teacher_url}",
                f"run.storage={storage}",
                f"run.name={name}",
                "run.num_workers=2",
                "run.use_gpu=false",
                f"train.max_steps={STEPS}",
                "train.val_every=2",
                "train.ckpt_every=2",
                *overrides,
            ]
        )

    return make


@pytest.fixture(scope="module")
def baseline(ray_cluster, job, tmp_path_factory) -> TrainResult:
    return run_training(job(str(tmp_path_factory.mktemp("runs")), "baseline", "train.log_every=1"))


def _exported(result: TrainResult, storage_options=None) -> dict:
    return torch.load(io.BytesIO(read_bytes(result.weights_url, storage_options)), weights_only=True)


def _assert_same_run(
    result: TrainResult, reference: TrainResult, storage_options=None, atol: float = 1e-6
) -> None:
    """Same step, same weights (student and EMA) to `atol`, same final metrics (losses: this rank's rows)."""
    assert result.step == reference.step == STEPS
    ours, ref = _exported(result, storage_options), _exported(reference)
    for entry in ("params", "params_ema"):
        assert ours[entry].keys() == ref[entry].keys()
        for key, value in ref[entry].items():
            torch.testing.assert_close(ours[entry][key], value, rtol=0, atol=atol, msg=f"{entry}.{key}")
    same_rows = result.config.run.num_workers == reference.config.run.num_workers
    for key, value in reference.metrics.items():
        if key not in TIMING and (same_rows or not (key.startswith("loss") or key == "world_size")):
            assert result.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


def _meta(result: TrainResult) -> dict:
    cp = result.checkpoint
    with cp.filesystem.open_input_stream(f"{cp.path}/meta.json") as f:
        return json.loads(f.read())


def test_two_workers_keep_identical_replicas_and_report_everything(baseline, sample_data):
    r = baseline
    assert r.step == STEPS and [h["step"] for h in _history(r)] == [2, 4, 6]
    for key in ("step", "val_psnr", "val_ssim", "psnr/Sample", "ssim/Sample", "lr", "samples_per_s", "loss"):
        assert key in r.metrics, key
    for term in ("loss_pix", "loss_kd", "loss_zoom_in", "loss_zoom_out"):  # dukd's terms
        assert r.metrics[term] > 0
    assert r.metrics["samples_per_s"] > 0 and 0 <= r.metrics["data_wait_frac"] < 1
    assert r.metrics["model_tflops"] > 0 and "mfu" not in r.metrics  # no known peak for a CPU
    # 2 CPU workers on the 2-CPU test cluster: sized to 1 CPU each, and the worker trained on 1 thread
    assert r.metrics["torch_threads"] == r.config.run.cpus_per_worker == 1

    # one state for all ranks (each checkpoint compared the replicas' digests first): global position
    folder = r.checkpoint.to_directory()
    assert sorted(p.name for p in Path(folder).iterdir()) == ["history.json", "meta.json", "train_state.pt"]
    state = torch.load(Path(folder, "train_state.pt"), weights_only=True)
    assert state["data"]["step"] == STEPS and state["data"]["global_batch"] == 8  # tiny: 4 x 2 workers
    student = build_arch("edsr", 4, preset="tiny_student")
    student.load_state_dict(state["student"])
    meta = _meta(r)
    assert (meta["resumes"], meta["world_size"], meta["global_batch_size"]) == ([], 2, 8)

    # the exported .pth holds that student (params) and its EMA, which gets the eval CLI's numbers
    exported = _exported(r)
    assert all(torch.equal(exported["params"][k], v) for k, v in student.state_dict().items())
    ema = build_from_checkpoint(r.weights_url)  # loads params_ema, like BasicSR's tools
    sets = load_benchmark_sets(sample_data.benchmark_url, ["Sample"], 4)
    scores = evaluate_sets(ema, sets, 4)["Sample"]
    assert r.metrics["psnr/Sample"] == pytest.approx(scores["psnr"], abs=1e-9)
    assert r.metrics["ssim/Sample"] == pytest.approx(scores["ssim"], abs=1e-9)


def test_run_folder_holds_exports_tensorboard_and_report(baseline):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = Path(baseline.run_url)
    assert (run / "student.safetensors").stat().st_size > 0
    for png in ("curves.png", "crops.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "loss_zoom_in", "lr", "samples_per_s", "psnr/Sample", "ssim/Sample", "val_psnr"} <= tags
    assert [e.step for e in events.Scalars("val_psnr")] == [2, 4, 6]
    # the log_every stream (1 here): every loss term, lr and throughput at every step, once each
    for tag in ("loss", "loss_pix", "loss_zoom_out", "lr", "samples_per_s", "data_wait_frac", "model_tflops"):
        assert [e.step for e in events.Scalars(tag)] == list(range(1, STEPS + 1)), tag
    report = (run / "report.md").read_text()
    m = baseline.metrics
    for row in ("| bicubic |", "| teacher (tiny_teacher) |", "| student (tiny_student, dukd, EMA) |"):
        assert row in report
    assert f"{m['psnr/Sample']:.2f} / {m['ssim/Sample']:.4f}" in report
    assert "curves.png" in report and "crops.png" in report and "method: dukd" in report
    assert "| student / teacher |" in report  # what the student saves, beside its PSNR
    assert "samples/s |" in report and "TFLOP/s" in report and "torch threads: 1 per worker" in report
    html = (run / "report.html").read_text()
    assert "<table" in html and '<img src="crops.png"' in html
    # checkpoint retention: the keep_best best by val_psnr, and the latest
    by_psnr = sorted(baseline.history, key=lambda h: h["val_psnr"], reverse=True)
    kept = {h["step"] for h in by_psnr[: baseline.config.train.keep_best]} | {STEPS}
    assert sorted(p.name for p in run.glob("checkpoint_0*")) == [checkpoint_dir_name(s) for s in sorted(kept)]


def test_killed_worker_is_replaced_and_the_run_ends_as_if_uninterrupted(baseline, job, s3_bucket):
    """Rank 1 dies after step 3 (storage on S3): Ray restarts the group from checkpoint 2."""
    bucket, opts = s3_bucket
    cfg = job(join(bucket, "runs"), "fault", "run.max_failures=1", f"data.storage_options={json.dumps(opts)}")
    result = run_training(cfg, fault=Fault(rank=1, step=3))
    assert exists(join(result.run_url, ".fault_injected-rank1-step3"), opts)
    assert _meta(result)["resumes"] == [2]
    _assert_same_run(result, baseline, opts)
    assert exists(join(result.run_url, "report.html"), opts)


def test_resubmitted_run_resumes_from_its_latest_checkpoint_exactly_on_another_world_size(
    baseline, job, tmp_path
):
    """2 workers to step 4, resubmitted on 1 worker (its 8 rows in two passes of 4) to step 6: the
    same global batches and draws, so it ends where the 2-worker baseline ends (to float tolerance)."""
    first = run_training(job(str(tmp_path), "resume", "train.max_steps=4"))
    assert first.step == 4
    resumed = run_training(job(str(tmp_path), "resume", "run.num_workers=1"))
    assert _meta(resumed)["resumes"] == [4] and _meta(resumed)["global_batch_size"] == 8
    _assert_same_run(resumed, baseline, atol=EQUIVALENT)


def test_one_worker_trains_what_two_workers_train_with_the_same_global_batch(baseline, job, tmp_path):
    """One worker, global batch 8 in passes of 4 (gradient accumulation) = the 2 x 4 baseline."""
    alone = run_training(job(str(tmp_path), "alone", "run.num_workers=1", "data.global_batch_size=8"))
    _assert_same_run(alone, baseline, atol=EQUIVALENT)


def test_uneven_global_batch_and_a_resume_from_one_worker_onto_two(job, tmp_path):
    """Global batch 3 on 2 workers (2 + 1 rows, weighted); and 1 worker to step 4 resumed on 2 workers."""
    uneven = run_training(job(str(tmp_path), "uneven", "data.global_batch_size=3"))
    run_training(
        job(str(tmp_path), "grown", "run.num_workers=1", "data.global_batch_size=3", "train.max_steps=4")
    )
    grown = run_training(job(str(tmp_path), "grown"))  # the recorded global batch (3), not 4 x 2
    assert _meta(grown)["resumes"] == [4] and _meta(grown)["global_batch_size"] == 3
    _assert_same_run(grown, uneven, atol=EQUIVALENT)


def _history(result: TrainResult) -> list[dict]:
    cp = result.checkpoint
    with cp.filesystem.open_input_stream(f"{cp.path}/history.json") as f:
        return json.loads(f.read())


def _train_workers_started() -> int:
    return sum(a["ActorClassName"].endswith("RayTrainWorker") for a in ray._private.state.actors().values())


def test_a_corrupt_record_fails_the_run_once_with_its_line(
    ray_cluster, job, sample_data, tmp_path, monkeypatch
):
    """Shards that pass the preflight, then fail their crc32 in the workers: one InputError, no retry.

    The records are corrupted right after the preflight (sizes and headers still match the manifest,
    as after a bit flip on the store); `run.max_failures=2` would have started 3 worker groups.
    """
    shards = tmp_path / "shards"
    pack(sample_data.train_url, str(shards), 4, crop=192, step=192, shard_size_mb=1, progress=False)
    checked = trainer_module.prepare

    def prepare_then_corrupt(cfg: JobConfig) -> JobConfig:
        resolved = checked(cfg)
        for shard in shards.glob("shard-*.bin"):
            data = bytearray(shard.read_bytes())
            n = header_length(bytes(data), str(shard))
            for record in decode_header(bytes(data[:n]), str(shard)):
                data[record.offset] ^= 0xFF
            shard.write_bytes(bytes(data))
        return resolved

    monkeypatch.setattr(trainer_module, "prepare", prepare_then_corrupt)
    before = _train_workers_started()
    cfg = job(str(tmp_path / "runs"), "corrupt", f"data.train={shards}", "run.max_failures=2")
    with pytest.raises(InputError) as failure:
        run_training(cfg)
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith(f"data.train ({shards}): ShardFormatError: record '")
    assert "fails its checksum" in message and "shard-0" in message and ", step 1)" in message
    assert _train_workers_started() - before == 2  # one worker group of 2, never restarted
