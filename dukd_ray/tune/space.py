"""Search spaces over a job's config, read from a YAML file users edit, checked before anything starts.

A space file maps config keys to a constant or to one sampling form; bare names are `distill.<name>`
(the DUKD knobs), other sections are named in full (`train.lr`):

    space:
      w_pix: {loguniform: [0.5, 10.0]}
      n_gt_sub: {choice: [1, 2, 4]}
      lc_ops: {subsets: [invert, flip_h, flip_w, transpose], min_size: 1}
      step_mode: paper                      # a constant: applied to every trial
    start: [paper]                          # evaluated first: the paper's row, or {key: value} points

Forms: `choice`, `grid` (every value, once per sample), `uniform [lo, hi]`, `loguniform [lo, hi]`,
`quniform [lo, hi, q]`, `randint [lo, hi]` (both ends included), `subsets [items]` (+ `min_size`).
List values (op sets) travel through Tune as strings like `invert+flip_h` ("none" = the empty set):
Optuna only accepts scalars as categorical values.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from dukd_ray import storage

FORMS = ("choice", "grid", "uniform", "loguniform", "quniform", "randint", "subsets")
CATEGORICAL = ("choice", "grid", "subsets")
EMPTY_SET = "none"
PAPER_POINT = "paper"


class SpaceError(ValueError):
    """A search space file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    """One searched key: its form and its arguments (categorical values already expanded)."""

    key: str  # "section.field"
    form: str
    values: tuple[Any, ...] = ()  # categorical forms: every allowed value (lists as tuples)
    bounds: tuple[float, ...] = ()  # numeric forms: (lo, hi) or (lo, hi, q)

    @property
    def list_valued(self) -> bool:
        return any(isinstance(v, tuple) for v in self.values)

    def encode(self, value: Any) -> Any:
        """The Tune-side value of a config value (op sets as `a+b` strings)."""
        if self.list_valued:
            return "+".join(value) if value else EMPTY_SET
        return value

    def decode(self, value: Any) -> Any:
        """The config value of a Tune-side value."""
        if self.list_valued:
            return [] if value == EMPTY_SET else value.split("+")
        return value

    def contains(self, value: Any) -> bool:
        if self.form in CATEGORICAL:
            if self.list_valued:
                return isinstance(value, (list, tuple)) and any(set(value) == set(v) for v in self.values)
            return any(_same(value, v) for v in self.values)
        if not _is_number(value) or (self.form == "randint" and not isinstance(value, int)):
            return False
        return self.bounds[0] <= value <= self.bounds[1]

    def candidates(self) -> list[Any]:
        """Values that bound what a trial can get: every categorical value, or both ends of a range."""
        if self.form in CATEGORICAL:
            return [list(v) if isinstance(v, tuple) else v for v in self.values]
        lo, hi = self.bounds[:2]
        return [int(lo), int(hi)] if self.form == "randint" else [lo, hi]

    def to_tune(self) -> Any:
        from ray import tune

        if self.form in ("choice", "subsets"):
            return tune.choice([self.encode(v) for v in self.values])
        if self.form == "grid":
            return tune.grid_search([self.encode(v) for v in self.values])
        if self.form == "randint":
            return tune.randint(int(self.bounds[0]), int(self.bounds[1]) + 1)  # Tune's upper end is excluded
        return getattr(tune, self.form)(*self.bounds)


