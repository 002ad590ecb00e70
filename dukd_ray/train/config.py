"""`JobConfig`: the one config object that flows from a job file (or a Tune trial) to every worker.

Plain nested dataclasses, so a reader sees every knob and its default in one place. Every way of
changing it (`--set k=v`, a YAML file, a dict from Tune) goes through `from_dict`, which coerces YAML
values to the field types and validates, so a typo or a bad value fails on the driver, before any Ray
worker starts, with a message naming the key and the valid keys.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from dukd_ray.data.sources import PairedFolders
from dukd_ray.distill.config import DistillConfig
from dukd_ray.distill.recipes import FAKD_TAPS, Recipe, recipe
from dukd_ray.models.blocks import SUPPORTED_SCALES
from dukd_ray.models.presets import PRESET_NAMES
from dukd_ray.models.registry import ARCHS
from dukd_ray.storage import join, read_bytes, redact_url

PRESETS = tuple(f"{arch}_x{scale}" for arch in ARCHS for scale in SUPPORTED_SCALES)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key (and the valid keys or values)."""


@dataclass
class ModelSpec:
    """Which networks: arch and scale, teacher/student presets (+ kwargs overriding them), weights."""

    arch: str = "edsr"
    scale: int = 4
    teacher_preset: str = "teacher"
    student_preset: str = "student"
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)
    student_kwargs: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None  # checkpoint URL; required by kd and dukd
    student_init: str | None = None  # loaded non-strictly (the reference starts EDSR x4 kd/dukd from x2)


@dataclass
class DataSpec:
    """Where the data is. `None` URLs mean the embedded sample set (single-machine runs only)."""

    train: str | None = None  # shard prefix (manifest.json) or DIV2K-layout root
    val: str | dict[str, str] | None = None  # benchmark-layout root, or {set name: "gt=HR,lq=LR[,tmpl=T]"}
    val_sets: list[str] | None = None  # None: every set found under `val`
    patch_size: int = 48  # LR patch side
    batch_size: int = 16  # most patches per forward/backward pass on a worker (larger shares accumulate)
    # patches per step over all workers; None: batch_size x workers at the run's first start, then
    # recorded in its checkpoints and kept whatever the world size (docs/training.md)
    global_batch_size: int | None = None
    loader_workers: int = 2  # decode processes per training worker
    cache_dir: str | None = None  # node-local folder caching shards for every process of the node
    cache_gb: float = 100.0  # the cache's bound on each node (GiB)
    patches_per_record: int = 1  # patches cut from every fetched crop (docs/performance.md)
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for every URL


@dataclass
class TrainSpec:
    """Optimisation and bookkeeping; presets take the schedule from their recipe (docs/distill.md)."""

    max_steps: int = 250_000
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    milestones: list[int] = field(default_factory=lambda: [100_000, 200_000])
    gamma: float = 0.1
    ema_decay: float = 0.999
    seed: int = 10
    amp: bool = False  # bf16 autocast (CPU workers: where the CPU has bf16 instructions, else fp32)
    compile: bool = False  # torch.compile the student and the teacher (eager if compilation fails)
    channels_last: bool = True  # network inputs on every worker; the weights too on CUDA workers
    log_every: int = 100
    val_every: int = 5000
    ckpt_every: int = 5000  # a multiple of val_every: checkpoints are scored by val_psnr
    keep_best: int = 2  # checkpoints kept by val_psnr, plus the latest
    val_self_ensemble: bool = False
    val_tile: int | None = None


