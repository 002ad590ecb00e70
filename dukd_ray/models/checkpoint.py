"""Checkpoint I/O: load official/BasicSR/our weights into our archs, and export ours in BasicSR's layout.

Everything goes through `dukd_ray.storage` (any fsspec URL) and is read with `weights_only=True`
(or as `.safetensors`), so a checkpoint can never run code.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from dukd_ray.models.blocks import SUPPORTED_SCALES
from dukd_ray.models.rcan import RCAN
from dukd_ray.models.registry import arch_defaults, build_arch
from dukd_ray.models.swinir import DERIVED_BUFFERS
from dukd_ray.models.wrappers import strip_wrapper_prefixes, unwrap
from dukd_ray.storage import read_bytes, redact_url, write_bytes_atomic

STATE_DICT_ENTRIES = ("params_ema", "params", "state_dict")  # BasicSR prefers the EMA weights
SHOW_KEYS = 5  # how many key names an error lists per category
MAX_SPEC_INT = 4096  # no keyword of a model we build is larger (widths 64..256, depths up to 36)
SPEC_SIZES = ("num_feat", "embed_dim", "num_block", "num_group", "depths")  # what an error shows
# residual blocks an arch_spec asks for; each holds more than one tensor of the file
ARCH_DEPTH: dict[str, Any] = {
    "edsr": lambda k: int(k["num_block"]),
    "rcan": lambda k: int(k["num_group"]) * int(k["num_block"]),
    "swinir": lambda k: sum(int(d) for d in k["depths"]),
}


class CheckpointError(ValueError):
    """A file is not a usable checkpoint, or does not fit the model; the message names the file."""


@dataclass
class LoadReport:
    """What `load_pretrained` did: where from, which entry and layout, what was loaded or skipped."""

    source: str  # redacted URL
    entry: str | None  # "params_ema" / "params" / ... or None for a bare state dict
    layout: str  # "basicsr" or "rcan-original"
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys the file lacks
    unexpected: list[str] = field(default_factory=list)  # file keys the model lacks
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )  # key, file, model

    @property
    def skipped(self) -> list[str]:
        """Every key not loaded: missing, unexpected and wrongly shaped."""
        return self.missing + self.unexpected + [k for k, _, _ in self.mismatched]

    @property
    def complete(self) -> bool:
        return not self.skipped

    def describe_skipped(self) -> str:
        shapes = [f"{k} (file {list(a)} vs model {list(b)})" for k, a, b in self.mismatched]
        parts = [
            _listing("missing from the file", self.missing),
            _listing("unexpected in the file", self.unexpected),
            _listing("wrongly shaped", shapes),
        ]
        return "; ".join(p for p in parts if p)


def _listing(what: str, keys: list[str]) -> str:
    if not keys:
        return ""
    more = f", ... (+{len(keys) - SHOW_KEYS} more)" if len(keys) > SHOW_KEYS else ""
    return f"{len(keys)} {what}: {', '.join(keys[:SHOW_KEYS])}{more}"


def load_pretrained(
    model: nn.Module, path_or_url: str, strict: bool = True, storage_options: dict[str, Any] | None = None
) -> LoadReport:
    """Load weights from a local path or fsspec URL into `model` (in place) and say what was loaded.

    Accepts BasicSR files (`params_ema` preferred over `params`), bare state dicts, `module.` prefixes,
    the original RCAN layout and SwinIR files with or without their derived buffers.
    strict=True: any missing / unexpected / wrongly shaped key is a CheckpointError listing them.
    strict=False: every tensor whose name and shape match is loaded, the rest is in the report's `skipped`
    (e.g. an x4 student initialised from an x2 one: all but the upsampler).
    """
    obj = _read_checkpoint(path_or_url, storage_options)
    return _load_into(unwrap(model), obj, redact_url(path_or_url), strict)


UPSAMPLER_PREFIXES = ("upsample.",)  # all that differs between the x2, x3 and x4 nets of one arch and preset
_STUDENT_ENTRIES = ("params", "params_ema", "state_dict")  # BasicSR: `params` -> net, `params_ema` -> EMA


@dataclass
class StudentInit:
    """What `load_student_init` loaded: the student's entry and, if the file has one, the EMA's."""

    student: LoadReport  # `params` (else the file's only weights) -> the student
    ema: LoadReport | None  # `params_ema` -> the EMA; None: the file has none, the EMA is the student's copy

    @property
    def skipped(self) -> list[str]:
        """The student's keys left at their random init (and file keys not used), all upsampler keys."""
        return sorted({*self.student.skipped, *(self.ema.skipped if self.ema else ())})

    def describe(self) -> str:
        ema = f"{self.ema.entry} -> EMA" if self.ema else "EMA = the initialised student (no params_ema)"
        skipped = ", ".join(self.skipped) or "nothing"
        return (
            f"{self.student.source}: {self.student.entry or 'state dict'} -> student "
            f"({len(self.student.loaded)} tensors), {ema}; skipped: {skipped}"
        )


