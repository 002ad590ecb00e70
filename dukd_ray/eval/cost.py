"""What a model costs to deploy: parameters, multiply-accumulates, peak memory, latency.

Why a module: the student/teacher trade-off is the point of distillation, so the benchmark, the
run report and the docs must count it the same way. Params, MACs and peak memory come from one
forward pass on PyTorch's `meta` device (shapes only, no arithmetic), so they cost milliseconds
even for a teacher at 720p and can run inside every run report. Latency needs real arithmetic and
is a separate, optional call.
"""

from __future__ import annotations

import copy
import statistics
import time
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

DEFAULT_LR_SIZE = (180, 320)  # (h, w): 320x180 LR -> 1280x720 at x4, the reference input


@dataclass(frozen=True)
class ModelCost:
    """Cost of one forward pass on a (1, 3, h, w) input; `latency_s` is None unless measured."""

    params: int
    macs: int
    peak_memory_bytes: int
    lr_size: tuple[int, int]
    latency_s: float | None = None
    latency_lr_size: tuple[int, int] | None = None
    latency_device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created inside the mode that are still alive, and the peak.

    A storage is counted once (views share it) and released when its last reference dies, which is
    exactly when PyTorch's CPU allocator frees it; on `meta` the same trace happens without memory.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            if getattr(storage, "_dukd_counted_by", None) is self:
                continue
            storage._dukd_counted_by = self
            nbytes = storage.nbytes()
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._release, nbytes)
        return out


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as SwinIR's attention masks are not parameters)."""
    return sum(p.numel() for p in model.parameters())


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def measure_cost(model: nn.Module, lr_size: tuple[int, int] = DEFAULT_LR_SIZE) -> ModelCost:
    """Params, MACs and peak memory of one inference forward on a (1, 3, h, w) input.

    MACs are `FlopCounterMode`'s FLOPs / 2 (convolutions, matmuls and attention; element-wise
    ops are not counted, as in the SR literature). Peak memory is the weights plus the largest
    total of live tensors during the forward, as a non-caching allocator (PyTorch's CPU one) holds it.
    """
    h, w = lr_size
    meta_model = copy.deepcopy(model).to("meta").eval()
    x = torch.empty(1, 3, h, w, device="meta")
    tracker = _LiveTensorBytes()
    with torch.inference_mode(), FlopCounterMode(display=False) as flops, tracker:
        out = meta_model(x)
        del out
    input_bytes = x.numel() * x.element_size()
    return ModelCost(
        params=count_params(model),
        macs=flops.get_total_flops() // 2,
        peak_memory_bytes=_state_bytes(model) + input_bytes + tracker.peak,
        lr_size=(h, w),
    )


def measure_latency(
    model: nn.Module,
    lr_size: tuple[int, int] = DEFAULT_LR_SIZE,
    device: str | torch.device = "cpu",
    repeats: int = 3,
    warmup: int = 1,
) -> float:
    """Median wall-clock seconds of one inference forward on a random (1, 3, h, w) input on `device`.

    Warm-up runs come first (oneDNN/cuDNN pick their kernels on the first call). The model is moved to
    `device` and put in eval mode.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.rand(1, 3, *lr_size, device=device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            _synchronize(device)
            start = time.perf_counter()
            model(x)
            _synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cost_ratios(student: ModelCost, teacher: ModelCost) -> dict[str, float | None]:
    """student / teacher for each cost (latency only when both were measured on the same input).

    Latencies measured on different devices are not comparable: a ratio of a GPU and a CPU time
    would read as a speed-up of the model. That is an error, not a None.
    """
    if (
        student.latency_s is not None
        and teacher.latency_s is not None
        and student.latency_device != teacher.latency_device
    ):
        raise ValueError(
            f"cost_ratios: latencies measured on different devices (student on {student.latency_device}, "
            f"teacher on {teacher.latency_device}); measure both on the same one"
        )
    ratios: dict[str, float | None] = {
        "params": student.params / teacher.params,
        "macs": student.macs / teacher.macs,
        "peak_memory": student.peak_memory_bytes / teacher.peak_memory_bytes,
        "latency": None,
    }
    same_input = student.latency_lr_size == teacher.latency_lr_size
    if student.latency_s is not None and teacher.latency_s is not None and same_input:
        ratios["latency"] = student.latency_s / teacher.latency_s
    return ratios


def format_cost_table(rows: dict[str, ModelCost]) -> str:
    """A Markdown table (one row per named model) for READMEs and run reports."""
    lines = [
        "| model | params (M) | MACs (G) | peak memory (MiB) | latency (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, c in rows.items():
        latency = "-" if c.latency_s is None else f"{c.latency_s:.3f}"
        memory_mib = c.peak_memory_bytes / 2**20
        lines.append(f"| {name} | {c.params / 1e6:.3f} | {c.macs / 1e9:.1f} | {memory_mib:.0f} | {latency} |")
    return "\n".join(lines)
