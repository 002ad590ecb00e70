"""The run report: `report.md` and `report.html` (same content), `curves.png` and `crops.png`.

Written into the run folder by rank 0 at the end of training. The results table has bicubic, the
teacher and the student on every validation set, and, when the run uses the paper's full-size x4
presets, the paper's reference numbers (docs/distill.md) for the sets they cover.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # workers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from dukd_ray.eval.cost import ModelCost, cost_ratios  # noqa: E402
from dukd_ray.eval.setnames import set_aliases  # noqa: E402
from dukd_ray.models import StudentInit  # noqa: E402
from dukd_ray.report import Report  # noqa: E402

# docs/distill.md's published results: Y-PSNR (dB), x4, for the full-size teacher/student presets
PAPER_X4: dict[str, list[tuple[str, str, dict[str, float]]]] = {  # arch -> (label, model, Y-PSNR by set)
    # model: "teacher", or the method of the student row
    "rcan": [
        (
            "RCAN teacher (g10 b20)",
            "teacher",
            {"Set5": 32.63, "Set14": 28.87, "BSD100": 27.77, "Urban100": 26.82},
        ),
        (
            "RCAN student scratch (g10 b6)",
            "scratch",
            {"Set5": 32.38, "Set14": 28.69, "BSD100": 27.63, "Urban100": 26.36},
        ),
        (
            "RCAN student logits KD",
            "kd",
            {"Set5": 32.45, "Set14": 28.76, "BSD100": 27.67, "Urban100": 26.49},
        ),
        ("RCAN student DUKD (paper)", "dukd", {"Urban100": 26.62}),
    ],
    "edsr": [("EDSR student DUKD (paper)", "dukd", {"Urban100": 26.45})],
    "swinir": [
        ("SwinIR teacher", "teacher", {"Set5": 32.72, "Set14": 28.94, "BSD100": 27.83, "Urban100": 27.07}),
        (
            "SwinIR student scratch",
            "scratch",
            {"Set5": 32.31, "Set14": 28.67, "BSD100": 27.61, "Urban100": 26.15},
        ),
        ("SwinIR student DUKD (paper)", "dukd", {"Urban100": 26.43}),
    ],
}
_LEGEND_MAX = 12  # more curves than this: a legend would hide the plot


def paper_rows(arch: str, scale: int, presets: tuple[str, str], sets: Sequence[str]) -> list[list[str]]:
    """The paper's rows for this arch, only for x4 with the full-size presets, on our sets' columns."""
    if scale != 4 or presets != ("teacher", "student"):
        return []
    rows = []
    for label, _, values in PAPER_X4.get(arch, []):
        cells = [next((values[n] for n in set_aliases(s) if n in values), None) for s in sets]
        if any(c is not None for c in cells):
            rows.append([label, *(f"{c:.2f}" if c is not None else "—" for c in cells)])
    return rows


def results_rows(final: dict[str, Any], sets: Sequence[str], labels: dict[str, str]) -> list[list[str]]:
    """`PSNR / SSIM` per set for each prefix in `labels` (`"bicubic/"`, `"teacher/"`, `""` = student)."""
    rows = []
    for prefix, label in labels.items():
        if f"{prefix}psnr/{sets[0]}" in final:
            rows.append(
                [
                    label,
                    *(f"{final[f'{prefix}psnr/{s}']:.2f} / {final[f'{prefix}ssim/{s}']:.4f}" for s in sets),
                ]
            )
    return rows


def curves_png(history: list[dict[str, Any]]) -> bytes:
    """Loss terms and validation PSNR against the step."""
    steps = [h["step"] for h in history]
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted(k for k in history[-1] if k == "loss" or k.startswith("loss_")):
        ax_loss.plot(steps, [h.get(key, np.nan) for h in history], marker=".", label=key)
    ax_loss.set(xlabel="step", ylabel="L1 (weighted)", title="training loss", yscale="log")
    ax_loss.legend()
    for key in sorted(k for k in history[-1] if k.startswith("psnr/")):
        ax_psnr.plot(steps, [h.get(key, np.nan) for h in history], marker=".", label=key[len("psnr/") :])
    ax_psnr.set(xlabel="step", ylabel="Y-PSNR (dB)", title="validation (EMA weights)")
    ax_psnr.legend()
    return _png(fig)


def psnr_curves_png(curves: dict[str, list[tuple[int, float]]], title: str) -> bytes:
    """One validation-PSNR line per labelled run (the quickstart's students, a sweep's trials), in order."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are integers
    ax.set(xlabel="step", ylabel="Y-PSNR (dB)", title=title)
    ax.grid(alpha=0.3)
    if 0 < len(curves) <= _LEGEND_MAX:
        ax.legend(fontsize=8)
    return _png(fig)


