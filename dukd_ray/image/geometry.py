"""The flip/transpose symmetries of the square, shared by self-ensemble and label consistency.

Each op is its own inverse, so a sequence of ops is undone by the same ops in reverse order.
Ops act on the last two dimensions (H, W) of any tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

GEOMETRIC_OPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "flip_h": lambda v: v.flip(-2),
    "flip_w": lambda v: v.flip(-1),
    "transpose": lambda v: v.transpose(-2, -1),
}

# The 8 symmetries of the square as op sequences (flips, then transpose), identity first.
D4: tuple[tuple[str, ...], ...] = tuple(
    tuple(op for op, on in (("flip_h", fh), ("flip_w", fw), ("transpose", t)) if on)
    for t in (False, True)
    for fh in (False, True)
    for fw in (False, True)
)


def apply_geometry(x: torch.Tensor, ops: Sequence[str]) -> torch.Tensor:
    """`x` with `ops` applied in the order given."""
    for op in ops:
        x = GEOMETRIC_OPS[op](x)
    return x


def undo_geometry(y: torch.Tensor, ops: Sequence[str]) -> torch.Tensor:
    """The inverse of `apply_geometry(., ops)`: the same ops in reverse order."""
    return apply_geometry(y, tuple(reversed(ops)))
