"""Search-space files: parsing, the errors a bad space gives before anything starts, Tune domains."""

from __future__ import annotations

import pytest
from ray import tune

from dukd_ray.distill import RECIPES
from dukd_ray.train.config import SECTIONS, JobConfig
from dukd_ray.tune.space import SpaceError, check_values, load_space, parse_space
from dukd_ray.tune.sweep import builtin_space, resolve_start

FIELDS = {name: [f for f in cls.__dataclass_fields__] for name, cls in SECTIONS.items()}
BASE = JobConfig.from_preset("edsr_x4", tiny=True)


def _validate(values):
    JobConfig.from_dict(values, base=BASE)


def _space(body: str, start: str = ""):
    return parse_space(f"space:\n{body}\n{start}", FIELDS, source="s.yaml")


@pytest.mark.parametrize("name", ["default", "paper_rows"])
@pytest.mark.parametrize("preset", ["edsr_x4", "edsr_x2", "rcan_x3", "swinir_x4"])
def test_shipped_spaces_are_valid_for_every_preset(name, preset):
    space = load_space(builtin_space(name), FIELDS)
    base = JobConfig.from_preset(preset)
    check_values(space, lambda v: JobConfig.from_dict(v, base=base))
    points = resolve_start(space, base)
    assert points, "the shipped spaces start from the paper's settings"
    for p in points:  # a full point that the job config accepts
        assert set(p) == set(space.keys)
        JobConfig.from_dict(p, base=base)


def test_paper_start_point_is_the_presets_paper_row():
    space = load_space(builtin_space("default"), FIELDS)
    (point,) = resolve_start(space, JobConfig.from_preset("edsr_x2"))
    # docs/distill.md, EDSR x2 row: w_pix 5, w_kd 1, n_gt_sub 2, zoom-out on, prob 0.3 (all ops, paper steps)
    assert point["distill.w_pix"] == 5.0 and point["distill.w_kd"] == 1.0
    assert point["distill.n_gt_sub"] == 2 and point["distill.zoom_out"] is True
    assert point["distill.lc_prob"] == 0.3 and point["distill.step_mode"] == "paper"
    assert point["distill.lc_ops"] == ["invert", "flip_h", "flip_w", "transpose"]


def test_paper_rows_are_the_distinct_dukd_rows_of_the_recipe_table():
    """The shipped start points restate no number the recipe table does not hold, and miss none."""
    keys = ("w_pix", "w_kd", "n_gt_sub", "zoom_out", "label_consistency", "lc_prob", "lc_ops", "step_mode")

    def row(values) -> tuple:
        return tuple(tuple(v) if isinstance(v, list | tuple) else v for v in values)

    table = {row(getattr(r.distill, k) for k in keys) for (_, _, m), r in RECIPES.items() if m == "dukd"}
    points = resolve_start(load_space(builtin_space("paper_rows"), FIELDS), JobConfig.from_preset("edsr_x4"))
    assert {row(p[f"distill.{k}"] for k in keys) for p in points} == table


def test_paper_rows_fill_unlisted_keys_from_the_preset():
    space = load_space(builtin_space("paper_rows"), FIELDS)
    points = resolve_start(space, JobConfig.from_preset("edsr_x4"))
    rcan = points[2]  # RCAN x2/x4 row: w_pix 1, zoom-out off, label consistency off
    assert (rcan["distill.w_pix"], rcan["distill.zoom_out"], rcan["distill.label_consistency"]) == (
        1.0,
        False,
        False,
    )
    assert rcan["distill.w_kd"] == 1.0 and rcan["distill.w_zoom_in"] == 1.0


def test_keys_forms_constants_and_tune_domains():
    space = _space(
        "  w_pix: {uniform: [1, 5]}\n  train.lr: {loguniform: [1.0e-5, 1.0e-3]}\n"
        "  n_gt_sub: {randint: [1, 4]}\n  lc_ops: {subsets: [invert, flip_h, flip_w, transpose]}\n"
        "  step_mode: {grid: [paper, joint]}\n  lc_prob: {quniform: [0.1, 0.5, 0.1]}\n  w_kd: 2.0"
    )
    assert space.keys == [
        "distill.w_pix",
        "train.lr",
        "distill.n_gt_sub",
        "distill.lc_ops",
        "distill.step_mode",
        "distill.lc_prob",
    ]
    assert space.constants == {"distill.w_kd": 2.0}
    ps = space.to_tune()
    assert set(ps) == {"distill", "train"}
    assert isinstance(ps["distill"]["w_pix"], tune.search.sample.Float)
    assert (ps["train"]["lr"].lower, ps["train"]["lr"].upper) == (1e-5, 1e-3)
    assert (ps["distill"]["n_gt_sub"].lower, ps["distill"]["n_gt_sub"].upper) == (1, 5)  # 4 included
    assert ps["distill"]["step_mode"] == {"grid_search": ["paper", "joint"]}
    assert ps["distill"]["lc_prob"].sampler.q == 0.1
    ops = ps["distill"]["lc_ops"].categories
    assert len(ops) == 15 and "none" not in ops  # 2**4 - 1 non-empty subsets (min_size defaults to 1)
    assert "invert+flip_h+flip_w+transpose" in ops and "flip_w" in ops
    assert space.has_grid


