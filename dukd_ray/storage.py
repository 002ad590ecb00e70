"""One way to reach storage: every path is an fsspec URL (local path, file://, s3://, gs://, ...).

Why a module: one retry policy and one deadline for every storage call, atomic writes (a reader
never sees half an object), and URL redaction so credentials never reach a log or an error message.

Retries happen once, in the layer that knows the protocol: on S3, botocore's "standard" mode retries
what fails at the HTTP level (5xx, SlowDown, resets, connect and read timeouts) and s3fs re-issues a
request whose body was cut mid-way; gcsfs and adlfs have their own. This module adds a retry loop
only where fsspec has none (HTTP), and bounds every call it makes by a total deadline
(`DUKD_STORAGE_TIMEOUT`, seconds), so an endpoint that accepts connections and never answers fails
with one line instead of hanging a job.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
from fsspec.core import url_to_fs

T = TypeVar("T")

_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:x-amz-[a-z-]*|signature|sig|token|access_key|secret[a-z_]*|key|password|credential)=)[^&#]*"
)
# not anchored: `redact_url` also redacts URLs inside a larger string (paired folders `gt=URL,lq=URL`);
# `check_url` matches at the start only
_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@,]*@")


try:  # s3fs's dependency: its exceptions are classified by type, not by name
    from botocore.exceptions import BotoCoreError, ClientError

    _BOTO_ERRORS: tuple[type[BaseException], ...] = (BotoCoreError, ClientError)
except ImportError:  # pragma: no cover - botocore comes with s3fs, a required dependency
    _BOTO_ERRORS = ()

# Per attempt on S3: connect and read timeouts (s), and botocore's attempts for HTTP-level failures.
S3_CONFIG: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 20,
    "retries": {"mode": "standard", "total_max_attempts": 3},
}
S3_BODY_ATTEMPTS = 3  # s3fs's own attempts at a request whose response body was cut mid-way
TIMEOUT_ENV = "DUKD_STORAGE_TIMEOUT"
DEFAULT_TIMEOUT_S = 120.0  # total, per call of this module, retries included; 0 = no deadline
_OWN_RETRIES = ("http://", "https://")  # fsspec's HTTP filesystem retries nothing itself


class StorageError(RuntimeError):
    """Storage could not be reached or an object is missing; the message names the (redacted) URL."""


def storage_timeout() -> float | None:
    """The total deadline of one storage call, from `DUKD_STORAGE_TIMEOUT` (None: no deadline)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise StorageError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds (0 = no deadline)") from None
    if value < 0:
        raise StorageError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds >= 0 (0 = no deadline)")
    return value or None


def check_url(url: str) -> None:
    """Refuse a URL that carries credentials: they would reach logs, run folders and the Ray dashboard."""
    if _USERINFO.match(str(url)):
        raise StorageError(
            f"{redact_url(url)}: credentials in a URL are refused (they would be printed and stored with "
            "the run); put them in the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), an AWS "
            "profile, or the nodes' instance role"
        )


def redact_url(url: str) -> str:
    """Strip user:password@ and signed-query secrets from a URL before it is printed."""
    url = _USERINFO.sub(r"\1***@", str(url))
    return _SECRET_QUERY.sub(r"\1***", url)


