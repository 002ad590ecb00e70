"""The DUKD objective and its baselines, checked against a transcription of docs/distill.md's formulas.

`spec_step` below is written from the spec, deliberately in a different style from the module
(per-sample loops, explicit slicing, per-image resize), with the documented draw protocol:
`torch.randperm(s*s)[:n]` for the cells, then `torch.rand(n*B, 4) < prob` for the flags.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import torch
from torch import nn

from dukd_ray.distill import (
    EMA,
    FAKD_TAPS,
    LC_OPS,
    DistillConfig,
    Share,
    affinity,
    apply_ops,
    freeze_teacher,
    invert_ops,
    train_step,
    zoom_in_cells,
    zoom_out_input,
)
from dukd_ray.image.resize import imresize
from dukd_ray.models import build_arch

PATCH = 12  # LR patch: divisible by 2, 3 and 4 so zoom-out works at every scale
BATCH = 2
LR_RATE = 1e-3
SGD_LR = 0.1
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6  # float32 rounding of another summation order


# ---------------------------------------------------------------- the spec, transcribed
def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean()


def spec_forward(v: torch.Tensor, f: list[bool]) -> torch.Tensor:
    """One (C, H, W) sample: invert, flip-H, flip-W, transpose, each if flagged."""
    if f[0]:
        v = 1 - v
    if f[1]:
        v = v.flip(1)
    if f[2]:
        v = v.flip(2)
    if f[3]:
        v = v.transpose(1, 2)
    return v


def spec_inverse(v: torch.Tensor, f: list[bool]) -> torch.Tensor:
    """The same ops in reverse order."""
    if f[3]:
        v = v.transpose(1, 2)
    if f[2]:
        v = v.flip(2)
    if f[1]:
        v = v.flip(1)
    if f[0]:
        v = 1 - v
    return v


def spec_affinity(fm: torch.Tensor) -> torch.Tensor:
    """Per sample: unit channel vector at each position, then every pair's dot product."""
    out = []
    for f in fm.flatten(2):  # (C, HW)
        unit = f / (f.pow(2).sum(0).sqrt() + 1e-8)
        out.append(unit.T @ unit)
    return torch.stack(out)


SPEC_TAPS = ("conv_first", "body.0", "conv_after_body")


