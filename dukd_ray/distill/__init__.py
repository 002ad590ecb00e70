"""The DUKD objective, its baselines and the student EMA: pure torch, no Ray (see docs/distill.md)."""

from dukd_ray.distill.augment import LC_OPS, apply_ops, invert_ops
from dukd_ray.distill.config import DistillConfig
from dukd_ray.distill.ema import EMA
from dukd_ray.distill.fakd import affinity
from dukd_ray.distill.methods import METHODS, Share, train_step
from dukd_ray.distill.recipes import FAKD_TAPS, RECIPES, Recipe, Schedule, recipe
from dukd_ray.distill.teacher import freeze_teacher
from dukd_ray.distill.upcycle import zoom_in_cells, zoom_out_input

__all__ = [
    "EMA",
    "FAKD_TAPS",
    "LC_OPS",
    "METHODS",
    "RECIPES",
    "DistillConfig",
    "Recipe",
    "Schedule",
    "Share",
    "affinity",
    "apply_ops",
    "freeze_teacher",
    "invert_ops",
    "recipe",
    "train_step",
    "zoom_in_cells",
    "zoom_out_input",
]
