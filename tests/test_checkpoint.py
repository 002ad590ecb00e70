"""Checkpoint I/O: BasicSR / official layouts in, BasicSR layout out, clear errors naming the file."""

from __future__ import annotations

import io

import pytest
import torch
from safetensors.torch import load as load_safetensors

from dukd_ray.models import CheckpointError, build_arch, build_from_checkpoint, load_pretrained, save_weights
from dukd_ray.models.swinir import DERIVED_BUFFERS


def seeded(arch: str, scale: int, preset: str, seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_arch(arch, scale, preset, **kw).eval()


def output(model: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(torch.rand(1, 3, 8, 8))


def save_torch(path, obj) -> str:
    torch.save(obj, path)
    return str(path)


def test_basicsr_dict_prefers_params_ema(tmp_path):
    params, ema = seeded("edsr", 2, "tiny_student", 0), seeded("edsr", 2, "tiny_student", 1)
    pth, _ = save_weights(str(tmp_path / "w"), params.state_dict(), ema.state_dict(), params.arch_spec)
    raw = torch.load(pth, weights_only=True)  # what BasicSR's own loader does
    assert set(raw) == {"params", "params_ema", "meta"} and raw["meta"]["arch_spec"] == params.arch_spec
    assert set(raw["params_ema"]) == set(params.state_dict())

    fresh = seeded("edsr", 2, "tiny_student", 2)
    report = load_pretrained(fresh, pth)
    assert report.entry == "params_ema" and report.complete and report.layout == "basicsr"
    assert torch.equal(output(fresh), output(ema))

    only_params = save_torch(tmp_path / "p.pth", {"params": params.state_dict()})
    assert load_pretrained(fresh, only_params).entry == "params"
    assert torch.equal(output(fresh), output(params))


def test_bare_state_dict_with_module_prefix(tmp_path):
    src = seeded("rcan", 3, "tiny_student", 0)
    path = save_torch(tmp_path / "ddp.pth", {f"module.{k}": v for k, v in src.state_dict().items()})
    dst = seeded("rcan", 3, "tiny_student", 1)
    report = load_pretrained(torch.nn.DataParallel(dst), path)  # a wrapped model loads into its arch
    assert report.entry is None and report.complete
    assert torch.equal(output(dst), output(src))


def to_original_rcan(
    state: dict[str, torch.Tensor], num_group: int, num_block: int
) -> dict[str, torch.Tensor]:
    """BasicSR -> EDSR-PyTorch RCAN names: docs/evaluation.md's mapping backwards, plus the mean shifts."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "conv_first":
            new = ["head", "0", *parts[1:]]
        elif parts[0] == "conv_after_body":
            new = ["body", str(num_group), *parts[1:]]
        elif parts[0] == "upsample":
            new = ["tail", "0", *parts[1:]]
        elif parts[0] == "conv_last":
            new = ["tail", "1", *parts[1:]]
        elif parts[2] == "conv":  # body.g.conv.*
            new = ["body", parts[1], "body", str(num_block), *parts[3:]]
        elif parts[5] in ("0", "2"):  # body.g.residual_group.b.rcab.{0,2}.*
            new = ["body", parts[1], "body", parts[3], "body", parts[5], *parts[6:]]
        else:  # body.g.residual_group.b.rcab.3.attention.{1,3}.*
            du = {"1": "0", "3": "2"}[parts[7]]
            new = ["body", parts[1], "body", parts[3], "body", "3", "conv_du", du, *parts[8:]]
        out[".".join(new)] = value
    for shift in ("sub_mean", "add_mean"):
        out[f"{shift}.weight"] = torch.eye(3).view(3, 3, 1, 1)
        out[f"{shift}.bias"] = torch.zeros(3)
    return out


@pytest.mark.parametrize("scale", (3, 4))
def test_original_rcan_layout_loads_with_identical_output(tmp_path, scale):
    kw = {
        "num_feat": 16,
        "squeeze_factor": 4,
        "num_group": 3,
        "num_block": 4,
    }  # indices "4" and "3", not 20/10
    src = seeded("rcan", scale, None, 0, **kw)
    original = to_original_rcan(src.state_dict(), num_group=3, num_block=4)
    assert "body.0.body.4.weight" in original and "body.3.weight" in original and "head.0.weight" in original
    path = tmp_path / f"RCAN_BIX{scale}.pt"
    torch.save(original, path, _use_new_zipfile_serialization=False)  # the 2018 files predate the zip format
    dst = seeded("rcan", scale, None, 1, **kw)
    report = load_pretrained(dst, path)
    assert report.layout == "rcan-original" and report.complete
    assert torch.equal(output(dst), output(src))


@pytest.mark.parametrize("with_buffers", (True, False))
def test_swinir_loads_with_or_without_derived_buffers(tmp_path, with_buffers):
    src = seeded("swinir", 2, "tiny_student", 0)
    state = src.state_dict()
    if not with_buffers:
        state = {k: v for k, v in state.items() if not k.endswith(DERIVED_BUFFERS)}
    assert any(k.endswith("attn_mask") for k in state) == with_buffers
    path = save_torch(tmp_path / "swinir.pth", {"params": state})
    dst = seeded("swinir", 2, "tiny_student", 1)
    assert load_pretrained(dst, path).complete
    assert torch.equal(output(dst), output(src))


def test_swinir_file_buffers_of_another_img_size_are_ignored(tmp_path):
    """A file trained at another patch size (e.g. the s64 releases) carries masks of another shape."""
    src = seeded("swinir", 2, "tiny_student", 0, img_size=8)
    path = save_torch(tmp_path / "s8.pth", {"params": src.state_dict()})
    dst = seeded("swinir", 2, "tiny_student", 1)  # img_size 16
    mask_key = "layers.0.residual_group.blocks.1.attn_mask"
    own_mask = dst.state_dict()[mask_key].clone()
    assert src.state_dict()[mask_key].shape != own_mask.shape
    assert load_pretrained(dst, path).complete
    assert torch.equal(dst.state_dict()[mask_key], own_mask)
    assert torch.equal(output(dst), output(src))


def test_wrong_arch_fails_naming_file_and_keys(tmp_path):
    path = save_torch(tmp_path / "edsr_x2.pth", {"params": seeded("edsr", 2, "tiny_student", 0).state_dict()})
    with pytest.raises(CheckpointError) as err:
        load_pretrained(seeded("rcan", 2, "tiny_student", 0), path)
    msg = str(err.value)
    assert "edsr_x2.pth" in msg and "missing from the file" in msg and "unexpected in the file" in msg
    assert "body.0.residual_group.0.rcab.0.weight" in msg and "body.0.conv1.weight" in msg
    assert "more)" in msg  # long lists are cut, with a count


def test_wrong_size_fails_listing_shapes(tmp_path):
    path = save_torch(tmp_path / "teacher.pth", {"params": seeded("edsr", 4, "tiny_teacher", 0).state_dict()})
    student = seeded("edsr", 4, "tiny_student", 0)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(
        CheckpointError, match=r"teacher\.pth.*wrongly shaped: conv_first\.weight \(file \[32, 3"
    ):
        load_pretrained(student, path)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # nothing half-loaded


def test_non_strict_x2_to_x4_loads_body_and_reports_upsampler(tmp_path):
    x2 = seeded("edsr", 2, "tiny_student", 0)
    path = save_torch(tmp_path / "x2.pth", {"params": x2.state_dict()})
    x4 = seeded("edsr", 4, "tiny_student", 1)
    with pytest.raises(CheckpointError, match="upsample.2.weight"):
        load_pretrained(x4, path)
    report = load_pretrained(x4, path, strict=False)
    assert sorted(report.skipped) == ["upsample.2.bias", "upsample.2.weight"]
    assert report.missing == ["upsample.2.weight", "upsample.2.bias"] and not report.unexpected
    x4_state, x2_state = x4.state_dict(), x2.state_dict()
    for key in report.loaded:
        assert torch.equal(x4_state[key], x2_state[key]), key
    assert {"conv_first.weight", "body.1.conv2.weight", "upsample.0.weight", "conv_last.bias"} <= set(
        report.loaded
    )
    x3_report = load_pretrained(seeded("edsr", 3, "tiny_student", 1), path, strict=False)
    assert [k for k, _, _ in x3_report.mismatched] == ["upsample.0.weight", "upsample.0.bias"]
    assert "upsample.0.weight (file [64, 16, 3, 3] vs model [144, 16, 3, 3])" in x3_report.describe_skipped()


def test_safetensors_round_trip_and_build_from_checkpoint(tmp_path):
    params, ema = seeded("swinir", 3, "tiny_student", 0), seeded("swinir", 3, "tiny_student", 1)
    _, st = save_weights(str(tmp_path / "best"), params, ema, params.arch_spec)
    with open(st, "rb") as f:
        tensors = load_safetensors(f.read())
    assert set(tensors) == set(ema.state_dict())
    fresh = seeded("swinir", 3, "tiny_student", 2)
    assert load_pretrained(fresh, st).complete
    assert torch.equal(output(fresh), output(ema))  # the safetensors file holds the EMA weights
    rebuilt = build_from_checkpoint(st)
    assert rebuilt.arch_spec == params.arch_spec and not rebuilt.training
    assert torch.equal(output(rebuilt), output(ema))


def test_build_from_checkpoint_foreign_and_ours(tmp_path):
    src = seeded("rcan", 2, "tiny_teacher", 0)
    foreign = save_torch(tmp_path / "foreign.pth", {"params": src.state_dict()})
    with pytest.raises(CheckpointError, match=r"foreign\.pth carries no arch_spec.*arch= and scale="):
        build_from_checkpoint(foreign)
    model = build_from_checkpoint(foreign, arch="rcan", scale=2, preset="tiny_teacher")
    assert torch.equal(output(model), output(src))
    ours, _ = save_weights(str(tmp_path / "ours"), src.state_dict(), arch_spec=src.arch_spec)
    assert torch.equal(output(build_from_checkpoint(ours, arch="rcan", scale=2)), output(src))
    with pytest.raises(CheckpointError, match=r"ours\.pth holds a scale=2 model, but --scale 4"):
        build_from_checkpoint(ours, scale=4)


def test_corrupt_and_non_checkpoint_files_fail_naming_them(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"garbage\.pth is not a PyTorch checkpoint"):
        load_pretrained(seeded("edsr", 2, "tiny_student", 0), str(garbage))
    buf = io.BytesIO()
    torch.save(seeded("edsr", 2, "tiny_student", 0).state_dict(), buf)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth"):
        load_pretrained(seeded("edsr", 2, "tiny_student", 0), str(truncated))
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"bad\.safetensors is not a readable safetensors file"):
        load_pretrained(seeded("edsr", 2, "tiny_student", 0), str(bad_st))
    listing = save_torch(tmp_path / "list.pth", [torch.zeros(1)])
    with pytest.raises(CheckpointError, match=r"list\.pth holds a list"):
        load_pretrained(seeded("edsr", 2, "tiny_student", 0), listing)
    opts = save_torch(tmp_path / "opts.pth", {"epoch": 3, "optimizer": {"lr": 1e-4}})
    with pytest.raises(CheckpointError, match=r"opts\.pth: no state dict found.*'epoch'"):
        load_pretrained(seeded("edsr", 2, "tiny_student", 0), opts)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_pretrained(seeded("edsr", 2, "tiny_student", 0), str(tmp_path / "nowhere.pth"))


class RunsCodeOnLoad:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path, capsys):
    """weights_only=True: a file that would run code on load is an error, not an execution."""
    path = save_torch(tmp_path / "evil.pth", {"params": {"x": torch.zeros(1)}, "hook": RunsCodeOnLoad()})
    with pytest.raises(CheckpointError, match=r"evil\.pth .*weights_only=True"):
        load_pretrained(seeded("edsr", 2, "tiny_student", 0), path)
    assert "must never run" not in capsys.readouterr().out


def test_save_and_load_through_s3(s3_bucket):
    bucket, opts = s3_bucket
    params, ema = seeded("edsr", 4, "tiny_student", 0), seeded("edsr", 4, "tiny_student", 1)
    pth, st = save_weights(f"{bucket}/run/best", params, ema, params.arch_spec, storage_options=opts)
    assert pth == f"{bucket}/run/best.pth" and st == f"{bucket}/run/best.safetensors"
    fresh = seeded("edsr", 4, "tiny_student", 2)
    report = load_pretrained(fresh, pth, storage_options=opts)
    assert report.entry == "params_ema" and report.source == pth
    assert torch.equal(output(fresh), output(ema))
    assert torch.equal(output(build_from_checkpoint(st, storage_options=opts)), output(ema))
