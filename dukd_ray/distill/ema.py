"""Exponential moving average of the student's weights (validation and the saved model use it)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dukd_ray.models.wrappers import unwrap


class EMA:
    """`ema = decay * ema + (1 - decay) * param` after every step, as BasicSR's `model_ema`.

    Holds its own copy of the (unwrapped) student in eval mode; buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay!r}")
        self.decay = float(decay)
        self.module = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights (DDP / DataParallel / compile unwrapped)."""
        source = unwrap(model)
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in source.parameters()]
        if len(ema_params) != len(params):
            raise ValueError(f"EMA.update: the model has {len(params)} parameters, the EMA {len(ema_params)}")
        torch._foreach_mul_(ema_params, self.decay)
        torch._foreach_add_(ema_params, params, alpha=1.0 - self.decay)
        for ema_buf, buf in zip(self.module.buffers(), source.buffers(), strict=True):
            ema_buf.copy_(buf)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, with the student's key names (BasicSR's `params_ema`)."""
        return self.module.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        self.module.load_state_dict(state_dict, strict=strict)