def spec_edsr(model, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """EDSR's forward written out: its output and the outputs of SPEC_TAPS."""
    first = model.conv_first(model.shift.normalize(x))
    block0 = model.body[0](first)
    after = model.conv_after_body(model.body[1:](block0))
    return model.shift.denormalize(model.conv_last(model.upsample(first + after))), [first, block0, after]


def spec_fakd(student, teacher, opt, lr, hr, cfg: DistillConfig) -> dict[str, float]:
    with torch.no_grad():
        t_x, t_feats = spec_edsr(teacher, lr)
    opt.zero_grad()
    out_x, s_feats = spec_edsr(student, lr)
    feat = sum(l1(spec_affinity(a), spec_affinity(b)) for a, b in zip(s_feats, t_feats, strict=True))
    if cfg.reference_compat:
        feat = feat.detach()
    terms = {"loss_pix": cfg.w_pix * l1(out_x, hr), "loss_kd": cfg.w_kd * l1(out_x, t_x)}
    terms["loss_feat"] = cfg.w_feat * feat
    sum(terms.values()).backward()
    opt.step()
    return {k: v.item() for k, v in terms.items()} | {"loss": sum(v.item() for v in terms.values())}


def spec_step(student, teacher, opt, lr, hr, cfg: DistillConfig, g: torch.Generator) -> dict[str, float]:
    """One iteration exactly as docs/distill.md writes it (weights from cfg)."""
    if cfg.method == "fakd":
        return spec_fakd(student, teacher, opt, lr, hr, cfg)
    s, p, b = hr.shape[-1] // lr.shape[-1], lr.shape[-1], lr.shape[0]
    with torch.no_grad():
        t_x = teacher(lr) if teacher is not None else None
    opt.zero_grad()
    if cfg.method == "scratch":
        loss = l1(student(lr), hr)
        loss.backward()
        opt.step()
        return {"loss_pix": loss.item(), "loss": loss.item()}
    out_x = student(lr)
    terms = {"loss_pix": cfg.w_pix * l1(out_x, hr), "loss_kd": cfg.w_kd * l1(out_x, t_x)}
    if cfg.method == "kd":
        sum(terms.values()).backward()
        opt.step()
        return {k: v.item() for k, v in terms.items()} | {"loss": sum(terms.values()).item()}
    if cfg.step_mode == "paper":
        sum(terms.values()).backward()
        opt.step()  # and NO zero_grad before step B
    cells = torch.randperm(s * s, generator=g)[: cfg.n_gt_sub].tolist()
    u = torch.rand(cfg.n_gt_sub * b, 4, generator=g)
    on = [cfg.label_consistency and op in cfg.lc_ops for op in LC_OPS]
    flags = [[bool(u[i, j] < cfg.lc_prob) and on[j] for j in range(4)] for i in range(len(u))]
    step_b = {}
    if cfg.zoom_in:
        rows, cols = [c // s for c in cells], [c % s for c in cells]
        z = torch.cat(
            [hr[:, :, r * p : (r + 1) * p, c * p : (c + 1) * p] for r, c in zip(rows, cols, strict=True)]
        )
        with torch.no_grad():
            t_z = teacher(z)
        out = student(torch.stack([spec_forward(z[i], flags[i]) for i in range(len(z))]))
        back = spec_forward if cfg.reference_compat else spec_inverse  # the reference maps back forwards
        out = torch.stack([back(out[i], flags[i]) for i in range(len(z))])
        step_b["loss_zoom_in"] = cfg.w_zoom_in * cfg.w_kd * l1(t_z, out)
    if cfg.zoom_out:
        x_down = torch.stack([imresize(lr[i], 1 / s) for i in range(b)])
        with torch.no_grad():
            t_down = teacher(x_down)
        out = student(x_down)
        step_b["loss_zoom_out"] = cfg.w_zoom_out * (cfg.w_pix * l1(out, lr) + cfg.w_kd * l1(out, t_down))
    if cfg.step_mode == "paper":
        sum(step_b.values()).backward()
    else:
        (sum(terms.values()) + sum(step_b.values())).backward()
    opt.step()
    terms |= step_b
    return {k: v.item() for k, v in terms.items()} | {"loss": sum(v.item() for v in terms.values())}


# ---------------------------------------------------------------- helpers
def tiny_models(scale: int, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    student = build_arch("edsr", scale, preset="tiny_student", num_feat=8, num_block=1, res_scale=1.0)
    teacher = freeze_teacher(build_arch("edsr", scale, preset="tiny_teacher", num_feat=16, num_block=1))
    return student, teacher


def make_batch(scale: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(BATCH, 3, scale * PATCH, scale * PATCH, generator=g)
    return {"lr": imresize(hr, 1 / scale), "hr": hr}


def run_both(cfg: DistillConfig, scale: int, wrap=lambda opt: opt):
    """(ours, spec) loss dicts and students after one iteration from identical states and seeds.

    Plain SGD, not Adam: an SGD step is linear in the gradient, so float-rounding differences between
    the two implementations (batched vs per-sample ops, another CPU's kernels) stay float-rounding
    small in the parameters. Adam divides by the gradient's RMS and turns a last-bit difference of a
    near-zero gradient into a move of up to lr -- a verdict that would depend on the machine.
    `wrap` wraps our optimizer (to show the comparison fails against a broken step).
    """
    student, teacher = tiny_models(scale)
    spec_student = copy.deepcopy(student)
    batch = make_batch(scale)
    opt, spec_opt = (torch.optim.SGD(m.parameters(), SGD_LR) for m in (student, spec_student))
    ours = train_step(student, teacher, wrap(opt), batch, cfg, torch.Generator().manual_seed(7))
    spec = spec_step(
        spec_student, teacher, spec_opt, batch["lr"], batch["hr"], cfg, torch.Generator().manual_seed(7)
    )
    return ours, spec, student, spec_student


def assert_same_step(cfg: DistillConfig, scale: int = 2, wrap=lambda opt: opt) -> dict[str, float]:
    """Same losses, same gradients (of the last backward, left in .grad) and same parameters.

    Tolerances: losses and gradients to float32 rounding of a different summation order; parameters
    to SGD_LR times the gradient tolerance per optimizer step (two in paper mode).
    """
    ours, spec, student, spec_student = run_both(cfg, scale, wrap)
    assert ours.keys() == spec.keys()
    for key in spec:
        assert ours[key] == pytest.approx(spec[key], rel=1e-5, abs=1e-7), key
    for (name, a), b in zip(student.named_parameters(), spec_student.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=f"grad {name}")
        torch.testing.assert_close(a, b, rtol=1e-6, atol=2 * SGD_LR * GRAD_ATOL, msg=name)
    return ours


# ---------------------------------------------------------------- one step == the spec
@pytest.mark.parametrize("method", ["scratch", "kd"])
def test_baselines_match_spec(method):
    ours = assert_same_step(DistillConfig(method=method, w_pix=3.0, w_kd=0.5))
    assert set(ours) == ({"loss_pix", "loss"} if method == "scratch" else {"loss_pix", "loss_kd", "loss"})


@pytest.mark.parametrize("step_mode", ["paper", "joint"])
@pytest.mark.parametrize(("scale", "n_gt_sub"), [(2, 2), (3, 4), (4, 1)])
def test_dukd_matches_spec(step_mode, scale, n_gt_sub):
    cfg = DistillConfig(
        method="dukd", w_pix=5.0, w_kd=1.5, w_zoom_in=0.7, w_zoom_out=1.3, n_gt_sub=n_gt_sub, lc_prob=0.5,
        step_mode=step_mode,
    )  # fmt: skip
    ours = assert_same_step(cfg, scale)
    assert ours["loss"] == pytest.approx(sum(v for k, v in ours.items() if k != "loss"))


@pytest.mark.parametrize("compat", [False, True])
def test_fakd_matches_spec(compat):
    cfg = DistillConfig(
        method="fakd", w_pix=2.0, w_kd=0.5, w_feat=3.0, fakd_taps=SPEC_TAPS, reference_compat=compat
    )
    ours = assert_same_step(cfg)
    assert ours["loss_feat"] > 0


def test_dukd_reference_compat_matches_the_forward_order_spec():
    """Every zoom-in sample gets flip-H then transpose: the forward order maps it back rotated by 180 deg."""
    cfg = DistillConfig(n_gt_sub=4, lc_ops=("flip_h", "transpose"), lc_prob=1.0, reference_compat=True)
    compat = assert_same_step(cfg)
    ours = assert_same_step(dataclasses.replace(cfg, reference_compat=False))
    assert compat["loss_zoom_in"] != pytest.approx(ours["loss_zoom_in"])
    assert compat["loss_zoom_out"] == pytest.approx(ours["loss_zoom_out"])


def test_spec_comparison_fails_against_a_broken_step():
    """The check above can fail: a zero_grad between paper mode's two steps (a plausible bug) is caught."""
    cfg = DistillConfig(method="dukd", step_mode="paper", lc_prob=0.5, n_gt_sub=2)
    with pytest.raises(AssertionError, match="grad"):
        assert_same_step(cfg, wrap=_ZeroingOptimizer)
    with pytest.raises(AssertionError, match="grad"):  # and a loss weight off by 0.1 %
        assert_same_step(cfg, wrap=_ScaledGradient)


class _WrappedOptimizer:
    """An optimizer with a changed `step` (a deliberately broken training step, for the tests above)."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.opt = opt

    def zero_grad(self) -> None:
        self.opt.zero_grad()


class _ScaledGradient(_WrappedOptimizer):
    """Scales every gradient by 1.001 before stepping: what a loss weight off by 0.1 % would do."""

    def step(self) -> None:
        for group in self.opt.param_groups:
            for p in group["params"]:
                p.grad.mul_(1.001)
        self.opt.step()


def test_paper_mode_second_step_carries_step_a_gradient():
    """With plain SGD (lr h): paper = theta0 - h*gA - h*(gA + gB(theta1)); a zero_grad before step B
    would give theta0 - h*gA - h*gB(theta1). The difference is one more -h*gA: the kd step's update."""
    cfg = DistillConfig(step_mode="paper", lc_prob=0.5)
    student, teacher = tiny_models(2)
    batch = make_batch(2)
    zeroed, kd_only, start = copy.deepcopy(student), copy.deepcopy(student), copy.deepcopy(student)
    train_step(student, teacher, torch.optim.SGD(student.parameters(), lr=0.1), batch, cfg, torch.Generator())
    zeroing = _ZeroingOptimizer(torch.optim.SGD(zeroed.parameters(), lr=0.1))
    spec_step(zeroed, teacher, zeroing, batch["lr"], batch["hr"], cfg, torch.Generator())
    kd = DistillConfig(**(cfg.to_dict() | {"method": "kd"}))
    train_step(kd_only, teacher, torch.optim.SGD(kd_only.parameters(), lr=0.1), batch, kd, torch.Generator())
    for a, b, k, s in zip(
        student.parameters(), zeroed.parameters(), kd_only.parameters(), start.parameters(), strict=True
    ):
        torch.testing.assert_close(a - b, k - s, rtol=1e-4, atol=1e-7)
    assert any(
        (k - s).abs().max() > 1e-4 for k, s in zip(kd_only.parameters(), start.parameters(), strict=True)
    )


class _ZeroingOptimizer(_WrappedOptimizer):
    """Every step is followed by zero_grad."""

    def step(self) -> None:
        self.opt.step()
        self.opt.zero_grad()


SWITCHES = [
    {"zoom_in": False},
    {"zoom_out": False},
    {"label_consistency": False},
    *({"lc_ops": tuple(op for op in LC_OPS if op != off)} for off in LC_OPS),
]


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: next(f"{k}={v}" for k, v in s.items()))
def test_each_switch_removes_exactly_its_term(switch):
    on = DistillConfig(lc_prob=0.7, n_gt_sub=2)
    off = DistillConfig(**(on.to_dict() | switch))
    with_term = run_both(on, 2)[0]
    without = assert_same_step(off)  # the remaining terms follow the spec...
    removed = {"zoom_in": "loss_zoom_in", "zoom_out": "loss_zoom_out"}.get(next(iter(switch)))
    # ...and only the switched term changes: step B runs after the same step A in both, with the same draws
    for key in ("loss_pix", "loss_kd", "loss_zoom_in", "loss_zoom_out"):
        if key == removed:
            assert key not in without
        elif key == "loss_zoom_in" and removed is None:
            assert without[key] != with_term[key]  # the augmentation really changed
        else:
            assert without[key] == pytest.approx(with_term[key], rel=1e-6)


# ---------------------------------------------------------------- label consistency
def test_inverse_is_exact_for_all_16_op_combinations():
    g = torch.Generator().manual_seed(0)
    v = torch.randint(0, 256, (16, 3, 8, 8), generator=g).float() / 256  # dyadic: 1 - (1 - v) is exact
    flags = torch.tensor(list(itertools.product([False, True], repeat=4)))
    assert torch.equal(invert_ops(apply_ops(v, flags), flags), v)
    # and the forward transform is the spec's, sample by sample
    expected = torch.stack([spec_forward(v[i], flags[i].tolist()) for i in range(16)])
    assert torch.equal(apply_ops(v, flags), expected)


def test_reference_order_inverse_fails_exactly_when_transpose_meets_one_flip():
    """The reference re-applies the ops in forward order; that is wrong for these 4 of the 16 combinations."""
    v = torch.randint(0, 256, (16, 3, 8, 8), generator=torch.Generator().manual_seed(0)).float() / 256
    flags = torch.tensor(list(itertools.product([False, True], repeat=4)))
    wrong_inverse = apply_ops(apply_ops(v, flags), flags)
    broken = {i for i in range(16) if not torch.equal(wrong_inverse[i], v[i])}
    expected = {i for i, f in enumerate(flags.tolist()) if f[3] and f[1] != f[2]}
    assert broken == expected and len(expected) == 4
    rotated = v[sorted(expected)].rot90(2, dims=(-2, -1))
    assert torch.equal(wrong_inverse[sorted(expected)], rotated)


def test_compat_inverse_differs_from_ours_exactly_where_transpose_meets_one_flip():
    """Through train_step: an equivariant student equal to its teacher, each of the 16 op sets forced on."""
    scale, batch = 2, make_batch(2)
    batch["hr"] = (batch["hr"] * 256).floor() / 256  # dyadic pixels: the invert op round-trips exactly
    broken = set()
    for ops in itertools.chain.from_iterable(itertools.combinations(LC_OPS, k) for k in range(5)):
        for compat in (False, True):
            cfg = DistillConfig(
                zoom_out=False,
                lc_ops=ops,
                lc_prob=1.0,
                n_gt_sub=4,
                step_mode="joint",
                reference_compat=compat,
            )
            student = NearestUp(scale)
            opt = torch.optim.SGD(student.parameters(), lr=0.1)
            losses = train_step(student, freeze_teacher(NearestUp(scale)), opt, batch, cfg, torch.Generator())
            if losses["loss_zoom_in"] > 0:
                assert compat, ops  # our inverse is exact for every op set
                broken.add(ops)
    flips = {("flip_h", "transpose"), ("flip_w", "transpose")}
    assert broken == flips | {("invert", *ops) for ops in flips}


class NearestUp(nn.Module):
    """Nearest-neighbour upsampling times a weight: exactly equivariant to every label-consistency op."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.scale, -2).repeat_interleave(self.scale, -1) * self.weight


def test_equivariant_student_equal_to_teacher_has_zero_zoom_in_loss():
    scale = 2
    batch = make_batch(scale)
    batch["hr"] = (batch["hr"] * 256).floor() / 256  # dyadic pixels: the invert op round-trips exactly
    cfg = DistillConfig(zoom_out=False, lc_prob=1.0, n_gt_sub=4, step_mode="joint")
    student = NearestUp(scale)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    losses = train_step(student, freeze_teacher(NearestUp(scale)), opt, batch, cfg, torch.Generator())
    assert losses["loss_zoom_in"] == 0.0
    # a student that is not equivariant (shifted by one pixel) is caught
    shifted = NearestUp(scale)
    shifted.forward = lambda x: NearestUp.forward(shifted, x).roll(1, -1)
    opt = torch.optim.SGD(shifted.parameters(), lr=0.1)
    losses = train_step(shifted, freeze_teacher(NearestUp(scale)), opt, batch, cfg, torch.Generator())
    assert losses["loss_zoom_in"] > 0.01


# ---------------------------------------------------------------- upcycled inputs
def test_zoom_in_cells_are_the_right_hr_pixels():
    scale, p = 3, 4
    hr = torch.arange(2 * 3 * 12 * 12, dtype=torch.float32).view(2, 3, 12, 12)  # every pixel unique
    cells = torch.tensor([7, 0, 5])  # (row 2, col 1), (0, 0), (1, 2)
    z = zoom_in_cells(hr, scale, cells)
    assert z.shape == (3 * 2, 3, p, p)
    for j, (row, col) in enumerate([(2, 1), (0, 0), (1, 2)]):
        assert torch.equal(z[j * 2 : (j + 1) * 2], hr[:, :, row * p : (row + 1) * p, col * p : (col + 1) * p])


def test_zoom_out_input_size_and_values():
    lr = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    for scale in (2, 3, 4):
        down = zoom_out_input(lr, scale)
        assert down.shape == (3, 3, 12 // scale, 12 // scale)
        expected = torch.stack([imresize(lr[i], 1 / scale) for i in range(3)])
        torch.testing.assert_close(down, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"divisible by the scale 4"):
        zoom_out_input(torch.rand(1, 3, 10, 10), 4)


# ---------------------------------------------------------------- teacher, EMA, AMP, DDP
def test_teacher_untouched_by_a_step():
    student, teacher = tiny_models(2)
    before = copy.deepcopy(teacher.state_dict())
    opt = torch.optim.Adam(student.parameters(), LR_RATE)
    train_step(student, teacher, opt, make_batch(2), DistillConfig(lc_prob=0.5), torch.Generator())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("method", ["kd", "fakd", "dukd"])
@pytest.mark.parametrize("compat", [False, True])
def test_compat_runs_the_teacher_in_train_mode_and_still_without_grads(method, compat):
    student, teacher = tiny_models(2)
    modes: list[bool] = []
    teacher.register_forward_pre_hook(lambda module, _inputs: modes.append(module.training))
    cfg = DistillConfig(method=method, fakd_taps=SPEC_TAPS, reference_compat=compat)
    opt = torch.optim.Adam(student.parameters(), LR_RATE)
    train_step(student, teacher, opt, make_batch(2), cfg, torch.Generator())
    assert modes and set(modes) == {compat}
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_compat_teacher_drop_path_is_random_and_ours_is_not():
    """SwinIR's drop-path is what a train-mode teacher changes (EDSR and RCAN have no such randomness)."""
    torch.manual_seed(0)
    teacher = freeze_teacher(build_arch("swinir", 2, preset="tiny_teacher", drop_path_rate=0.5))
    student = build_arch("swinir", 2, preset="tiny_student")
    state = copy.deepcopy(student.state_dict())

    def loss_kd(compat: bool) -> float:
        student.load_state_dict(state)
        opt = torch.optim.SGD(student.parameters(), lr=0.0)
        cfg = DistillConfig(method="kd", reference_compat=compat)
        return train_step(student, teacher, opt, make_batch(2), cfg, torch.Generator())["loss_kd"]

    assert loss_kd(False) == loss_kd(False)
    assert loss_kd(True) != loss_kd(True)


def test_unfrozen_or_missing_teacher_is_an_error():
    student, teacher = tiny_models(2)
    opt = torch.optim.Adam(student.parameters(), LR_RATE)
    teacher.train()
    with pytest.raises(ValueError, match="freeze_teacher"):
        train_step(student, teacher, opt, make_batch(2), DistillConfig(), torch.Generator())
    with pytest.raises(ValueError, match="needs a teacher"):
        train_step(student, None, opt, make_batch(2), DistillConfig(method="kd"), torch.Generator())
    train_step(student, None, opt, make_batch(2), DistillConfig(method="scratch"), torch.Generator())


# ---------------------------------------------------------------- FAKD
def test_affinity_of_a_hand_computed_case():
    """Two positions with channel vectors (3, 4) and (1, 0): unit vectors (0.6, 0.8), (1, 0)."""
    fm = torch.tensor([[3.0, 1.0], [4.0, 0.0]]).view(1, 2, 1, 2)  # (B, C, H, W), channels x positions
    expected = torch.tensor([[[1.0, 0.6], [0.6, 1.0]]])
    torch.testing.assert_close(affinity(fm), expected)
    torch.testing.assert_close(affinity(fm.flatten(2).transpose(1, 2)), expected)  # tokens (B, HW, C)


@pytest.mark.parametrize("compat", [False, True])
def test_fakd_feature_term_alone_moves_the_student_and_compat_does_not(compat):
    """Pixel and logits weights 0: only the feature term is left, so only it can move the student."""
    student, teacher = tiny_models(2)
    before = copy.deepcopy(student.state_dict())
    cfg = DistillConfig(method="fakd", w_pix=0.0, w_kd=0.0, fakd_taps=SPEC_TAPS, reference_compat=compat)
    opt = torch.optim.SGD(student.parameters(), lr=SGD_LR)
    losses = train_step(student, teacher, opt, make_batch(2), cfg, torch.Generator())
    assert losses["loss_pix"] == losses["loss_kd"] == 0.0 and losses["loss_feat"] > 0.01
    moved = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    upstream = {"conv_first.weight", "body.0.conv1.weight", "body.0.conv2.weight", "conv_after_body.weight"}
    if compat:
        assert moved == set()
    else:  # everything up to the last tap moves; the upsampler and conv_last are past every tap
        assert upstream <= moved and not any(k.startswith(("upsample", "conv_last")) for k in moved)


@pytest.mark.parametrize("arch", ["edsr", "rcan", "swinir"])
def test_fakd_recipe_taps_of_the_tiny_nets_exist_in_both(arch):
    torch.manual_seed(0)
    teacher = freeze_teacher(build_arch(arch, 2, preset="tiny_teacher"))
    student = build_arch(arch, 2, preset="tiny_student")
    cfg = DistillConfig(method="fakd", fakd_taps=FAKD_TAPS[arch]["tiny_student"])
    opt = torch.optim.Adam(student.parameters(), LR_RATE)
    assert train_step(student, teacher, opt, make_batch(2), cfg, torch.Generator())["loss_feat"] > 0


def test_unknown_fakd_tap_is_an_error_listing_the_modules():
    student, teacher = tiny_models(2)
    cfg = DistillConfig(method="fakd", fakd_taps=("conv_first", "body.9"))
    opt = torch.optim.Adam(student.parameters(), LR_RATE)
    message = r"\['body.9'\] not found in the teacher \(EDSR\); its modules include: shift, conv_first, body,"
    with pytest.raises(ValueError, match=message):
        train_step(student, teacher, opt, make_batch(2), cfg, torch.Generator())
    with pytest.raises(ValueError, match="fakd_taps: method 'fakd' needs the module names"):
        DistillConfig(method="fakd")


def test_same_generator_seed_same_step_and_other_seed_other_cells():
    def losses(seed: int) -> dict[str, float]:
        student, teacher = tiny_models(3)
        opt = torch.optim.Adam(student.parameters(), LR_RATE)
        cfg = DistillConfig(lc_prob=0.5)
        return train_step(student, teacher, opt, make_batch(3), cfg, torch.Generator().manual_seed(seed))

    assert losses(3) == losses(3)
    assert losses(3)["loss_zoom_in"] != losses(4)["loss_zoom_in"]


SHARED_CFGS = {
    "kd": DistillConfig(method="kd"),
    "dukd-paper": DistillConfig(n_gt_sub=2, lc_prob=0.5),
    "dukd-joint": DistillConfig(n_gt_sub=2, lc_prob=0.5, step_mode="joint"),
}


@pytest.mark.parametrize("name", list(SHARED_CFGS))
def test_a_batch_in_passes_trains_like_one_pass(name):
    """Gradient accumulation (`Share.micro_batch`): 5 rows in passes of 2 (2 + 2 + 1) = one pass of 5,
    both optimizer steps of `paper` included (SGD shows any difference in either)."""
    batch = {k: torch.cat([v, v.flip(-1), v[:1].flip(-2)]) for k, v in make_batch(2).items()}  # 5 rows
    runs = []
    for micro in (None, 2):
        student, teacher = tiny_models(2)
        opt = torch.optim.SGD(student.parameters(), lr=SGD_LR)
        losses = train_step(
            student,
            teacher,
            opt,
            batch,
            SHARED_CFGS[name],
            torch.Generator().manual_seed(3),
            share=Share(5, 0, micro),
        )
        runs.append((losses, student))
    (one, s1), (passes, s2) = runs
    assert one.keys() == passes.keys() and one == pytest.approx(passes, rel=1e-5)
    for (n, a), b in zip(s1.named_parameters(), s2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("name", list(SHARED_CFGS))
def test_the_weighted_shares_of_workers_add_up_to_the_whole_batch_gradient(name):
    """Rows 0..1 and 2..4 of a global batch of 5 on two 'workers' (no DDP: their gradients summed
    by hand, `replicas=1`): each share slices the global batch's draws, and the weights make the sum
    the one-worker gradient. lr 0 keeps the weights, so `.grad` after the step is the whole gradient."""
    batch = {k: torch.cat([v, v.flip(-1), v[:1].flip(-2)]) for k, v in make_batch(2).items()}
    grads = []
    for rows in (slice(0, 5), slice(0, 2), slice(2, 5)):
        student, teacher = tiny_models(2)
        opt = torch.optim.SGD(student.parameters(), lr=0.0)
        part = {k: v[rows] for k, v in batch.items()}
        share = Share(5, rows.start, None)
        train_step(
            student, teacher, opt, part, SHARED_CFGS[name], torch.Generator().manual_seed(3), share=share
        )
        grads.append([p.grad.clone() for p in student.parameters()])
    whole, first, second = grads
    for w, a, b in zip(whole, first, second, strict=True):
        torch.testing.assert_close(a + b, w, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    assert any(not torch.allclose(a, w) for w, a in zip(whole, first, strict=True))  # each share is a part


def test_ema_update_formula_and_state_dict():
    student, _ = tiny_models(2)
    ema = EMA(student, decay=0.9)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema.update(student)
    for name, p in student.named_parameters():
        torch.testing.assert_close(ema.state_dict()[name], 0.9 * start[name] + 0.1 * p.detach())
    restored = EMA(student)
    restored.load_state_dict(ema.state_dict())
    assert all(
        torch.equal(a, b) for a, b in zip(restored.module.parameters(), ema.module.parameters(), strict=True)
    )
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="decay"):
        EMA(student, decay=1.5)


def test_ema_of_a_compiled_student_averages_the_bare_arch():
    """torch.compile holds the student as `_orig_mod`: the EMA copies the arch and keeps its key names."""
    student, _ = tiny_models(2)
    compiled = torch.compile(student)  # compiles on the first call; none happens here
    ema = EMA(compiled, decay=0.5)
    assert list(ema.state_dict()) == list(student.state_dict())
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema.update(compiled)
    for name, p in student.named_parameters():
        torch.testing.assert_close(ema.state_dict()[name], 0.5 * start[name] + 0.5 * p.detach())


def test_bf16_autocast_is_applied_and_close_to_fp32():
    results = []
    for amp_dtype in (None, torch.bfloat16):
        student, teacher = tiny_models(2)
        opt = torch.optim.Adam(student.parameters(), LR_RATE)
        cfg = DistillConfig(lc_prob=0.5)
        results.append(train_step(student, teacher, opt, make_batch(2), cfg, torch.Generator(), amp_dtype))
    fp32, bf16 = results
    assert fp32 != bf16  # autocast really ran in bf16...
    for key in fp32:
        assert bf16[key] == pytest.approx(fp32[key], rel=3e-2)  # ...and the losses are still fp32-accurate


def test_input_memory_format_changes_the_layout_not_the_maths():
    """train.channels_last reaches every network input; NHWC and NCHW steps agree to float rounding."""
    seen: dict[torch.memory_format, list[bool]] = {}
    results = {}
    for fmt in (torch.channels_last, torch.contiguous_format):
        student, teacher = tiny_models(2)
        seen[fmt] = []
        for net in (student, teacher):
            net.register_forward_pre_hook(
                lambda _m, args, fmt=fmt: seen[fmt].append(args[0].is_contiguous(memory_format=fmt))
            )
        opt = torch.optim.Adam(student.parameters(), LR_RATE)
        batch, cfg = make_batch(2), DistillConfig(lc_prob=0.5)
        results[fmt] = train_step(student, teacher, opt, batch, cfg, torch.Generator(), memory_format=fmt)
    nhwc, nchw = results[torch.channels_last], results[torch.contiguous_format]
    for fmt, layouts in seen.items():  # every student and teacher call: step A, zoom-in, zoom-out
        assert len(layouts) >= 4 and all(layouts), fmt
    for key in nhwc:
        assert nchw[key] == pytest.approx(nhwc[key], rel=1e-5)


def test_ddp_wrapped_student_steps_like_the_plain_one(tmp_path):
    """World size 1 (gloo, file store): the DDP student is only called, and its step equals the plain one."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        for cfg in (DistillConfig(lc_prob=0.5), DistillConfig(method="fakd", fakd_taps=SPEC_TAPS)):
            plain, teacher = tiny_models(2)
            wrapped = DistributedDataParallel(copy.deepcopy(plain))  # FAKD's hooks reach through it
            for model in (plain, wrapped):
                opt = torch.optim.Adam(model.parameters(), LR_RATE)
                train_step(model, teacher, opt, make_batch(2), cfg, torch.Generator().manual_seed(5))
            for a, b in zip(plain.parameters(), wrapped.module.parameters(), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
        ema = EMA(wrapped)
        ema.update(wrapped)
        with pytest.raises(ValueError, match="DataParallel"):
            freeze_teacher(DistributedDataParallel(tiny_models(2)[1].requires_grad_(True)))
    finally:
        dist.destroy_process_group()


def test_bad_batch_shapes_are_errors():
    student, teacher = tiny_models(2)
    opt = torch.optim.Adam(student.parameters(), LR_RATE)
    bad = {"lr": torch.rand(2, 3, 12, 12), "hr": torch.rand(2, 3, 24, 30)}
    with pytest.raises(ValueError, match="integer multiple"):
        train_step(student, teacher, opt, bad, DistillConfig(), torch.Generator())
    with pytest.raises(ValueError, match="n_gt_sub=5 exceeds the 4 HR cells"):
        train_step(student, teacher, opt, make_batch(2), DistillConfig(n_gt_sub=5), torch.Generator())