@dataclass
class RunSpec:
    """Where results go and how the run is executed. Same name + storage = resume the run."""

    name: str | None = None  # None: "<arch>_x<scale>-<method>-<timestamp>", a fresh run
    storage: str = "~/dukd_runs"  # local dir or fsspec URL; the run folder is <storage>/<name>
    # a number, or [min, max] / "MIN-MAX" for an elastic run: starts once min fit, shrinks when nodes go,
    # grows back to max when they return (each resize restarts the group from the latest checkpoint)
    num_workers: int | list[int] | str = 1
    use_gpu: bool | str = "auto"  # auto: GPU workers when the cluster has GPUs
    gpus_per_worker: float = 1.0  # per GPU worker: a fraction shares a GPU (0.5: two runs on one GPU)
    # CPUs (= torch threads) per worker; None: run_training sizes CPU workers from the cluster, else 1
    cpus_per_worker: int | None = None
    max_failures: int = 3  # worker failures survived (restart from the last checkpoint); -1 = always
    max_preemptions: int = -1  # node preemptions survived, counted apart from max_failures; -1 = always
    resize_check_s: float = 60.0  # how often an elastic run looks for room to grow
    # after a drain's deadline the restart waits this long, so that Ray sizes the new group without the
    # reclaimed node (found dead by its health checks in ~15 s, seen by its sizing within 20 s more);
    # too short, and the restart first waits out Ray's 60 s start timeout for the node that is gone
    preemption_grace_s: float = 40.0
    export_name: str = "student"  # <run>/<export_name>.pth and .safetensors

    def url(self) -> str:
        """The run folder, `<storage>/<name>` (the name must be resolved by then)."""
        if self.name is None:
            raise ConfigError(
                "run.name is not set: resolve the config (dukd_ray.train.trainer.prepare) first"
            )
        return join(self.storage, self.name)

    @property
    def worker_range(self) -> tuple[int, int]:
        """(min, max) workers of a validated spec; min == max for a fixed-size run."""
        n = self.num_workers
        return (n, n) if isinstance(n, int) else (int(n[0]), int(n[1]))

    @property
    def max_workers(self) -> int:
        return self.worker_range[1]


_URL_KEYS = (
    ("model", "teacher"),
    ("model", "student_init"),
    ("data", "train"),
    ("data", "val"),
    ("run", "storage"),
)

SECTIONS: dict[str, type] = {
    "model": ModelSpec,
    "data": DataSpec,
    "distill": DistillConfig,
    "train": TrainSpec,
    "run": RunSpec,
}


