"""Where shard bytes come from: the object store directly, or a node-local cache in front of it.

Why a cache: without one every epoch fetches the whole data set again (one 480 px x4 crop, ~0.7 MB,
per patch), several GB/s for a node of fast GPUs. `ShardCache` keeps whole shards in a local folder
(`data.cache_dir`) shared by every worker and loader process of the node, so once the data fits,
later epochs read nothing from the store.

Safe under concurrency and crashes: a shard is stored under its manifest sha256, filled by one
process while the others wait on its file lock, downloaded into a `.part` file, checked against the
manifest (size and sha256) and only then renamed into place, so a reader never sees half a shard and
a crash leaves only a `.part` that the next filler overwrites or the next eviction removes. A
process checks a cached file's sha256 again the first time it uses it (damage after the fill), and
every record still carries its crc32.

Bounded: a `.part` file is sized up front under the cache's lock, so concurrent fills cannot overrun
`max_bytes` together. When a shard does not fit, least recently used shards of other data sets are
evicted; the shards of the data being trained on never are (a cyclic read would evict each one just
before it is needed again), so when the data does not fit, the shards beyond the bound are read from
the store every epoch and the rest from the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dukd_ray.data.shards import ShardFormatError, ShardInfo, check_size
from dukd_ray.storage import redact_url, with_retries

log = logging.getLogger(__name__)
_CHUNK = 8 << 20


@dataclass
class FetchStats:
    """What this process asked the object store for (the cache's own reads are not counted)."""

    requests: int = 0
    bytes: int = 0


class RemoteShards:
    """Shard bytes straight from the object store: one range request per read."""

    def __init__(self) -> None:
        self.stats = FetchStats()
        self._lock = threading.Lock()

    def _count(self, nbytes: int) -> None:
        with self._lock:
            self.stats.requests += 1
            self.stats.bytes += nbytes

    def size(self, info: ShardInfo, url: str, fs: Any, path: str) -> int:
        """The shard's size in bytes (a FileNotFoundError if it is missing)."""
        size = with_retries(lambda: fs.size(path), url)
        self._count(0)
        return int(size)

    def read(self, info: ShardInfo, url: str, fs: Any, path: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the shard."""
        data = with_retries(lambda: fs.cat_file(path, start=start, end=end), url)
        self._count(len(data))
        return data


class ShardCache(RemoteShards):
    """Whole shards in the node-local folder `root`, at most `max_bytes` of them.

    `keep` are the sha256s of the data being read: never evicted to make room (see the module doc).
    """

    def __init__(self, root: str, max_bytes: int, keep: Iterable[str] = ()) -> None:
        super().__init__()
        if max_bytes <= 0:
            raise ValueError(f"cache size must be positive, got {max_bytes} bytes")
        self.root, self.max_bytes, self.keep = os.path.abspath(os.path.expanduser(root)), max_bytes, set(keep)
        os.makedirs(self.root, exist_ok=True)
        self._verified: set[tuple[str, int, int]] = set()  # (sha256, inode, mtime) checked by this process
        self._too_big: set[str] = set()  # shards that did not fit: the data's own shards are never evicted

    def __getstate__(self) -> dict[str, Any]:  # sent to loader processes: they keep their own stats
        state = self.__dict__.copy()
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def size(self, info: ShardInfo, url: str, fs: Any, path: str) -> int:
        local = self.local(info, url, fs, path)
        return info.bytes if local else super().size(info, url, fs, path)  # a cached copy was verified

    def read(self, info: ShardInfo, url: str, fs: Any, path: str, start: int, end: int) -> bytes:
        for _ in range(2):  # a copy evicted between lookup and open is fetched again
            local = self.local(info, url, fs, path)
            if local is None:
                return super().read(info, url, fs, path, start, end)
            try:
                with open(local, "rb") as f:
                    f.seek(start)
                    return f.read(end - start)
            except FileNotFoundError:
                continue
        return super().read(info, url, fs, path, start, end)

    def local(self, info: ShardInfo, url: str, fs: Any, path: str) -> str | None:
        """The verified local copy of the shard, fetched now if needed; None when it does not fit."""
        target = os.path.join(self.root, f"{info.sha256}.bin")
        if self._usable(info, target):
            return target
        if info.sha256 in self._too_big:
            return None
        with _locked(target + ".lock"):
            if self._usable(info, target):  # another process filled it while we waited
                return target
            part = target + ".part"
            if not self._reserve(info, part):
                self._too_big.add(info.sha256)
                return None
            try:
                with_retries(lambda: fs.get_file(path, part), url)
                self._count(os.path.getsize(part))
                _check_file(info, part, url)
                os.replace(part, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(part)
                raise
        self._usable(info, target)
        return target

    def _usable(self, info: ShardInfo, target: str) -> bool:
        """The cached copy exists and matches the manifest (its sha256 checked once per process)."""
        try:
            st = os.stat(target)
        except FileNotFoundError:
            return False
        key = (info.sha256, st.st_ino, st.st_mtime_ns)
        if key not in self._verified:
            try:
                _check_file(info, target, target)
            except (ShardFormatError, FileNotFoundError) as e:
                log.warning("cached shard %s is damaged (%s): fetching it again", target, e)
                return False
            self._verified.add(key)
        with contextlib.suppress(FileNotFoundError):
            os.utime(target, ns=(time.time_ns(), st.st_mtime_ns))  # atime: least recently used first
        return True

    def _reserve(self, info: ShardInfo, part: str) -> bool:
        """Make room for the shard and claim it with a `.part` of its size; False when it cannot fit."""
        with _locked(os.path.join(self.root, ".lock")):
            entries = list(self._entries(skip=part))
            used = sum(size for _, size, _, _ in entries)
            for name, size, _, stale in sorted(entries, key=lambda e: e[2]):
                if used + info.bytes <= self.max_bytes:
                    break
                if stale:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(self.root, name))
                    used -= size
            if used + info.bytes > self.max_bytes:
                return False
            with open(part, "wb") as f:
                f.truncate(info.bytes)
            return True

    def _entries(self, skip: str) -> Iterator[tuple[str, int, int, bool]]:
        """(name, bytes, last use, evictable) of every shard and `.part` in the cache folder."""
        for entry in os.scandir(self.root):
            sha, _, kind = entry.name.partition(".")
            if kind not in ("bin", "part") or entry.path == skip:
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            if kind == "bin":
                yield entry.name, st.st_size, st.st_atime_ns, sha not in self.keep
            else:  # a fill in progress holds its shard's lock; without it the `.part` is a crash's leftover
                yield entry.name, st.st_size, 0, _free(os.path.join(self.root, f"{sha}.bin.lock"))


def _check_file(info: ShardInfo, path: str, url: str) -> None:
    """Size and sha256 of a local file against the manifest, read in chunks (ShardFormatError)."""
    check_size(info, os.path.getsize(path), url)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != info.sha256:
        raise ShardFormatError(f"shard {redact_url(url)}: sha256 does not match the manifest")


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive flock on `path` (per open file: it also orders threads of one process)."""
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _free(lock_path: str) -> bool:
    """Whether nobody holds the lock at `lock_path` now (a `.part` without a filler is stale)."""
    try:
        with open(lock_path, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
            return True
    except BlockingIOError:
        return False
