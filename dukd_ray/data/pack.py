"""Pack a DIV2K-layout folder into shards: `python -m dukd_ray.data.pack SRC DST --scale 4`.

Why: BasicSR pre-extracts 480 px sub-images (step 240) so a sample costs one small decode instead
of a 2K one; we do the same and also store the crops decoded, in large shards, so training streams
them from object storage with a few range reads instead of two PNG decodes and requests per sample.

Every object is written atomically. After each shard, `_pack_progress.json` records the shards so
far and where each ends in the (image, crop) sequence; a re-run with the same parameters verifies
those shards (size and sha256) and continues after the last good one. `manifest.json` is written
last, so a prefix with a manifest is always complete.

A DST that holds another pack (a manifest or progress record of other parameters, or one we cannot
read) is refused unless `--overwrite`. Then, and whenever a shard is about to be (re)written, the
old manifest is removed first, so no manifest ever describes shards that were replaced; the shards
of the old pack that the new manifest does not list are removed once it is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import re
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import closing
from itertools import islice
from typing import Any

from tqdm import tqdm

from dukd_ray.data.shards import (
    MANIFEST_NAME,
    Manifest,
    ShardFormatError,
    ShardInfo,
    check_sha256,
    decode_header,
    encode_shard,
    header_length,
    parse_manifest,
    shard_info,
)
from dukd_ray.data.sources import ImagePair, Record, list_div2k_pairs
from dukd_ray.errors import UserError, add_debug_arg, cli_main
from dukd_ray.models.blocks import SUPPORTED_SCALES
from dukd_ray.storage import (
    get_fs,
    join,
    list_folder,
    read_bytes,
    redact_url,
    remove,
    with_retries,
    write_bytes_atomic,
)

log = logging.getLogger(__name__)
PROGRESS_NAME = "_pack_progress.json"
SHARD_NAME = re.compile(r"shard-\d{5}\.bin")  # the names `_Writer` gives; nothing else is ever removed


def crop_starts(length: int, crop: int, step: int) -> list[int]:
    """BasicSR extract_subimages crop positions on one axis (thresh_size 0: last crop flush with the end)."""
    if length <= crop:
        return [0]
    starts = list(range(0, length - crop + 1, step))
    if starts[-1] + crop < length:
        starts.append(length - crop)
    return starts


def crop_pair(record: Record, scale: int, crop: int, step: int) -> list[Record]:
    """Cut aligned sub-images (HR crop x crop, LR crop/scale) on the LR grid, so HR = scale * LR exactly.

    An image smaller than `crop` is kept whole rather than dropped.
    """
    name, hr, lr = record
    lc, ls = crop // scale, step // scale
    out = []
    for y in crop_starts(lr.shape[0], lc, ls):
        for x in crop_starts(lr.shape[1], lc, ls):
            lr_crop = lr[y : y + lc, x : x + lc]
            hr_crop = hr[scale * y : scale * (y + lc), scale * x : scale * (x + lc)]
            out.append((f"{name}_s{len(out) + 1:03d}", hr_crop, lr_crop))
    return out


def pack(
    src: str,
    dst: str,
    scale: int,
    crop: int = 480,
    step: int = 240,
    shard_size_mb: float = 256,
    src_options: dict[str, Any] | None = None,
    dst_options: dict[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    workers: int | None = 1,
    ray_address: str | None = None,
) -> Manifest:
    """Pack the DIV2K-layout root `src` into shards + manifest.json under `dst`; resumes if interrupted.

    A pack of other parameters already in `dst` is a UserError unless `overwrite`. Images are decoded
    and cut by `workers` processes, or by Ray tasks on the cluster at `ray_address`; the shards are the
    same whichever way (see `image_crops`).
    """
    if scale not in SUPPORTED_SCALES:
        raise UserError(f"--scale {scale}: expected one of {', '.join(map(str, SUPPORTED_SCALES))}")
    for flag, value in (("--crop", crop), ("--step", step)):
        if value <= 0 or value % scale:
            raise ValueError(f"{flag} {value} must be a positive multiple of the scale {scale}")
    if shard_size_mb <= 0:
        raise ValueError(f"--shard-size-mb must be positive, got {shard_size_mb}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: expected a positive number of processes")
    fs, path = get_fs(dst, dst_options)
    if with_retries(lambda: fs.isfile(path), dst):
        raise UserError(f"DST {redact_url(dst)} is a file; expected a folder or prefix for the shards")
    pairs = list_div2k_pairs(src, scale, src_options)
    params = {
        "scale": scale,
        "crop": crop,
        "step": step,
        "shard_size_mb": shard_size_mb,
        "images": hashlib.sha256("\n".join(p.name for p in pairs).encode()).hexdigest()[:16],
    }
    shards, ends, shapes = _resume(dst, params, dst_options, overwrite)
    writer = _Writer(dst, dst_options, params, shards, ends, shapes)
    first_image, first_crop = ends[-1] if ends else (0, 0)
    if first_image < len(pairs):  # a shard will be written: no manifest may describe the old one
        remove(join(dst, MANIFEST_NAME), dst_options, missing_ok=True)
    limit = int(shard_size_mb * 2**20)
    buf: list[Record] = []
    size = 0
    bar = tqdm(total=len(pairs), initial=first_image, desc="packing", unit="img", disable=not progress)
    crops_of = image_crops(pairs[first_image:], scale, crop, step, src_options, workers, ray_address)
    with closing(crops_of) as images:
        for i, crops in enumerate(images, first_image):
            for j in range(first_crop if i == first_image else 0, len(crops)):
                nbytes = crops[j][1].nbytes + crops[j][2].nbytes
                if buf and size + nbytes > limit:
                    writer.flush(buf, (i, j))
                    buf, size = [], 0
                buf.append(crops[j])
                size += nbytes
            bar.update(1)
    bar.close()
    if buf:
        writer.flush(buf, (len(pairs), 0))
    return writer.finish(num_images=len(pairs))


def _read_crops(pair: ImagePair, scale: int, crop: int, step: int, options: dict[str, Any] | None) -> list:
    return crop_pair(pair.read(scale, options), scale, crop, step)


def image_crops(
    pairs: list[ImagePair],
    scale: int,
    crop: int,
    step: int,
    options: dict[str, Any] | None = None,
    workers: int | None = 1,
    ray_address: str | None = None,
) -> Iterator[list[Record]]:
    """The crops of each pair, in order: decoded here (`workers` 1), by a process pool or by Ray tasks.

    Why in order: the writer cuts shards from one sequence, so a parallel pack writes exactly the shards
    (and the progress record) of a sequential one and either can resume the other. At most
    2 x `workers` images are in flight (the crops of a 2K image are ~30 MB); `workers` None is one per
    CPU of this machine, or of the Ray cluster.
    """
    args = (scale, crop, step, options)
    if ray_address is not None:
        import ray

        ray.init(address=ray_address, ignore_reinit_error=True, log_to_driver=False)
        task = ray.remote(num_cpus=1)(_read_crops)
        depth = 2 * (workers or max(1, int(ray.cluster_resources().get("CPU", 1))))
        yield from _in_order(lambda p: task.remote(p, *args), ray.get, pairs, depth)
    elif (workers or os.cpu_count() or 1) > 1:
        n = workers or os.cpu_count() or 1
        pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))
        try:
            yield from _in_order(lambda p: pool.submit(_read_crops, p, *args), Future.result, pairs, 2 * n)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    else:
        yield from (_read_crops(p, *args) for p in pairs)


def _in_order(
    submit: Callable[[ImagePair], Any],
    result: Callable[[Any], list[Record]],
    pairs: list[ImagePair],
    depth: int,
) -> Iterator[list[Record]]:
    """Results of `submit(pair)` in the order of `pairs`, with at most `depth` submitted ahead."""
    todo = iter(pairs)
    pending = deque(submit(p) for p in islice(todo, depth))
    while pending:
        crops = result(pending.popleft())
        pending.extend(submit(p) for p in islice(todo, 1))
        yield crops


class _Writer:
    """Writes shards and the progress record after each one; the manifest at the end."""

    def __init__(
        self,
        dst: str,
        options: dict[str, Any] | None,
        params: dict[str, Any],
        shards: list[ShardInfo],
        ends: list[tuple[int, int]],
        shapes: Counter,
    ) -> None:
        self.dst, self.options, self.params = dst, options, params
        self.shards, self.ends, self.shapes = shards, ends, shapes

    def flush(self, records: list[Record], end: tuple[int, int]) -> None:
        name = f"shard-{len(self.shards):05d}.bin"
        data = encode_shard(records)
        write_bytes_atomic(join(self.dst, name), data, self.options)
        self.shards.append(shard_info(name, data))
        self.ends.append(end)
        self.shapes.update(_shape_key(hr.shape) for _, hr, _ in records)
        progress = {
            "params": self.params,
            "shards": [vars(s) for s in self.shards],
            "ends": self.ends,
            "hr_shapes": dict(self.shapes),
        }
        write_bytes_atomic(join(self.dst, PROGRESS_NAME), json.dumps(progress).encode(), self.options)

    def finish(self, num_images: int) -> Manifest:
        scale, crop = self.params["scale"], self.params["crop"]
        meta = {
            "num_images": num_images,
            "hr_crop": [crop, crop],
            "lr_crop": [crop // scale, crop // scale],
            "hr_shapes": dict(self.shapes),
            "pack": {"params": self.params, "ends": self.ends},
        }
        manifest = Manifest(scale, tuple(self.shards), sum(s.records for s in self.shards), meta)
        write_bytes_atomic(join(self.dst, MANIFEST_NAME), manifest.to_json(), self.options)
        # none when no shard was written
        remove(join(self.dst, PROGRESS_NAME), self.options, missing_ok=True)
        listed = {s.name for s in self.shards}
        for name in list_folder(self.dst, self.options, missing_ok=True):
            if SHARD_NAME.fullmatch(name) and name not in listed:  # left by a pack this one replaced
                remove(join(self.dst, name), self.options, missing_ok=True)
        return manifest


def _shape_key(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]}"


def _resume(
    dst: str, params: dict[str, Any], options: dict[str, Any] | None, overwrite: bool = False
) -> tuple[list, list, Counter]:
    """The shards of an earlier run with the same parameters that still verify, in order.

    Another pack in `dst` is a UserError, or with `overwrite` its manifest and progress record are
    removed (before any shard is written) and packing starts from scratch.
    """
    previous = _previous_run(dst, options)
    if previous is None:
        return [], [], Counter()
    url, record = previous
    if isinstance(record, str) or record[0] != params:
        why = record if isinstance(record, str) else _differences(record[0], params)
        if not overwrite:
            kind = "a pack" if url.endswith(MANIFEST_NAME) else "an unfinished pack"
            raise UserError(
                f"DST {redact_url(dst)} holds {kind} this one would replace ({why}); pass --overwrite "
                "to replace it, or choose another DST"
            )
        log.warning("--overwrite: replacing the pack in %s (%s)", redact_url(dst), why)
        remove(join(dst, MANIFEST_NAME), options, missing_ok=True)
        remove(join(dst, PROGRESS_NAME), options, missing_ok=True)
        return [], [], Counter()
    prev_params, prev_shards, prev_ends = record
    shards, ends, shapes = [], [], Counter()
    for info, end in zip(prev_shards, prev_ends, strict=True):
        url = join(dst, info.name)
        try:
            data = read_bytes(url, options)
            check_sha256(info, data, url)
        except (FileNotFoundError, ShardFormatError) as e:
            log.warning("re-packing from %s on: %s", info.name, e)
            break
        header = decode_header(data[: header_length(data, url)], url)
        shapes.update(_shape_key(r.hr_shape) for r in header)
        shards.append(info)
        ends.append(tuple(end))
    if shards:
        log.warning("resuming: %d shard(s) already packed and verified in %s", len(shards), redact_url(dst))
    return shards, ends, shapes


def _previous_run(dst: str, options: dict[str, Any] | None) -> tuple[str, tuple | str] | None:
    """The manifest (else progress record) in `dst`: its (params, shards, ends), or why it is unreadable."""
    for name in (MANIFEST_NAME, PROGRESS_NAME):
        url = join(dst, name)
        try:
            data = read_bytes(url, options)
        except FileNotFoundError:
            continue
        try:
            if name == MANIFEST_NAME:
                m = parse_manifest(data, url)
                return url, (m.meta["pack"]["params"], list(m.shards), m.meta["pack"]["ends"])
            body = json.loads(data)
            return url, (body["params"], [ShardInfo(**s) for s in body["shards"]], body["ends"])
        except (ShardFormatError, ValueError, KeyError, TypeError) as e:  # another version, or damaged
            return url, f"{name} unreadable: {type(e).__name__}: {e}"
    return None


def _differences(before: Any, now: dict[str, Any]) -> str:
    if not isinstance(before, dict):
        return f"parameters {before!r}"
    names = {"images": "source images", "shard_size_mb": "shard size (MB)"}
    diff = [f"{names.get(k, k)} {before.get(k)!r} (now {now[k]!r})" for k in now if before.get(k) != now[k]]
    return "other parameters: " + ", ".join(diff)


def _options(text: str | None, flag: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UserError(f"{flag}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise UserError(f"{flag}: expected a JSON object")
    return value


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dukd_ray.data.pack", description=__doc__.splitlines()[0])
    p.add_argument("src", help="DIV2K-layout root (any fsspec URL)")
    p.add_argument("dst", help="shard prefix to write (any fsspec URL)")
    p.add_argument("--scale", type=int, required=True, choices=SUPPORTED_SCALES)
    p.add_argument("--crop", type=int, default=480, help="HR sub-image size (BasicSR: 480)")
    p.add_argument("--step", type=int, default=240, help="HR sub-image step (BasicSR: 240)")
    p.add_argument("--shard-size-mb", type=float, default=256)
    p.add_argument("--src-storage-options", help="JSON fsspec options for SRC (prefer env/profile for keys)")
    p.add_argument("--dst-storage-options", help="JSON fsspec options for DST")
    p.add_argument(
        "--workers",
        type=int,
        help="processes decoding images (default: one per CPU; with --ray, per CPU of the cluster)",
    )
    p.add_argument("--ray", metavar="ADDRESS", help="decode on the Ray cluster at ADDRESS (e.g. auto)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a pack of other parameters already in DST"
    )
    add_debug_arg(p)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    m = pack(
        a.src,
        a.dst,
        a.scale,
        a.crop,
        a.step,
        a.shard_size_mb,
        _options(a.src_storage_options, "--src-storage-options"),
        _options(a.dst_storage_options, "--dst-storage-options"),
        progress=not a.no_progress,
        overwrite=a.overwrite,
        workers=a.workers,
        ray_address=a.ray,
    )
    print(
        f"packed {m.num_records} crops from {m.meta['num_images']} images into {len(m.shards)} shards "
        f"({sum(s.bytes for s in m.shards) / 2**20:.1f} MiB) at {redact_url(a.dst)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
