"""Driver-side checks, before any Ray worker starts: fill in defaults, then prove the inputs are usable.

A wrong teacher file, unreadable data or an arch/scale mismatch would otherwise surface minutes later
as a stack trace from a remote worker; here each is one `InputError` naming the config key and file.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from dukd_ray.data import build_train_stream
from dukd_ray.data.samples import default_sample_data
from dukd_ray.eval.benchmark import list_sets, load_benchmark_sets
from dukd_ray.models import build_arch, load_pretrained
from dukd_ray.storage import StorageError, exists, is_local, redact_url
from dukd_ray.train.config import JobConfig


class InputError(ValueError):
    """A teacher checkpoint, data set or storage location cannot be used; names the config key and URL."""


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
        d.val_sets = _guard("data.val", d.val, lambda: list_sets(d.val, d.storage_options or None))
        if not d.val_sets:
            raise InputError(f"data.val ({redact_url(d.val)}): no benchmark sets (<Set>/HR folders) found")
    if out.run.name is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out.run.name = f"{out.model.arch}_x{out.model.scale}-{out.distill.method}-{stamp}"
    if is_local(out.run.storage):
        out.run.storage = os.path.abspath(os.path.expanduser(out.run.storage.removeprefix("file://")))
    return out.validate()


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
    if m.student_init:
        student = build_arch(m.arch, m.scale, preset=m.student_preset, **m.student_kwargs)
        report = _guard(
            "model.student_init",
            m.student_init,
            lambda: load_pretrained(student, m.student_init, strict=False, storage_options=opts),
        )
        if not report.loaded:
            raise InputError(
                f"model.student_init: no tensor of {redact_url(m.student_init)} fits the {m.arch} "
                f"x{m.scale} {m.student_preset!r} student: {report.describe_skipped()}"
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

    _guard("data.train", d.train, one_batch)
    _guard("data.val", d.val, lambda: load_benchmark_sets(d.val, d.val_sets, m.scale, storage_options=opts))
    _guard("run.storage", cfg.run.storage, lambda: exists(cfg.run.storage, opts))


def _guard(key: str, url: str, fn: Any) -> Any:
    """Run `fn`; turn what it raises about `url` into an InputError naming `key`."""
    try:
        return fn()
    except (ValueError, OSError, StorageError, KeyError, RuntimeError) as e:
        raise InputError(f"{key} ({redact_url(url)}): {type(e).__name__}: {e}") from None
