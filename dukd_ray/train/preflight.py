"""Driver-side checks, before any Ray worker starts: fill in defaults, then prove the inputs are usable.

A wrong teacher file, unreadable data or an arch/scale mismatch would otherwise surface minutes later
as a stack trace from a remote worker; here each is one `InputError` naming the config key and file.
"""

from __future__ import annotations

import datetime
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dukd_ray.data import build_train_stream
from dukd_ray.data.samples import default_sample_data
from dukd_ray.data.shards import check_size
from dukd_ray.data.sources import ImagePair, ShardSource, open_source
from dukd_ray.data.stream import PatchError
from dukd_ray.image.io import ImageDecodeError, open_image
from dukd_ray.image.pairs import check_pair_shapes
from dukd_ray.models import build_arch, load_pretrained, load_student_init
from dukd_ray.storage import (
    StorageError,
    file_sizes,
    get_fs,
    is_local,
    join,
    redact_url,
    remove,
    with_retries,
    write_bytes_atomic,
)
from dukd_ray.train.checkpoint import latest_complete_checkpoint, run_global_batch
from dukd_ray.train.config import JobConfig
from dukd_ray.train.valsets import load_val_sets, val_set_names


class InputError(ValueError):
    """A teacher checkpoint, data set or storage location cannot be used; names the config key and URL."""


# what the file checks read of each training image: its head (format, size) and its last bytes
HEAD_BYTES = 64 << 10
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every complete PNG ends with
PROBE_THREADS = 16  # concurrent small reads (object stores answer them in parallel)


def resolve(cfg: JobConfig) -> JobConfig:
    """A copy with defaults filled in: sample data for missing URLs, a fresh run name, absolute storage."""
    out = JobConfig.from_dict(cfg.to_dict())
    d = out.data
    if d.train is None or d.val is None:
        sample = default_sample_data()
        if d.train is None:
            d.train = sample.train_url
        if d.val is None:
            d.val = sample.benchmark_url
    if d.val_sets is None:
        d.val_sets = _guard("data.val", d.val, lambda: val_set_names(d.val, d.storage_options or None))
        if not d.val_sets:
            raise InputError(f"data.val ({redact_url(d.val)}): no benchmark sets (<Set>/HR folders) found")
    if out.run.name is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out.run.name = f"{out.model.arch}_x{out.model.scale}-{out.distill.method}-{stamp}"
    if is_local(out.run.storage):
        out.run.storage = os.path.abspath(os.path.expanduser(out.run.storage.removeprefix("file://")))
    out.validate()
    _check_patch_size(out)
    return out


def _check_patch_size(cfg: JobConfig) -> None:
    """DUKD's zoom-out shrinks the LR patch by 1/scale, exactly: the patch side must be a multiple of it."""
    p, s, dc = cfg.data.patch_size, cfg.model.scale, cfg.distill
    if dc.method == "dukd" and dc.zoom_out and p % s:
        raise InputError(
            f"data.patch_size={p} is not a multiple of model.scale={s}, which distill.zoom_out needs "
            f"(it shrinks the LR patch by 1/{s}); use data.patch_size={max(s, p - p % s)} or "
            f"{p - p % s + s}, or distill.zoom_out=false"
        )


def check_inputs(cfg: JobConfig) -> None:
    """Load the teacher, the student init, one training batch and the validation sets, on the driver."""
    m, d = cfg.model, cfg.data
    opts = d.storage_options or None
    if cfg.distill.method != "scratch":
        if not m.teacher:
            raise InputError(
                f"model.teacher: distill.method={cfg.distill.method!r} needs a teacher checkpoint "
                "(--teacher URL; jobs/train_teacher.py trains one)"
            )
        teacher = build_arch(m.arch, m.scale, preset=m.teacher_preset, **m.teacher_kwargs)
        _guard(
            "model.teacher",
            m.teacher,
            lambda: load_pretrained(teacher, m.teacher, strict=True, storage_options=opts),
        )
    if m.student_init:  # params -> student, params_ema -> EMA; only the upsampler may be skipped
        student = build_arch(m.arch, m.scale, preset=m.student_preset, **m.student_kwargs)
        ema = build_arch(m.arch, m.scale, preset=m.student_preset, **m.student_kwargs)
        _guard(
            "model.student_init",
            m.student_init,
            lambda: load_student_init(student, m.student_init, ema=ema, storage_options=opts),
        )

    def one_batch() -> None:
        stream = build_train_stream(
            d.train,
            m.scale,
            d.patch_size,
            batch_size=1,
            seed=cfg.train.seed,
            num_workers=0,
            storage_options=opts,
        )
        batches = iter(stream)
        next(batches)
        batches.close()  # stops the stream's read-ahead threads now, not at garbage collection

    _guard("data.train", d.train, lambda: check_training_files(d.train, m.scale, d.patch_size, opts))
    _guard("data.train", d.train, one_batch)
    _guard("data.val", d.val, lambda: load_val_sets(d.val, d.val_sets, m.scale, storage_options=opts))
    _guard("run.storage", cfg.run.storage, lambda: probe_storage(cfg.run.url(), opts))
    check_global_batch(cfg)