def load_student_init(
    student: nn.Module,
    path_or_url: str,
    ema: nn.Module | None = None,
    storage_options: dict[str, Any] | None = None,
) -> StudentInit:
    """Initialise a student (and its EMA copy) from another run's weights, as BasicSR does.

    Non-strict: every tensor whose name and shape match is loaded, so an x4 student starts from an
    x2 one. `params` goes into `student`, `params_ema` (when the file has it) into `ema`; without it
    `ema` becomes a copy of the initialised student. Skipping anything but the upsampler
    (`UPSAMPLER_PREFIXES`) is a CheckpointError naming the keys, raised before anything is loaded.
    """
    obj = _read_checkpoint(path_or_url, storage_options)
    source = redact_url(path_or_url)
    entry = next((e for e in _STUDENT_ENTRIES if isinstance(obj.get(e), dict) and obj[e]), None)
    student_obj = {entry: obj[entry]} if entry else obj
    ema_obj = {"params_ema": obj["params_ema"]} if entry == "params" and obj.get("params_ema") else None
    targets = [(unwrap(student), student_obj)]
    if ema is not None and ema_obj is not None:
        targets.append((unwrap(ema), ema_obj))
    matched = [_match(model, o, source, strict=False) for model, o in targets]
    for report, _ in matched:
        outside = [k for k in report.skipped if not k.startswith(UPSAMPLER_PREFIXES)]
        if outside:
            raise CheckpointError(
                f"{source} ({report.entry or 'state dict'}) does not fit this "
                f"{type(unwrap(student)).__name__} student outside the upsampler "
                f"({', '.join(p + '*' for p in UPSAMPLER_PREFIXES)}): "
                f"{_listing('keys would be skipped', outside)} ({report.describe_skipped()})"
            )
    for (model, _), (report, state) in zip(targets, matched, strict=True):
        model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    if ema is not None and ema_obj is None:
        unwrap(ema).load_state_dict(unwrap(student).state_dict())
    return StudentInit(student=matched[0][0], ema=matched[1][0] if len(matched) > 1 else None)


