"""The validation sets of `data.val`: a benchmark-layout root, or named pairs of HR and LR folders.

A BasicSR option file names each validation set by its own `dataroot_gt` / `dataroot_lq`, so
`data.val` may also be `{set name: "gt=HR,lq=LR[,tmpl=T]"}`; a single such string (`--val-data
gt=...,lq=...`) is one set named after the HR folder's parent (`.../Set5/GTmod12` -> `Set5`).
Both kinds load to the same `Pair`s and are scored the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dukd_ray.data.sources import PairedFolders, list_paired_pairs
from dukd_ray.eval.benchmark import BenchmarkDataError, Pair, list_sets, load_benchmark_sets


def paired_sets(val: str | Mapping[str, str]) -> dict[str, PairedFolders] | None:
    """{set name: folders} when `val` names paired folders; None for a benchmark root."""
    if isinstance(val, Mapping):
        sets = {str(name): PairedFolders.parse(spec) for name, spec in val.items()}
        bad = [name for name, folders in sets.items() if folders is None]
        if bad:
            raise ValueError(f"validation set {bad[0]!r}: expected gt=HR_FOLDER,lq=LR_FOLDER[,tmpl=T]")
        return sets  # type: ignore[return-value]
    folders = PairedFolders.parse(val)
    if folders is None:
        return None
    parent = folders.gt.rstrip("/").rsplit("/", 2)
    return {parent[-2] if len(parent) > 1 else "val": folders}


def val_set_names(val: str | Mapping[str, str], storage_options: dict[str, Any] | None = None) -> list[str]:
    """Every set `val` holds: the names of its paired sets, or the `<Set>/HR` folders under a root."""
    sets = paired_sets(val)
    return list(sets) if sets is not None else list_sets(val, storage_options)  # type: ignore[arg-type]


def load_val_sets(
    val: str | Mapping[str, str],
    names: Sequence[str],
    scale: int,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, list[Pair]]:
    """The named sets' pairs (HR mod-cropped to scale x LR), from a benchmark root or paired folders."""
    sets = paired_sets(val)
    if sets is None:
        return load_benchmark_sets(val, names, scale, storage_options=storage_options)  # type: ignore[arg-type]
    out = {}
    for name in names:
        if name not in sets:
            raise BenchmarkDataError(
                f"validation set {name!r} is not in data.val (its sets: {', '.join(sets)})"
            )
        out[name] = [
            Pair(p.name, np.ascontiguousarray(lr), np.ascontiguousarray(hr))
            for p in list_paired_pairs(sets[name], storage_options)
            for _, hr, lr in [p.read(scale, storage_options)]
        ]
    return out
