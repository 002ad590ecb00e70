"""Shared test harness: loopback-only Ray, a real S3 API (moto server), the embedded sample data.

Nothing here mocks fsspec, s3fs, Ray or torch: the S3 fixture is moto's HTTP server on
127.0.0.1, and s3fs talks to it through `endpoint_url` exactly as it would talk to AWS.
"""

from __future__ import annotations

import os

# Ray advertises 127.0.0.1 only (the test harness and .ci/run set this, never the library).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Fake credentials for the moto server; never real ones.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import socket  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (random port) for the whole session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket per test: yields (bucket_url, storage_options) for fsspec/s3fs."""
    import s3fs

    opts = {"endpoint_url": s3_endpoint}
    fs = s3fs.S3FileSystem(**opts)
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    yield f"s3://{name}", dict(opts)
    fs.rm(name, recursive=True)


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    """The embedded sample data set (DIV2K layout + benchmark layout) written once per session."""
    from dukd_ray.data.samples import write_sample_data

    root = tmp_path_factory.mktemp("samples")
    return write_sample_data(str(root))


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """Factory: `tiny_teacher(arch="edsr", scale=4)` is the URL of a seeded tiny teacher, saved once."""
    import torch

    from dukd_ray.models import build_arch, save_weights

    saved: dict[tuple[str, int], str] = {}

    def make(arch: str = "edsr", scale: int = 4) -> str:
        if (arch, scale) not in saved:
            torch.manual_seed(0)
            model = build_arch(arch, scale, preset="tiny_teacher")
            prefix = str(tmp_path_factory.mktemp("teacher") / f"{arch}_x{scale}_teacher")
            save_weights(prefix, model.state_dict(), arch_spec=model.arch_spec)
            saved[(arch, scale)] = f"{prefix}.pth"
        return saved[(arch, scale)]

    return make


@pytest.fixture(scope="module")
def ray_cluster(request):
    """A local Ray for one test module, started as sweeps start theirs (State API address included).

    A module asks for more logical CPUs than the default 2 with a module-level `RAY_CPUS = n`.
    """
    import ray

    from dukd_ray.tune.sweep import init_ray

    init_ray(num_cpus=getattr(request.module, "RAY_CPUS", 2))
    yield
    ray.shutdown()


@pytest.fixture
def free_ports():
    """Factory: `free_ports(n)` is n distinct ports on 127.0.0.1 that were free a moment ago."""

    def take(n: int) -> list[int]:
        sockets = [socket.socket() for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        ports = [s.getsockname()[1] for s in sockets]
        for s in sockets:
            s.close()
        return ports

    return take
