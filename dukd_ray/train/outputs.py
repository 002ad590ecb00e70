"""The run's deliverables, written by rank 0 after the last step (idempotent: a restart rewrites them).

`<run>/<export_name>.pth` (BasicSR layout: `params` + `params_ema`) and `.safetensors` (EMA weights),
`curves.png`, `crops.png` (bicubic / student / teacher / HR on the first validation image),
`report.md` and `report.html`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from dukd_ray.eval.benchmark import Pair, bicubic_pair, evaluate_pair
from dukd_ray.eval.cost import measure_cost
from dukd_ray.models import StudentInit, save_weights
from dukd_ray.storage import join, write_bytes_atomic
from dukd_ray.train.config import JobConfig
from dukd_ray.train.progress import throughput_text
from dukd_ray.train.report import (
    cost_rows,
    crops_png,
    curves_png,
    init_lines,
    paper_rows,
    results_rows,
    workers_line,
    write_report,
)


def write_outputs(
    cfg: JobConfig,
    student: nn.Module,
    ema: nn.Module,
    teacher: nn.Module | None,
    sets: dict[str, list[Pair]],
    history: list[dict[str, Any]],
    resumes: list[int],
    init: StudentInit | None = None,
) -> None:
    """`init`: what `model.student_init` loaded (None: the student started from its random init)."""
    opts = cfg.data.storage_options or None
    run_url, m = cfg.run.url(), cfg.model
    save_weights(
        join(run_url, cfg.run.export_name),
        params=student.state_dict(),
        params_ema=ema.state_dict(),
        arch_spec=getattr(student, "arch_spec", None),
        storage_options=opts,
    )
    write_bytes_atomic(join(run_url, "curves.png"), curves_png(history), opts)
    models = [(f"student ({m.student_preset}, EMA)", ema)]
    if teacher is not None:
        models.append((f"teacher ({m.teacher_preset})", teacher))
    panels = comparison_panels(next(iter(sets.values()))[0], m.scale, models)
    write_bytes_atomic(join(run_url, "crops.png"), crops_png(panels), opts)

    final, names, export = history[-1], list(sets), cfg.run.export_name
    labels = {"bicubic/": "bicubic", "teacher/": f"teacher ({m.teacher_preset})"}
    labels[""] = f"student ({m.student_preset}, {cfg.distill.method}, EMA)"
    write_report(
        run_url,
        title=f"{m.arch} x{m.scale} {cfg.distill.method}: {cfg.run.name}",
        summary=[
            f"arch {m.arch} x{m.scale}: teacher {m.teacher_preset}, student {m.student_preset}",
            f"method {cfg.distill.method} (step mode {cfg.distill.step_mode}), {final['step']} steps, "
            f"global batch {cfg.data.global_batch_size} (at most {cfg.data.batch_size} a pass per worker), "
            f"patch {cfg.data.patch_size}",
            f"exports: {export}.pth (params + params_ema), {export}.safetensors (EMA weights)",
            f"resumed from step(s): {', '.join(map(str, resumes)) or 'never'}",
            workers_line(history, resumes),
            f"throughput over the last report's steps: {throughput_text(final)}; "
            f"torch threads: {final.get('torch_threads', 1)} per worker",
        ],
        sets=names,
        results=results_rows(final, names, labels),
        paper=paper_rows(m.arch, m.scale, (m.teacher_preset, m.student_preset), names),
        config=cfg.redacted_dict(),
        storage_options=opts,
        cost=cost_rows([(label, measure_cost(model)) for label, model in models]),  # meta device: ~1 s
        init=init_lines(init, cfg.train.seed),
    )


def comparison_panels(
    pair: Pair, scale: int, models: Sequence[tuple[str, nn.Module]]
) -> list[tuple[str, np.ndarray]]:
    """The crops figure's panels: bicubic, each titled model (run on its device), then HR, with Y-PSNRs."""
    psnr, _, bicubic = bicubic_pair(pair, scale)
    panels = [(f"bicubic\n{psnr:.2f} dB", bicubic)]
    for title, model in models:
        psnr, _, sr = evaluate_pair(model, pair, scale)
        panels.append((f"{title}\n{psnr:.2f} dB", sr))
    return [*panels, (f"HR ({pair.name})", pair.hr)]