@dataclass
class JobConfig:
    """Everything one training run needs; `to_dict()` is what travels to the workers."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    distill: DistillConfig = field(default_factory=lambda: recipe("edsr", 4, "dukd").distill)
    train: TrainSpec = field(default_factory=TrainSpec)
    run: RunSpec = field(default_factory=RunSpec)

    @classmethod
    def from_preset(cls, preset: str, tiny: bool = False, method: str = "dukd") -> JobConfig:
        """The reference's `method` recipe for `preset` (e.g. "edsr_x4"); `tiny`: narrow nets, short
        patches, few steps (the recipe's objective and optimiser, a 100-step run)."""
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
        arch, scale = preset.split("_x")
        cfg = cls(model=ModelSpec(arch=arch, scale=int(scale)))
        cfg.train = TrainSpec(**_recipe(arch, int(scale), method).schedule.train_fields())
        if tiny:
            cfg.model.teacher_preset, cfg.model.student_preset = "tiny_teacher", "tiny_student"
            cfg.data.patch_size, cfg.data.batch_size, cfg.data.loader_workers = 24, 4, 1
            # a short EMA horizon, so the validated (EMA) weights reflect a 100-step run
            bookkeeping = {"log_every": 10, "val_every": 25, "ckpt_every": 50, "keep_best": 1}
            cfg.train = dataclasses.replace(cfg.train, max_steps=100, ema_decay=0.9, **bookkeeping)
        return cfg.with_method(method)

    def with_method(self, method: str) -> JobConfig:
        """Switch to `method`'s recipe for this arch and scale, in place; returns self.

        Replaces the whole `distill` section (no weight carries over from the previous method) and the
        optimiser schedule (`train.lr`, `betas`, `weight_decay`, `milestones`, `gamma`); the run length,
        EMA decay and seed, the same in every recipe, are kept, so a tiny or shortened run stays so.
        FAKD's taps follow the student preset (the tiny nets have fewer blocks).
        """
        found = _recipe(self.model.arch, self.model.scale, method)
        distill = found.distill
        if method == "fakd":
            taps = FAKD_TAPS[self.model.arch].get(self.model.student_preset, distill.fakd_taps)
            distill = dataclasses.replace(distill, fakd_taps=taps)
        fields = found.schedule.train_fields()
        optimiser = {k: fields[k] for k in ("lr", "betas", "weight_decay", "milestones", "gamma")}
        self.distill, self.train = distill, dataclasses.replace(self.train, **optimiser)
        return self.validate()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: JobConfig | None = None) -> JobConfig:
        """Build from a (partial) nested mapping on top of `base` (default: the defaults).

        Top-level keys with a dot (`"train.lr": 2e-4`) are overrides, so a flat best-config file
        written by a sweep works as well as a nested one.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}")
        merged = (base or cls()).to_dict()
        dotted = {k: v for k, v in values.items() if "." in str(k)}
        for section, body in values.items():
            if section in dotted:
                continue
            if section not in SECTIONS:
                raise _unknown_section(section)
            if not isinstance(body, Mapping):
                raise ConfigError(f"config section {section!r} must be a mapping, got {body!r}")
            merged[section].update(body)
        for key, value in dotted.items():
            _set_path(merged, str(key), value)
        return cls(**{name: _build_section(name, merged[name]) for name in SECTIONS}).validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON values (lists, not tuples); `from_dict(to_dict())` round-trips."""
        out = {name: _plain(dataclasses.asdict(getattr(self, name))) for name in SECTIONS}
        out["distill"] = _plain(self.distill.to_dict())
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def redacted_dict(self) -> dict[str, Any]:
        """`to_dict()` safe to print or put in a report: URLs redacted, storage options masked."""
        out = self.to_dict()
        for section, key in _URL_KEYS:
            value = out[section][key]
            if isinstance(value, dict):
                out[section][key] = {k: redact_url(v) for k, v in value.items()}
            elif value:
                out[section][key] = redact_url(value)
        options = out["data"]["storage_options"]
        out["data"]["storage_options"] = {
            k: redact_url(v) if k == "endpoint_url" else "***" for k, v in options.items()
        }
        return out

    def apply_overrides(self, overrides: Iterable[str]) -> JobConfig:
        """Apply `section.key=value` strings (values parsed as YAML) in place; returns self."""
        return self._replace_with(JobConfig.from_dict(parse_overrides(overrides), base=self))

    def update_from_yaml(self, path_or_url: str, storage_options: dict[str, Any] | None = None) -> JobConfig:
        """Apply a YAML file (a full config, nested sections or dotted keys) in place; returns self."""
        text = read_bytes(path_or_url, storage_options).decode("utf-8")
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{redact_url(path_or_url)}: not valid YAML: {e}") from None
        try:
            return self._replace_with(JobConfig.from_dict(values, base=self))
        except ConfigError as e:
            raise ConfigError(f"{redact_url(path_or_url)}: {e}") from None

    def validate(self) -> JobConfig:
        """Cross-field checks (types were checked by `from_dict`); returns self."""
        m, d, t, r = self.model, self.data, self.train, self.run
        _check(m.arch in ARCHS, "model.arch", m.arch, f"one of {', '.join(ARCHS)}")
        *most, last = SUPPORTED_SCALES
        _check(m.scale in SUPPORTED_SCALES, "model.scale", m.scale, f"{', '.join(map(str, most))} or {last}")
        for key in ("teacher_preset", "student_preset"):
            _check(getattr(m, key) in PRESET_NAMES, f"model.{key}", getattr(m, key), f"one of {PRESET_NAMES}")
        _check(d.patch_size >= 4, "data.patch_size", d.patch_size, "an integer >= 4")
        _check(d.batch_size >= 1, "data.batch_size", d.batch_size, "an integer >= 1")
        g = d.global_batch_size
        _check(g is None or g >= 1, "data.global_batch_size", g, "null or an integer >= 1")
        _check(d.loader_workers >= 0, "data.loader_workers", d.loader_workers, "an integer >= 0")
        local = d.cache_dir is None or "://" not in d.cache_dir
        _check(local, "data.cache_dir", d.cache_dir, "null or a local folder on every node")
        _check(d.cache_gb > 0, "data.cache_gb", d.cache_gb, "a number > 0")
        _check(d.patches_per_record >= 1, "data.patches_per_record", d.patches_per_record, "an integer >= 1")
        _check(d.val_sets is None or len(d.val_sets) > 0, "data.val_sets", d.val_sets, "a non-empty list")
        if isinstance(d.val, dict):
            named = "a benchmark root, or a mapping {set name: gt=HR_FOLDER,lq=LR_FOLDER[,tmpl=T]}"
            _check(bool(d.val) and all(_is_paired(v) for v in d.val.values()), "data.val", d.val, named)
            unknown = [s for s in d.val_sets or () if s not in d.val]
            _check(not unknown, "data.val_sets", d.val_sets, f"names of data.val's sets ({', '.join(d.val)})")
        _check(t.max_steps >= 1, "train.max_steps", t.max_steps, "an integer >= 1")
        _check(t.lr > 0, "train.lr", t.lr, "a number > 0")
        _check(all(0 <= b < 1 for b in t.betas), "train.betas", t.betas, "two numbers in [0, 1)")
        _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "a number >= 0")
        ms = t.milestones
        increasing = all(a < b for a, b in zip([0, *ms], ms, strict=False))
        _check(increasing, "train.milestones", ms, "increasing positive steps")
        _check(0 < t.gamma <= 1, "train.gamma", t.gamma, "a number in (0, 1]")
        _check(0 <= t.ema_decay < 1, "train.ema_decay", t.ema_decay, "a number in [0, 1)")
        for key in ("log_every", "val_every", "ckpt_every", "keep_best"):
            _check(getattr(t, key) >= 1, f"train.{key}", getattr(t, key), "an integer >= 1")
        _check(t.ckpt_every % t.val_every == 0, "train.ckpt_every", t.ckpt_every, "a multiple of val_every")
        _check(t.val_tile is None or t.val_tile >= 8, "train.val_tile", t.val_tile, "null or an integer >= 8")
        for key in ("name", "export_name"):
            value = getattr(r, key)
            ok = (value is None and key == "name") or bool(_NAME_RE.match(str(value)))
            _check(ok, f"run.{key}", value, "a name of letters, digits, '.', '_', '-'")
        r.num_workers = worker_count(r.num_workers)
        ok = g is None or g >= r.max_workers
        _check(ok, "data.global_batch_size", g, "at least run.num_workers (a sample per worker per step)")
        _check(r.use_gpu in (True, False, "auto"), "run.use_gpu", r.use_gpu, "true, false or auto")
        g = r.gpus_per_worker
        ok = g > 0 and (g <= 1 or g == int(g))
        _check(ok, "run.gpus_per_worker", g, "a number > 0, and a whole number if above 1")
        if g < 1:  # NCCL refuses two ranks on one device, and Ray may pack both onto the same GPU
            _check(r.max_workers == 1, "run.gpus_per_worker", g, "1 or more with run.num_workers > 1")
        _check(r.max_failures >= -1, "run.max_failures", r.max_failures, "an integer >= -1")
        _check(r.max_preemptions >= -1, "run.max_preemptions", r.max_preemptions, "an integer >= -1")
        _check(r.resize_check_s > 0, "run.resize_check_s", r.resize_check_s, "a number of seconds > 0")
        grace = r.preemption_grace_s
        _check(grace >= 0, "run.preemption_grace_s", grace, "a number of seconds >= 0")
        c = r.cpus_per_worker
        _check(
            c is None or c >= 1, "run.cpus_per_worker", c, "null (sized from the cluster) or an integer >= 1"
        )
        try:
            self.distill.check_scale(m.scale)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return self

    def _replace_with(self, other: JobConfig) -> JobConfig:
        for name in SECTIONS:
            setattr(self, name, getattr(other, name))
        return self


