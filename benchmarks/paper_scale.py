"""Paper-size DUKD on this machine: where a step's time goes, what a GPU would demand, what validation costs.

    python benchmarks/paper_scale.py [--json] [--archs edsr,rcan,swinir] [--tiny] [--device cuda]
        [--amp] [--no-channels-last] [--compile] [--steps 1] [--warmup-batch 2]
        [--growth edsr --growth-sizes 8x48,8x64,32x48] [--val edsr,rcan,swinir --val-teacher-sizes set5]
        [--data-images 4]

Per arch (x4, the paper's teacher and student presets, batch 16, LR patch 48, the arch's DUKD recipe),
one real `dukd_ray.distill.train_step` is timed after a warm-up step (at `--warmup-batch`, the same
patch sizes: oneDNN/cuDNN choose their kernels per shape, and a full-batch warm-up would double a
CPU run). The step is split with hooks that do not change it: forward hooks on the teacher and on
the student (teacher forward, student forward), optimizer step pre/post hooks (the backward is the
time from the end of the last forward before a step to that step; the optimizer its own), and the
rest (`other`: the upcycling ops, the losses, the draws). The upcycling ops (cells, augmentation and
its inverse, the batched bicubic zoom-out) are also timed alone on the same batch. `data` is what one
loader process needs for a batch: patches/s of a `TrainStream` (num_workers=0) over DIV2K-size images
packed into local shards.

MACs per step come from `dukd_ray.eval.cost.measure_cost` (one forward per input size) times the
number of inputs: teacher forwards on the LR batch, the zoom-in batch and (EDSR) the zoom-out batch;
student forwards on the same, times 3 for forward + backward (the usual count: the backward costs
two forwards). GPU demand is patches/s = MFU x the card's published dense bf16 peak / FLOP per patch.

Peak memory: on CUDA `torch.cuda.max_memory_allocated`; on CPU the process's peak resident set
during the step (Linux VmHWM, reset before the step), which includes the models and Python.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from dukd_ray.data import build_train_stream
from dukd_ray.data.pack import pack
from dukd_ray.data.samples import DIV2K_HR_SIZE, bicubic_lr, div2k_like_image, write_div2k_like
from dukd_ray.distill import freeze_teacher, recipe, train_step
from dukd_ray.distill.augment import apply_ops, draw_flags, invert_ops
from dukd_ray.distill.upcycle import draw_cells, zoom_in_cells, zoom_out_input
from dukd_ray.eval.benchmark import Pair, evaluate_pair
from dukd_ray.eval.cost import measure_cost
from dukd_ray.eval.inference import InferenceOptions
from dukd_ray.models import build_arch

SCALE = 4
ARCHS = ("edsr", "rcan", "swinir")
# published dense (no sparsity) bf16 tensor peaks, TFLOP/s
CARDS = {"H100 SXM": 989.0, "H200 SXM": 989.0, "A100 SXM": 312.0, "L40S": 362.0, "L4": 121.0}
MFU = 0.40
# validation image sizes (HR h, w): Set5's largest (baby, 512 x 512) and Urban100's usual 1024 x 768
VAL_SIZES = {"set5": (512, 512), "urban100": (768, 1024)}
VAL_TILE = 128  # LR tile side for the tiled timing (the run's train.val_tile)


def now_both() -> tuple[float, float]:
    """(wall clock, this process's CPU time): on a shared machine the CPU time is the work done."""
    return time.perf_counter(), time.process_time()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, int]]:
    """{'bytes': peak} of the block: CUDA allocator peak, or the process's peak RSS on Linux CPUs."""
    out: dict[str, int] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    yield out
    if device.type == "cuda":
        out["bytes"] = torch.cuda.max_memory_allocated(device)
    else:
        with contextlib.suppress(OSError), open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    out["bytes"] = int(line.split()[1]) * 1024


