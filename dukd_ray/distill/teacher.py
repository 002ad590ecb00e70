"""The frozen teacher: a pretrained network used only to produce targets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from dukd_ray.models.wrappers import is_data_parallel


def freeze_teacher(model: nn.Module) -> nn.Module:
    """Put `model` in eval mode with no parameter requiring grad, and return it.

    Eval mode makes SwinIR's drop-path deterministic; without grads no teacher backward is ever
    computed and nothing of the teacher is all-reduced. Never wrap the teacher in DDP.
    """
    _reject_wrapped(model)
    model.eval()
    model.requires_grad_(False)
    return model


def check_frozen(model: nn.Module) -> None:
    """Raise unless `model` is as `freeze_teacher` leaves it."""
    _reject_wrapped(model)
    if model.training or any(p.requires_grad for p in model.parameters()):
        raise ValueError("the teacher must be frozen (eval mode, no grads): call freeze_teacher(teacher)")


@contextlib.contextmanager
def train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in train mode within the block, eval mode again after (reference-compatible teacher)."""
    model.train()
    try:
        yield model
    finally:
        model.eval()


def _reject_wrapped(model: nn.Module) -> None:
    if is_data_parallel(model):
        raise ValueError("the teacher must not be wrapped in (Distributed)DataParallel: it is never trained")