def save_weights(
    url_prefix: str,
    params: Mapping[str, torch.Tensor] | nn.Module,
    params_ema: Mapping[str, torch.Tensor] | nn.Module | None = None,
    arch_spec: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Write `<prefix>.pth` (BasicSR layout + `meta.arch_spec`) and `<prefix>.safetensors` (EMA if given).

    Both are written atomically; returns their URLs. The state dicts keep BasicSR's key names, so the
    files also load into BasicSR's own archs.
    """
    params = _cpu_state(params)
    ema = _cpu_state(params_ema) if params_ema is not None else None
    spec = json.loads(json.dumps(arch_spec)) if arch_spec is not None else None  # plain JSON types only
    pth: dict[str, Any] = {"params": params}
    if ema is not None:
        pth["params_ema"] = ema
    pth["meta"] = {"arch_spec": spec}
    buf = io.BytesIO()
    torch.save(pth, buf)
    pth_url, st_url = f"{url_prefix}.pth", f"{url_prefix}.safetensors"
    write_bytes_atomic(pth_url, buf.getvalue(), storage_options)
    metadata = {"arch_spec": json.dumps(spec)} if spec is not None else None
    write_bytes_atomic(
        st_url, save_safetensors(ema if ema is not None else params, metadata=metadata), storage_options
    )
    return pth_url, st_url


def build_from_checkpoint(
    url: str,
    arch: str | None = None,
    scale: int | None = None,
    preset: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> nn.Module:
    """Build the model a checkpoint was saved from and load it strictly; returned in eval mode.

    Our exports carry `arch_spec` (then `preset` is not needed, and `arch`/`scale`, if given, must agree);
    foreign files (official, BasicSR) need `arch` and `scale`, and `preset` unless the defaults fit.
    """
    obj = _read_checkpoint(url, storage_options)
    source = redact_url(url)
    spec = _arch_spec(obj)
    if spec is not None:
        for name, given, saved in (("arch", arch, spec["arch"]), ("scale", scale, spec["scale"])):
            if given is not None and given != saved:
                raise CheckpointError(
                    f"{source} holds a {name}={saved!r} model, but --{name} {given} (or {name}={given!r}) "
                    "was asked for; leave it out (our exports carry it) or pass another checkpoint"
                )
        _check_spec(spec, obj, source)
        model = build_arch(spec["arch"], spec["scale"], **spec["kwargs"])
    elif arch is None or scale is None:
        raise CheckpointError(
            f"{source} carries no arch_spec (not exported by dukd-ray): pass --arch and --scale "
            "(arch= and scale= from Python), and --preset unless the defaults fit"
        )
    else:
        model = build_arch(arch, scale, preset)
    _load_into(model, obj, source, strict=True)
    return model.eval()


def _read_checkpoint(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """The file's top-level object: a `.safetensors` file becomes `{"params": tensors, "meta": {...}}`."""
    data = read_bytes(url, storage_options)
    name = redact_url(url)
    if str(url).endswith(".safetensors") or _looks_like_safetensors(data):
        try:
            tensors = load_safetensors(data)
        except (SafetensorError, ValueError) as e:
            raise CheckpointError(f"{name} is not a readable safetensors file: {e}") from None
        spec = _safetensors_metadata(data).get("arch_spec")
        return {"params": tensors, "meta": {"arch_spec": json.loads(spec) if spec else None}}
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors have no common base class
        raise CheckpointError(
            f"{name} is not a PyTorch checkpoint readable with {_why_unreadable(e)}"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name} holds a {type(obj).__name__}, not a state dict or a BasicSR dict")
    return obj


def _why_unreadable(e: Exception) -> str:
    """torch.load's refusal in one line: the blocked call and the warning, not its 1000-character advice."""
    text = " ".join(str(e).split())
    if "Weights only load failed" not in text:
        return f"weights_only=True: {type(e).__name__}: {text[:300]}"
    blocked = re.search(r"(?i)unsupported (?:global: )?GLOBAL ([\w.]+)", text)
    operand = re.search(r"Unsupported operand [^ .]+", text)
    what = (
        f"it would call {blocked.group(1)} on load"
        if blocked
        else (operand.group(0) if operand else text.split("WeightsUnpickler error:")[-1][:200])
    )
    return (
        f"weights_only=True: {what} (blocked); weights_only=False would load it but can result in "
        "arbitrary code execution: only do that for a file from a source you trust"
    )


def _check_spec(spec: Any, obj: dict[str, Any], source: str) -> None:
    """Refuse an `arch_spec` that does not describe the file's tensors, before anything is allocated.

    The spec is read from the file, so it is input like any other: its arch, scale and keywords are
    checked, its depth is bounded by the file's tensor count, and its every shape is compared with
    the tensors' on a model built on the meta device (no memory).
    """
    bad = f"{source}: its arch_spec {_short(spec)} "
    if not isinstance(spec, dict) or not isinstance(spec.get("kwargs"), dict):
        raise CheckpointError(bad + 'is not {"arch", "scale", "kwargs": {...}}')
    arch, scale, kwargs = spec.get("arch"), spec.get("scale"), spec["kwargs"]
    if arch not in ARCH_DEPTH or scale not in SUPPORTED_SCALES:
        raise CheckpointError(
            bad + f"names no model we build (arch {sorted(ARCH_DEPTH)}, scale {SUPPORTED_SCALES})"
        )
    unknown = sorted(set(kwargs) - set(arch_defaults(arch)))
    if unknown or not all(_sane(v) for v in kwargs.values()):
        why = f"unknown keywords {unknown}" if unknown else f"sizes above {MAX_SPEC_INT} or lists over 64"
        raise CheckpointError(bad + f"is not a model we build ({why})")
    state, _ = _extract_state(obj, source)
    try:
        blocks = ARCH_DEPTH[arch]({**arch_defaults(arch), **kwargs})
    except (TypeError, ValueError):
        blocks = MAX_SPEC_INT
    if blocks > len(state):
        raise CheckpointError(bad + f"asks for {blocks} blocks, but the file holds only {len(state)} tensors")
    try:
        with torch.device("meta"):
            skeleton = build_arch(arch, scale, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # loading into meta tensors copies nothing: a dry run
            _load_into(skeleton, obj, source, strict=True)
    except (CheckpointError, ValueError, TypeError) as e:
        why = str(e).removeprefix(source).strip()
        raise CheckpointError(bad + f"does not describe its tensors: {why}") from None


def _short(spec: Any) -> str:
    if isinstance(spec, dict) and isinstance(spec.get("kwargs"), dict):
        sizes = {k: v for k, v in spec["kwargs"].items() if k in SPEC_SIZES}
        return f"({spec.get('arch')!r} x{spec.get('scale')!r}, {sizes})"
    text = repr(spec)
    return text if len(text) <= 100 else text[:97] + "..."


def _sane(value: Any) -> bool:
    """A keyword of a model we would build: small numbers, short lists, strings, booleans."""
    if isinstance(value, (list, tuple)):
        return len(value) <= 64 and all(_sane(v) for v in value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    return isinstance(value, (int, float)) and abs(value) <= MAX_SPEC_INT


def _scale_of(state: Mapping[str, Any]) -> int | None:
    """The upscaling factor the upsampler's convs imply: two x2 stages (x4), or one x2 / x3 stage."""
    convs = [
        v
        for k, v in state.items()
        if re.fullmatch(r"upsample\.\d+\.weight", k) and getattr(v, "ndim", 0) == 4
    ]
    if len(convs) >= 2:
        return 2 ** len(convs)
    if len(convs) == 1 and convs[0].shape[1]:
        return {4: 2, 9: 3}.get(convs[0].shape[0] // convs[0].shape[1])
    return None


def _looks_like_safetensors(data: bytes) -> bool:
    """8-byte little-endian header length, then a JSON header."""
    return len(data) > 9 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") < len(data)


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}


def _arch_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    meta = obj.get("meta")
    return meta.get("arch_spec") if isinstance(meta, dict) else None


def _extract_state(obj: dict[str, Any], source: str) -> tuple[dict[str, torch.Tensor], str | None]:
    for entry in STATE_DICT_ENTRIES:
        if isinstance(obj.get(entry), dict) and obj[entry]:
            return obj[entry], entry
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    raise CheckpointError(
        f"{source}: no state dict found (looked for {', '.join(STATE_DICT_ENTRIES)} or a bare tensor dict); "
        f"top-level keys: {sorted(map(str, obj))[:10]}"
    )


def _rcan_original_to_basicsr(
    state: dict[str, torch.Tensor], num_group: int, num_block: int
) -> dict[str, torch.Tensor]:
    """Rename EDSR-PyTorch RCAN keys to BasicSR's (docs/evaluation.md); unmatched keys fail loudly later.

    The group's closing conv sits at index `num_block` of its body, the trunk's at index `num_group`.
    """
    rules = [
        (r"head\.0\.(.+)", r"conv_first.\1"),
        (r"body\.(\d+)\.body\.(\d+)\.body\.([02])\.(.+)", r"body.\1.residual_group.\2.rcab.\3.\4"),
        (
            r"body\.(\d+)\.body\.(\d+)\.body\.3\.conv_du\.0\.(.+)",
            r"body.\1.residual_group.\2.rcab.3.attention.1.\3",
        ),
        (
            r"body\.(\d+)\.body\.(\d+)\.body\.3\.conv_du\.2\.(.+)",
            r"body.\1.residual_group.\2.rcab.3.attention.3.\3",
        ),
        (rf"body\.(\d+)\.body\.{num_block}\.(.+)", r"body.\1.conv.\2"),
        (rf"body\.{num_group}\.(.+)", r"conv_after_body.\1"),
        (r"tail\.0\.(\d+)\.(.+)", r"upsample.\1.\2"),
        (r"tail\.1\.(.+)", r"conv_last.\1"),
    ]
    out = {}
    for key, value in state.items():
        if key.startswith(("sub_mean.", "add_mean.")):
            continue  # the mean shift is a fixed constant in our archs
        for pattern, repl in rules:
            if re.fullmatch(pattern, key):
                key = re.sub(pattern, repl, key)
                break
        out[key] = value
    return out


def _load_into(model: nn.Module, obj: dict[str, Any], source: str, strict: bool) -> LoadReport:
    report, state = _match(model, obj, source, strict)
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return report


def _match(
    model: nn.Module, obj: dict[str, Any], source: str, strict: bool
) -> tuple[LoadReport, dict[str, torch.Tensor]]:
    """What loading `obj` into `model` would load and skip (nothing is loaded yet), and the file's state."""
    state, entry = _extract_state(obj, source)
    state = strip_wrapper_prefixes(state)
    layout = "basicsr"
    if isinstance(model, RCAN) and "head.0.weight" in state:
        layout = "rcan-original"
        state = _rcan_original_to_basicsr(state, len(model.body), len(model.body[0].residual_group))
    # buffers derived from the config (SwinIR's index / mask) are the model's own, whatever the file holds
    derived = tuple(f".{b}" for b in DERIVED_BUFFERS)
    state = {k: v for k, v in state.items() if not k.endswith(derived)}
    target = {k: v for k, v in model.state_dict().items() if not k.endswith(derived)}

    report = LoadReport(source=source, entry=entry, layout=layout)
    report.missing = [k for k in target if k not in state]
    report.unexpected = [k for k in state if k not in target]
    for key, value in state.items():
        if key not in target:
            continue
        if not isinstance(value, torch.Tensor) or value.shape != target[key].shape:
            file_shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
            report.mismatched.append((key, file_shape, tuple(target[key].shape)))
        else:
            report.loaded.append(key)
    if not report.loaded or (strict and not report.complete):
        file_scale, model_scale = _scale_of(state), _scale_of(target)
        which = f"{type(model).__name__} model"
        if file_scale and model_scale and file_scale != model_scale:  # say so, not just upsample.2.* keys
            which = f"x{model_scale} {which}: this checkpoint is x{file_scale}"
        raise CheckpointError(
            f"{source} does not fit this {which} "
            f"({entry or 'state dict'}, {layout} layout): "
            f"{report.describe_skipped() or 'no tensors'}"
        )
    return report, state


def _cpu_state(params: Mapping[str, torch.Tensor] | nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies with wrapper prefixes removed (safetensors refuses shared storage)."""
    state = unwrap(params).state_dict() if isinstance(params, nn.Module) else params
    return strip_wrapper_prefixes({k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()})
