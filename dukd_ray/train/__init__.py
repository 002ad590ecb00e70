"""The Ray Train distillation service: job config, the per-worker loop, checkpoints, reports, job CLI."""

from dukd_ray.train.config import ConfigError, JobConfig
from dukd_ray.train.preflight import InputError
from dukd_ray.train.trainer import TrainResult, build_trainer, prepare, run_training

__all__ = [
    "ConfigError",
    "InputError",
    "JobConfig",
    "TrainResult",
    "build_trainer",
    "prepare",
    "run_training",
]
