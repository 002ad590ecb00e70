"""Named model sizes: the paper's teachers/students (docs/distill.md) and tiny ones for CPU smoke runs.

Only the arguments that differ from the arch defaults are listed; `build_arch` resolves the rest.
"""

from __future__ import annotations

from typing import Any

PRESET_NAMES = ("teacher", "student", "tiny_teacher", "tiny_student")

_EDSR = {"res_scale": 0.1}  # EDSR res_scale 0.1 (BasicSR's f256b32 setting), teacher and student
_RCAN = {"num_feat": 64, "squeeze_factor": 16}
_SWINIR = {"window_size": 8, "mlp_ratio": 2.0, "img_size": 48, "resi_connection": "1conv"}
_SWINIR_TINY = {"window_size": 4, "mlp_ratio": 2.0, "img_size": 16, "resi_connection": "1conv"}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "edsr": {
        "teacher": {**_EDSR, "num_feat": 256, "num_block": 32},
        "student": {**_EDSR, "num_feat": 64, "num_block": 32},
        "tiny_teacher": {**_EDSR, "num_feat": 32, "num_block": 4},
        "tiny_student": {**_EDSR, "num_feat": 16, "num_block": 2},
    },
    "rcan": {
        "teacher": {**_RCAN, "num_group": 10, "num_block": 20},
        "student": {**_RCAN, "num_group": 10, "num_block": 6},
        "tiny_teacher": {"num_feat": 16, "squeeze_factor": 4, "num_group": 2, "num_block": 2},
        "tiny_student": {"num_feat": 16, "squeeze_factor": 4, "num_group": 1, "num_block": 2},
    },
    "swinir": {
        "teacher": {**_SWINIR, "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6},
        "student": {**_SWINIR, "embed_dim": 60, "depths": [6] * 4, "num_heads": [6] * 4},
        "tiny_teacher": {**_SWINIR_TINY, "embed_dim": 24, "depths": [2, 2], "num_heads": [2, 2]},
        "tiny_student": {**_SWINIR_TINY, "embed_dim": 12, "depths": [2], "num_heads": [2]},
    },
}


def preset_kwargs(arch: str, preset: str) -> dict[str, Any]:
    """A copy of the preset's kwargs; ValueError listing the valid preset names."""
    if preset not in PRESETS[arch]:
        raise ValueError(f"unknown preset {preset!r} for {arch}; valid presets: {', '.join(PRESET_NAMES)}")
    return {k: list(v) if isinstance(v, list) else v for k, v in PRESETS[arch][preset].items()}