def crops_png(panels: list[tuple[str, np.ndarray]], crop: int = 128) -> bytes:
    """Side-by-side centre crops of equally sized HR-resolution images (bicubic / student / teacher / HR)."""
    h, w = panels[-1][1].shape[:2]
    side = min(crop, h, w)
    top, left = (h - side) // 2, (w - side) // 2
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.6))  # room for 2-line titles
    for ax, (title, img) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(img[top : top + side, left : left + side], interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return _png(fig)


def init_lines(init: StudentInit | None, seed: int) -> list[str]:
    """Where the student's weights started: the file and entries `load_student_init` used, what it skipped."""
    if init is None:
        return [f"from scratch: random init (seed {seed}), EMA a copy of it"]
    s = init.student
    ema = (
        f"`{init.ema.entry}` -> EMA ({len(init.ema.loaded)} tensors)"
        if init.ema
        else "EMA = a copy of the initialised student (the file has no `params_ema`)"
    )
    skipped = ", ".join(f"`{k}`" for k in init.skipped) or "nothing"
    return [
        f"from `{s.source}` (non-strict load, {s.layout} layout)",
        f"`{s.entry or 'state dict'}` -> student ({len(s.loaded)} tensors); {ema}",
        f"skipped (upsampler only; a skipped student key keeps its random init): {skipped}",
    ]


def workers_line(history: Sequence[dict[str, Any]], resumes: Sequence[int]) -> str:
    """The world size over steps, e.g. `workers: 2 (steps 1-60), 1 (61-90), 2 (91-120)` (elastic runs).

    Each report says the size it was trained at; a size changes where the run resumed, so a segment
    starts after the latest resume since the report before (at the report before, when none is on record).
    """
    segments: list[list[int]] = []  # [world size, first step, last step]
    previous = 0
    for report in history:
        step, world = int(report["step"]), report.get("world_size")
        if world is None:  # a report from before world sizes were recorded
            previous = step
            continue
        if segments and segments[-1][0] == world:
            segments[-1][2] = step
        else:
            start = max([r for r in resumes if previous <= r < step], default=previous)
            if segments:
                segments[-1][2] = start
            segments.append([int(world), start + 1, step])
        previous = step
    if not segments:
        return "workers: not recorded"
    parts = [f"{w} (steps {a}-{b})" if i == 0 else f"{w} ({a}-{b})" for i, (w, a, b) in enumerate(segments)]
    return "workers: " + ", ".join(parts)


COST_HEADER = ["model", "params (M)", "MACs (G)", "peak memory (MiB)"]


def cost_rows(models: Sequence[tuple[str, ModelCost]]) -> list[list[str]]:
    """`COST_HEADER` rows for (label, cost) pairs; for (student, teacher) also their ratio row."""
    rows = [
        [label, f"{c.params / 1e6:.3f}", f"{c.macs / 1e9:.1f}", f"{c.peak_memory_bytes / 2**20:.0f}"]
        for label, c in models
    ]
    if len(models) == 2:
        r = cost_ratios(models[0][1], models[1][1])
        rows.append(["student / teacher", *(f"{r[k]:.3f}" for k in ("params", "macs", "peak_memory"))])
    return rows


def write_report(
    run_url: str,
    *,
    title: str,
    summary: list[str],
    sets: Sequence[str],
    results: list[list[str]],
    paper: list[list[str]],
    config: dict[str, Any],
    storage_options: dict[str, Any] | None,
    cost: list[list[str]] | None = None,
    init: list[str] | None = None,
) -> None:
    """report.md and report.html in `run_url` (they link curves.png and crops.png beside them).

    `cost`: rows under `COST_HEADER` (what the student saves against the teacher), if known;
    `init`: the student initialisation section's lines (`init_lines`).
    """
    header = ["model", *sets]
    report = Report(title).heading(title, level=1).bullets(summary)
    report.heading("Results (Y-PSNR dB / SSIM)").table(header, results)
    if paper:
        report.paragraph("Paper reference, Y-PSNR dB (docs/distill.md):").table(header, paper)
    if init:
        report.heading("Student initialisation").bullets(init)
    if cost:
        report.heading("Cost per image (LR input 320×180)").table(COST_HEADER, cost)
    report.heading("Curves").image("curves.png", "curves").heading("Crops").image("crops.png", "crops")
    report.heading("Config").code(yaml.safe_dump(config, sort_keys=False), "yaml")
    report.write(run_url, "report", storage_options)


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
