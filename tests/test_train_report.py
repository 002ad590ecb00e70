"""The run report's tables and figures (no Ray): paper rows only where the preset matches the paper's."""

from __future__ import annotations

import numpy as np

from dukd_ray.distill import METHODS
from dukd_ray.eval.cost import ModelCost
from dukd_ray.train.report import (
    PAPER_X4,
    cost_rows,
    crops_png,
    curves_png,
    paper_rows,
    results_rows,
    write_report,
)

PNG = b"\x89PNG\r\n\x1a\n"


def test_paper_rows_transcribe_dukd_md_for_the_full_size_x4_presets():
    rows = paper_rows("rcan", 4, ("teacher", "student"), ["Set5", "B100", "Urban100", "Sample"])
    assert rows == [
        ["RCAN teacher (g10 b20)", "32.63", "27.77", "26.82", "—"],
        ["RCAN student scratch (g10 b6)", "32.38", "27.63", "26.36", "—"],
        ["RCAN student logits KD", "32.45", "27.67", "26.49", "—"],
        ["RCAN student DUKD (paper)", "—", "—", "26.62", "—"],
    ]
    assert paper_rows("edsr", 4, ("teacher", "student"), ["Urban100"]) == [
        ["EDSR student DUKD (paper)", "26.45"]
    ]
    assert paper_rows("swinir", 4, ("teacher", "student"), ["Set14"])[0] == ["SwinIR teacher", "28.94"]
    assert paper_rows("rcan", 2, ("teacher", "student"), ["Set5"]) == []  # the paper's table is x4
    assert paper_rows("rcan", 4, ("tiny_teacher", "tiny_student"), ["Set5"]) == []  # not the paper's nets
    assert paper_rows("edsr", 4, ("teacher", "student"), ["Sample"]) == []  # no overlapping set
    # every row says which model it measured (reproduce.md puts it beside that method's run)
    assert {model for rows in PAPER_X4.values() for _, model, _ in rows} <= {"teacher", *METHODS}


def test_results_rows_and_report_files(tmp_path):
    final = {
        "psnr/Set5": 31.234,
        "ssim/Set5": 0.88123,
        "bicubic/psnr/Set5": 28.42,
        "bicubic/ssim/Set5": 0.8104,
    }
    labels = {"bicubic/": "bicubic", "teacher/": "teacher", "": "student"}
    rows = results_rows(final, ["Set5"], labels)
    assert rows == [["bicubic", "28.42 / 0.8104"], ["student", "31.23 / 0.8812"]]  # no teacher: scratch

    history = [{"step": s, "loss": 1.0 / s, "loss_pix": 0.5 / s, "psnr/Set5": 20.0 + s} for s in (10, 20)]
    assert curves_png(history).startswith(PNG)
    hr = np.zeros((40, 60, 3), np.uint8)
    assert crops_png([("a", hr), ("b", hr)], crop=32).startswith(PNG)

    write_report(
        str(tmp_path),
        title="edsr x4 <dukd>",
        summary=["one", "two"],
        sets=["Set5"],
        results=rows,
        paper=[["EDSR student DUKD (paper)", "—"]],
        config={"train": {"lr": 1e-4}},
        storage_options=None,
        cost=cost_rows(
            [
                (
                    "student",
                    ModelCost(
                        params=2_500_000, macs=150 * 10**9, peak_memory_bytes=2**28, lr_size=(180, 320)
                    ),
                ),
                (
                    "teacher",
                    ModelCost(
                        params=40_000_000, macs=3 * 10**12, peak_memory_bytes=2**30, lr_size=(180, 320)
                    ),
                ),
            ]
        ),
    )
    md = (tmp_path / "report.md").read_text()
    assert "| student | 2.500 | 150.0 | 256 |" in md and "| teacher | 40.000 | 3000.0 | 1024 |" in md
    assert "| student / teacher | 0.062 | 0.050 | 0.250 |" in md
    assert "| student | 31.23 / 0.8812 |" in md and "lr: 0.0001" in md and "![crops](crops.png)" in md
    html = (tmp_path / "report.html").read_text()
    assert "edsr x4 &lt;dukd&gt;" in html and "<td>31.23 / 0.8812</td>" in html
