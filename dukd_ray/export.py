"""Ship a trained model: `python -m dukd_ray.export --checkpoint CKPT --format onnx|torchscript --out FILE`.

Why verified: a traced export can silently bake in the example's shapes (SwinIR's pad-to-window and
shifted-window mask depend on the input size), so an export is only written after the exported
file, loaded back with onnxruntime / `torch.jit.load`, reproduces the torch model on real
photographs of two other sizes and batch sizes. A failing check raises and writes nothing.

Both formats take `lr` (B, 3, H, W) float in [0, 1] with dynamic B/H/W and return `sr`
(B, 3, scale*H, scale*W); the model's `arch_spec` travels in the file's metadata.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dukd_ray.errors import UserError, add_debug_arg, cli_main
from dukd_ray.image.convert import to_float_tensor
from dukd_ray.models.cli import add_checkpoint_args, model_from_args, refuse_overwriting
from dukd_ray.storage import get_fs, redact_url, write_bytes_atomic

FORMATS = ("onnx", "torchscript")
FP32_TOLERANCE = 1e-4
# fp16 keeps ~3 significant digits: allow half an 8-bit grey level against the fp32 torch model
FP16_TOLERANCE = 0.5 / 255
DEFAULT_OPSET = 17
Runner = Callable[[torch.Tensor], torch.Tensor]


class ExportVerificationError(RuntimeError):
    """The exported file does not reproduce the torch model; nothing was written."""


@dataclass(frozen=True)
class ExportReport:
    """What was written and how closely it matched the torch model."""

    url: str
    format: str
    dtype: str
    max_abs_diff: float
    tolerance: float
    checked_shapes: list[tuple[int, ...]]


def reference_inputs() -> list[torch.Tensor]:
    """Crops of real photographs (scikit-image's bundled ones) at sizes no window or patch divides.

    The first one is also the tracing example; the second has another batch size and H/W, so an
    export that froze any dimension fails verification. Sizes are not square: SwinIR special-cases
    inputs the size of its training patch (square), which a trace must not capture.
    """
    try:
        from skimage import data
    except ImportError as e:
        raise ImportError("export verification needs scikit-image: pip install 'dukd-ray[samples]'") from e
    astronaut, chelsea, coffee = data.astronaut(), data.chelsea(), data.coffee()
    first = to_float_tensor(astronaut[60:105, 190:228])  # 45 x 38, the face
    second = torch.cat(
        [
            to_float_tensor(chelsea[120:149, 150:203]),  # 29 x 53, the cat's eyes
            to_float_tensor(coffee[150:179, 220:273]),
        ]
    )
    return [first, second]


def _write_onnx(model: nn.Module, example: torch.Tensor, path: str, opset: int) -> None:
    import onnx

    with warnings.catch_warnings():
        # the legacy (tracing) exporter is deprecated in favour of the dynamo one, which needs onnxscript
        # (not a dependency); tracer warnings about size arithmetic are what verification checks for
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=["lr"],
            output_names=["sr"],
            dynamic_axes={
                "lr": {0: "batch", 2: "height", 3: "width"},
                "sr": {0: "batch", 2: "out_height", 3: "out_width"},
            },
        )
    proto = onnx.load(path)
    spec = getattr(model, "arch_spec", None)
    if spec is not None:
        onnx.helper.set_model_props(proto, {"arch_spec": json.dumps(spec)})
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def _onnx_runner(path: str) -> Runner:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    input_type = session.get_inputs()[0].type  # "tensor(float)" or "tensor(float16)"
    dtype = np.float16 if "float16" in input_type else np.float32

    def run(x: torch.Tensor) -> torch.Tensor:
        (out,) = session.run(["sr"], {"lr": x.numpy().astype(dtype)})
        return torch.from_numpy(out.astype(np.float32))

    return run


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings: verification on other shapes is the real check
        traced = torch.jit.trace(model, example, check_trace=False)
    spec = getattr(model, "arch_spec", None)
    extra = {"arch_spec.json": json.dumps(spec)} if spec is not None else {}
    torch.jit.save(traced, path, _extra_files=extra)


def _torchscript_runner(path: str) -> Runner:
    loaded = torch.jit.load(path, map_location="cpu")

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return loaded(x).float()

    return run


def verify(model: nn.Module, run: Runner, inputs: Sequence[torch.Tensor], tolerance: float) -> float:
    """Largest |exported - torch| over `inputs`; ExportVerificationError if a shape or value is off."""
    worst = 0.0
    for x in inputs:
        with torch.inference_mode():
            expected = model(x)
        got = run(x)
        if got.shape != expected.shape:
            raise ExportVerificationError(
                f"exported model returned shape {tuple(got.shape)} for input {tuple(x.shape)}, "
                f"the torch model {tuple(expected.shape)} (a dimension was frozen at export)"
            )
        diff = (got - expected).abs().max().item()
        if not diff <= tolerance:  # also catches NaN
            raise ExportVerificationError(
                f"exported model differs from the torch model by {diff:.3g} (tolerance {tolerance:g}) "
                f"on a real photograph of shape {tuple(x.shape)}"
            )
        worst = max(worst, diff)
    return worst


def export_model(
    model: nn.Module,
    out: str,
    fmt: str,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    storage_options: dict[str, Any] | None = None,
) -> ExportReport:
    """Export `model` to `out` (local path or URL) as ONNX or TorchScript, verified before it is written.

    The file is built in a temporary folder, loaded back and checked against the fp32 torch model on
    `reference_inputs()`; only then is it written to `out` atomically.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if fp16 and fmt != "onnx":
        raise ValueError("fp16 export is only offered for ONNX")
    model = copy.deepcopy(model).cpu().float().eval()
    traced = copy.deepcopy(model).half() if fp16 else model
    inputs = reference_inputs()
    example = inputs[0].half() if fp16 else inputs[0]
    with tempfile.TemporaryDirectory(prefix="dukd-export-") as tmp:
        path = os.path.join(tmp, "model")
        if fmt == "onnx":
            _write_onnx(traced, example, path, opset)
            run = _onnx_runner(path)
        else:
            _write_torchscript(traced, example, path)
            run = _torchscript_runner(path)
        tolerance = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
        max_diff = verify(model, run, inputs, tolerance)
        with open(path, "rb") as f:
            data = f.read()
    write_bytes_atomic(out, data, storage_options)
    return ExportReport(
        url=out,
        format=fmt,
        dtype="float16" if fp16 else "float32",
        max_abs_diff=max_diff,
        tolerance=tolerance,
        checked_shapes=[tuple(x.shape) for x in inputs],
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dukd_ray.export",
        description="Export a trained SR model to ONNX or TorchScript (dynamic B/H/W), verified first.",
    )
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output file (local path or fsspec URL)")
    add_checkpoint_args(p)
    p.add_argument("--fp16", action="store_true", help="float16 weights and I/O (ONNX only)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    add_debug_arg(p)
    return p


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 when the verified file was written, 1 if verification failed, 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fp16 and args.format != "onnx":
        parser.error("--fp16 is only offered for --format onnx")
    refuse_overwriting(args.out, args.checkpoint, "--out", "--checkpoint")
    fs, path = get_fs(args.out)
    if fs.isdir(path):
        raise UserError(f"--out {redact_url(args.out)} is a folder; expected the file to write")
    model = model_from_args(args)
    try:
        report = export_model(model, args.out, args.format, fp16=args.fp16, opset=args.opset)
    except ExportVerificationError as e:
        print(f"error: export not written: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {report.format} ({report.dtype}) to {redact_url(report.url)}: "
        f"verified on {report.checked_shapes}, "
        f"max |exported - torch| = {report.max_abs_diff:.2e} (tolerance {report.tolerance:g})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