class StepClock:
    """Splits one `train_step` by hooks on the teacher, the student and the optimizer (see the doc)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, optimizer: Any, device: torch.device) -> None:
        self.device = device
        self.events: list[tuple[str, tuple[float, float], tuple[float, float]]] = []
        self._open: dict[str, tuple[float, float]] = {}
        self.handles = [
            *self._watch(teacher, "teacher"),
            *self._watch(student, "student"),
            optimizer.register_step_pre_hook(lambda *_: self._mark("optimizer", start=True)),
            optimizer.register_step_post_hook(lambda *_: self._mark("optimizer", start=False)),
        ]

    def _watch(self, module: nn.Module, name: str) -> list[Any]:
        return [
            module.register_forward_pre_hook(lambda *_: self._mark(name, start=True)),
            module.register_forward_hook(lambda *_: self._mark(name, start=False)),
        ]

    def _mark(self, name: str, start: bool) -> None:
        sync(self.device)
        now = now_both()
        if start:
            self._open[name] = now
        else:
            self.events.append((name, self._open.pop(name), now))

    def split(self, began: tuple[float, float], ended: tuple[float, float], i: int) -> dict[str, float]:
        """Seconds per part: wall-clock (`i` 0) or the process's CPU time, all threads (`i` 1)."""
        parts = {"teacher_forward": 0.0, "student_forward": 0.0, "student_backward": 0.0, "optimizer": 0.0}
        last_forward_end = began[i]
        for name, start, end in self.events:
            if name == "optimizer":
                parts["student_backward"] += start[i] - last_forward_end
                parts["optimizer"] += end[i] - start[i]
            else:
                parts[f"{name}_forward"] += end[i] - start[i]
                last_forward_end = end[i]
        parts["other"] = (ended[i] - began[i]) - sum(parts.values())
        return parts

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def models(arch: str, tiny: bool, device: torch.device, channels_last: bool, compile_: bool):
    """(teacher, student, arch kwargs names) at the paper's presets, or the tiny ones."""
    prefix = "tiny_" if tiny else ""
    fmt = torch.channels_last if channels_last and device.type == "cuda" else torch.contiguous_format
    torch.manual_seed(0)
    teacher = freeze_teacher(build_arch(arch, SCALE, preset=f"{prefix}teacher").to(device, memory_format=fmt))
    student = build_arch(arch, SCALE, preset=f"{prefix}student").to(device, memory_format=fmt)
    if compile_:
        teacher, student = torch.compile(teacher), torch.compile(student)
    return teacher, student


def make_batch(batch: int, patch: int, device: torch.device) -> dict[str, torch.Tensor]:
    hr = torch.rand(batch, 3, SCALE * patch, SCALE * patch, generator=torch.Generator().manual_seed(0))
    return {"lr": zoom_out_input(hr, SCALE).clamp(0, 1).to(device), "hr": hr.to(device)}