def test_op_sets_travel_as_strings_and_decode_back():
    space = _space("  lc_ops: {subsets: [invert, transpose], min_size: 0}")
    (p,) = space.params
    assert [p.encode(list(v)) for v in p.values] == ["none", "invert", "transpose", "invert+transpose"]
    trial = {"distill": {"lc_ops": "invert+transpose"}}
    assert space.decode(trial) == {"distill.lc_ops": ["invert", "transpose"]}
    assert space.decode({"distill": {"lc_ops": "none"}}) == {"distill.lc_ops": []}
    assert space.encode_point({"distill.lc_ops": []}) == {"distill": {"lc_ops": "none"}}


def test_choice_keeps_booleans_and_integers_apart():
    (p,) = _space("  zoom_out: {choice: [true, false]}").params
    assert p.contains(True) and not p.contains(1)
    with pytest.raises(SpaceError, match="twice"):
        _space("  n_gt_sub: {choice: [1, 2, 1]}")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("  w_pixel: {uniform: [1, 2]}", r"s.yaml: unknown key 'w_pixel'.*w_pix"),
        ("  optim.lr: {uniform: [1, 2]}", r"unknown key 'optim.lr'"),
        ("  w_pix: {choice: []}", r"key 'w_pix': 'choice' needs a non-empty list"),
        ("  lc_ops: {subsets: []}", r"key 'lc_ops': 'subsets' needs a non-empty list"),
        ("  w_pix: {uniform: [5, 1]}", r"key 'w_pix': 'uniform' range is empty: lo=5 must be < hi=1"),
        ("  w_pix: {uniform: [1]}", r"'uniform' needs \[lo, hi\]"),
        ("  w_pix: {loguniform: [0, 1]}", r"'loguniform' needs lo > 0"),
        ("  n_gt_sub: {randint: [1, 2.5]}", r"'randint' needs integer ends"),
        ("  lc_prob: {quniform: [0.1, 0.5, 0]}", r"step q must be in"),
        ("  w_pix: {normal: [1, 2]}", r"expected exactly one of"),
        ("  w_pix: {uniform: [1, 2], choice: [1]}", r"expected exactly one of"),
        ("  w_pix: 1.0", r"nothing to search"),
        ("  w_pix: {uniform: [1, 2]}\n  distill.w_pix: 2.0", r"appears twice"),
        ("  lc_ops: {subsets: [invert, flip_h], min_size: 3}", r"'min_size' must be an integer in \[0, 2\]"),
    ],
)
def test_bad_space_is_a_clear_error(body, match):
    with pytest.raises(SpaceError, match=match):
        _space(body)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("space: [1, 2]", "'space' must be a non-empty mapping"),
        ("w_pix: {uniform: [1, 2]}", "expected a mapping with a 'space' key"),
        ("space: {w_pix: {uniform: [1, 2]}}\nbudget: 3", r"unknown top-level key\(s\) \['budget'\]"),
        ("space: {w_pix: [1, 2", "invalid YAML"),
    ],
)
def test_bad_file_structure(text, match):
    with pytest.raises(SpaceError, match=match):
        parse_space(text, FIELDS, source="s.yaml")


@pytest.mark.parametrize(
    ("start", "match"),
    [
        ("start: [{w_pix: 20.0}]", r"start point 1: w_pix=20.0 is outside its search space"),
        ("start: [paper, {w_kd: 1.0}]", r"start point 2: key 'w_kd' is not searched"),
        ("start: [best]", r"start point 1: expected 'paper'"),
        ("start: paper", r"'start' must be a list"),
    ],
)
def test_bad_start_points(start, match):
    with pytest.raises(SpaceError, match=match):
        _space("  w_pix: {uniform: [1, 10]}", start)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("  lc_ops: {subsets: [invert, rotate]}", r"key 'distill.lc_ops' value \['rotate'\].*unknown op"),
        ("  lc_ops: {choice: [[invert], [flip]]}", r"key 'distill.lc_ops' value \['flip'\].*unknown op"),
        ("  n_gt_sub: {choice: [1, 20]}", r"key 'distill.n_gt_sub' value 20.*exceeds the 16 HR cells"),
        ("  w_pix: {uniform: [-1, 1]}", r"key 'distill.w_pix' value -1.0.*>= 0"),
        ("  method: {choice: [dukd, distill]}", r"key 'distill.method' value 'distill'.*unknown method"),
        ("  w_pix: {uniform: [1, 2]}\n  step_mode: fast", r"key 'distill.step_mode' value 'fast'"),
    ],
)
def test_values_the_job_config_rejects_fail_before_start(body, match):
    with pytest.raises(SpaceError, match=match):
        check_values(_space(body), _validate)


def test_missing_space_file_names_it(tmp_path):
    with pytest.raises(SpaceError, match="search space file not found: .*nope.yaml"):
        load_space(str(tmp_path / "nope.yaml"), FIELDS)
