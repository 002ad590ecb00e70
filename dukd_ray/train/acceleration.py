"""The two switches that change how fast a step runs, not what it computes: `train.amp` and `train.compile`.

`train.amp` is bf16 autocast on every device that has bf16 kernels: CUDA cards that support it, and
CPUs for which oneDNN has them (x86 with AVX-512 (BF16, AMX or emulated on AVX-512 core), Arm with
BF16); elsewhere the run trains in fp32 and says so once. `train.compile` wraps the networks the
step calls in `torch.compile`; where compilation cannot work on the worker (no C++ compiler for
the CPU backend, no Triton for CUDA, an unsupported Python) a probe finds out before training and
the step runs eager, with one warning naming the reason.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (torch's own test, the one its bf16 paths use)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and check is not None and check())


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 when `amp` and `device` has bf16 kernels; None (fp32) otherwise, with a warning if asked for."""
    if not amp:
        return None
    supported = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
    if device.type in ("cuda", "cpu") and supported:
        return torch.bfloat16
    log.warning("train.amp: %s has no bf16 kernels here; training in fp32", device.type.upper())
    return None


@functools.cache
def compile_unavailable(device_type: str) -> str | None:
    """Why `torch.compile` cannot run on this kind of device here (None: it can), by compiling a probe."""
    try:
        probe = torch.compile(lambda x: torch.relu(x) * 2 + 1, dynamic=False)
        probe(torch.ones(8, device=device_type))
    except Exception as e:  # noqa: BLE001 - whatever stops the compiler is the reason to run eager
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None


def compiled(module: nn.Module | None, enabled: bool, device: torch.device) -> nn.Module | None:
    """`torch.compile(module)` when `enabled` and compilation works on `device`; else `module` itself.

    The compiled wrapper shares the module's parameters: train with it, but checkpoint, validate and
    export the module (its state dict keys, and eager validation on images of every size).
    """
    if module is None or not enabled:
        return module
    reason = compile_unavailable(device.type)
    if reason:
        log.warning(
            "train.compile: torch.compile is unavailable on %s here (%s); training eager", device, reason
        )
        return module
    return torch.compile(module, dynamic=False)  # a step has few shapes: one graph each, no symbolic sizes
