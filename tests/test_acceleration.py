"""The step's speed switches and cost model without Ray: bf16 autocast on CPU, the compile fallback,
the CPU sizing rule, and the forwards MFU counts against the ones a real `train_step` makes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dukd_ray.distill import METHODS, freeze_teacher, recipe, train_step
from dukd_ray.models import build_arch
from dukd_ray.train.acceleration import autocast_dtype, compiled, cpu_has_bf16
from dukd_ray.train.config import RunSpec
from dukd_ray.train.resources import default_cpus_per_worker, worker_resources
from dukd_ray.train.throughput import forward_inputs, step_cost

SCALE, PATCH, BATCH = 4, 8, 2
CPU = torch.device("cpu")


def _step_parts(method: str):
    torch.manual_seed(0)
    teacher = freeze_teacher(build_arch("edsr", SCALE, preset="tiny_teacher"))
    student = build_arch("edsr", SCALE, preset="tiny_student")
    cfg = recipe("edsr", SCALE, method).distill
    if method == "fakd":
        cfg = dataclasses.replace(cfg, fakd_taps=["body.0"])
    hr = torch.rand(BATCH, 3, SCALE * PATCH, SCALE * PATCH, generator=torch.Generator().manual_seed(1))
    batch = {"lr": torch.nn.functional.avg_pool2d(hr, SCALE), "hr": hr}
    return teacher, student, cfg, batch


def _run(student, teacher, cfg, batch, amp_dtype=None) -> dict[str, float]:
    opt = torch.optim.Adam(student.parameters(), 1e-4)
    return train_step(student, teacher, opt, batch, cfg, torch.Generator().manual_seed(2), amp_dtype)


def test_amp_on_cpu_trains_in_bf16_where_the_cpu_has_it():
    dtype = autocast_dtype(CPU, amp=True)
    assert autocast_dtype(CPU, amp=False) is None
    if not cpu_has_bf16():
        assert dtype is None  # fp32, with a warning
        return
    assert dtype == torch.bfloat16
    teacher, student, cfg, batch = _step_parts("dukd")
    seen: list[torch.dtype] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype)) for m in (teacher, student)]
    amp = _run(student, teacher, cfg, batch, dtype)
    for h in hooks:
        h.remove()
    assert set(seen) == {torch.bfloat16}  # every teacher and student forward ran under autocast
    teacher, student, cfg, batch = _step_parts("dukd")
    fp32 = _run(student, teacher, cfg, batch)
    assert all(torch.isfinite(torch.tensor(v)) for v in amp.values())
    assert amp["loss"] != fp32["loss"] and amp["loss"] == pytest.approx(fp32["loss"], rel=0.05)


def test_compile_off_or_nothing_to_compile_is_the_module_itself():
    m = build_arch("edsr", SCALE, preset="tiny_student")
    assert compiled(m, False, CPU) is m and compiled(None, True, CPU) is None


def test_compile_falls_back_to_eager_when_the_compiler_is_missing():
    """No C++ compiler for the CPU backend: the probe says why, and the module comes back unwrapped."""
    code = (
        "import torch; from dukd_ray.train.acceleration import compiled, compile_unavailable;"
        "m = torch.nn.Linear(2, 2); print(compiled(m, True, torch.device('cpu')) is m);"
        "print(compile_unavailable('cpu'))"
    )
    env = {**os.environ, "CXX": "/nonexistent/c++"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "True" and "compiler" in lines[1].lower(), out.stdout + out.stderr
    assert "train.compile: torch.compile is unavailable on cpu" in out.stderr


def test_cpu_workers_get_their_nodes_cores_less_the_loaders_room():
    assert default_cpus_per_worker([2.0], 1, 1) == 1  # 2 - 0.5 for the loader
    assert default_cpus_per_worker([2.0], 1, 0) == 2
    assert default_cpus_per_worker([16.0], 2, 2) == 7  # (16 - 2 x 2 x 0.5) / 2
    assert default_cpus_per_worker([16.0, 16.0], 4, 2) == 7  # 2 workers on each node
    assert default_cpus_per_worker([2.0], 2, 2) == 1 and default_cpus_per_worker([0.0], 1, 1) == 1
    assert worker_resources(RunSpec(cpus_per_worker=3), use_gpu=False) == {"CPU": 3}
    assert worker_resources(RunSpec(cpus_per_worker=3), use_gpu=True) == {"CPU": 3, "GPU": 1.0}
    assert worker_resources(RunSpec(), use_gpu=True) is None  # Ray's default: 1 GPU, no CPU
    assert worker_resources(RunSpec(gpus_per_worker=0.5), use_gpu=True) == {"GPU": 0.5}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_mfu_counts_the_forwards_a_real_step_makes(method):
    teacher, student, cfg, batch = _step_parts(method)
    calls: dict[str, list[tuple[int, int]]] = {"teacher": [], "student": []}
    hooks = [
        m.register_forward_pre_hook(lambda _m, args, role=role: calls[role].append(tuple(args[0].shape[::3])))
        for role, m in (("teacher", teacher), ("student", student))
    ]
    with FlopCounterMode(display=False) as counter:
        _run(student, teacher, cfg, batch)
    for h in hooks:
        h.remove()
    expected = forward_inputs(cfg, PATCH, SCALE)
    for role in calls:
        assert sorted(calls[role]) == sorted((n * BATCH, side) for n, side in expected[role]), role
    cost = step_cost(cfg, teacher, student, PATCH, SCALE, CPU, None)
    assert cost.peak_flops is None
    # the real step's counted FLOPs (forwards, backward, FAKD's affinities): within 10 % of ours
    assert cost.flops_per_sample * BATCH == pytest.approx(counter.get_total_flops(), rel=0.1)
