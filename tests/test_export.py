"""ONNX / TorchScript export: per-arch round-trips on real photographs, dynamic shapes, refusals."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from torch import nn

from dukd_ray.export import FP16_TOLERANCE, ExportVerificationError, export_model, main
from dukd_ray.image.convert import to_float_tensor
from dukd_ray.models import build_arch, save_weights
from dukd_ray.storage import read_bytes

SCALE = 2


def _photo_batch() -> torch.Tensor:
    """Two crops of a photograph at a size export verification never used (23 x 31: not a window multiple)."""
    rocket = data.rocket()
    crops = [rocket[200:223, 300:331], rocket[60:83, 500:531]]
    return torch.cat([to_float_tensor(c) for c in crops])


def _run_exported(path: str, fmt: str, x: torch.Tensor) -> torch.Tensor:
    if fmt == "onnx":
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"lr": x.numpy()})[0])
    return torch.jit.load(path)(x)


def _arch_spec_in_file(path: str, fmt: str) -> dict:
    if fmt == "onnx":
        props = {p.key: p.value for p in onnx.load(path).metadata_props}
        return json.loads(props["arch_spec"])
    extra = {"arch_spec.json": ""}
    torch.jit.load(path, _extra_files=extra)
    return json.loads(extra["arch_spec.json"])


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("arch", ["edsr", "rcan", "swinir"])
def test_round_trip_matches_torch_on_a_new_shape(arch, fmt, tmp_path):
    torch.manual_seed(0)
    model = build_arch(arch, SCALE, "tiny_student").eval()
    pth, _ = save_weights(str(tmp_path / arch), model, arch_spec=model.arch_spec)
    out = tmp_path / f"{arch}.{fmt}"
    assert main(["--checkpoint", pth, "--format", fmt, "--out", str(out)]) == 0
    x = _photo_batch()
    with torch.inference_mode():
        expected = model(x)
        got = _run_exported(str(out), fmt, x)
    assert got.shape == (2, 3, 23 * SCALE, 31 * SCALE)
    assert (got - expected).abs().max().item() <= 1e-4
    assert _arch_spec_in_file(str(out), fmt) == model.arch_spec


def test_onnx_fp16_has_half_io_and_stays_close(tmp_path):
    torch.manual_seed(0)
    model = build_arch("swinir", SCALE, "tiny_student").eval()
    report = export_model(model, str(tmp_path / "m.onnx"), "onnx", fp16=True)
    assert report.dtype == "float16"
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float16)"
    x = _photo_batch()
    got = session.run(None, {"lr": x.numpy().astype(np.float16)})[0].astype(np.float32)
    with torch.inference_mode():
        expected = model(x).numpy()
    assert np.abs(got - expected).max() <= FP16_TOLERANCE


class _FrozenSize(nn.Module):
    """Upscales to a size computed with Python ints, which a trace records as constants."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (int(x.shape[-2]) * SCALE, int(x.shape[-1]) * SCALE)
        return F.interpolate(self.conv(x), size=size, mode="nearest")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_that_froze_a_shape_is_refused_and_not_written(fmt, tmp_path):
    out = tmp_path / "exports" / f"frozen.{fmt}"
    with pytest.raises(ExportVerificationError, match="frozen"):
        export_model(_FrozenSize().eval(), str(out), fmt)
    assert not out.exists()
    assert not (tmp_path / "exports").exists() or not any((tmp_path / "exports").iterdir())


def test_fp16_is_onnx_only(tmp_path):
    with pytest.raises(SystemExit):
        main(["--checkpoint", "x.pth", "--format", "torchscript", "--fp16", "--out", str(tmp_path / "m.pt")])
    with pytest.raises(ValueError, match="ONNX"):
        export_model(
            build_arch("edsr", SCALE, "tiny_student"), str(tmp_path / "m.pt"), "torchscript", fp16=True
        )


def test_missing_checkpoint_is_named(tmp_path, capsys):
    missing = tmp_path / "nope.pth"
    assert main(["--checkpoint", str(missing), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "nope.pth" in capsys.readouterr().err


def test_export_to_object_storage(s3_bucket):
    bucket, opts = s3_bucket
    torch.manual_seed(0)
    model = build_arch("rcan", SCALE, "tiny_student").eval()
    report = export_model(model, f"{bucket}/exports/rcan.onnx", "onnx", storage_options=opts)
    assert report.max_abs_diff <= 1e-4
    session = ort.InferenceSession(
        read_bytes(f"{bucket}/exports/rcan.onnx", opts), providers=["CPUExecutionProvider"]
    )
    x = _photo_batch()
    with torch.inference_mode():
        assert np.abs(session.run(None, {"lr": x.numpy()})[0] - model(x).numpy()).max() <= 1e-4
