"""The recipe table against the reference's configs, written out here independently, cell by cell."""

from __future__ import annotations

import pytest

from dukd_ray.distill import RECIPES, recipe
from dukd_ray.train.config import ConfigError, JobConfig

ARCH_SCALES = [(a, s) for a in ("edsr", "rcan", "swinir") for s in (2, 3, 4)]

# DUKD: (arch, scale) -> (w_pix, w_kd, n_gt_sub, zoom_in, zoom_out, label_consistency, lc_prob)
DUKD = {
    ("edsr", 2): (5.0, 1.0, 2, True, True, True, 0.3),
    ("edsr", 3): (5.0, 1.0, 1, True, True, True, 0.3),
    ("edsr", 4): (5.0, 1.0, 1, True, True, True, 0.3),
    ("rcan", 2): (1.0, 1.0, 1, True, False, False, 0.3),
    ("rcan", 3): (2.0, 1.0, 1, True, True, True, 0.3),
    ("rcan", 4): (1.0, 1.0, 1, True, False, False, 0.3),
    ("swinir", 2): (5.0, 1.0, 1, True, False, True, 0.3),
    ("swinir", 3): (5.0, 1.0, 1, True, False, True, 0.3),
    ("swinir", 4): (5.0, 1.0, 1, True, False, True, 0.3),
}
TAPS = {
    "edsr": ("conv_first", "body.10", "body.21", "conv_after_body"),
    "rcan": ("conv_first", "body.2", "body.6", "conv_after_body"),
    "swinir": ("conv_first", "layers.0", "norm", "conv_after_body"),
}
PAPER_SCHEDULE = (1e-4, (0.9, 0.99), 0.0, (100_000, 200_000), 0.1, 250_000, 0.999, 10)
EDSR_FAKD_SCHEDULE = (1e-4, (0.9, 0.99), 0.0, (18_750,), 0.5, 250_000, 0.999, 10)


def _schedule(r):
    s = r.schedule
    return (s.lr, s.betas, s.weight_decay, s.milestones, s.gamma, s.max_steps, s.ema_decay, s.seed)


def test_the_table_has_every_cell_and_nothing_else():
    methods = ("scratch", "kd", "fakd", "dukd")
    assert set(RECIPES) == {(a, s, m) for a, s in ARCH_SCALES for m in methods}


@pytest.mark.parametrize(("arch", "scale"), ARCH_SCALES)
def test_dukd_rows(arch, scale):
    d = recipe(arch, scale, "dukd").distill
    got = (d.w_pix, d.w_kd, d.n_gt_sub, d.zoom_in, d.zoom_out, d.label_consistency, d.lc_prob)
    assert got == DUKD[(arch, scale)]
    assert (d.step_mode, d.lc_ops, d.reference_compat) == (
        "paper",
        ("invert", "flip_h", "flip_w", "transpose"),
        False,
    )


@pytest.mark.parametrize(("arch", "scale"), ARCH_SCALES)
def test_baseline_rows_have_their_own_weights(arch, scale):
    """kd is pixel 1 / KD 1 and fakd adds feature weight 10 -- not DUKD's 5 (or 2) pixel weight."""
    assert recipe(arch, scale, "scratch").distill.method == "scratch"
    kd = recipe(arch, scale, "kd").distill
    assert (kd.method, kd.w_pix, kd.w_kd) == ("kd", 1.0, 1.0)
    fakd = recipe(arch, scale, "fakd").distill
    assert (fakd.method, fakd.w_pix, fakd.w_kd, fakd.w_feat) == ("fakd", 1.0, 1.0, 10.0)
    assert fakd.fakd_taps == TAPS[arch]
    assert not fakd.reference_compat


@pytest.mark.parametrize(("arch", "scale"), ARCH_SCALES)
@pytest.mark.parametrize("method", ["scratch", "kd", "fakd", "dukd"])
def test_schedule_and_init_rule(arch, scale, method):
    r = recipe(arch, scale, method)
    edsr_fakd = (arch, method) == ("edsr", "fakd")
    assert _schedule(r) == (EDSR_FAKD_SCHEDULE if edsr_fakd else PAPER_SCHEDULE)
    from_x2 = (arch, scale) == ("edsr", 4) and method in ("kd", "dukd")
    assert r.init_from == ((2, method) if from_x2 else None)


def test_recipe_returns_a_copy_and_names_what_exists():
    recipe("edsr", 4, "dukd").distill.w_pix = 0.0
    assert recipe("edsr", 4, "dukd").distill.w_pix == 5.0
    with pytest.raises(ValueError, match=r"no recipe for arch='vdsr' scale=4 method='dukd'; archs \['edsr'"):
        recipe("vdsr", 4, "dukd")


@pytest.mark.parametrize("preset", ["edsr_x4", "rcan_x3", "swinir_x2"])
def test_presets_and_with_method_read_the_recipe(preset):
    arch, scale = preset.split("_x")
    cfg = JobConfig.from_preset(preset)
    assert cfg.distill == recipe(arch, int(scale), "dukd").distill
    cfg.with_method("kd")
    assert (cfg.distill.method, cfg.distill.w_pix, cfg.distill.w_kd) == ("kd", 1.0, 1.0)
    fakd = JobConfig.from_preset(preset, method="fakd")
    assert fakd.distill == recipe(arch, int(scale), "fakd").distill
    expected = [18_750] if arch == "edsr" else [100_000, 200_000]
    assert (fakd.train.milestones, fakd.train.gamma) == (expected, 0.5 if arch == "edsr" else 0.1)


def test_tiny_keeps_its_run_length_and_taps_the_tiny_nets():
    cfg = JobConfig.from_preset("edsr_x4", tiny=True, method="fakd")
    assert (cfg.train.max_steps, cfg.train.ema_decay, cfg.train.milestones) == (100, 0.9, [18_750])
    assert cfg.distill.fakd_taps == ("conv_first", "body.0", "body.1", "conv_after_body")
    cfg.with_method("dukd")
    assert (cfg.train.max_steps, cfg.train.milestones, cfg.train.gamma) == (100, [100_000, 200_000], 0.1)


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match=r"no recipe for .* method='distill'"):
        JobConfig.from_preset("edsr_x4", method="distill")
