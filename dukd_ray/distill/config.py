"""`DistillConfig`: which objective to train and its knobs, validated when built.

One dataclass for every method so a job file or a Tune search space can switch `method` without
changing shape. Values are checked in `__post_init__` (fail before Ray starts); `n_gt_sub <= scale**2`
is checked where the scale is known (`check_scale`, called by every recipe and every training step).
Each method's published settings are its recipe (`dukd_ray.distill.recipes`), not these defaults.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dukd_ray.distill.augment import LC_OPS
from dukd_ray.distill.methods import METHODS

STEP_MODES = ("paper", "joint")


@dataclass
class DistillConfig:
    """The objective of one training run (see docs/distill.md for the formulas).

    `w_zoom_in` / `w_zoom_out` multiply the whole L_zi / L_zo terms (1.0 = the paper). `lc_ops` is any
    subset of `invert, flip_h, flip_w, transpose`, stored in that canonical order. `scratch` uses none of
    the weights (its loss is plain L1, as in the paper); `kd` uses `w_pix` and `w_kd` only; `fakd` adds
    `w_feat` times the affinity loss at the modules named in `fakd_taps`. `reference_compat` computes what
    the reference code computes where it is wrong (docs/distill.md, "Reference-compatible mode").
    """

    method: str = "dukd"
    w_pix: float = 1.0
    w_kd: float = 1.0
    w_zoom_in: float = 1.0
    w_zoom_out: float = 1.0
    zoom_in: bool = True
    n_gt_sub: int = 1
    zoom_out: bool = True
    label_consistency: bool = True
    lc_ops: tuple[str, ...] = field(default=LC_OPS)
    lc_prob: float = 0.3
    step_mode: str = "paper"
    w_feat: float = 10.0
    fakd_taps: tuple[str, ...] = ()
    reference_compat: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"distill.method: unknown method {self.method!r}; expected one of {sorted(METHODS)}"
            )
        if self.step_mode not in STEP_MODES:
            raise ValueError(f"distill.step_mode: expected one of {list(STEP_MODES)}, got {self.step_mode!r}")
        for name in ("w_pix", "w_kd", "w_zoom_in", "w_zoom_out", "w_feat"):
            setattr(self, name, _non_negative_float(name, getattr(self, name)))
        for name in ("zoom_in", "zoom_out", "label_consistency", "reference_compat"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"distill.{name}: expected true or false, got {getattr(self, name)!r}")
        if isinstance(self.n_gt_sub, bool) or not isinstance(self.n_gt_sub, int) or self.n_gt_sub < 1:
            raise ValueError(f"distill.n_gt_sub: expected an integer >= 1, got {self.n_gt_sub!r}")
        self.lc_ops = _canonical_ops(self.lc_ops)
        self.fakd_taps = _tap_names(self.fakd_taps)
        if self.method == "fakd" and not self.fakd_taps:
            raise ValueError(
                "distill.fakd_taps: method 'fakd' needs the module names to tap, e.g. "
                "[conv_first, body.10, body.21, conv_after_body] (the recipe sets them: use --method fakd)"
            )
        prob = self.lc_prob
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
            raise ValueError(f"distill.lc_prob: expected a probability in [0, 1], got {prob!r}")
        self.lc_prob = float(prob)
        if self.method == "dukd" and not (self.zoom_in or self.zoom_out):
            raise ValueError(
                "distill: method 'dukd' with zoom_in and zoom_out both off has no upcycled term; "
                "use method 'kd' for logits KD alone"
            )

    def check_scale(self, scale: int) -> None:
        """Raise if this config cannot run at `scale` (zoom-in draws n_gt_sub of the scale**2 HR cells)."""
        if self.method == "dukd" and self.zoom_in and self.n_gt_sub > scale**2:
            raise ValueError(
                f"distill.n_gt_sub={self.n_gt_sub} exceeds the {scale**2} HR cells of the {scale}x{scale} "
                f"zoom-in grid at scale {scale}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DistillConfig:
        """Build from a YAML/JSON mapping; unknown keys are an error that lists the valid ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"distill: unknown key(s) {unknown}; valid keys are {names}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready values (`lc_ops` as a list); `from_dict(to_dict())` round-trips."""
        values = dataclasses.asdict(self)
        values["lc_ops"] = list(self.lc_ops)
        values["fakd_taps"] = list(self.fakd_taps)
        return values


def _non_negative_float(name: str, value: Any) -> float:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value < 0:
        raise ValueError(f"distill.{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def _canonical_ops(ops: Iterable[str] | Any) -> tuple[str, ...]:
    """Accept a list or tuple of op names (YAML gives lists); return them in the canonical order."""
    if isinstance(ops, str) or not isinstance(ops, (list, tuple)):
        raise ValueError(f"distill.lc_ops: expected a list of op names from {list(LC_OPS)}, got {ops!r}")
    unknown = [op for op in ops if op not in LC_OPS]
    if unknown:
        raise ValueError(f"distill.lc_ops: unknown op(s) {unknown}; valid ops are {list(LC_OPS)}")
    if len(set(ops)) != len(ops):
        raise ValueError(f"distill.lc_ops: duplicate ops in {list(ops)}")
    return tuple(op for op in LC_OPS if op in ops)


def _tap_names(taps: Iterable[str] | Any) -> tuple[str, ...]:
    """Module names as `named_modules()` spells them, in the given order (checked against the nets)."""
    if isinstance(taps, str) or not isinstance(taps, (list, tuple)):
        raise ValueError(f"distill.fakd_taps: expected a list of module names, got {taps!r}")
    if not all(isinstance(t, str) and t for t in taps) or len(set(taps)) != len(taps):
        raise ValueError(f"distill.fakd_taps: expected distinct non-empty module names, got {list(taps)}")
    return tuple(taps)
