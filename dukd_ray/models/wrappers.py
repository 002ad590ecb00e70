"""Seeing through the wrappers training puts around a model: DDP, DataParallel and torch.compile.

Each wrapper holds the real arch as a submodule (`module` / `_orig_mod`), so its state-dict keys
carry that prefix. Checkpoints, the EMA and the teacher check all need the arch underneath.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TypeVar

from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

V = TypeVar("V")

PARALLEL_WRAPPERS = (DistributedDataParallel, DataParallel)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile


def wrapper_chain(model: nn.Module) -> Iterator[nn.Module]:
    """`model`, then each module it wraps, down to the arch (in any nesting of the wrappers)."""
    while True:
        yield model
        if isinstance(model, PARALLEL_WRAPPERS):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return


def unwrap(model: nn.Module) -> nn.Module:
    """The arch inside every DDP / DataParallel / torch.compile wrapper."""
    *_, arch = wrapper_chain(model)
    return arch


def is_data_parallel(model: nn.Module) -> bool:
    """Whether a DDP / DataParallel wrapper sits anywhere around the arch (compiled or not)."""
    return any(isinstance(m, PARALLEL_WRAPPERS) for m in wrapper_chain(model))


def strip_wrapper_prefixes(state: Mapping[str, V]) -> dict[str, V]:
    """State-dict keys as the bare arch names them (`module.` / `_orig_mod.` prefixes removed)."""
    out = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out
