"""FAKD's pieces: the spatial affinity of a feature map and forward hooks that capture tapped outputs.

The affinity compares where a network attends, not what its channels hold, so a 64-channel student is
compared with a 256-channel teacher. Hooks sit on the arch under any DDP/compile wrapper (`unwrap`), so
the student is tapped however it is wrapped; they capture each module's *output* (nothing later in the
forward can alter it: the models add residuals out of place).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from dukd_ray.models.wrappers import unwrap

AFFINITY_EPS = 1e-8  # added to each position's channel norm, as the reference does


def affinity(fm: torch.Tensor) -> torch.Tensor:
    """(B, HW, HW) cosine similarity between every two spatial positions of `fm`, in fp32.

    `fm` is an image map (B, C, H, W) or a token map (B, HW, C) (SwinIR's layer outputs).
    """
    if fm.ndim == 4:
        fm = fm.flatten(2)  # (B, C, HW)
    elif fm.ndim == 3:
        fm = fm.transpose(1, 2)  # tokens (B, HW, C) -> (B, C, HW)
    else:
        raise ValueError(f"FAKD taps must output (B, C, H, W) or (B, HW, C) maps, got {tuple(fm.shape)}")
    fm = fm.float()
    unit = fm / (fm.norm(dim=1, keepdim=True) + AFFINITY_EPS)
    return unit.transpose(1, 2) @ unit


@contextlib.contextmanager
def tapped(model: nn.Module, names: Sequence[str], role: str) -> Iterator[list[torch.Tensor]]:
    """Hooks on `names` while the block runs; on leaving it, the yielded list holds their outputs, in order.

    An unknown name is an error listing the module names of `model` (`role` names it: student/teacher).
    """
    arch = unwrap(model)
    modules = dict(arch.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        shallow = [n for n in modules if n and n.count(".") <= 1]
        raise ValueError(
            f"distill.fakd_taps: {missing} not found in the {role} ({type(arch).__name__}); "
            f"its modules include: {', '.join(shallow)}"
        )
    outputs: list[torch.Tensor] = []
    captured: dict[int, torch.Tensor] = {}

    def keep(index: int) -> Callable[..., None]:
        return lambda _module, _inputs, out: captured.__setitem__(index, out)

    handles = [modules[n].register_forward_hook(keep(i)) for i, n in enumerate(names)]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()
    silent = [n for i, n in enumerate(names) if i not in captured]
    if silent:
        raise ValueError(f"distill.fakd_taps: {silent} of the {role} produced no output in its forward")
    outputs.extend(captured[i] for i in range(len(names)))