def storage_options_from_env(url: str) -> dict[str, Any]:
    """Options fsspec needs that users set in the environment (S3-compatible endpoints).

    Credentials themselves are read by s3fs/botocore from the usual environment variables or
    profiles; we only add the endpoint so MinIO/moto/Ceph work with plain `s3://` URLs.
    """
    opts: dict[str, Any] = {}
    if _is_s3(url):
        endpoint = (
            os.environ.get("DUKD_S3_ENDPOINT_URL")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        if endpoint:
            opts["endpoint_url"] = endpoint
    return opts


def get_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the in-filesystem path of `url` (options: explicit > environment > defaults).

    S3 gets bounded timeouts and botocore's standard retry mode (`S3_CONFIG`); any of it can be
    overridden through `config_kwargs` in the storage options.
    """
    check_url(url)
    opts = {**storage_options_from_env(url), **(storage_options or {})}
    s3 = _is_s3(url)
    if s3:
        opts["config_kwargs"] = {**S3_CONFIG, **(opts.get("config_kwargs") or {})}
    fs, path = url_to_fs(str(url), **opts)
    if s3:
        fs.retries = S3_BODY_ATTEMPTS
    return fs, path


def _is_s3(url: str) -> bool:
    return str(url).startswith(("s3://", "s3a://"))


def is_local(url: str) -> bool:
    """A plain path or a file:// URL (Ray Train and Tune want those absolute; object stores as given)."""
    return "://" not in url or url.startswith("file://")


def basename(url: str) -> str:
    """The last component of a URL or path; a trailing '/' (a folder) is ignored."""
    return str(url).rstrip("/").rsplit("/", 1)[-1]


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL or local path with '/'."""
    out = str(url).rstrip("/")
    for p in parts:
        out = f"{out}/{str(p).strip('/')}"
    return out


def with_retries(fn: Callable[[], T], what: str, attempts: int = 4, base_delay: float = 0.5) -> T:
    """Run one storage call under the total deadline; raise StorageError naming `what` if it fails.

    `what` is the URL the call touches. Only where fsspec retries nothing (HTTP) is the call retried
    here, with exponential backoff; object stores retry in their own client (see the module doc).
    Missing objects and refused credentials fail at once, whatever the protocol.
    """
    tries = attempts if str(what).startswith(_OWN_RETRIES) else 1
    last: BaseException | None = None
    for i in range(tries):
        try:
            return _within_deadline(fn)
        except PermissionError as e:
            raise _access_denied(what, e) from None
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError):
            raise
        except (OSError, TimeoutError, ConnectionError, *_BOTO_ERRORS) as e:
            last = e
            if i + 1 < tries:
                time.sleep(base_delay * 2**i)
    after = f" after {tries} attempts" if tries > 1 else ""
    raise StorageError(
        f"cannot access {redact_url(what)}{after}: {type(last).__name__}: {_redact_msg(last)}"
    ) from None


def _within_deadline(fn: Callable[[], T]) -> T:
    """`fn()`, or TimeoutError once `storage_timeout()` has passed (the call is left to finish unseen)."""
    limit = storage_timeout()
    if limit is None:
        return fn()
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread as it is
            outcome["error"] = e

    worker = threading.Thread(target=call, name="dukd-storage-call", daemon=True)
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {limit:g} s (the total deadline, {TIMEOUT_ENV})")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _redact_msg(e: BaseException | None) -> str:
    return redact_url(str(e))[:300]


def _access_denied(what: str, e: PermissionError) -> StorageError:
    """A refused request as a StorageError naming the URL (s3fs says just "Forbidden")."""
    return StorageError(f"access denied to {redact_url(what)} (credentials?): {_redact_msg(e)}")


def read_bytes(url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """Read a whole (small) object; FileNotFoundError names the redacted URL."""
    fs, path = get_fs(url, storage_options)
    try:
        return with_retries(lambda: fs.cat_file(path), url)
    except FileNotFoundError:
        raise FileNotFoundError(f"not found: {redact_url(url)}") from None


def list_folder(
    url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    folders: bool = False,
    recursive: bool = False,
    missing_ok: bool = False,
) -> list[str]:
    """The sorted names of the files directly under `url` (`folders=True`: its sub-folders instead).

    `recursive=True` lists every file below `url` as a '/'-separated path relative to it. The
    listing is fresh (no stale fsspec cache) and retried like every read. A missing folder is a
    FileNotFoundError naming it, or an empty list with `missing_ok`.
    """
    if recursive:
        fs, path = get_fs(url, storage_options)
        base = path.rstrip("/")
        fs.invalidate_cache(base)
        try:
            found = with_retries(lambda: fs.find(base), url)
        except FileNotFoundError:
            return _missing_folder(url, missing_ok)
        return sorted(p[len(base) :].lstrip("/") for p in found)
    entries = _entries(url, storage_options, missing_ok)
    return sorted(basename(e["name"]) for e in entries if (e["type"] == "directory") == folders)


def file_sizes(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, int]:
    """{name: bytes} of the files directly under `url`, from one fresh listing (no object is read)."""
    entries = _entries(url, storage_options)
    return {basename(e["name"]): int(e["size"]) for e in entries if e["type"] != "directory"}


def _entries(
    url: str, storage_options: dict[str, Any] | None, missing_ok: bool = False
) -> list[dict[str, Any]]:
    """fsspec's detailed listing of `url`, fresh (no stale cache) and retried like every read."""
    fs, path = get_fs(url, storage_options)
    base = path.rstrip("/")
    fs.invalidate_cache(base)
    try:
        return with_retries(lambda: fs.ls(base, detail=True), url)
    except FileNotFoundError:
        return _missing_folder(url, missing_ok)


def _missing_folder(url: str, missing_ok: bool) -> list[Any]:
    if missing_ok:
        return []
    raise FileNotFoundError(f"folder not found: {redact_url(url)}") from None


def remove(url: str, storage_options: dict[str, Any] | None = None, missing_ok: bool = False) -> None:
    """Delete one object or file (retried like every call); a missing one is fine with `missing_ok`."""
    fs, path = get_fs(url, storage_options)
    try:
        with_retries(lambda: fs.rm_file(path), url)
    except FileNotFoundError:
        if not missing_ok:
            raise


def exists(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = get_fs(url, storage_options)
    return bool(with_retries(lambda: fs.exists(path), url))


def write_bytes_atomic(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write an object so that readers see either the old one or the whole new one.

    Local files: write a temp file in the same folder, fsync, os.replace. Object stores: a single
    PUT is already atomic (the object appears only when the upload completes). A refused write is
    a StorageError naming the URL, local or remote.
    """
    fs, path = get_fs(url, storage_options)
    if not _is_local(fs):
        # S3: objects of two blocks or more (storage option `default_block_size`, s3fs's 50 MiB by
        # default) go up as a multipart upload, which also appears only once it is complete
        chunks = {"chunksize": fs.default_block_size} if _is_s3(url) else {}
        with_retries(lambda: fs.pipe_file(path, data, **chunks), url)
        return
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except PermissionError as e:
        raise _access_denied(url, e) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")