def macs_per_step(arch: str, tiny: bool, batch: int, patch: int) -> dict[str, int]:
    """MACs of one DUKD step from per-forward counts (eval.cost) times the step's inputs."""
    cfg = recipe(arch, SCALE, "dukd").distill
    prefix = "tiny_" if tiny else ""
    out = {}
    for role in ("teacher", "student"):
        model = build_arch(arch, SCALE, preset=f"{prefix}{role}")
        at_patch = measure_cost(model, (patch, patch)).macs
        at_down = measure_cost(model, (patch // SCALE, patch // SCALE)).macs if cfg.zoom_out else 0
        forwards = batch * (1 + (cfg.n_gt_sub if cfg.zoom_in else 0)) * at_patch + batch * at_down
        out[role] = forwards if role == "teacher" else 3 * forwards
    out["total"] = out["teacher"] + out["student"]
    return out


def time_upcycling(batch: dict[str, torch.Tensor], arch: str, device: torch.device) -> float:
    """The upcycling ops of one step alone: cells, augmentation and its inverse, zoom-out."""
    cfg = recipe(arch, SCALE, "dukd").distill
    gen = torch.Generator().manual_seed(1)
    sync(device)
    start = time.perf_counter()
    cells = draw_cells(SCALE, cfg.n_gt_sub, gen)
    flags = draw_flags(cfg.n_gt_sub * batch["lr"].shape[0], cfg.lc_ops, cfg.lc_prob, gen, device)
    zoom_in = zoom_in_cells(batch["hr"], SCALE, cells)
    apply_ops(zoom_in, flags)
    invert_ops(torch.nn.functional.interpolate(zoom_in, scale_factor=SCALE), flags)  # an output-size tensor
    if cfg.zoom_out:
        zoom_out_input(batch["lr"], SCALE)
    sync(device)
    return time.perf_counter() - start


def time_step(
    arch: str,
    batch_size: int,
    patch: int,
    a: argparse.Namespace,
    device: torch.device,
    teacher_student: tuple[nn.Module, nn.Module] | None = None,
) -> dict[str, Any]:
    """Warm-up, then `a.steps` timed DUKD steps through the real train_step; medians of the split."""
    teacher, student = teacher_student or models(arch, a.tiny, device, a.channels_last, a.compile)
    cfg = recipe(arch, SCALE, "dukd").distill
    optimizer = torch.optim.Adam(student.parameters(), 1e-4, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(10)
    amp = torch.bfloat16 if a.amp else None
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    warm = make_batch(min(a.warmup_batch, batch_size), patch, device)
    for _ in range(a.warmup_steps):
        train_step(student, teacher, optimizer, warm, cfg, gen, amp, fmt)
    batch = make_batch(batch_size, patch, device)
    runs, losses = [], []
    for _ in range(max(1, a.steps)):
        clock = StepClock(teacher, student, optimizer, device)
        with peak_memory(device) as peak:
            sync(device)
            began = now_both()
            out = train_step(student, teacher, optimizer, batch, cfg, gen, amp, fmt)
            sync(device)
            ended = now_both()
        clock.close()
        losses.append(out["loss"])
        cpu = {f"cpu_{k}": v for k, v in clock.split(began, ended, 1).items()}
        runs.append(
            {
                "step_s": ended[0] - began[0],
                "cpu_s": ended[1] - began[1],
                **clock.split(began, ended, 0),
                **cpu,
            }
        )
        runs[-1].update(peak)
    result = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    result["upcycling_alone_s"] = time_upcycling(batch, arch, device)
    result["losses_finite"] = bool(np.isfinite(losses).all())
    result["last_loss"] = losses[-1]
    return result


def loader_supply(images: int, tiny: bool) -> dict[str, Any]:
    """Patches/s of one loader process over DIV2K-size images packed into local shards."""
    with tempfile.TemporaryDirectory() as tmp:
        size = (192, 288) if tiny else DIV2K_HR_SIZE
        root = write_div2k_like(os.path.join(tmp, "div2k"), images, SCALE, size)
        prefix = os.path.join(tmp, "shards")
        manifest = pack(root, prefix, SCALE, 96 if tiny else 480, 48 if tiny else 240, progress=False)
        stream = build_train_stream(prefix, SCALE, 24 if tiny else 48, 16, num_workers=0)
        batches = max(2, stream.batches_per_epoch)
        it = iter(stream)
        next(it)  # the first batch fills the shuffle buffer's first records; timed below from the second
        start = time.perf_counter()
        for _ in range(batches - 1):
            next(it)
        seconds = time.perf_counter() - start
        it.close()
    return {
        "patches_per_s_per_process": round((batches - 1) * 16 / seconds, 1),
        "images": images,
        "crops": manifest.num_records,
        "batches_timed": batches - 1,
    }


def gpu_demand(flop_per_patch: float) -> dict[str, float]:
    """Patches/s one card needs to stay busy at MFU, per card."""
    return {card: round(MFU * peak * 1e12 / flop_per_patch, 1) for card, peak in CARDS.items()}


def val_pair(size: tuple[int, int]) -> Pair:
    hr = div2k_like_image(0, size)
    return Pair("val", bicubic_lr(hr, SCALE), hr)


def time_validation(
    arch: str, a: argparse.Namespace, device: torch.device, teacher_sizes: set[str]
) -> dict[str, dict[str, float]]:
    """Seconds to super-resolve and score one image, per (model, size, whole | tiled)."""
    teacher, student = models(arch, a.tiny, device, a.channels_last, False)
    out: dict[str, dict[str, float]] = {}
    for name, size in VAL_SIZES.items():
        pair = val_pair((size[0] // 8, size[1] // 8) if a.tiny else size)
        for role, model in (("student", student), ("teacher", teacher)):
            if role == "teacher" and name not in teacher_sizes:
                continue
            for mode, tile in (("whole", None), ("tiled", 16 if a.tiny else VAL_TILE)):
                options = InferenceOptions(tile=tile, tile_overlap=4 if a.tiny else 32, amp=a.amp)
                if a.val_warmup:
                    evaluate_pair(model, pair, SCALE, options)  # kernels are chosen per shape
                sync(device)
                start = now_both()
                evaluate_pair(model, pair, SCALE, options)
                sync(device)
                end = now_both()
                out.setdefault(role, {})[f"{name}_{mode}_s"] = end[0] - start[0]
                out[role][f"{name}_{mode}_cpu_s"] = end[1] - start[1]
    return out


def save(path: str | None, result: dict[str, Any]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(result, f)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def run(a: argparse.Namespace) -> dict[str, Any]:
    """The whole measurement; with `--out FILE` the result so far is written there after each part."""
    device = torch.device(a.device)
    result: dict[str, Any] = {
        "device": device_name(device),
        "settings": {
            "tiny": a.tiny,
            "batch": a.batch,
            "lr_patch": a.patch,
            "amp": a.amp,
            "channels_last": a.channels_last,
            "compile": a.compile,
            "steps_timed": a.steps,
            "warmup": f"{a.warmup_steps} step(s) at batch {a.warmup_batch}",
            "mfu_assumed": MFU,
        },
        "archs": {},
    }
    if a.data_images:
        result["loader"] = loader_supply(a.data_images, a.tiny)
        save(a.out, result)
    for arch in a.archs:
        step = time_step(arch, a.batch, a.patch, a, device) if a.steps else {}  # --steps 0: the rest only
        macs = macs_per_step(arch, a.tiny, a.batch, a.patch)
        flop_per_patch = 2 * macs["total"] / a.batch
        row: dict[str, Any] = {
            "step": step,
            "macs_per_step": macs,
            "gpu_patches_per_s": gpu_demand(flop_per_patch),
        }
        if step:
            row["cpu_achieved_gflops"] = round(2 * macs["total"] / step["step_s"] / 1e9, 1)
        if "loader" in result:
            supply = result["loader"]["patches_per_s_per_process"]
            row["data_s"] = a.batch / supply
            row["loader_processes_per_gpu"] = {
                c: round(d / supply, 1) for c, d in row["gpu_patches_per_s"].items()
            }
        if arch in a.growth:
            row["growth"] = {}
            for size in a.growth_sizes:
                b, p = (int(x) for x in size.split("x"))
                timed = time_step(arch, b, p, a, device)
                save(a.out, result | {"partial": {arch: row}})
                row["growth"][size] = {
                    "step_s": timed["step_s"],
                    "cpu_s": timed["cpu_s"],
                    "macs": macs_per_step(arch, a.tiny, b, p)["total"],
                    "peak_memory_bytes": timed.get("bytes"),
                }
        save(a.out, result | {"partial": {arch: row}})
        if arch in a.val:
            row["validation"] = time_validation(arch, a, device, set(a.val_teacher_sizes))
        result["archs"][arch] = row
        print(f"# {arch} done", file=sys.stderr, flush=True)
        save(a.out, result)
    return result


def csv(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--archs", type=csv, default=list(ARCHS))
    p.add_argument("--tiny", action="store_true", help="the tiny presets (a smoke run)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", action="store_true", help="torch.compile teacher and student")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=48, help="LR patch side")
    p.add_argument("--steps", type=int, default=1, help="timed steps (median reported; 0: no step timing)")
    p.add_argument("--warmup-steps", type=int, default=1)
    p.add_argument("--warmup-batch", type=int, default=2, help="batch of the warm-up step(s)")
    p.add_argument("--growth", type=csv, default=["edsr"], help="archs whose step is timed at --growth-sizes")
    p.add_argument("--growth-sizes", type=csv, default=["8x48", "8x64"], help="BATCHxPATCH")
    p.add_argument("--val", type=csv, default=list(ARCHS), help="archs whose validation is timed")
    p.add_argument("--val-teacher-sizes", type=csv, default=["set5"], help="sizes timed for the teacher too")
    p.add_argument(
        "--val-warmup", action="store_true", help="time validation after a first call on the same image"
    )
    p.add_argument("--data-images", type=int, default=4, help="DIV2K-size images for the loader (0: skip)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", help="also write the result so far to this JSON file after each part")
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    result = run(a)
    print(json.dumps(result, indent=None if a.json else 1))


if __name__ == "__main__":
    main()
