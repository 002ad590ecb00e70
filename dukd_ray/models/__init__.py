"""SR architectures with BasicSR's key names, presets, and checkpoint I/O (official and BasicSR layouts)."""

from dukd_ray.models.blocks import SUPPORTED_SCALES
from dukd_ray.models.checkpoint import (
    CheckpointError,
    LoadReport,
    StudentInit,
    build_from_checkpoint,
    load_pretrained,
    load_student_init,
    save_weights,
)
from dukd_ray.models.presets import PRESET_NAMES, PRESETS
from dukd_ray.models.registry import ARCHS, arch_defaults, build_arch

__all__ = [
    "ARCHS",
    "PRESETS",
    "PRESET_NAMES",
    "SUPPORTED_SCALES",
    "CheckpointError",
    "LoadReport",
    "StudentInit",
    "arch_defaults",
    "build_arch",
    "build_from_checkpoint",
    "load_pretrained",
    "load_student_init",
    "save_weights",
]