def _is_paired(value: Any) -> bool:
    try:
        return isinstance(value, str) and PairedFolders.parse(value) is not None
    except ValueError:
        return False


def _recipe(arch: str, scale: int, method: str) -> Recipe:
    try:
        return recipe(arch, scale, method)
    except ValueError as e:
        raise ConfigError(str(e)) from None


_WORKER_RANGE_RE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def worker_count(value: int | list[int] | str) -> int | list[int]:
    """`run.num_workers` (or `--num-workers`) as an int, or [min, max] for an elastic run.

    Takes 4, "4", [4, 8] or "4-8"; [n, n] and "n-n" are the fixed size n.
    """
    expected, given = "an integer >= 1, or MIN-MAX / [min, max] with 1 <= min <= max (e.g. 4-8)", value
    if isinstance(value, str):
        match = _WORKER_RANGE_RE.match(value)
        if match:
            value = [int(match.group(1)), int(match.group(2))]
        elif value.strip().isdigit():
            value = int(value)
    if isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value):
        low, high = value
        _check(1 <= low <= high, "run.num_workers", given, expected)
        return low if low == high else [low, high]
    _check(type(value) is int and value >= 1, "run.num_workers", given, expected)
    return value


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """`["train.lr=2e-4", ...]` -> `{"train.lr": 2e-4, ...}` (values parsed as YAML; empty = null)."""
    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.lr=2e-4")
        if "." not in key:
            raise ConfigError(f"override {item!r}: the key needs a section, e.g. train.{key}")
        try:
            values[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from None
    return values


def _unknown_section(section: str) -> ConfigError:
    return ConfigError(f"unknown config section {section!r}; valid sections: {', '.join(SECTIONS)}")


def _unknown_key(section: str, name: str, valid: list[str]) -> ConfigError:
    valid_keys = ", ".join(valid)
    return ConfigError(f"unknown config key '{section}.{name}'; valid keys in {section!r}: {valid_keys}")


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def _set_path(merged: dict[str, Any], key: str, value: Any) -> None:
    """Set `section.field[.subkey...]` in a nested dict, naming the valid keys when one is unknown."""
    section, name, *rest = key.split(".")
    if section not in SECTIONS:
        raise _unknown_section(section)
    if name not in merged[section]:
        raise _unknown_key(section, name, list(merged[section]))
    if not rest:
        merged[section][name] = value
        return
    target = merged[section][name]
    if not isinstance(target, dict):
        raise ConfigError(f"{key}: {section}.{name} is not a mapping, so it has no sub-key {rest[0]!r}")
    target = merged[section][name] = dict(target)
    for part in rest[:-1]:
        target = target.setdefault(part, {})
    target[rest[-1]] = value


def _build_section(section: str, values: dict[str, Any]) -> Any:
    """Coerce every value to its field's type and build the section dataclass."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise _unknown_key(section, unknown[0], names)
    coerced = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    try:
        return cls(**coerced)
    except ValueError as e:  # DistillConfig validates itself and names its fields
        raise ConfigError(str(e)) from None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """YAML value -> the field type (YAML 1.1 reads `2e-4` as a string; ints are fine for floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if len(errors) == 1 else f"{key}: {value!r} fits none of {hint}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
        items = [_coerce(v, args[0], key) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        number = _number(value)
        if number is None or number != int(number):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(number)
    if hint is float:
        number = _number(value)
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(number)
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {hint}")  # a new field type needs a case above


def _number(value: Any) -> float | None:
    """A finite number from an int/float or a numeric string; None otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so YAML/JSON dumps stay plain."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