@dataclass(frozen=True)
class SearchSpace:
    """Searched params, constants and start points, all keyed by `section.field`."""

    source: str
    params: tuple[Param, ...]
    constants: dict[str, Any]
    start: tuple[str | dict[str, Any], ...]  # PAPER_POINT or {key: config value}

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    @property
    def has_grid(self) -> bool:
        return any(p.form == "grid" for p in self.params)

    def to_tune(self) -> dict[str, dict[str, Any]]:
        """Tune's `param_space`: nested by section, so a trial's config reads like the job config."""
        out: dict[str, dict[str, Any]] = {}
        for p in self.params:
            section, name = p.key.split(".", 1)
            out.setdefault(section, {})[name] = p.to_tune()
        return out

    def encode_point(self, values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """A full point (config values for every searched key) in `param_space` shape."""
        out: dict[str, dict[str, Any]] = {}
        for p in self.params:
            section, name = p.key.split(".", 1)
            out.setdefault(section, {})[name] = p.encode(values[p.key])
        return out

    def decode(self, trial_config: Mapping[str, Any]) -> dict[str, Any]:
        """Config values of one trial, keyed by `section.field` (what the table shows)."""
        out = {}
        for p in self.params:
            section, name = p.key.split(".", 1)
            out[p.key] = p.decode(trial_config[section][name])
        return out


def load_space(
    url: str, fields: Mapping[str, Sequence[str]], storage_options: dict | None = None
) -> SearchSpace:
    """Read and check a space file (any fsspec URL); `fields` lists the valid fields of each section."""
    try:
        text = storage.read_bytes(url, storage_options).decode("utf-8")
    except FileNotFoundError:
        raise SpaceError(f"search space file not found: {storage.redact_url(url)}") from None
    return parse_space(text, fields, source=storage.redact_url(url))


def parse_space(text: str, fields: Mapping[str, Sequence[str]], source: str = "<space>") -> SearchSpace:
    """Parse YAML text into a SearchSpace, or raise SpaceError naming `source` and the offending key."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpaceError(f"{source}: invalid YAML: {e}") from None
    if not isinstance(data, dict) or "space" not in data:
        raise SpaceError(f"{source}: expected a mapping with a 'space' key (and optionally 'start')")
    extra = sorted(set(data) - {"space", "start"})
    if extra:
        raise SpaceError(f"{source}: unknown top-level key(s) {extra}; expected 'space' and 'start'")
    raw = data["space"]
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{source}: 'space' must be a non-empty mapping of config keys")

    params: list[Param] = []
    constants: dict[str, Any] = {}
    for raw_key, spec in raw.items():
        key = _full_key(raw_key, fields, source)
        if key in constants or key in {p.key for p in params}:
            raise SpaceError(f"{source}: key '{raw_key}' appears twice (as a bare and a full name)")
        if isinstance(spec, dict):
            params.append(_parse_param(key, spec, f"{source}: key '{raw_key}'"))
        else:
            constants[key] = spec
    if not params:
        raise SpaceError(f"{source}: nothing to search: every key in 'space' is a constant")
    start = _parse_start(data.get("start") or [], params, fields, source)
    return SearchSpace(source=source, params=tuple(params), constants=constants, start=start)


def check_values(space: SearchSpace, validate: Callable[[dict[str, Any]], None]) -> None:
    """Run `validate({key: value})` on every constant and on each param's bounding values.

    `validate` raises ValueError for a value the job config rejects (an unknown op, n_gt_sub larger than
    the zoom-in grid, a negative weight...); the error is re-raised naming the space file and key, so a
    bad space fails before any trial starts.
    """
    checks = [(k, v) for k, v in space.constants.items()]
    checks += [(p.key, v) for p in space.params for v in p.candidates()]
    for key, value in checks:
        try:
            validate({key: value})
        except ValueError as e:
            raise SpaceError(
                f"{space.source}: key '{key}' value {value!r} is rejected by the job config: {e}"
            ) from None


def _full_key(raw_key: Any, fields: Mapping[str, Sequence[str]], source: str) -> str:
    key = str(raw_key) if "." in str(raw_key) else f"distill.{raw_key}"
    section, name = key.split(".", 1)
    if name not in fields.get(section, ()):
        valid = [f"{s}.{n}" for s, names in fields.items() for n in names]
        raise SpaceError(
            f"{source}: unknown key '{raw_key}'; bare names are distill fields "
            f"({', '.join(fields.get('distill', ()))}), others are section.field, one of: {', '.join(valid)}"
        )
    return key


def _parse_param(key: str, spec: dict, where: str) -> Param:
    forms = [f for f in spec if f in FORMS]
    extra = sorted(set(spec) - set(FORMS) - {"min_size"})
    if len(forms) != 1 or extra:
        raise SpaceError(f"{where}: expected exactly one of {list(FORMS)} (got {sorted(spec)})")
    form = forms[0]
    if "min_size" in spec and form != "subsets":
        raise SpaceError(f"{where}: 'min_size' only goes with 'subsets'")
    arg = spec[form]
    if form in ("choice", "grid"):
        return Param(key, form, values=_categorical(arg, where, form))
    if form == "subsets":
        return Param(key, form, values=_subsets(arg, spec.get("min_size", 1), where))
    return Param(key, form, bounds=_bounds(form, arg, where))


def _categorical(arg: Any, where: str, form: str) -> tuple[Any, ...]:
    if not isinstance(arg, list) or not arg:
        raise SpaceError(f"{where}: '{form}' needs a non-empty list of values, got {arg!r}")
    values = []
    for v in arg:
        if isinstance(v, dict):
            raise SpaceError(f"{where}: '{form}' values must be scalars or lists, got {v!r}")
        if isinstance(v, list):
            if not all(isinstance(x, str) for x in v):
                raise SpaceError(f"{where}: list values in '{form}' must be lists of names, got {v!r}")
            v = tuple(v)
        if any(_same(v, seen) for seen in values):
            raise SpaceError(f"{where}: '{form}' lists {v!r} twice")
        values.append(v)
    if any(isinstance(v, tuple) for v in values) and not all(isinstance(v, tuple) for v in values):
        raise SpaceError(f"{where}: '{form}' mixes lists and scalars")
    return tuple(values)


def _subsets(arg: Any, min_size: Any, where: str) -> tuple[tuple[str, ...], ...]:
    if not isinstance(arg, list) or not arg or not all(isinstance(x, str) for x in arg):
        raise SpaceError(f"{where}: 'subsets' needs a non-empty list of names, got {arg!r}")
    if len(set(arg)) != len(arg):
        raise SpaceError(f"{where}: 'subsets' lists a name twice: {arg!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or not 0 <= min_size <= len(arg):
        raise SpaceError(f"{where}: 'min_size' must be an integer in [0, {len(arg)}], got {min_size!r}")
    sizes = range(min_size, len(arg) + 1)
    return tuple(c for n in sizes for c in itertools.combinations(arg, n))


def _bounds(form: str, arg: Any, where: str) -> tuple[float, ...]:
    n = 3 if form == "quniform" else 2
    shape = "[lo, hi, q]" if n == 3 else "[lo, hi]"
    if not isinstance(arg, list) or len(arg) != n or not all(_is_number(x) and math.isfinite(x) for x in arg):
        raise SpaceError(f"{where}: '{form}' needs {shape} as finite numbers, got {arg!r}")
    lo, hi = arg[0], arg[1]
    if not lo < hi:
        raise SpaceError(f"{where}: '{form}' range is empty: lo={lo!r} must be < hi={hi!r}")
    if form == "loguniform" and lo <= 0:
        raise SpaceError(f"{where}: 'loguniform' needs lo > 0, got {lo!r}")
    if form == "randint" and not all(isinstance(x, int) for x in arg):
        raise SpaceError(f"{where}: 'randint' needs integer ends, got {arg!r}")
    if form == "quniform" and not 0 < arg[2] <= hi - lo:
        raise SpaceError(f"{where}: 'quniform' step q must be in (0, hi - lo], got {arg[2]!r}")
    return tuple(float(x) if form != "randint" else x for x in arg)


def _parse_start(
    raw: Any, params: list[Param], fields: Mapping[str, Sequence[str]], source: str
) -> tuple[str | dict[str, Any], ...]:
    if not isinstance(raw, list):
        raise SpaceError(
            f"{source}: 'start' must be a list of points ('{PAPER_POINT}' or key: value mappings)"
        )
    by_key = {p.key: p for p in params}
    points: list[str | dict[str, Any]] = []
    for i, point in enumerate(raw, 1):
        where = f"{source}: start point {i}"
        if point == PAPER_POINT:
            points.append(PAPER_POINT)
            continue
        if not isinstance(point, dict) or not point:
            raise SpaceError(
                f"{where}: expected '{PAPER_POINT}' or a non-empty key: value mapping, got {point!r}"
            )
        values = {}
        for raw_key, value in point.items():
            key = _full_key(raw_key, fields, where)
            if key not in by_key:
                raise SpaceError(f"{where}: key '{raw_key}' is not searched (searched: {', '.join(by_key)})")
            if not by_key[key].contains(value):
                raise SpaceError(f"{where}: {raw_key}={value!r} is outside its search space")
            values[key] = list(value) if isinstance(value, (list, tuple)) else value
        points.append(values)
    return tuple(points)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps True and 1 apart (YAML gives both; Python would call them equal)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b
