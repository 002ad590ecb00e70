"""Elastic workers on spot nodes: `run.num_workers` as MIN-MAX, preemption checkpoints, a multi-node run.

The config and CLI checks are plain unit tests. The Ray test is one run on a two-node cluster on this
machine (`ray.cluster_utils.Cluster`: a head and a second node, one CPU each, so one worker per node),
with its storage on the moto S3 server, elastic between 1 and 2 workers. While it trains, the test
drains the second node through Ray's drain API with a deadline (what a spot reclaim notice does), then
removes it at the deadline, then brings a node back; the run checkpoints at the step of the notice,
continues on one worker from there, grows back to two, and finishes. The one-worker group holds
(`faults.Hold`) after its first checkpoint, so the run cannot end before Ray grows it.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import threading
import time
from typing import Any

import pytest
import torch

from dukd_ray.storage import get_fs, join, list_folder, read_bytes
from dukd_ray.train import JobConfig
from dukd_ray.train.cli import build_parser
from dukd_ray.train.config import ConfigError
from dukd_ray.train.faults import Hold
from dukd_ray.train.report import workers_line

CKPT_EVERY = 4
STEPS = 20
DRAIN_DEADLINE_S = 8
EQUIVALENT = 1e-6  # weights of runs on different world sizes (gradients summed in another order)


# ---------------------------------------------------------------- config and CLI


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3), ("2-4", [2, 4]), (" 1 - 8 ", [1, 8]), ("[1, 2]", [1, 2]), ("[3, 3]", 3), ("4-4", 4)],
)
def test_num_workers_takes_a_number_or_a_range(value: str, expected: Any) -> None:
    run = JobConfig().apply_overrides([f"run.num_workers={value}"]).run
    assert run.num_workers == expected
    assert run.worker_range == ((expected, expected) if isinstance(expected, int) else tuple(expected))
    assert JobConfig.from_dict(JobConfig().apply_overrides([f"run.num_workers={value}"]).to_dict()).run == run


@pytest.mark.parametrize("value", ["0", "4-2", "0-2", "[1]", "[1, 2, 3]", "two", "1.5", "2-"])
def test_a_bad_num_workers_is_one_line_naming_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^run\.num_workers: expected an integer >= 1, or MIN-MAX") as e:
        JobConfig().apply_overrides([f"run.num_workers={value}"])
    assert "\n" not in str(e.value)


def test_fractional_gpus_need_one_worker_at_most() -> None:
    with pytest.raises(ConfigError, match="run.gpus_per_worker"):
        JobConfig().apply_overrides(["run.num_workers=1-2", "run.gpus_per_worker=0.5"])
    for key, bad in (("max_preemptions", -2), ("resize_check_s", 0), ("preemption_grace_s", -1)):
        with pytest.raises(ConfigError, match=f"run.{key}"):
            JobConfig().apply_overrides([f"run.{key}={bad}"])


def test_num_workers_flag(capsys) -> None:
    parser = build_parser("test")
    assert parser.parse_args(["--num-workers", "4-8"]).num_workers == [4, 8]
    assert parser.parse_args(["--num-workers", "2"]).num_workers == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["--num-workers", "8-4"])
    assert "argument --num-workers: expected an integer >= 1, or MIN-MAX" in capsys.readouterr().err
    assert isinstance(parser, argparse.ArgumentParser)


def test_workers_line_follows_the_resumes() -> None:
    history = [{"step": s, "world_size": w} for s, w in ((4, 2), (8, 1), (12, 1), (16, 2))]
    assert workers_line(history, [6, 13]) == "workers: 2 (steps 1-6), 1 (7-13), 2 (14-16)"
    assert workers_line([{"step": 4}], []) == "workers: not recorded"


# ---------------------------------------------------------------- one elastic run on two nodes


@pytest.fixture(scope="module")
def cluster():
    """A head and a second node (one CPU each); Ray Train looks for drains every 0.5 s (default 5)."""
    import ray
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S", "0.5")
        c = Cluster(
            initialize_head=True,
            connect=True,
            head_node_args={
                "num_cpus": 1,
                "include_dashboard": False,
                # a killed node is found dead in ~2 s (Ray's default: 3 s x 5 missed health checks)
                "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 2},
            },
        )
        second = c.add_node(num_cpus=1)
        c.wait_for_nodes()
        yield c, second
        ray.shutdown()
        c.shutdown()


def _drain(cluster: Any, node: Any, deadline_s: float) -> None:
    """What a spot reclaim notice does: Ray's GCS drain request, reason preemption, with a deadline."""
    import ray
    from ray.core.generated import autoscaler_pb2

    gcs = ray._raylet.GcsClient(address=cluster.address)
    accepted, why = gcs.drain_node(
        node.node_id,
        autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
        "spot reclaim (test)",
        int((time.time() + deadline_s) * 1000),
    )
    assert accepted, why


def _metas_before(run_url: str, opts: dict, step: int) -> list[dict]:
    return [m for m in _metas(run_url, opts) if m["step"] < step]


def _metas(run_url: str, opts: dict) -> list[dict]:
    """meta.json of every complete checkpoint in the run folder, oldest first."""
    fs, path = get_fs(run_url, opts)
    out = []
    for name in sorted(list_folder(run_url, opts, folders=True, missing_ok=True)):
        try:
            out.append(json.loads(fs.cat_file(f"{path}/{name}/meta.json")))
        except FileNotFoundError:
            continue
    return out


