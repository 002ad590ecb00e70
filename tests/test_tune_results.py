"""Sweep summaries on known trial histories: ranking, early-stop flags, CSV/Markdown, plot, storage."""

from __future__ import annotations

import csv
import io
import math

import fsspec
from PIL import Image

from dukd_ray.tune.results import (
    BEST_CONFIG,
    PLOT_PNG,
    TABLE_CSV,
    TABLE_MD,
    TrialRecord,
    plot_curves,
    rank,
    table_rows,
    to_csv,
    to_markdown,
    write_summary,
)

MAX_STEPS = 30
RECORDS = [
    # finished, peaked mid-way: its best is 24.5 at step 20, not its last value
    TrialRecord(
        "t_a",
        {"distill.w_pix": 5.0, "distill.lc_ops": ["invert", "flip_h"]},
        [(10, 24.0), (20, 24.5), (30, 24.25)],
    ),
    # stopped by the scheduler after one validation
    TrialRecord("t_b", {"distill.w_pix": 0.5, "distill.lc_ops": []}, [(10, 19.0)]),
    # finished, best of all
    TrialRecord(
        "t_c",
        {"distill.w_pix": 1.234567, "distill.lc_ops": ["transpose"]},
        [(10, 25.0), (20, 25.5), (30, 26.0)],
    ),
    # failed before validating
    TrialRecord("t_d", {"distill.w_pix": 2.0, "distill.lc_ops": ["flip_w"]}, [], status="error"),
    # a NaN validation never ranks first; left running by an interrupted sweep
    TrialRecord(
        "t_e",
        {"distill.w_pix": 3.0, "distill.lc_ops": ["invert"]},
        [(10, math.nan), (20, 20.0)],
        status="unfinished",
    ),
]


def test_rank_is_by_best_psnr_with_failures_last():
    assert [r.trial_id for r in rank(RECORDS)] == ["t_c", "t_a", "t_e", "t_b", "t_d"]


def test_table_rows():
    rows = {r["trial_id"]: r for r in table_rows(RECORDS, MAX_STEPS)}
    assert rows["t_a"]["best_val_psnr"] == 24.5 and rows["t_a"]["best_step"] == 20
    assert rows["t_c"]["rank"] == 1 and rows["t_c"]["distill.w_pix"] == 1.235
    assert [rows[t]["early_stopped"] for t in ("t_a", "t_b", "t_c", "t_d", "t_e")] == [
        False,
        True,
        False,
        False,
        False,
    ]
    assert [rows[t]["steps_run"] for t in ("t_a", "t_b", "t_d", "t_e")] == [30, 10, 0, 20]
    assert rows["t_d"]["status"] == "error" and rows["t_d"]["best_val_psnr"] is None
    assert rows["t_e"]["status"] == "unfinished" and rows["t_e"]["best_val_psnr"] == 20.0
    assert rows["t_a"]["distill.lc_ops"] == "invert+flip_h" and rows["t_b"]["distill.lc_ops"] == "none"
    # with a scheduler that never stops trials (fifo, pbt) a short trial is not flagged
    assert not any(r["early_stopped"] for r in table_rows(RECORDS, MAX_STEPS, early_stopping=False))


def test_csv_and_markdown_hold_every_trial():
    rows = table_rows(RECORDS, MAX_STEPS)
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert [r["trial_id"] for r in parsed] == ["t_c", "t_a", "t_e", "t_b", "t_d"]
    assert parsed[0]["best_val_psnr"] == "26.0" and parsed[-1]["best_val_psnr"] == ""
    assert parsed[3]["early_stopped"] == "True"
    md = to_markdown(rows).splitlines()
    assert md[0].startswith(
        "| rank | trial_id | best_val_psnr | best_step | steps_run | early_stopped | status | restarts |"
    )
    assert len(md) == 2 + len(RECORDS) and md[2].startswith(
        "| 1 | t_c | 26.0 | 30 | 30 | False | terminated | 0 |"
    )


def test_plot_is_a_png():
    png = plot_curves(RECORDS, "sweep")
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.width > 300 and img.height > 200


def test_write_summary_to_s3(s3_bucket):
    bucket, opts = s3_bucket
    urls = write_summary(RECORDS, f"{bucket}/sweep/summary", MAX_STEPS, "distill:\n  w_pix: 1.0\n", "t", opts)
    assert set(urls) == {TABLE_CSV, TABLE_MD, PLOT_PNG, BEST_CONFIG}
    fs = fsspec.filesystem("s3", **opts)
    assert fs.cat(urls[BEST_CONFIG]) == b"distill:\n  w_pix: 1.0\n"
    assert fs.cat(urls[TABLE_CSV]).decode().count("\n") == 1 + len(RECORDS)
    assert fs.cat(urls[PLOT_PNG])[:8] == b"\x89PNG\r\n\x1a\n"
