"""The shard format: pre-decoded uint8 LR/HR crops in large objects, described by `manifest.json`.

Why this format: a training sample costs one memcpy instead of two PNG decodes, and a reader
streams whole runs of records with a few large range reads instead of one request per sample.

A shard is `MAGIC | u64 header length | JSON header | payload`. The header lists every record
(name, HR and LR shapes, byte offset, crc32 of its bytes); the payload is each record's HR array
then its LR array, raw RGB uint8 HWC. `manifest.json` beside the shards carries the format
version, the scale, counts, shapes and, per shard, its byte size and sha256 (plus the header's
sha256, so a reader that streams only part of a shard still checks everything it uses: size and
header against the manifest, each record against its crc32).
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from dukd_ray.storage import join, read_bytes, redact_url

FORMAT_NAME = "dukd-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAGIC = b"DUKDSHRD"
_PREFIX = struct.Struct("<8sQ")


class ShardFormatError(ValueError):
    """A manifest or shard is not what the manifest promises (wrong version/scale, size, checksum)."""


@dataclass(frozen=True)
class RecordInfo:
    """Where one HR/LR crop pair lives inside its shard."""

    name: str
    hr_shape: tuple[int, int]
    lr_shape: tuple[int, int]
    offset: int
    crc32: int

    @property
    def hr_bytes(self) -> int:
        return self.hr_shape[0] * self.hr_shape[1] * 3

    @property
    def nbytes(self) -> int:
        return self.hr_bytes + self.lr_shape[0] * self.lr_shape[1] * 3

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


@dataclass(frozen=True)
class ShardInfo:
    """One shard as listed in the manifest."""

    name: str
    records: int
    bytes: int
    sha256: str
    header_bytes: int
    header_sha256: str


@dataclass(frozen=True)
class Manifest:
    """The parsed `manifest.json` of a shard prefix."""

    scale: int
    shards: tuple[ShardInfo, ...]
    num_records: int
    meta: dict[str, Any]

    def to_json(self) -> bytes:
        body = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "scale": self.scale,
            "num_records": self.num_records,
            "num_shards": len(self.shards),
            "total_bytes": sum(s.bytes for s in self.shards),
            **self.meta,
            "shards": [vars(s) for s in self.shards],
        }
        return json.dumps(body, indent=1).encode()


def encode_shard(records: list[tuple[str, np.ndarray, np.ndarray]]) -> bytes:
    """Serialise (name, hr, lr) uint8 HWC triples into one shard object."""
    infos, payload = [], []
    offset = 0  # in the header, offsets count from the payload start
    for name, hr, lr in records:
        blob = np.ascontiguousarray(hr).tobytes() + np.ascontiguousarray(lr).tobytes()
        infos.append(
            {
                "name": name,
                "hr": list(hr.shape[:2]),
                "lr": list(lr.shape[:2]),
                "offset": offset,
                "crc32": zlib.crc32(blob),
            }
        )
        payload.append(blob)
        offset += len(blob)
    body = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "records": infos}).encode()
    return _PREFIX.pack(MAGIC, len(body)) + body + b"".join(payload)


def header_length(prefix: bytes, shard: str) -> int:
    """Total header size (prefix + JSON) from the first bytes of a shard."""
    if len(prefix) < _PREFIX.size:
        raise ShardFormatError(f"shard {redact_url(shard)} is truncated: {len(prefix)} bytes, no header")
    magic, n = _PREFIX.unpack_from(prefix)
    if magic != MAGIC:
        raise ShardFormatError(f"{redact_url(shard)} is not a dukd shard (bad magic {magic!r})")
    return _PREFIX.size + n


def decode_header(header: bytes, shard: str) -> list[RecordInfo]:
    """Parse a full header (the first `header_length` bytes of the shard); offsets become absolute."""
    n = header_length(header, shard)
    try:
        body = json.loads(header[_PREFIX.size : n])
        return [
            RecordInfo(r["name"], tuple(r["hr"]), tuple(r["lr"]), n + int(r["offset"]), int(r["crc32"]))
            for r in body["records"]
        ]
    except (ValueError, KeyError, TypeError) as e:
        raise ShardFormatError(f"shard {redact_url(shard)} has an unreadable header: {e}") from None


def decode_record(
    buf: memoryview | bytes, start: int, info: RecordInfo, shard: str
) -> tuple[np.ndarray, np.ndarray]:
    """The (hr, lr) arrays of one record whose bytes begin at `buf[start]`; checks its crc32."""
    blob = memoryview(buf)[start : start + info.nbytes]
    if len(blob) != info.nbytes or zlib.crc32(blob) != info.crc32:
        raise ShardFormatError(
            f"record {info.name!r} of shard {redact_url(shard)} fails its checksum: the shard does not "
            "match the manifest (corrupt or overwritten); re-run the packer"
        )
    hr = np.frombuffer(blob, np.uint8, info.hr_bytes).reshape(*info.hr_shape, 3)
    lr = np.frombuffer(blob, np.uint8, offset=info.hr_bytes).reshape(*info.lr_shape, 3)
    return hr, lr


def shard_info(name: str, data: bytes) -> ShardInfo:
    """The manifest entry of an encoded shard."""
    n = header_length(data, name)
    return ShardInfo(
        name=name,
        records=len(decode_header(data[:n], name)),
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        header_bytes=n,
        header_sha256=hashlib.sha256(data[:n]).hexdigest(),
    )


def check_header(info: ShardInfo, header: bytes, url: str) -> list[RecordInfo]:
    """Verify a shard header (its first `info.header_bytes` bytes) against the manifest and parse it."""
    if len(header) != info.header_bytes or header_length(header, url) != info.header_bytes:
        raise ShardFormatError(f"shard {redact_url(url)}: header length does not match the manifest")
    if hashlib.sha256(header).hexdigest() != info.header_sha256:
        raise ShardFormatError(f"shard {redact_url(url)}: header sha256 does not match the manifest")
    records = decode_header(header, url)
    if len(records) != info.records:
        raise ShardFormatError(
            f"shard {redact_url(url)}: {len(records)} records, manifest says {info.records}"
        )
    return records


def check_size(info: ShardInfo, size: int, url: str) -> None:
    if size != info.bytes:
        raise ShardFormatError(
            f"shard {redact_url(url)} is {size} bytes but the manifest says {info.bytes} (truncated?)"
        )


def check_sha256(info: ShardInfo, data: bytes, url: str) -> None:
    check_size(info, len(data), url)
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.sha256:
        raise ShardFormatError(f"shard {redact_url(url)}: sha256 {digest[:12]}… does not match the manifest")


def parse_manifest(data: bytes, url: str, scale: int | None = None) -> Manifest:
    """Parse and validate `manifest.json`; `scale` (if given) must match the packed scale."""
    where = redact_url(url)
    try:
        body = json.loads(data)
    except ValueError as e:
        raise ShardFormatError(f"{where} is not valid JSON: {e}") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT_NAME:
        raise ShardFormatError(f"{where} is not a {FORMAT_NAME} manifest (format={body.get('format')!r})")
    if body.get("version") != FORMAT_VERSION:
        raise ShardFormatError(
            f"{where} has format version {body.get('version')!r}; this dukd-ray reads version "
            f"{FORMAT_VERSION}: re-pack with `python -m dukd_ray.data.pack`"
        )
    if scale is not None and body.get("scale") != scale:
        raise ShardFormatError(f"{where} holds x{body.get('scale')} data but scale {scale} was asked for")
    try:
        shards = tuple(ShardInfo(**s) for s in body["shards"])
        meta = {k: v for k, v in body.items() if k not in _MANIFEST_CORE}
        manifest = Manifest(int(body["scale"]), shards, int(body["num_records"]), meta)
    except (KeyError, TypeError, ValueError) as e:
        raise ShardFormatError(f"{where} is missing or has a bad field: {e}") from None
    if sum(s.records for s in shards) != manifest.num_records:
        raise ShardFormatError(f"{where}: num_records disagrees with the per-shard counts")
    return manifest


_MANIFEST_CORE = {"format", "version", "scale", "num_records", "num_shards", "total_bytes", "shards"}


def load_manifest(
    prefix: str, scale: int | None = None, storage_options: dict[str, Any] | None = None
) -> Manifest:
    url = join(prefix, MANIFEST_NAME)
    return parse_manifest(read_bytes(url, storage_options), url, scale)
