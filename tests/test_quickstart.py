"""The README's first command, on a smaller budget: every stage runs, the report is complete, reruns reuse."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "--teacher-steps",
    "20",
    "--steps",
    "10",
    "--val-every",
    "5",
    "--batch-size",
    "4",
    "--patch-size",
    "16",
]


def _quickstart(out: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "jobs/quickstart.py", "--out", str(out), *SMALL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_quickstart_writes_a_complete_report_and_reuses_finished_stages(tmp_path):
    out = tmp_path / "qs"
    first = _quickstart(out)
    for stage in ("1/6", "2/6", "3/6", "5/6"):
        assert f"[quickstart] {stage}" in first

    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"-?\d+\.\d+", cells[1]):
            rows[cells[0].replace(" **(best student)**", "")] = float(cells[1])
    students = {"student scratch", "student kd", "student fakd", "student dukd"}
    assert set(rows) == {"bicubic", "teacher", *students}
    assert all(math.isfinite(v) for v in rows.values())
    best = max((k for k in rows if k.startswith("student")), key=rows.get)
    assert f"{best} **(best student)**" in md
    for name in ("psnr_curves.png", "crops.png"):
        with Image.open(out / name) as img:
            img.verify()
        assert f'src="{name}"' in html

    second = _quickstart(out)
    assert "reusing the finished stage" in second
    assert "4/6 train the student" in second and "4/6 train the student: dukd, seed 10: done" not in second
    assert (out / "report.html").stat().st_size > 0
