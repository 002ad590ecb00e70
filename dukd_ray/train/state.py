"""`TrainState`: everything training changes, saved and restored as one (TorchTitan's `Stateful`).

Every entry is the same on every rank: step, student, EMA, optimizer, scheduler (DDP keeps them
equal), the data position (the global step of the stream, `data.stream.TrainStream.state_dict`),
history (every reported metrics dict so far) and resumes (every step the run resumed from).
Nothing is per rank -- random draws are functions of (seed, step), see `train.rng` -- so a state
saved by W workers continues exactly on any number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dukd_ray.data import TrainStream
from dukd_ray.distill import EMA

SHARED = ("step", "student", "ema", "optimizer", "scheduler", "data")


@dataclass(eq=False)
class TrainState:
    """One worker's training state; `student` is the unwrapped module (DDP shares its parameters)."""

    student: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
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
            "data": self.stream.state_dict(),
            "history": list(self.history),
            "resumes": list(self.resumes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`; without `data` (an older checkpoint) the stream continues at its step."""
        step = int(state["step"])
        if "data" in state and state["data"].get("step") != step:
            raise ValueError(f"TrainState: data position {state['data'].get('step')!r} is not step {step}")
        self.student.load_state_dict(state["student"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "data" in state:
            self.stream.load_state_dict(state["data"])
        else:
            self.stream.seek(step)
        self.step = step
        self.history = list(state["history"])
        self.resumes = list(state["resumes"])
