"""The driver side: turn a `JobConfig` into a Ray `TorchTrainer` and run it.

`build_trainer` is the seam for Tune (a trial passes `TuneReportCallback()` in `callbacks`);
`run_training` is what the job CLI calls. Both check every input before any worker starts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchTrainer

from dukd_ray.storage import get_fs, is_local, join, redact_url
from dukd_ray.train.checkpoint import HISTORY
from dukd_ray.train.config import JobConfig, RunSpec
from dukd_ray.train.faults import Injection
from dukd_ray.train.loop import DataError, train_loop_per_worker
from dukd_ray.train.preflight import InputError, check_inputs, resolve
from dukd_ray.train.resources import size_cpu_workers, worker_resources

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run left behind (all URLs are in the run folder)."""

    config: JobConfig  # resolved: run name, data URLs
    run_url: str
    step: int
    metrics: dict[str, Any]  # the last report: val_psnr, psnr/<set>, teacher/..., bicubic/...
    history: list[dict[str, Any]]  # every report of the run, oldest first (the curves)
    checkpoint: ray.train.Checkpoint
    weights_url: str  # <export_name>.pth, BasicSR layout (params + params_ema)
    safetensors_url: str
    report_url: str  # report.md (report.html beside it)
    tensorboard_url: str


def prepare(cfg: JobConfig) -> JobConfig:
    """Resolve defaults (sample data, run name) and check every input; raises before Ray is touched."""
    resolved = resolve(cfg)
    check_inputs(resolved)
    return resolved


class FailOnDataError(ray.train.UserCallback):
    """Ends the run at the first worker `DataError`, which no retry could fix.

    `FailureConfig(max_failures)` retries every worker error, a corrupt record as much as a lost
    node; Ray 2.60 has no public hook to exempt an error type from it (its failure policy is chosen
    internally). This callback runs on the controller when it polls a failed worker group; what it
    raises ends the run there, before the failure policy counts a retry, as a `ControllerError`
    whose `controller_failure` is that DataError (`run_training` re-raises it as an InputError).
    """

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        for _, error in sorted(worker_exceptions.items()):
            if isinstance(error, DataError):
                raise DataError(str(error))


def build_trainer(
    cfg: JobConfig,
    callbacks: Sequence[ray.train.UserCallback] = (),
    *,
    check: bool = True,
    fault: Injection | None = None,
) -> TorchTrainer:
    """A TorchTrainer for `cfg`; `callbacks` go into RunConfig (Tune passes TuneReportCallback there).

    `check=False` skips the input checks (for a config that already passed `prepare`, or a sweep's
    trials that only vary the objective); defaults are resolved either way. `fault` is for the
    fault-tolerance tests only: that worker dies once at that step. A worker's `DataError` ends the
    run at once whatever `run.max_failures` says (`FailOnDataError`).
    """
    cfg = prepare(cfg) if check else resolve(cfg)
    storage_path, storage_filesystem = ray_storage(cfg.run.storage, cfg.data.storage_options or None)
    use_gpu = _use_gpu(cfg.run.use_gpu)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": cfg.to_dict(), "fault": fault},
        scaling_config=ray.train.ScalingConfig(
            num_workers=ray_num_workers(cfg.run),  # (min, max): Ray's elastic restarts
            elastic_resize_monitor_interval_s=cfg.run.resize_check_s,
            use_gpu=use_gpu,  # one GPU per worker, unless resources_per_worker says otherwise
            resources_per_worker=worker_resources(cfg.run, use_gpu),  # run.cpus_per_worker, gpus_per_worker
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            # a preempted node (drained, or dead with Ray's preemption cause) is retried on its own budget
            failure_config=ray.train.FailureConfig(
                max_failures=cfg.run.max_failures,
                max_preemption_failures=cfg.run.max_preemptions,
                preemption_grace_s=cfg.run.preemption_grace_s,
            ),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.keep_best,  # Ray keeps the latest on top of these
                checkpoint_score_attribute="val_psnr",
                checkpoint_score_order="max",
            ),
            callbacks=[*callbacks, FailOnDataError()],
        ),
    )


def run_training(cfg: JobConfig, *, fault: Injection | None = None) -> TrainResult:
    """Check, train (resuming `<storage>/<name>` if it has checkpoints), and return where the outputs are.

    `fault`: see `build_trainer`. A bad training record met by a worker is an InputError naming
    `data.train`, the record and the worker's rank and step, raised at the first failure. CPU workers
    get `run.cpus_per_worker` CPUs, sized from the cluster when unset (`resources.size_cpu_workers`).
    """
    cfg = prepare(cfg)
    cfg.run.use_gpu = _use_gpu(cfg.run.use_gpu)  # decided once: CPU workers are sized by it
    cfg = size_cpu_workers(cfg)
    try:
        result = build_trainer(cfg, check=False, fault=fault).fit()
    except ray.train.ControllerError as e:
        if isinstance(e.controller_failure, DataError):
            raise InputError(f"data.train ({redact_url(cfg.data.train)}): {e.controller_failure}") from None
        raise
    checkpoint = result.checkpoint
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{HISTORY}") as f:
        history = json.loads(f.read().decode("utf-8"))
    run_url, name = cfg.run.url(), cfg.run.export_name
    return TrainResult(
        config=cfg,
        run_url=run_url,
        step=int(history[-1]["step"]),
        metrics=history[-1],
        history=history,
        checkpoint=checkpoint,
        weights_url=join(run_url, f"{name}.pth"),
        safetensors_url=join(run_url, f"{name}.safetensors"),
        report_url=join(run_url, "report.md"),
        tensorboard_url=join(run_url, "tensorboard"),
    )


def ray_num_workers(run: RunSpec) -> int | tuple[int, int]:
    """`ScalingConfig.num_workers`: the fixed size, or the elastic (min, max)."""
    low, high = run.worker_range
    return low if low == high else (low, high)


def ray_storage(url: str, storage_options: dict[str, Any] | None) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for RunConfig: local paths as they are, URLs through fsspec.

    Ray's own S3 client knows neither custom endpoints nor our storage options, so URL storage goes
    through the same fsspec filesystem as everything else.
    """
    if is_local(url):
        return url, None
    import pyarrow.fs

    fs, path = get_fs(url, storage_options)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def _use_gpu(setting: bool | str) -> bool:
    """`auto`: GPU workers when the cluster has GPUs (connects to, or starts, Ray)."""
    if setting != "auto":
        return bool(setting)
    if not ray.is_initialized():
        ray.init()
    if ray.cluster_resources().get("GPU", 0) >= 1:
        return True
    log.warning(
        "run.use_gpu=auto: the cluster has no GPU now, training on CPU workers "
        "(an autoscaling cluster adds GPU nodes only when asked: pass --set run.use_gpu=true)"
    )
    return False
