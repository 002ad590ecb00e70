"""Where training pairs come from: a DIV2K-layout folder of PNGs, separate HR and LR folders, or a
packed shard prefix.

Both expose the same small interface to the stream: `counts` (records per unit: one per image
for PNGs, one per crop for shards, grouped by the unit a reader fetches sequentially) and
`iter_records(requests)`, which yields (name, hr, lr) uint8 HWC for (unit, record) requests in
the order given. Reading PNGs is what BasicSR does (two decodes per sample); shards are the
fast path, fetched as a few large range reads per run of consecutive records.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, Protocol

import numpy as np

from dukd_ray.data.cache import RemoteShards
from dukd_ray.data.shards import (
    MANIFEST_NAME,
    Manifest,
    RecordInfo,
    check_header,
    check_size,
    decode_record,
    load_manifest,
)
from dukd_ray.image.io import is_image_name
from dukd_ray.image.pairs import PairError, read_pair
from dukd_ray.storage import exists, get_fs, join, list_folder, redact_url

Record = tuple[str, np.ndarray, np.ndarray]
HR_DIR = "DIV2K_train_HR"
LR_DIR = "DIV2K_train_LR_bicubic"
# one range read covers consecutive records up to this many bytes (a few crops of 480 px)
RANGE_BYTES = 8 << 20


class Source(Protocol):
    counts: tuple[int, ...]
    read_ahead: int  # records fetched ahead of use, per reader

    def describe(self) -> str: ...

    def iter_records(self, requests: Iterable[tuple[int, int]]) -> Iterator[Record]: ...


@dataclass(frozen=True)
class ImagePair:
    name: str
    hr_url: str
    lr_url: str

    def read(self, scale: int, storage_options: dict[str, Any] | None = None) -> Record:
        """Decode the pair: HR mod-cropped to scale x LR size, which must then match exactly."""
        return (self.name, *read_pair(self.hr_url, self.lr_url, scale, storage_options))


def _list_images(url: str, storage_options: dict[str, Any] | None) -> dict[str, str]:
    """{file name: url} of the images directly under `url` (FileNotFoundError names it if absent)."""
    return {name: join(url, name) for name in list_folder(url, storage_options) if is_image_name(name)}


def _split_suffix(name: str) -> tuple[str, str]:
    stem, dot, suffix = name.rpartition(".")
    return stem, dot + suffix


def list_div2k_pairs(root: str, scale: int, storage_options: dict[str, Any] | None = None) -> list[ImagePair]:
    """The HR/LR pairs of a DIV2K-layout root, sorted by name; every HR needs its LR and vice versa."""
    hr_url, lr_url = join(root, HR_DIR), join(root, LR_DIR, f"X{scale}")
    hrs = _list_images(hr_url, storage_options)
    if not hrs:
        raise FileNotFoundError(f"no images under {redact_url(hr_url)} (expected DIV2K layout)")
    lrs = _list_images(lr_url, storage_options)
    lr_by_stem = {_split_suffix(n)[0]: n for n in lrs}
    pairs = []
    for name in sorted(hrs):
        stem = _split_suffix(name)[0]
        lr_name = lr_by_stem.pop(f"{stem}x{scale}", None)
        if lr_name is None:
            raise PairError(
                f"HR image {redact_url(hrs[name])} has no LR image {stem}x{scale}.* in {redact_url(lr_url)}"
            )
        pairs.append(ImagePair(stem, hrs[name], lrs[lr_name]))
    if lr_by_stem:
        orphan = lrs[sorted(lr_by_stem.values())[0]]
        raise PairError(f"LR image {redact_url(orphan)} has no HR image in {redact_url(hr_url)}")
    return pairs


_PAIRED_FIELD = re.compile(r"(?:^|,)(gt|lq|tmpl)=")


@dataclass(frozen=True)
class PairedFolders:
    """Separate HR and LR folders, BasicSR's `dataroot_gt` / `dataroot_lq` / `filename_tmpl`: the LR of
    HR `<stem><ext>` is `tmpl.format(stem) + ext` in `lq`. Written as one string, `gt=URL,lq=URL[,tmpl=T]`,
    so it goes wherever a data URL goes (`--data`, `data.train`, a validation set)."""

    gt: str
    lq: str
    tmpl: str = "{}"

    def __post_init__(self) -> None:
        if self.tmpl.count("{}") != 1 or "{" in self.tmpl.replace("{}", "", 1):
            raise ValueError(f"paired folders: tmpl {self.tmpl!r} must hold exactly one '{{}}' (the HR stem)")

    @classmethod
    def parse(cls, text: str) -> PairedFolders | None:
        """The folders of a `gt=...,lq=...` string; None for any other URL; ValueError if half-written."""
        if not _PAIRED_FIELD.match(str(text)):
            return None
        fields, cuts = {}, list(_PAIRED_FIELD.finditer(text))
        for match, after in zip(cuts, [*cuts[1:], None], strict=True):
            key = match.group(1)
            if key in fields:
                raise ValueError(f"paired folders {redact_url(text)!r}: {key}= is given twice")
            fields[key] = text[match.end() : after.start() if after else len(text)]
        if not fields.get("gt") or not fields.get("lq"):
            raise ValueError(
                f"paired folders {redact_url(text)!r}: expected gt=HR_FOLDER,lq=LR_FOLDER[,tmpl={{}}x4]"
            )
        return cls(**fields)

    def spec(self) -> str:
        return f"gt={self.gt},lq={self.lq}" + ("" if self.tmpl == "{}" else f",tmpl={self.tmpl}")

    def describe(self) -> str:
        return f"HR {redact_url(self.gt)}, LR {redact_url(self.lq)} ({self.tmpl})"


def list_paired_pairs(
    folders: PairedFolders, storage_options: dict[str, Any] | None = None
) -> list[ImagePair]:
    """The pairs of two folders, sorted by HR name; every HR needs its LR and vice versa (BasicSR's rule)."""
    hrs = _list_images(folders.gt, storage_options)
    if not hrs:
        raise FileNotFoundError(f"no images in the HR folder {redact_url(folders.gt)}")
    lrs = _list_images(folders.lq, storage_options)
    pairs = []
    for name in sorted(hrs):
        stem, suffix = _split_suffix(name)
        lr_name = folders.tmpl.format(stem) + suffix
        if lr_name not in lrs:
            raise PairError(
                f"HR image {redact_url(hrs[name])} has no LR image {lr_name} in {redact_url(folders.lq)}"
            )
        pairs.append(ImagePair(stem, hrs[name], lrs.pop(lr_name)))
    if lrs:
        orphan = lrs[sorted(lrs)[0]]
        raise PairError(f"LR image {redact_url(orphan)} has no HR image in {redact_url(folders.gt)}")
    return pairs


@dataclass
class PngSource:
    """Image pairs read the BasicSR way (every sample decodes one HR and one LR image): a DIV2K-layout
    root, or separate HR and LR folders (`PairedFolders`' string)."""

    read_ahead = 2  # decoded 2K pairs are ~15 MB each

    root: str
    scale: int
    storage_options: dict[str, Any] | None = None
    pairs: list[ImagePair] = field(init=False)
    folders: PairedFolders = field(init=False)  # where the HR and the LR images are

    def __post_init__(self) -> None:
        paired = PairedFolders.parse(self.root)
        if paired is None:
            self.folders = PairedFolders(join(self.root, HR_DIR), join(self.root, LR_DIR, f"X{self.scale}"))
            self.pairs = list_div2k_pairs(self.root, self.scale, self.storage_options)
        else:
            self.folders = paired
            self.pairs = list_paired_pairs(paired, self.storage_options)
        self.counts = (1,) * len(self.pairs)

    def describe(self) -> str:
        return f"{len(self.pairs)} image pairs (x{self.scale}): {self.folders.describe()}"

    def iter_records(self, requests: Iterable[tuple[int, int]]) -> Iterator[Record]:
        for unit, _ in requests:
            yield self.pairs[unit].read(self.scale, self.storage_options)


@dataclass
class ShardSource:
    """A packed prefix: records streamed from shards in large sequential range reads."""

    read_ahead = 32  # ~2 range reads of 480 px crops

    prefix: str
    scale: int
    storage_options: dict[str, Any] | None = None
    fetcher: RemoteShards = field(default_factory=RemoteShards)  # or a node-local `cache.ShardCache`
    manifest: Manifest = field(init=False)

    def __post_init__(self) -> None:
        self.manifest = load_manifest(self.prefix, self.scale, self.storage_options)
        if self.manifest.num_records == 0:
            raise FileNotFoundError(f"{redact_url(join(self.prefix, MANIFEST_NAME))} lists no records")
        self.counts = tuple(s.records for s in self.manifest.shards)
        self._headers: dict[int, list[RecordInfo]] = {}

    def describe(self) -> str:
        m = self.manifest
        return f"{m.num_records} crops (x{m.scale}) in {len(m.shards)} shards under {redact_url(self.prefix)}"

    def iter_records(self, requests: Iterable[tuple[int, int]]) -> Iterator[Record]:
        fs, _ = get_fs(self.prefix, self.storage_options)
        for unit, group in groupby(requests, key=lambda r: r[0]):
            url = join(self.prefix, self.manifest.shards[unit].name)
            path = get_fs(url, self.storage_options)[1]
            records = self._header(fs, unit, url, path)
            for run in _runs([records[r] for _, r in group]):
                start, end = run[0].offset, run[-1].end
                data = self.fetcher.read(self.manifest.shards[unit], url, fs, path, start, end)
                for info in run:
                    hr, lr = decode_record(data, info.offset - start, info, url)
                    yield f"{info.name} in {redact_url(url)}", hr, lr

    def _header(self, fs: Any, unit: int, url: str, path: str) -> list[RecordInfo]:
        """The shard's record table, after checking its size and header digest against the manifest."""
        if unit not in self._headers:
            info = self.manifest.shards[unit]
            try:
                size = self.fetcher.size(info, url, fs, path)
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"shard listed in the manifest is missing: {redact_url(url)}"
                ) from None
            check_size(info, size, url)
            # the manifest knows the header's length: one range request of exactly that many bytes
            head = self.fetcher.read(info, url, fs, path, 0, min(size, info.header_bytes))
            self._headers[unit] = check_header(info, head, url)
        return self._headers[unit]


def _runs(records: list[RecordInfo]) -> Iterator[list[RecordInfo]]:
    """Split records into byte-contiguous runs of at most RANGE_BYTES (one range read each)."""
    run: list[RecordInfo] = []
    for info in records:
        if run and (info.offset != run[-1].end or info.end - run[0].offset > RANGE_BYTES):
            yield run
            run = []
        run.append(info)
    if run:
        yield run


def open_source(url: str, scale: int, storage_options: dict[str, Any] | None = None) -> Source:
    """Paired folders for a `gt=...,lq=...` string, a shard prefix if `url` holds manifest.json, else a
    DIV2K-layout root."""
    if PairedFolders.parse(url) is not None:
        return PngSource(url, scale, storage_options)
    if exists(join(url, MANIFEST_NAME), storage_options):
        return ShardSource(url, scale, storage_options)
    if exists(join(url, HR_DIR), storage_options):
        return PngSource(url, scale, storage_options)
    raise FileNotFoundError(
        f"{redact_url(url)} holds neither {MANIFEST_NAME} (a shard prefix) nor {HR_DIR}/ (a DIV2K root); "
        "separate HR and LR folders are written gt=HR_FOLDER,lq=LR_FOLDER[,tmpl={}x4]"
    )
