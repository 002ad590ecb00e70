"""benchmarks/gpu_check.py keeps working: off CUDA it runs the same steps on the tiny presets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the script runs the paper presets")
def test_gpu_check_runs_the_service_and_the_step_table_on_a_cpu():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", "--archs", "edsr", "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["presets"].startswith("tiny") and result["all_losses_finite"]
    assert result["train_run"]["steps"] == 2 and result["train_run"]["losses_finite"]
    table = result["table"]
    assert [(r["bf16"], r["channels_last"]) for r in table] == [
        (False, False),
        (False, True),
        (True, False),
        (True, True),
    ]
    assert all(r["step_s"] > 0 and r["teacher_forward_s"] > 0 and r["student_fwd_bwd_s"] > 0 for r in table)
