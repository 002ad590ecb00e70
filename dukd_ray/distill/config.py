"""`DistillConfig`: which objective to train and its knobs, validated when built.

One dataclass for all three methods so a job file or a Tune search space can switch `method` without
changing shape. Values are checked in `__post_init__` (fail before Ray starts); `n_gt_sub <= scale**2`
is checked where the scale is known (`check_scale`, called by `paper()` and by every training step).
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
    the weights (its loss is plain L1, as in the paper); `kd` uses `w_pix` and `w_kd` only.
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

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"distill.method: unknown method {self.method!r}; expected one of {sorted(METHODS)}"
            )
        if self.step_mode not in STEP_MODES:
            raise ValueError(f"distill.step_mode: expected one of {list(STEP_MODES)}, got {self.step_mode!r}")
        for name in ("w_pix", "w_kd", "w_zoom_in", "w_zoom_out"):
            setattr(self, name, _non_negative_float(name, getattr(self, name)))
        for name in ("zoom_in", "zoom_out", "label_consistency"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"distill.{name}: expected true or false, got {getattr(self, name)!r}")
        if isinstance(self.n_gt_sub, bool) or not isinstance(self.n_gt_sub, int) or self.n_gt_sub < 1:
            raise ValueError(f"distill.n_gt_sub: expected an integer >= 1, got {self.n_gt_sub!r}")
        self.lc_ops = _canonical_ops(self.lc_ops)
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
    def paper(cls, arch: str, scale: int) -> DistillConfig:
        """The paper's DUKD settings for `arch` (edsr|rcan|swinir) at `scale` (2|3|4), `paper` step mode."""
        key = (arch.lower(), scale)
        if key not in _PAPER_ROWS:
            known = sorted({a for a, _ in _PAPER_ROWS})
            raise ValueError(
                f"no paper DUKD config for arch={arch!r} scale={scale!r}; archs {known}, scales 2|3|4"
            )
        w_pix, n_gt_sub, zoom_out, label_consistency = _PAPER_ROWS[key]
        cfg = cls(
            method="dukd",
            w_pix=w_pix,
            w_kd=1.0,
            n_gt_sub=n_gt_sub,
            zoom_out=zoom_out,
            label_consistency=label_consistency,
            lc_prob=0.3,
        )
        cfg.check_scale(scale)
        return cfg

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
        return values


# (arch, scale) -> (w_pix, n_gt_sub, zoom_out, label_consistency); w_kd is 1 and prob 0.3 in every row
_PAPER_ROWS: dict[tuple[str, int], tuple[float, int, bool, bool]] = {
    ("edsr", 2): (5.0, 2, True, True),
    ("edsr", 3): (5.0, 1, True, True),
    ("edsr", 4): (5.0, 1, True, True),
    ("rcan", 2): (1.0, 1, False, False),
    ("rcan", 3): (2.0, 1, True, True),
    ("rcan", 4): (1.0, 1, False, False),
    **{("swinir", s): (5.0, 1, False, True) for s in (2, 3, 4)},
}


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
