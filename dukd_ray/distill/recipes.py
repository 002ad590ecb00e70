"""The recipe table: what the reference trains for every (arch, scale, method), in one place.

A recipe is a method's own loss weights and switches (`DistillConfig`), its optimiser schedule and
where its student starts. Jobs, `--method`, Tune's `paper` start point and the docs read it; no other
module restates these values. Methods do not inherit each other's weights: `kd` is pixel 1 / KD 1,
not DUKD's row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dukd_ray.distill.config import DistillConfig
from dukd_ray.distill.methods import METHODS
from dukd_ray.models.blocks import SUPPORTED_SCALES
from dukd_ray.models.registry import ARCHS

# FAKD taps per arch and student preset (the teacher preset of the same size has the same names).
# EDSR and RCAN: the reference's positions; SwinIR (not in the reference): the first and last image
# maps, the first residual group's tokens and the body's normalised output tokens.
FAKD_TAPS: dict[str, dict[str, tuple[str, ...]]] = {
    "edsr": {
        "student": ("conv_first", "body.10", "body.21", "conv_after_body"),
        "tiny_student": ("conv_first", "body.0", "body.1", "conv_after_body"),
    },
    "rcan": {
        "student": ("conv_first", "body.2", "body.6", "conv_after_body"),
        "tiny_student": ("conv_first", "body.0", "conv_after_body"),
    },
    "swinir": dict.fromkeys(
        ("student", "tiny_student"), ("conv_first", "layers.0", "norm", "conv_after_body")
    ),
}

# DUKD's row of the paper: (arch, scale) -> (w_pix, n_gt_sub, zoom_out, label_consistency);
# w_kd is 1 and the label-consistency probability 0.3 in every row
_DUKD_ROWS: dict[tuple[str, int], tuple[float, int, bool, bool]] = {
    ("edsr", 2): (5.0, 2, True, True),
    ("edsr", 3): (5.0, 1, True, True),
    ("edsr", 4): (5.0, 1, True, True),
    ("rcan", 2): (1.0, 1, False, False),
    ("rcan", 3): (2.0, 1, True, True),
    ("rcan", 4): (1.0, 1, False, False),
    **{("swinir", s): (5.0, 1, False, True) for s in SUPPORTED_SCALES},
}


@dataclass(frozen=True)
class Schedule:
    """Optimiser and run length: Adam(lr, betas, weight_decay), MultiStepLR(milestones, gamma), EMA, seed."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = (100_000, 200_000)
    gamma: float = 0.1
    max_steps: int = 250_000
    ema_decay: float = 0.999
    seed: int = 10

    def __post_init__(self) -> None:
        steps = (0, *self.milestones, self.max_steps)
        if not all(a < b for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"schedule: milestones {self.milestones} must increase within max_steps")
        if not (self.lr > 0 and 0 < self.gamma <= 1 and 0 <= self.ema_decay < 1):
            raise ValueError(f"schedule: lr > 0, gamma in (0, 1], ema_decay in [0, 1) expected, got {self}")

    def train_fields(self) -> dict[str, object]:
        """The values as `train.*` config fields (milestones as a list)."""
        values = dataclasses.asdict(self)
        values["milestones"] = list(self.milestones)
        return values


@dataclass(frozen=True)
class Recipe:
    """One cell of the table. `init_from` is `(scale, method)` of the student run this one starts from
    (loaded non-strictly: the upsampler differs), or None for a student trained from scratch."""

    arch: str
    scale: int
    method: str
    distill: DistillConfig
    schedule: Schedule
    init_from: tuple[int, str] | None

    def __post_init__(self) -> None:
        if self.distill.method != self.method:
            raise ValueError(f"recipe {self.key}: distill.method is {self.distill.method!r}")
        if self.init_from is not None and self.init_from[0] not in SUPPORTED_SCALES:
            raise ValueError(f"recipe {self.key}: init_from {self.init_from} names no supported scale")
        self.distill.check_scale(self.scale)

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.arch, self.scale, self.method)


def recipe(arch: str, scale: int, method: str) -> Recipe:
    """The reference's recipe for `method` on `arch` at `scale`; a fresh `distill` the caller may edit."""
    key = (str(arch).lower(), scale, method)
    if key not in RECIPES:
        raise ValueError(
            f"no recipe for arch={arch!r} scale={scale!r} method={method!r}; "
            f"archs {list(ARCHS)}, scales {list(SUPPORTED_SCALES)}, methods {list(METHODS)}"
        )
    found = RECIPES[key]
    return dataclasses.replace(found, distill=dataclasses.replace(found.distill))


def _distill(arch: str, scale: int, method: str) -> DistillConfig:
    if method == "scratch":
        return DistillConfig(method="scratch")
    if method == "kd":
        return DistillConfig(method="kd", w_pix=1.0, w_kd=1.0)
    if method == "fakd":
        taps = FAKD_TAPS[arch]["student"]
        return DistillConfig(method="fakd", w_pix=1.0, w_kd=1.0, w_feat=10.0, fakd_taps=taps)
    w_pix, n_gt_sub, zoom_out, label_consistency = _DUKD_ROWS[(arch, scale)]
    return DistillConfig(
        method="dukd",
        w_pix=w_pix,
        w_kd=1.0,
        n_gt_sub=n_gt_sub,
        zoom_out=zoom_out,
        label_consistency=label_consistency,
        lc_prob=0.3,
    )


def _schedule(arch: str, method: str) -> Schedule:
    """The paper's schedule, except the reference's EDSR FAKD config halves the lr once, at 18,750."""
    if (arch, method) == ("edsr", "fakd"):
        return Schedule(milestones=(18_750,), gamma=0.5)
    return Schedule()


def _init_from(arch: str, scale: int, method: str) -> tuple[int, str] | None:
    """EDSR x4 `kd` and `dukd` start from the x2 student of the same method; everything else from scratch."""
    return (2, method) if (arch, scale) == ("edsr", 4) and method in ("kd", "dukd") else None


RECIPES: dict[tuple[str, int, str], Recipe] = {
    (a, s, m): Recipe(a, s, m, _distill(a, s, m), _schedule(a, m), _init_from(a, s, m))
    for a in ARCHS
    for s in SUPPORTED_SCALES
    for m in METHODS
}
