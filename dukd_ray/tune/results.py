"""A finished (or interrupted) sweep as files people read: a ranked table, PSNR curves, the best config.

Pure functions of `TrialRecord`s (no Ray), so the table and plot are tested on known inputs; `sweep.py`
builds the records from Tune's results and writes the files next to the experiment.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dukd_ray import storage
from dukd_ray.report import Report
from dukd_ray.train.report import psnr_curves_png

TABLE_CSV = "trials.csv"
TABLE_MD = "trials.md"
PLOT_PNG = "val_psnr.png"
BEST_CONFIG = "best_config.yaml"


@dataclass
class TrialRecord:
    """What one trial did: its searched values, its (step, val_psnr) history, how it ended."""

    trial_id: str
    params: dict[str, Any]  # "section.field" -> config value
    history: list[tuple[int, float]]
    status: str = "terminated"  # terminated (finished or stopped by the scheduler) | error | unfinished
    restarts: int = 0  # times Tune restarted it after a failure (a lost driver, a Train run out of retries)

    @property
    def steps_run(self) -> int:
        return max((s for s, _ in self.history), default=0)

    @property
    def best(self) -> tuple[int, float] | None:
        """(step, val_psnr) of the best validation; NaN never wins."""
        finite = [(s, v) for s, v in self.history if not math.isnan(v)]
        return max(finite, key=lambda sv: sv[1]) if finite else None


def rank(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Best val_psnr first; trials that never validated (or failed before it) last, by id."""
    return sorted(records, key=lambda r: (r.best is None, -(r.best or (0, 0.0))[1], r.trial_id))


def table_rows(
    records: Sequence[TrialRecord], max_steps: int, early_stopping: bool = True
) -> list[dict[str, Any]]:
    """One row per trial, ranked. `early_stopped`: terminated before `max_steps`, i.e. the scheduler
    stopped it (a failed trial has status `error`, one an interrupted sweep left behind `unfinished`);
    never set when the scheduler does not stop trials (`early_stopping=False`: fifo, pbt)."""
    keys = sorted({k for r in records for k in r.params})
    rows = []
    for i, r in enumerate(rank(records), 1):
        best_step, best_psnr = r.best or (None, None)
        rows.append(
            {
                "rank": i,
                "trial_id": r.trial_id,
                "best_val_psnr": None if best_psnr is None else round(best_psnr, 4),
                "best_step": best_step,
                "steps_run": r.steps_run,
                "early_stopped": early_stopping and r.status == "terminated" and r.steps_run < max_steps,
                "status": r.status,
                "restarts": r.restarts,
                **{k: _show(r.params.get(k)) for k in keys},
            }
        )
    return rows


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return out.getvalue()


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """trials.md: the ranked table, rendered by the same report model as the run reports."""
    report = Report("sweep trials")
    if rows:
        header = list(rows[0])
        report.table(header, [["" if row[k] is None else str(row[k]) for k in header] for row in rows])
    else:
        report.paragraph("(no trials)")
    return report.to_markdown()


def plot_curves(records: Sequence[TrialRecord], title: str) -> bytes:
    """PNG of val_psnr over training steps, one line per trial (ranked order, so colours follow rank)."""
    return psnr_curves_png({r.trial_id: sorted(r.history) for r in rank(records) if r.history}, title)


def write_summary(
    records: Sequence[TrialRecord],
    out_url: str,
    max_steps: int,
    best_config_yaml: str | None,
    title: str,
    storage_options: dict[str, Any] | None = None,
    early_stopping: bool = True,
) -> dict[str, str]:
    """Write the table (CSV + Markdown), the plot and the best config under `out_url`; returns their URLs."""
    rows = table_rows(records, max_steps, early_stopping)
    files: dict[str, bytes] = {
        TABLE_CSV: to_csv(rows).encode(),
        TABLE_MD: to_markdown(rows).encode(),
        PLOT_PNG: plot_curves(records, title),
    }
    if best_config_yaml is not None:
        files[BEST_CONFIG] = best_config_yaml.encode()
    urls = {}
    for name, data in files.items():
        urls[name] = storage.join(out_url, name)
        storage.write_bytes_atomic(urls[name], data, storage_options)
    return urls


def _show(value: Any) -> Any:
    """Table cell for a config value: op sets as `a+b` (`none` if empty), floats to 4 significant digits."""
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value)) or "none"
    if isinstance(value, float):
        return float(f"{value:.4g}")
    return value
