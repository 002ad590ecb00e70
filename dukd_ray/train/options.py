"""BasicSR and DUKD option files as config values: `python jobs/train.py --config options/....yml`.

Researchers have option files already (the DUKD reference's `dukd_/kd_/fakd_...yml`, BasicSR's
`options/train/...`); translating one by hand into flags invites a silent mistake. `import_options`
reads every key of such a file: a key it maps becomes the config field it names (the table in
docs/training.md), a key that only steers logging elsewhere is listed as ignored, and any other key,
or a value this service does not reproduce, is a problem. All problems are raised together, as one
error naming each by its dotted path, so nothing changes the experiment silently. Paths in the file
are the author's machine: `--path-map OLD=NEW` rewrites their prefixes, and `check_paths` proves
every path the config still uses exists before anything trains.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dukd_ray.data.sources import PairedFolders
from dukd_ray.models.blocks import SUPPORTED_SCALES
from dukd_ray.models.presets import PRESET_NAMES, preset_kwargs
from dukd_ray.models.registry import arch_defaults
from dukd_ray.storage import exists, redact_url
from dukd_ray.train.config import ConfigError

MARKERS = ("model_type", "network_g", "datasets")  # keys no config of ours has at the top level
MODEL_TYPES = {"SRModel": "scratch", "BaseKD": "kd", "FAKD": "fakd", "DUKD": "dukd"}
NETWORK_TYPES = {"EDSR": "edsr", "RCAN": "rcan", "SwinIR": "swinir"}
SCHEDULERS = ("MultiStepLR", "MultiStepRestartLR")
# what `--tiny` sets itself, so a file's full-size networks, patches and run length give way to it
TINY_FIELDS = frozenset(
    {
        "model.teacher_preset",
        "model.student_preset",
        "model.teacher_kwargs",
        "model.student_kwargs",
        "data.patch_size",
        "data.batch_size",
        "data.loader_workers",
        "train.max_steps",
        "train.ema_decay",
        "train.log_every",
        "train.val_every",
        "train.ckpt_every",
        "distill.fakd_taps",
    }
)
# keys that steer only BasicSR's own logging, launching or output folders: listed once, not mapped
LOGGING_ONLY = {
    "dist_params": "BasicSR's launcher; Ray Train sets up the process group",
    "find_unused_parameters": "a DDP setting (the student uses every parameter)",
    "use_static_graph": "a DDP setting",
    "logger.wandb": "Weights & Biases; TensorBoard is written to the run folder",
    "logger.use_tb_logger": "TensorBoard is always written to <run>/tensorboard",
    "val.save_img": "BasicSR's image dumps; the run report shows crops",
    "val.pbar": "a progress bar",
    "datasets.train.name": "a label",
    "datasets.train.prefetch_mode": "loader speed only",
    "datasets.train.pin_memory": "loader speed only",
    "datasets.train.phase": "set by BasicSR itself",
    "path.experiments_root": "BasicSR's output folder; outputs go to <storage>/<name>",
    "path.models": "BasicSR's output folder",
    "path.training_states": "BasicSR's output folder",
    "path.log": "BasicSR's output folder",
    "path.visualization": "BasicSR's output folder",
    "path.root": "BasicSR's output folder",
    "is_train": "set by BasicSR itself",
    "dist": "set by BasicSR itself",
    "rank": "set by BasicSR itself",
    "world_size": "set by BasicSR itself",
    "auto_resume": "runs resume by name: same --name and --storage",
}


def is_option_file(values: Any) -> bool:
    """A BasicSR-style option file, recognised by keys our own configs never have."""
    return isinstance(values, Mapping) and any(key in values for key in MARKERS)


@dataclass(frozen=True)
class PathRule:
    """`--path-map OLD=NEW`: a path equal to OLD or under OLD/ gets NEW in place of OLD."""

    old: str
    new: str

    @classmethod
    def parse(cls, text: str) -> PathRule:
        old, sep, new = str(text).partition("=")
        if not sep or not old.strip() or not new.strip():
            raise ConfigError(f"--path-map {text!r}: expected OLD=NEW, e.g. /cache/SR=s3://bucket/SR")
        return cls(old.strip().rstrip("/") or "/", new.strip().rstrip("/") or "/")

    def apply(self, path: str) -> str | None:
        """`path` with the prefix replaced, or None if it is not under OLD (whole components only)."""
        if path == self.old:
            return self.new
        if path.startswith(self.old.rstrip("/") + "/"):
            return self.new.rstrip("/") + "/" + path[len(self.old.rstrip("/")) + 1 :]
        return None

    def __str__(self) -> str:
        return f"{self.old}={redact_url(self.new)}"


@dataclass(frozen=True)
class MappedPath:
    """A path of the file as written, where it ended up, and the rule that moved it (None: none matched)."""

    option: str  # dotted key in the option file
    field: str  # dotted config key holding it
    written: str
    path: str
    rule: PathRule | None


@dataclass
class Imported:
    """What an option file says: the preset and method it starts from, dotted config values on top."""

    preset: str
    method: str
    values: dict[str, Any]
    ignored: list[str]  # "key: why", logging-only keys and values this service does not use
    paths: list[MappedPath]


def import_options(
    options: Mapping[str, Any], path_map: Iterable[PathRule] = (), tiny: bool = False
) -> Imported:
    """Translate a BasicSR option file; ConfigError listing every key it cannot reproduce."""
    reader = _Reader(options, list(path_map))
    imported = reader.run()
    if reader.problems:
        count = len(reader.problems)
        raise ConfigError(
            f"{count} option key{'s' if count > 1 else ''} this service does not reproduce "
            f"(remove or change {'them' if count > 1 else 'it'}): " + "; ".join(reader.problems)
        )
    if tiny:
        imported.values = {k: v for k, v in imported.values.items() if k not in TINY_FIELDS}
    return imported


def check_paths(
    imported: Imported, config: Mapping[str, Any], storage_options: dict[str, Any] | None
) -> None:
    """Every path of the file that the config still uses exists (a flag or `--set` may have replaced it)."""
    for p in imported.paths:
        if _lookup(config, p.field) != imported.values.get(p.field, _lookup_imported(imported, p.field)):
            continue
        if not exists(p.path, storage_options):
            tried = f"--path-map {p.rule} applied" if p.rule else "no --path-map matched it"
            raise ConfigError(
                f"{p.option}: {redact_url(p.path)} does not exist (written {redact_url(p.written)}; "
                f"{tried}); give --path-map OLD=NEW for the author's prefix"
            )


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _lookup_imported(imported: Imported, dotted: str) -> Any:
    """A value below a dotted key of the import (`data.val.Set5` inside `data.val`)."""
    head, _, rest = dotted.rpartition(".")
    parent = imported.values.get(head)
    return parent.get(rest) if isinstance(parent, Mapping) else None


def _leaves(values: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, dotted + ".")
        else:
            yield dotted


class _Reader:
    """One pass over the file: every key is mapped, ignored or a problem; none is left unread."""

    def __init__(self, options: Mapping[str, Any], rules: list[PathRule]) -> None:
        self.options, self.rules = options, rules
        self.seen: set[str] = set()
        self.problems: list[str] = []
        self.ignored: list[str] = []
        self.values: dict[str, Any] = {}
        self.paths: list[MappedPath] = []

    # -- reading ---------------------------------------------------------------------------------
    def get(self, dotted: str, default: Any = None) -> Any:
        """The value at `dotted` (None/absent: `default`), marked as read with everything below it."""
        self.seen.add(dotted)
        value: Any = self.options
        for part in dotted.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return default
            value = value[part]
        return default if value is None else value

    def section(self, dotted: str) -> Mapping[str, Any]:
        """A mapping at `dotted` without marking its keys read ({} if absent or not a mapping)."""
        value = self.get(dotted)
        self.seen.discard(dotted)
        if value is not None and not isinstance(value, Mapping):
            self.problem(dotted, f"expected a mapping, got {value!r}")
            self.seen.add(dotted)
            return {}
        return value or {}

    def problem(self, dotted: str, why: str) -> None:
        self.problems.append(f"{dotted}: {why}")

    def ignore(self, dotted: str, why: str) -> None:
        self.seen.add(dotted)
        self.ignored.append(f"{dotted}: {why}")

    def number(self, dotted: str, default: Any = None, integer: bool = False) -> Any:
        """The number at `dotted` (YAML 1.1 reads `5e3` as text: accepted), or a problem."""
        return self.as_number(dotted, self.get(dotted, default), integer)

    def as_number(self, dotted: str, value: Any, integer: bool = False) -> Any:
        if value is None:
            return None
        try:
            number = float(value) if isinstance(value, str) else value
            ok = isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number)
        except ValueError:
            ok = False
        if not ok or (integer and number != int(number)):
            self.problem(dotted, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
            return None
        return int(number) if integer else float(number)

    def expect(self, dotted: str, allowed: tuple[Any, ...], why: str, default: Any = None) -> Any:
        value = self.get(dotted, default)
        if value not in allowed:
            self.problem(dotted, f"{value!r}: {why}")
        return value

    def set(self, key: str, value: Any) -> None:
        if value is not None:
            self.values[key] = value

    def mapped_path(self, dotted: str, config_key: str) -> str | None:
        written = self.get(dotted)
        if written is None:
            return None
        if not isinstance(written, str):
            self.problem(dotted, f"expected a path, got {written!r}")
            return None
        matches = [(rule, new) for rule in self.rules if (new := rule.apply(written)) is not None]
        rule, path = max(matches, key=lambda m: len(m[0].old)) if matches else (None, written)
        self.paths.append(MappedPath(dotted, config_key, written, path, rule))
        return path

    # -- the mapping -------------------------------------------------------------------------------
    def run(self) -> Imported:
        scale = self.number("scale", integer=True)
        if scale not in SUPPORTED_SCALES:
            self.problem("scale", f"{scale!r}: expected one of {', '.join(map(str, SUPPORTED_SCALES))}")
            scale = 4
        model_type = self.get("model_type")
        method = MODEL_TYPES.get(model_type)
        if method is None:
            self.problem("model_type", f"{model_type!r}: expected one of {', '.join(MODEL_TYPES)}")
            method = "dukd"
        self.method, self.scale = method, scale
        arch = self._network("network_g", "student", required=True) or "edsr"
        if method == "scratch":
            if self.get("network_t") is not None:
                self.ignore("network_t", "not used by SRModel")
        else:
            teacher = self._network("network_t", "teacher", required=True)
            if teacher and teacher != arch:
                self.problem("network_t.type", f"the teacher must be the student's arch ({arch})")
        self._top_level()
        self._paths()
        self._datasets()
        self._train(arch)
        self._val()
        self._logger()
        for key in LOGGING_ONLY:
            if self.get(key) is not None:
                self.ignore(key, LOGGING_ONLY[key])
        for leaf in _leaves(self.options):
            if not any(leaf == s or leaf.startswith(s + ".") for s in self.seen):
                self.problem(leaf, "not a key this service knows")
        return Imported(f"{arch}_x{scale}", method, self.values, self.ignored, self.paths)

    def _top_level(self) -> None:
        name = self.get("name")
        if name is not None:
            self.set("run.name", str(name))
        gpus = self.get("num_gpu")
        if gpus == 0:
            self.set("run.use_gpu", False)
        elif gpus != "auto" and gpus is not None:
            self.set("run.num_workers", self.number("num_gpu", integer=True))
        self.set("train.seed", self.number("manual_seed", integer=True))

    def _network(self, key: str, role: str, required: bool) -> str | None:
        """`type` + kwargs -> arch, the closest preset and the kwargs that differ from it. The names are
        checked here; the values when the preflight builds the nets (`build_arch`, naming the config key)."""
        spec = dict(self.section(key))
        self.seen.add(key)
        if not spec:
            if required:
                self.problem(key, f"missing: the {role} network (type and arguments)")
            return None
        arch = NETWORK_TYPES.get(spec.pop("type", None))
        if arch is None:
            self.problem(
                f"{key}.type", f"{self.get(key + '.type')!r}: expected one of {', '.join(NETWORK_TYPES)}"
            )
            return None
        upscale = spec.pop("upscale", self.scale)
        if upscale != self.scale:
            self.problem(f"{key}.upscale", f"{upscale!r} differs from scale {self.scale}")
        defaults = arch_defaults(arch)
        for bad in sorted(set(spec) - set(defaults)):
            self.problem(f"{key}.{bad}", f"not an argument of {arch} (valid: {', '.join(defaults)})")
            spec.pop(bad)
        preset, kwargs = _closest_preset(arch, spec, role)
        self.set(f"model.{role}_preset", preset)
        self.set(f"model.{role}_kwargs", kwargs)
        return arch

    def _paths(self) -> None:
        self.set("model.student_init", self.mapped_path("path.pretrain_network_g", "model.student_init"))
        self.get("path.strict_load_g")  # either way: only the upsampler may be skipped (docs/training.md)
        self.expect("path.param_key_g", ("params",), "the student loads params, its EMA params_ema", "params")
        if self.method != "scratch":
            self.set("model.teacher", self.mapped_path("path.pretrain_network_t", "model.teacher"))
            self.expect("path.param_key_t", ("params", "params_ema"), "params or params_ema", "params")
            self.expect("path.strict_load_t", (True,), "the teacher is always loaded strictly", True)
        else:
            for key in ("pretrain_network_t", "param_key_t", "strict_load_t"):
                if self.get(f"path.{key}") is not None:
                    self.ignore(f"path.{key}", "not used by SRModel")
        self.expect("path.resume_state", (None,), "a BasicSR training state; runs resume by --name", None)

    def _datasets(self) -> None:
        phases = self.section("datasets")
        if "train" not in phases:
            self.problem("datasets.train", "missing: the training set")
        val: dict[str, str] = {}
        for phase in phases:
            if phase == "train":
                self._train_set()
            elif str(phase).startswith("val"):
                name, spec = self._val_set(f"datasets.{phase}")
                if name in val:
                    self.problem(f"datasets.{phase}.name", f"{name!r} names two validation sets")
                val[name] = spec
            else:
                self.problem(f"datasets.{phase}", "phases are train and val*")
        if val:
            self.set("data.val", val)

    def _folders(self, key: str) -> str:
        """`dataroot_gt` + `dataroot_lq` + `filename_tmpl` as a paired-folders string (paths mapped)."""
        for sub, allowed, why in (
            ("type", ("PairedImageDataset",), "only PairedImageDataset"),
            ("io_backend.type", ("disk",), "only disk folders (any fsspec URL)"),
            ("meta_info_file", (None,), "a file list; the whole folder is read"),
            ("color", (None,), "RGB only"),
        ):
            self.expect(f"{key}.{sub}", allowed, why)
        self.seen.add(f"{key}.io_backend")
        gt = self.mapped_path(f"{key}.dataroot_gt", "")
        lq = self.mapped_path(f"{key}.dataroot_lq", "")
        tmpl = self.get(f"{key}.filename_tmpl", "{}")
        if not gt or not lq:
            self.problem(key, "needs dataroot_gt and dataroot_lq")
            return ""
        try:
            return PairedFolders(gt, lq, str(tmpl)).spec()
        except ValueError as e:
            self.problem(f"{key}.filename_tmpl", str(e))
            return ""

    def _train_set(self) -> None:
        key = "datasets.train"
        spec = self._folders(key)
        self._claim_paths(2, "data.train")
        self.set("data.train", spec or None)
        for flip in ("use_hflip", "use_flip"):
            if self.get(f"{key}.{flip}") is not None:
                self.expect(f"{key}.{flip}", (True,), "training always flips and rotates (BasicSR's augment)")
        if self.get(f"{key}.use_hflip") is None and self.get(f"{key}.use_flip") is None:
            self.problem(f"{key}.use_hflip", "missing: training always flips and rotates")
        self.expect(f"{key}.use_rot", (True,), "training always flips and rotates (BasicSR's augment)")
        self.expect(f"{key}.use_shuffle", (True,), "training data are always shuffled", True)
        gt_size = self.number(f"{key}.gt_size", integer=True)
        if gt_size is None or gt_size % self.scale:
            self.problem(f"{key}.gt_size", f"{gt_size!r}: expected a multiple of scale {self.scale}")
        else:
            self.set("data.patch_size", gt_size // self.scale)
        self.set("data.batch_size", self.number(f"{key}.batch_size_per_gpu", integer=True))
        self.set("data.loader_workers", self.number(f"{key}.num_worker_per_gpu", integer=True))
        if self.get(f"{key}.dataset_enlarge_ratio") is not None:
            self.ignore(
                f"{key}.dataset_enlarge_ratio", "BasicSR's epoch length; training is counted in iterations"
            )

    def _val_set(self, key: str) -> tuple[str, str]:
        name = str(self.get(f"{key}.name", key.rpartition(".")[2]))
        spec = self._folders(key)
        self._claim_paths(2, f"data.val.{name}")
        return name, spec

    def _claim_paths(self, count: int, config_key: str) -> None:
        """The last `count` mapped paths belong to `config_key` (known once the set is named)."""
        for i in range(len(self.paths) - count, len(self.paths)):
            if i >= 0 and not self.paths[i].field:
                p = self.paths[i]
                self.paths[i] = MappedPath(p.option, config_key, p.written, p.path, p.rule)

    def _train(self, arch: str) -> None:
        t = "train"
        self.set("train.ema_decay", self.number(f"{t}.ema_decay", 0.0))  # BasicSR: no EMA unless given
        self.expect(f"{t}.optim_g.type", ("Adam",), "only Adam")
        self.set("train.lr", self.number(f"{t}.optim_g.lr"))
        self.set("train.weight_decay", self.number(f"{t}.optim_g.weight_decay", 0.0))
        betas = self.get(f"{t}.optim_g.betas", [0.9, 0.999])  # torch's default, as BasicSR passes it on
        self.set("train.betas", list(betas) if isinstance(betas, (list, tuple)) else betas)
        if self.number(f"{t}.optim_g.eps", 1e-8) != 1e-8:
            self.problem(f"{t}.optim_g.eps", "Adam's eps is 1e-8")
        self.expect(f"{t}.optim_g.amsgrad", (False,), "plain Adam", False)
        scheduler = self.expect(
            f"{t}.scheduler.type", SCHEDULERS, "MultiStepLR, or MultiStepRestartLR without restarts"
        )
        milestones = self.get(f"{t}.scheduler.milestones", [])
        if isinstance(milestones, list):  # BasicSR files write `!!float 1e5` or `100000`
            milestones = [self.as_number(f"{t}.scheduler.milestones", m, integer=True) for m in milestones]
        self.set("train.milestones", milestones)
        self.set("train.gamma", self.number(f"{t}.scheduler.gamma", 0.1))
        if scheduler == "MultiStepRestartLR":
            self.expect(f"{t}.scheduler.restarts", ([0], [], (0,)), "restarts are not reproduced", [0])
            self.expect(f"{t}.scheduler.restart_weights", ([1], [], (1,)), "restarts are not reproduced", [1])
        self.set("train.max_steps", self.number(f"{t}.total_iter", integer=True))
        if self.get(f"{t}.total_iter") is None:
            self.problem(f"{t}.total_iter", "missing: the number of iterations")
        warmup = self.number(f"{t}.warmup_iter", -1, integer=True)
        if warmup is not None and warmup > 0:
            self.problem(f"{t}.warmup_iter", f"{warmup}: no learning-rate warm-up")
        for gan in ("perceptual_opt", "gan_opt", "optim_d", "net_d_iters", "net_d_init_iters"):
            if self.get(f"{t}.{gan}") is not None:
                self.problem(f"{t}.{gan}", "perceptual and GAN training are not supported")
        w_pix = self._l1(f"{t}.pixel_opt")
        w_kd = self._l1(f"{t}.kd_opt") if self.method != "scratch" else None
        self.set("distill.method", self.method)
        if self.method == "scratch":
            if w_pix != 1.0:
                self.problem(
                    f"{t}.pixel_opt", "SRModel: an L1 pixel loss of weight 1 (scratch trains plain L1)"
                )
            for unused in ("kd_opt", "feature_opt", "feature_distillation", "dukd_opt", "noisy"):
                if self.get(f"{t}.{unused}") is not None:
                    self.ignore(f"{t}.{unused}", "not read by SRModel")
            return
        self.set("distill.w_pix", w_pix or 0.0)
        self.set("distill.w_kd", w_kd or 0.0)
        unused = {"kd": ("feature_opt", "feature_distillation", "dukd_opt", "noisy")}
        unused["fakd"], unused["dukd"] = ("dukd_opt", "noisy"), ("feature_opt", "feature_distillation")
        for key in unused[self.method]:
            if self.get(f"{t}.{key}") is not None:
                self.ignore(f"{t}.{key}", f"not read by {self.get('model_type')}")
        if self.method == "fakd":
            self._fakd(arch)
        if self.method == "dukd":
            self._dukd()

    def _l1(self, key: str) -> float | None:
        """The weight of an L1 loss (None: the loss is absent)."""
        if not self.section(key):
            self.seen.add(key)
            return None
        self.expect(f"{key}.type", ("L1Loss",), "only L1 losses")
        self.expect(f"{key}.reduction", ("mean",), "mean reduction", "mean")
        return self.number(f"{key}.loss_weight", 1.0)

    def _fakd(self, arch: str) -> None:
        key = "train.feature_distillation"
        self.set("distill.w_feat", self._l1("train.feature_opt") or 0.0)
        self.expect(f"{key}.type", ("SA",), "only SA, FAKD's spatial affinity")
        positions = self.get(f"{key}.positions")
        if isinstance(positions, Mapping):
            if positions.get("t") != positions.get("g"):
                self.problem(f"{key}.positions", "teacher and student are tapped at the same modules")
                return
            positions = positions.get("g")
        if not isinstance(positions, list) or not positions:
            self.problem(f"{key}.positions", f"expected a list of modules, got {positions!r}")
            return
        taps = [f"body.{p}" if isinstance(p, int) or str(p).isdigit() else str(p) for p in positions]
        if arch == "swinir" and any(isinstance(p, int) or str(p).isdigit() for p in positions):
            self.problem(f"{key}.positions", "SwinIR taps are module names (e.g. layers.0)")
        self.set("distill.fakd_taps", taps)

    def _dukd(self) -> None:
        key = "train.dukd_opt"
        n_gt_sub = self.get(f"{key}.n_gt_sub", [1])  # the reference reads n_gt_sub[0]
        if isinstance(n_gt_sub, list):
            if len(n_gt_sub) != 1:
                self.problem(
                    f"{key}.n_gt_sub", f"{n_gt_sub!r}: one count (the reference uses the first only)"
                )
            n_gt_sub = n_gt_sub[0] if n_gt_sub else 1
        self.set("distill.n_gt_sub", n_gt_sub)
        self.set("distill.zoom_in", True)
        self.set("distill.zoom_out", bool(self.get(f"{key}.zoom_out", False)))
        noisy = self.get("train.noisy")
        self.set("distill.label_consistency", bool(noisy))
        if noisy:
            self.set("distill.lc_prob", self.number("train.noisy.prob", 0.3))

    def _val(self) -> None:
        self.set("train.val_every", self.number("val.val_freq", integer=True))
        self.set("train.val_self_ensemble", self.get("val.self_ensemble"))
        metrics = self.section("val.metrics")
        self.seen.add("val.metrics")
        for name, metric in metrics.items():
            key = f"val.metrics.{name}"
            metric = metric if isinstance(metric, Mapping) else {}
            differs = metric.get("type") not in ("calculate_psnr", "calculate_ssim") or (
                metric.get("crop_border") not in (None, self.scale)
                or metric.get("test_y_channel") is not True
            )
            if differs:
                self.ignore(
                    key, f"validation always reports Y-channel PSNR and SSIM, crop_border {self.scale}"
                )

    def _logger(self) -> None:
        self.set("train.log_every", self.number("logger.print_freq", integer=True))
        ckpt = self.number("logger.save_checkpoint_freq", integer=True)
        val = self.values.get("train.val_every")
        if ckpt is not None and val and ckpt % val:
            self.problem(
                "logger.save_checkpoint_freq",
                f"{ckpt} is not a multiple of val.val_freq {val} (checkpoints are kept by validation PSNR)",
            )
        self.set("train.ckpt_every", ckpt)


def _closest_preset(arch: str, kwargs: Mapping[str, Any], role: str) -> tuple[str, dict[str, Any]]:
    """The preset needing the fewest overrides for `kwargs` (ties: the role's own), and those overrides."""
    defaults = arch_defaults(arch)
    wanted = _plain({**defaults, **kwargs})
    best: tuple[int, int, str, dict[str, Any]] | None = None
    for rank, preset in enumerate(sorted(PRESET_NAMES, key=lambda p: p != role)):
        resolved = _plain({**defaults, **preset_kwargs(arch, preset)})
        diff = {k: v for k, v in wanted.items() if resolved[k] != v}
        if best is None or (len(diff), rank) < best[:2]:
            best = (len(diff), rank, preset, diff)
    assert best is not None
    return best[2], best[3]


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
