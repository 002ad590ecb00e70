"""DistillConfig: defaults, YAML round trips and a clear error for each invalid value (rows: test_recipes)."""

from __future__ import annotations

import pytest
import yaml

from dukd_ray.distill import DistillConfig


def test_defaults_are_dukd_with_every_op_in_paper_mode():
    cfg = DistillConfig()
    assert (cfg.method, cfg.step_mode, cfg.w_zoom_in, cfg.w_zoom_out) == ("dukd", "paper", 1.0, 1.0)
    assert cfg.lc_ops == ("invert", "flip_h", "flip_w", "transpose")


def test_yaml_round_trip_and_lists_for_ops():
    text = "method: dukd\nw_pix: 5\nlc_ops: [transpose, invert]\nlc_prob: 0.5\nstep_mode: joint\n"
    cfg = DistillConfig.from_dict(yaml.safe_load(text))
    assert cfg.lc_ops == ("invert", "transpose") and cfg.w_pix == 5.0 and cfg.step_mode == "joint"
    assert DistillConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"method": "fitnet"}, r"method 'fitnet'; expected one of \['dukd', 'fakd', 'kd', 'scratch'\]"),
        ({"lc_prob": 1.5}, r"lc_prob: expected a probability in \[0, 1\], got 1.5"),
        ({"lc_prob": -0.1}, r"lc_prob: expected a probability in \[0, 1\]"),
        ({"lc_ops": ["invert", "rot90"]}, r"unknown op\(s\) \['rot90'\]; valid ops are \['invert'"),
        ({"lc_ops": "invert"}, r"lc_ops: expected a list of op names"),
        ({"lc_ops": ["invert", "invert"]}, r"lc_ops: duplicate ops"),
        ({"step_mode": "alternate"}, r"step_mode: expected one of \['paper', 'joint'\]"),
        ({"w_kd": -1}, r"w_kd: expected a finite number >= 0"),
        ({"w_pix": float("nan")}, r"w_pix: expected a finite number >= 0"),
        ({"n_gt_sub": 0}, r"n_gt_sub: expected an integer >= 1"),
        ({"n_gt_sub": 1.5}, r"n_gt_sub: expected an integer >= 1"),
        ({"zoom_out": "yes"}, r"zoom_out: expected true or false"),
        ({"zoom_in": False, "zoom_out": False}, r"no upcycled term; use method 'kd'"),
    ],
)
def test_invalid_values_name_the_field(values, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**values)


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['prob'\]; valid keys are \['method', 'w_pix'"):
        DistillConfig.from_dict({"prob": 0.3})


def test_n_gt_sub_checked_against_the_scale():
    cfg = DistillConfig(n_gt_sub=5)
    cfg.check_scale(3)
    with pytest.raises(ValueError, match=r"n_gt_sub=5 exceeds the 4 HR cells of the 2x2 zoom-in grid"):
        cfg.check_scale(2)
    DistillConfig(n_gt_sub=5, zoom_in=False).check_scale(2)  # no zoom-in, no cells drawn