def check_global_batch(cfg: JobConfig) -> None:
    """A resumed run keeps the global batch its first start recorded: a conflicting one fails here.

    The workers check it again (they are the ones that read the checkpoint), but by then the user
    would have waited for a worker group to start.
    """
    found = latest_complete_checkpoint(cfg.run.url(), cfg.data.storage_options or None)
    if found is None:
        return
    step, meta = found[0], found[3]
    try:
        run_global_batch(cfg.data.global_batch_size, cfg.data.batch_size, cfg.run.max_workers, meta)
    except ValueError as e:
        raise InputError(f"{redact_url(cfg.run.url())} (checkpoint at step {step}): {e}") from None


def check_training_files(
    url: str, scale: int, patch_size: int, storage_options: dict[str, Any] | None = None
) -> None:
    """Every training file as far as it can be checked without decoding it, so a worker does not meet it.

    Shards: each one's size against the manifest (one listing, no reads; the workers check each
    header's sha256 and each record's crc32). A DIV2K-layout root: every image is non-empty, its
    header decodes, a PNG ends with its IEND chunk (a truncated file does not), each pair's sizes
    agree with the scale and its LR is at least `patch_size` (one listing per folder, then a
    head and a tail range read per image). A corrupt image with an intact header and end is
    still met by a worker, which then fails the run once (see `loop.DataError`).
    """
    source = open_source(url, scale, storage_options)
    if isinstance(source, ShardSource):
        sizes = file_sizes(source.prefix, storage_options)
        for info in source.manifest.shards:
            shard = join(source.prefix, info.name)
            if info.name not in sizes:
                raise FileNotFoundError(f"shard listed in the manifest is missing: {redact_url(shard)}")
            check_size(info, sizes[info.name], shard)
        return
    pairs: list[ImagePair] = source.pairs
    folders = (source.folders.gt, source.folders.lq)
    sizes = {join(f, name): n for f in folders for name, n in file_sizes(f, storage_options).items()}
    urls = [u for pair in pairs for u in (pair.hr_url, pair.lr_url)]
    with ThreadPoolExecutor(PROBE_THREADS) as pool:
        shapes = list(pool.map(lambda u: _image_size(u, sizes[u], storage_options), urls))
    for pair, hr_hw, (lh, lw) in zip(pairs, shapes[::2], shapes[1::2], strict=True):
        check_pair_shapes(hr_hw, (lh, lw), scale, pair.hr_url, pair.lr_url)
        if lh < patch_size or lw < patch_size:
            raise PatchError(
                f"LR {redact_url(pair.lr_url)} is {lh}x{lw}, smaller than data.patch_size={patch_size}"
            )


def _image_size(url: str, size: int, storage_options: dict[str, Any] | None) -> tuple[int, int]:
    """(height, width) from the image's header; an empty file, an undecodable header or a PNG cut
    short (no IEND chunk at its end) is an ImageDecodeError naming the file."""
    name = redact_url(url)
    if size == 0:
        raise ImageDecodeError(f"cannot decode image {name}: the file is empty (0 bytes)")
    fs, path = get_fs(url, storage_options)
    head = with_retries(lambda: fs.cat_file(path, start=0, end=min(size, HEAD_BYTES)), url)
    with open_image(head, url) as img:
        (width, height), kind = img.size, img.format
    if kind == "PNG":
        end = head if size <= HEAD_BYTES else b""
        if size > HEAD_BYTES:
            end = with_retries(lambda: fs.cat_file(path, start=size - len(PNG_END), end=size), url)
        if not end.endswith(PNG_END):
            raise ImageDecodeError(
                f"cannot decode image {name}: truncated PNG ({size} bytes, no IEND chunk at the end)"
            )
    return height, width


def probe_storage(run_url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write, then delete, a small marker in the run folder: storage that is a file, read-only or
    refuses our credentials fails here, not in a worker's first checkpoint. Local folders the probe
    had to create are removed again."""
    created = _missing_folders(run_url) if is_local(run_url) else []
    marker = join(run_url, f".dukd-write-probe-{uuid.uuid4().hex}")
    try:
        write_bytes_atomic(marker, b"dukd write probe\n", storage_options)
        remove(marker, storage_options)
    finally:
        for folder in created:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _missing_folders(url: str) -> list[Path]:
    """The folders of local `url` that do not exist yet, deepest first."""
    path = Path(url.removeprefix("file://")).absolute()
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _guard(key: str, url: str, fn: Any) -> Any:
    """Run `fn`; turn what it raises about `url` into an InputError naming `key`."""
    try:
        return fn()
    except (ValueError, OSError, StorageError, KeyError, RuntimeError) as e:
        raise InputError(f"{key} ({redact_url(url)}): {type(e).__name__}: {e}") from None
