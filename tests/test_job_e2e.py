"""End to end, as a user runs it: a Ray cluster (`ray start --head`), data and storage on S3 (moto),
`ray job submit -- python jobs/train_teacher.py ...`, `ray job submit -- python jobs/edsr_x4.py ...`, then
`ray job submit -- python jobs/train.py --config <a DUKD option file> --path-map ...`.

The S3 endpoint reaches the jobs through `runtime_env` env vars, the (fake) credentials through the
cluster's environment, as instance credentials would on a real cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import s3fs

from dukd_ray.models import build_arch, load_pretrained

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _pids_of(temp_dir: str) -> list[int]:
    """Processes whose command line names `temp_dir` (every process of a cluster started with it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if temp_dir.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:  # exited meanwhile
                pass
    return pids


def _stop_cluster(temp_dir: str) -> None:
    """Stop *this* cluster's processes by pid (`ray stop` would kill every Ray process on the machine)."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        pids = _pids_of(temp_dir)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while pids and time.monotonic() < deadline:
            time.sleep(0.5)
            pids = _pids_of(temp_dir)
        if not pids:
            return


@pytest.fixture
def ray_head(free_ports):
    """A one-node Ray cluster on 127.0.0.1 with the job server; yields (dashboard address, env)."""
    gcs, dashboard, client, agent = free_ports(4)
    temp_dir = tempfile.mkdtemp(prefix="ray-e2e-", dir="/tmp")  # short: Ray's socket paths must fit
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # token auth with a token of its own: the cluster and `ray job submit` both read it from here
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # the jobs' `python`
    }
    env.pop("RAY_ADDRESS", None)
    command = ["ray", "start", "--head", "--num-cpus", "2", "--port", str(gcs)]
    command += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--temp-dir", temp_dir]
    command += ["--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent)]
    command += ["--disable-usage-stats"]
    try:
        subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=180)
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        _stop_cluster(temp_dir)


def _submit(address: str, env: dict[str, str], endpoint: str, *job: str) -> str:
    runtime_env = {"env_vars": {"DUKD_S3_ENDPOINT_URL": endpoint}}
    command = ["ray", "job", "submit", "--address", address, "--working-dir", str(REPO)]
    command += ["--runtime-env-json", json.dumps(runtime_env), "--", "python", *job]
    began = time.monotonic()
    proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=540)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"job {job[0]} failed after {time.monotonic() - began:.0f}s:\n{out[-6000:]}"
    assert "succeeded" in out
    return out


def test_cluster_job_trains_teacher_then_distils_student_on_s3(ray_head, s3_bucket, sample_data):
    address, env = ray_head
    bucket, opts = s3_bucket
    fs = s3fs.S3FileSystem(**opts)
    root = bucket.removeprefix("s3://")
    fs.put(sample_data.train_url, f"{root}/data/train", recursive=True)
    fs.put(sample_data.benchmark_url, f"{root}/data/benchmark", recursive=True)
    common = ["--tiny", "--no-gpu", "--max-steps", "4", "--storage", f"{bucket}/runs"]
    common += ["--data", f"{bucket}/data/train", "--val-data", f"{bucket}/data/benchmark"]

    _submit(address, env, opts["endpoint_url"], "jobs/train_teacher.py", "--arch", "edsr", "--scale", "4",
            "--name", "teacher", *common)  # fmt: skip
    teacher = f"{bucket}/runs/teacher/teacher.pth"
    assert fs.exists(teacher.removeprefix("s3://"))
    out = _submit(address, env, opts["endpoint_url"], "jobs/edsr_x4.py", "--teacher", teacher,
                  "--num-workers", "2", "--name", "student", *common)  # fmt: skip
    assert "[dukd] done: 4 steps" in out
    # the job's last lines say where every output is, each of them a URL the user can open
    assert f"{bucket}/runs/student/student.safetensors" in out and f"{bucket}/runs/student/tensorboard" in out

    run = f"{root}/runs/student"
    files = {path.removeprefix(run + "/") for path in fs.find(run)}
    for name in ("student.pth", "student.safetensors", "report.md", "report.html", "curves.png", "crops.png"):
        assert name in files, f"{name} missing from {sorted(files)}"
    assert {"checkpoint_000000004/train_state.pt", "checkpoint_000000004/meta.json"} <= files
    assert any(f.startswith("tensorboard/events.out.tfevents.") for f in files)
    report = fs.cat_file(f"{run}/report.md").decode()
    assert "| teacher (tiny_teacher) |" in report and "| student (tiny_student, dukd, EMA) |" in report
    student = build_arch("edsr", 4, preset="tiny_student")
    assert load_pretrained(student, f"{bucket}/runs/student/student.pth", storage_options=opts).complete

    # the DUKD reference's option file as written: its /cache/SR paths mapped onto the bucket, read as
    # separate HR and LR folders (train) and named sets (val; its Set5 is the sample set, the longest
    # prefix wins), the teacher and the x2 init replaced by a flag and --set
    maps = [f"/cache/SR/DIV2K={bucket}/data/train", f"/cache/SR/benchmark={bucket}/data/benchmark"]
    maps.append(f"/cache/SR/benchmark/Set5={bucket}/data/benchmark/Sample")
    out = _submit(address, env, opts["endpoint_url"], "jobs/train.py",
                  "--config", "tests/options/dukd_edsr_x4c256b32_c64b32.yml",
                  *(a for m in maps for a in ("--path-map", m)), "--teacher", teacher,
                  "--set", "model.student_init=", *common[:-4], "--name", "from-options")  # fmt: skip
    assert "[dukd] done: 4 steps" in out and "ignored: datasets.train.dataset_enlarge_ratio" in out
    report = fs.cat_file(f"{root}/runs/from-options/report.md").decode()
    assert "Set5" in report and "Sample" in report
