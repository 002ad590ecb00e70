"""`TrainState`: everything training changes, saved and restored as one (TorchTitan's `Stateful`).

`state_dict()` has three kinds of entries, which a checkpoint stores apart:

    SHARED     step, student, EMA, optimizer, scheduler: identical on every rank (DDP)
    PER_RANK   rng (python/numpy/torch(/CUDA) states and the distill generator), data (the stream's
               position): different on every rank
    history    every reported metrics dict so far; resumes, every step the run resumed from

`load_state_dict` takes the PER_RANK entries as optional: a run resumed with another number of
workers has none that fit and starts them afresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dukd_ray.data import TrainStream
from dukd_ray.distill import EMA
from dukd_ray.train.rng import capture_rng, restore_rng

SHARED = ("step", "student", "ema", "optimizer", "scheduler")
PER_RANK = ("rng", "data")


@dataclass(eq=False)
class TrainState:
    """One worker's training state; `student` is the unwrapped module (DDP shares its parameters)."""

    student: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # the distill method's draws
    stream: TrainStream
    step: int = 0  # the last step trained
    history: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 0:
            raise ValueError(f"TrainState.step must be a non-negative int, got {self.step!r}")
        if self.scheduler.optimizer is not self.optimizer:
            raise ValueError("TrainState.scheduler must drive TrainState.optimizer")

    def state_dict(self) -> dict[str, Any]:
        """A snapshot of every entry; tensors are the live ones (as `nn.Module.state_dict`)."""
        return {
            "step": self.step,
            "student": self.student.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng(self.generator),
            "data": self.stream.state_dict(),
            "history": list(self.history),
            "resumes": list(self.resumes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`; without the PER_RANK entries the RNGs and data position stay as they are."""
        given = [key for key in PER_RANK if key in state]
        if given and len(given) != len(PER_RANK):
            raise ValueError(f"TrainState.load_state_dict: {PER_RANK} go together, got only {given}")
        self.student.load_state_dict(state["student"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if given:
            self.stream.load_state_dict(state["data"])
            restore_rng(state["rng"], self.generator)
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.resumes = list(state["resumes"])