def _wait_for(run_url: str, opts: dict, ok, runner: threading.Thread, what: str) -> dict:
    """The first complete checkpoint's meta that satisfies `ok` (fails if the run ends without one)."""
    while runner.is_alive():
        found = [m for m in _metas(run_url, opts) if ok(m)]
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"the run ended without {what}: {_metas(run_url, opts)}")


def test_an_elastic_run_checkpoints_on_notice_shrinks_and_grows(
    cluster, s3_bucket, sample_data, tiny_teacher
):
    head, second = cluster
    bucket, opts = s3_bucket
    settings = JobConfig.from_preset("edsr_x4", tiny=True).apply_overrides(
        [
            f"data.train={sample_data.train_url}",
            f"data.val={sample_data.benchmark_url}",
            f"model.teacher={tiny_teacher('edsr', 4)}",
            f"run.storage={join(bucket, 'runs')}",
            "run.use_gpu=false",
            "run.resize_check_s=1",
            "run.preemption_grace_s=22",  # found dead in ~2 s here (health checks), sized in 20 s more
            "run.max_failures=0",  # a preemption must not be charged to the failure budget
            f"train.max_steps={STEPS}",
            f"train.val_every={CKPT_EVERY}",
            f"train.ckpt_every={CKPT_EVERY}",
            "data.batch_size=2",
            "train.keep_best=50",  # every checkpoint stays, for the test to read
            f"data.storage_options={json.dumps(opts)}",
        ]
    )
    cfg = JobConfig.from_dict(settings.to_dict()).apply_overrides(["run.name=elastic", "run.num_workers=1-2"])
    from dukd_ray.train import run_training

    outcome: dict[str, Any] = {}

    def train() -> None:
        try:
            outcome["result"] = run_training(cfg, fault=Hold(world_size=1, steps=CKPT_EVERY + 1))
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            outcome["error"] = e

    runner = threading.Thread(target=train, daemon=True)
    began = time.perf_counter()
    runner.start()
    run_url = join(bucket, "runs", "elastic")

    _wait_for(run_url, opts, lambda m: m["world_size"] == 2, runner, "a checkpoint by two workers")
    _drain(head, second, DRAIN_DEADLINE_S)
    drained = time.perf_counter()
    time.sleep(DRAIN_DEADLINE_S)
    head.remove_node(second, allow_graceful=False)  # the reclaim at the deadline: the instance is gone
    shrunk = _wait_for(run_url, opts, lambda m: m["world_size"] == 1, runner, "a checkpoint by one worker")
    shrink_s = time.perf_counter() - drained
    head.add_node(num_cpus=1)  # a spot node comes back
    runner.join(timeout=600)
    assert not runner.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]

    # the group checkpointed at the step of the notice and trained no further: in the DRAIN_DEADLINE_S
    # it still lived it would have passed several checkpoint steps, yet none came after the notice's,
    # and the one-worker group resumed from exactly there (no step redone)
    notice = shrunk["resumes"][-1]
    by_two = [m["step"] for m in _metas_before(run_url, opts, shrunk["step"]) if m["world_size"] == 2]
    assert by_two and max(by_two) == notice >= CKPT_EVERY, (by_two, shrunk)
    final = _meta(result)
    assert final["world_size"] == 2 and len(final["resumes"]) == 2, final  # grown back to two
    assert final["resumes"][0] == notice and final["resumes"][1] >= shrunk["step"], final
    worlds = [(h["step"], h["world_size"]) for h in result.history]
    assert {w for s, w in worlds if notice < s <= final["resumes"][1]} == {1}, worlds
    assert {w for s, w in worlds if s <= notice or s > final["resumes"][1]} == {2}, worlds
    assert result.step == STEPS and math.isfinite(result.metrics["val_psnr"])
    assert "workers: 2 (steps 1-" in read_bytes(result.report_url, opts).decode()

    # the same run on one worker, uninterrupted, with the global batch the elastic run fixed at its start
    assert final["global_batch_size"] == 4
    alone = run_training(
        settings.apply_overrides(["run.name=alone", "run.num_workers=1", "data.global_batch_size=4"])
    )
    ours, ref = _exported(result, opts), _exported(alone, opts)
    entries = ("params", "params_ema")
    worst = max(float((ours[e][k] - v).abs().max()) for e in entries for k, v in ref[e].items())
    for entry in entries:
        for key, value in ref[entry].items():
            torch.testing.assert_close(ours[entry][key], value, rtol=0, atol=EQUIVALENT, msg=f"{entry}.{key}")
    assert result.metrics["val_psnr"] == pytest.approx(alone.metrics["val_psnr"], abs=1e-4)
    print(
        f"\nelastic run: notice at step {notice} (0 steps redone); first one-worker checkpoint "
        f"(step {shrunk['step']}) {shrink_s:.1f} s after the drain notice; grew back from step "
        f"{final['resumes'][1]}; largest weight difference to one uninterrupted worker {worst:.1e}; "
        f"{time.perf_counter() - began:.0f} s in all"
    )


def _exported(result: Any, opts: dict) -> dict:
    return torch.load(io.BytesIO(read_bytes(result.weights_url, opts)), weights_only=True)


def _meta(result: Any) -> dict:
    cp = result.checkpoint
    with cp.filesystem.open_input_stream(f"{cp.path}/meta.json") as f:
        return json.loads(f.read())
