"""One way to reach storage: every path is an fsspec URL (local path, file://, s3://, gs://, ...).

Why a module: retries with backoff for flaky object stores, atomic writes (a reader never sees
half an object), and URL redaction so credentials never reach a log or an error message.
"""

from __future__ import annotations

import os
import re
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
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")


class StorageError(RuntimeError):
    """Storage could not be reached or an object is missing; the message names the (redacted) URL."""


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
    if str(url).startswith(("s3://", "s3a://")):
        endpoint = (
            os.environ.get("DUKD_S3_ENDPOINT_URL")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        if endpoint:
            opts["endpoint_url"] = endpoint
    return opts


def get_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the in-filesystem path of `url` (options: explicit > environment)."""
    opts = {**storage_options_from_env(url), **(storage_options or {})}
    return url_to_fs(str(url), **opts)


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
    """Run `fn` with exponential backoff on transient errors; raise StorageError naming `what`.

    Missing objects and refused credentials are not transient: they fail at once.
    """
    last: BaseException | None = None
    for i in range(attempts):
        try:
            return fn()
        except PermissionError as e:
            raise _access_denied(what, e) from None
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise
        except (OSError, TimeoutError, ConnectionError) as e:  # network, throttling, 5xx
            last = e
            if i + 1 < attempts:
                time.sleep(base_delay * 2**i)
        except Exception as e:  # botocore raises its own hierarchy for auth/endpoint errors
            name = type(e).__name__
            if "Credential" in name or "Endpoint" in name or "ClientError" in name:
                raise StorageError(f"cannot access {redact_url(what)}: {name}: {_redact_msg(e)}") from None
            raise
    raise StorageError(
        f"cannot access {redact_url(what)} after {attempts} attempts: "
        f"{type(last).__name__}: {_redact_msg(last)}"
    ) from None


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
    fs, path = get_fs(url, storage_options)
    base = path.rstrip("/")
    fs.invalidate_cache(base)
    try:
        if recursive:
            found = with_retries(lambda: fs.find(base), url)
            names = [p[len(base) :].lstrip("/") for p in found]
        else:
            entries = with_retries(lambda: fs.ls(base, detail=True), url)
            names = [basename(e["name"]) for e in entries if (e["type"] == "directory") == folders]
    except FileNotFoundError:
        if missing_ok:
            return []
        raise FileNotFoundError(f"folder not found: {redact_url(url)}") from None
    return sorted(names)


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
        with_retries(lambda: fs.pipe_file(path, data), url)
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
