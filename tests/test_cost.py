"""Model cost counts against hand-derived values, and the teacher-vs-student benchmark script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dukd_ray.eval.cost import (
    ModelCost,
    cost_ratios,
    count_params,
    format_cost_table,
    measure_cost,
    measure_latency,
)
from dukd_ray.models import build_arch

REPO = Path(__file__).resolve().parents[1]
H, W = 20, 30


def _conv_stack() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.Conv2d(64, 3, 3, padding=1),
    )


def test_macs_and_params_of_a_conv_stack():
    cost = measure_cost(_conv_stack(), (H, W))
    # a k x k conv from c_in to c_out does k*k*c_in*c_out multiply-accumulates per output pixel
    assert cost.macs == H * W * 9 * (3 * 64 + 64 * 64 + 64 * 3)
    assert cost.params == (9 * 3 * 64 + 64) + (9 * 64 * 64 + 64) + (9 * 64 * 3 + 3)


def test_peak_memory_of_a_conv_stack():
    model = _conv_stack()
    cost = measure_cost(model, (H, W))
    weights = 4 * count_params(model)
    image = 4 * 3 * H * W
    # the in-place ReLU adds nothing; the peak is the middle conv's 64-channel input and output together
    assert cost.peak_memory_bytes == weights + image + 4 * 2 * 64 * H * W


def test_edsr_macs_match_its_layers():
    model = build_arch("edsr", 2, "tiny_student")  # 16 features, 2 residual blocks
    f, blocks = 16, 2
    lr_convs = 3 * f + blocks * 2 * f * f + f * f + f * 4 * f  # first, body, after-body, x2 upsampler
    hr_convs = f * 3  # conv_last at 2H x 2W
    assert measure_cost(model, (H, W)).macs == 9 * (H * W * lr_convs + 4 * H * W * hr_convs)


def test_measuring_leaves_the_model_alone():
    model = build_arch("swinir", 2, "tiny_student")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cost = measure_cost(model, (13, 17))  # not a window multiple: the pad path runs on meta too
    assert cost.macs > 0 and cost.peak_memory_bytes > 0
    assert all(v.device.type == "cpu" and torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_student_presets_cost_less_than_teachers():
    for arch in ("edsr", "rcan", "swinir"):
        teacher = measure_cost(build_arch(arch, 4, "tiny_teacher"), (12, 16))
        student = measure_cost(build_arch(arch, 4, "tiny_student"), (12, 16))
        ratios = cost_ratios(student, teacher)
        assert 0 < ratios["params"] < 1 and 0 < ratios["macs"] < 1, arch
        assert ratios["latency"] is None  # not measured


def test_latency_is_measured_and_ratios_need_the_same_input():
    model = _conv_stack()
    seconds = measure_latency(model, (H, W), repeats=2, warmup=1)
    assert seconds > 0
    base = measure_cost(model, (H, W))
    a = ModelCost(
        **{**base.to_dict(), "latency_s": seconds, "latency_lr_size": (H, W), "latency_device": "cpu"}
    )
    b = ModelCost(
        **{**base.to_dict(), "latency_s": 2 * seconds, "latency_lr_size": (H, W), "latency_device": "cpu"}
    )
    assert cost_ratios(a, b)["latency"] == pytest.approx(0.5)
    c = ModelCost(
        **{**base.to_dict(), "latency_s": seconds, "latency_lr_size": (2 * H, W), "latency_device": "cpu"}
    )
    assert cost_ratios(a, c)["latency"] is None
    gpu = ModelCost(**{**b.to_dict(), "latency_device": "cuda"})
    with pytest.raises(ValueError, match="different devices .*student on cpu, teacher on cuda"):
        cost_ratios(a, gpu)
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, (H, W), repeats=0)
    table = format_cost_table({"stack": a})
    assert "| stack |" in table and f"{a.params / 1e6:.3f}" in table


def test_benchmark_script_json_has_ratios():
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "model_cost.py"),
            "--json",
            "--quick",
            "--repeats",
            "1",
            "--presets",
            "tiny_teacher",
            "tiny_student",
            "--lr-size",
            "32x24",
            "--archs",
            "edsr",
            "swinir",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["quick"] and out["latency_lr_size_wxh"] == "8x6" and out["hr_size_wxh"] == "128x96"
    for arch in ("edsr", "swinir"):
        r = out["archs"][arch]
        assert r["ratios"]["params"] == pytest.approx(r["student"]["params"] / r["teacher"]["params"])
        assert r["ratios"]["latency"] == pytest.approx(r["student"]["latency_s"] / r["teacher"]["latency_s"])
