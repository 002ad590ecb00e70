"""Storage faults met once and with one line: retry budgets, deadlines, credentials in URLs."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from flaky_s3 import FlakyS3Proxy

from dukd_ray.data import build_train_stream
from dukd_ray.storage import (
    S3_BODY_ATTEMPTS,
    S3_CONFIG,
    TIMEOUT_ENV,
    StorageError,
    exists,
    get_fs,
    read_bytes,
    write_bytes_atomic,
)

SECRET_URL = "s3://AKIAEXAMPLEKEY:wJalrSECRETEXAMPLE@bucket/runs"


@pytest.fixture
def silent_endpoint():
    """An endpoint that accepts connections and never answers (a hung proxy or load balancer)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda: get_fs(SECRET_URL),
        lambda: read_bytes(f"{SECRET_URL}/x.pth"),
        lambda: build_train_stream(SECRET_URL, 4),
    ],
    ids=["get_fs", "read_bytes", "train_stream"],
)
def test_credentials_in_a_url_are_refused_without_printing_them(call):
    with pytest.raises(StorageError, match="credentials in a URL are refused") as info:
        call()
    message = str(info.value)
    assert "AKIAEXAMPLEKEY" not in message and "wJalrSECRETEXAMPLE" not in message
    assert "s3://***@bucket/runs" in message and "AWS_ACCESS_KEY_ID" in message  # where they go instead


def test_s3_gets_bounded_timeouts_and_one_retry_policy_users_can_override():
    fs, _ = get_fs("s3://bucket/x", {"endpoint_url": "http://127.0.0.1:9"})
    assert fs.config_kwargs == S3_CONFIG and fs.retries == S3_BODY_ATTEMPTS
    fs, _ = get_fs(
        "s3://bucket/x", {"endpoint_url": "http://127.0.0.1:9", "config_kwargs": {"read_timeout": 300}}
    )
    assert fs.config_kwargs["read_timeout"] == 300 and fs.config_kwargs["retries"] == S3_CONFIG["retries"]


def test_a_server_error_is_retried_by_botocore_alone(s3_endpoint, s3_bucket):
    """Every request answers 500: botocore's attempts are all there is (no retry loop of ours on top)."""
    bucket, _ = s3_bucket
    proxy = FlakyS3Proxy(s3_endpoint, seed=0, rate=1.0, max_repeats=10**6, kinds=("internal_error",))
    expected = rf"cannot access {bucket}/x.bin: OSError: .*Internal Server Error"
    with proxy, pytest.raises(StorageError, match=expected):
        read_bytes(f"{bucket}/x.bin", {"endpoint_url": proxy.endpoint})
    assert sum(proxy.faults.values()) == S3_CONFIG["retries"]["total_max_attempts"]


def test_an_endpoint_that_never_answers_fails_within_the_deadline(silent_endpoint, monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "2")
    began = time.monotonic()
    with pytest.raises(
        StorageError, match=r"cannot access s3://runs/job: TimeoutError: no answer within 2 s"
    ):
        exists("s3://runs/job", {"endpoint_url": silent_endpoint})
    assert time.monotonic() - began < 30  # not the 3 x 3 x 20 s the per-attempt timeouts allow


def test_a_bad_deadline_setting_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(StorageError, match=f"{TIMEOUT_ENV}='soon': expected a number of seconds"):
        read_bytes(str(tmp_path / "x"))


def test_storage_that_is_a_file_fails_at_once_with_the_url(tmp_path):
    (tmp_path / "runs").write_bytes(b"not a folder")
    began = time.monotonic()
    with pytest.raises((StorageError, NotADirectoryError, FileExistsError), match="runs"):
        write_bytes_atomic(str(tmp_path / "runs" / "meta.json"), b"{}")
    assert time.monotonic() - began < 5  # no backoff on a local filesystem
