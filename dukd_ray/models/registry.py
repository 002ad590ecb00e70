"""Build an arch by name (as a config names it) with BasicSR's argument names, validated up front."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from dukd_ray.models.blocks import SUPPORTED_SCALES
from dukd_ray.models.edsr import EDSR
from dukd_ray.models.presets import preset_kwargs
from dukd_ray.models.rcan import RCAN
from dukd_ray.models.swinir import SwinIR

ARCHS: dict[str, type[nn.Module]] = {"edsr": EDSR, "rcan": RCAN, "swinir": SwinIR}


def arch_defaults(name: str) -> dict[str, Any]:
    """Every keyword the arch accepts (BasicSR names) with its default; `upscale` is `build_arch`'s scale."""
    params = inspect.signature(_arch_class(name).__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "upscale")}


def build_arch(name: str, scale: int, preset: str | None = None, **kwargs: Any) -> nn.Module:
    """Build `name` (edsr|rcan|swinir) for `scale`; kwargs override the preset, which overrides the defaults.

    The model carries `arch_spec = {"arch", "scale", "kwargs"}` with the full resolved, JSON-able kwargs,
    enough to rebuild it from a checkpoint alone.
    """
    defaults = arch_defaults(name)
    if "upscale" in kwargs or "scale" in kwargs:
        raise ValueError(f"{name}: pass the scale as build_arch's `scale` argument, not as a keyword")
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise ValueError(f"{name}: unknown argument(s) {unknown}; valid arguments: {', '.join(defaults)}")
    if scale not in SUPPORTED_SCALES:
        raise ValueError(f"{name}: scale {scale!r} is not supported; supported scales: {SUPPORTED_SCALES}")
    resolved = {**defaults, **(preset_kwargs(name, preset) if preset is not None else {}), **kwargs}
    resolved = {k: _jsonable(v) for k, v in resolved.items()}
    model = _arch_class(name)(upscale=scale, **resolved)
    model.arch_spec = {"arch": name, "scale": int(scale), "kwargs": resolved}
    return model


def _arch_class(name: str) -> type[nn.Module]:
    if name not in ARCHS:
        raise ValueError(f"unknown arch {name!r}; valid archs: {', '.join(ARCHS)}")
    return ARCHS[name]


def _jsonable(v: Any) -> Any:
    """Tuples become lists so arch_spec round-trips through JSON and weights_only pickles unchanged."""
    return [_jsonable(x) for x in v] if isinstance(v, (tuple, list)) else v
