"""Export to ONNX / TorchScript / safetensors: the files load elsewhere and match PyTorch."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch

from edsr import EdsrError, build_model, load_model, save_model
from edsr.cli import main
from edsr.export import export_model, verify_export
from sr_helpers import small_edsr, small_mdsr

HAVE_ONNX = importlib.util.find_spec("onnx") is not None
HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None
needs_onnx = pytest.mark.skipif(
    not HAVE_ONNX, reason="onnx is not installed (pip install 'edsr[export]')"
)
needs_ort = pytest.mark.skipif(
    not HAVE_ORT, reason="onnxruntime is not installed (pip install 'edsr[export]')"
)


def reference(model, x, scale):
    with torch.no_grad():
        return model(x, scale).numpy()


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


@needs_onnx
@needs_ort
@pytest.mark.parametrize(
    "make, scale",
    [
        (lambda: build_model("edsr-baseline", scale=3), 3),
        (lambda: small_edsr(4, res_scale=0.1, std=0.05), 4),  # res_scale folded into the graph
        (lambda: small_mdsr(std=0.05), 2),
    ],
    ids=["edsr-baseline-x3", "edsr-res0.1-x4", "mdsr-x2"],
)
def test_onnx_runs_in_onnxruntime_at_any_size(tmp_path, make, scale):
    import onnx

    model = make().eval()
    path = export_model(model, tmp_path / "m.onnx", "onnx", scale=scale).path
    proto = onnx.load(str(path))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert {p.key: p.value for p in proto.metadata_props}["scale"] == str(scale)
    for shape in [(1, 3, 19, 23), (2, 3, 8, 31)]:  # the traced size, then another batch and size
        x = torch.rand(*shape) * 255
        got = run_onnx(path, x)
        assert got.shape == (shape[0], 3, shape[2] * scale, shape[3] * scale)
        assert np.abs(got - reference(model, x, scale)).max() <= 1e-3


@pytest.mark.parametrize(
    "make, scale",
    [(lambda: small_edsr(3, res_scale=0.1, std=0.05), 3), (lambda: small_mdsr(std=0.05), 4)],
)
def test_torchscript_loads_with_jit_load_and_matches(tmp_path, make, scale):
    model = make().eval()
    path = export_model(model, tmp_path / "m.pt", "torchscript", scale=scale).path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path))
    for shape in [(1, 3, 19, 23), (2, 3, 10, 7)]:
        x = torch.rand(*shape) * 255
        with torch.no_grad():
            got = loaded(x).numpy()
        assert np.abs(got - reference(model, x, scale)).max() <= 1e-3


def test_safetensors_round_trip_and_single_scale_mdsr(tmp_path):
    model = small_mdsr(std=0.05)
    every = load_model(export_model(model, tmp_path / "all.safetensors", "safetensors").path)
    assert every.scales == (2, 3, 4)
    one = load_model(export_model(model, tmp_path / "x3.safetensors", "safetensors", scale=3).path)
    assert one.scales == (3,)
    x = torch.rand(1, 3, 9, 7) * 255
    assert np.abs(reference(one, x, 3) - reference(model, x, 3)).max() <= 1e-4
    assert np.abs(reference(every, x, 4) - reference(model, x, 4)).max() <= 1e-4
    edsr = small_edsr(2, res_scale=0.1, std=0.05)
    back = load_model(export_model(edsr, tmp_path / "e.safetensors", "safetensors").path)
    assert (
        back.res_scale == 0.1
        and np.abs(reference(back, x, 2) - reference(edsr, x, 2)).max() <= 1e-4
    )


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=needs_onnx)])
def test_multi_scale_mdsr_needs_a_scale(tmp_path, fmt):
    model = small_mdsr()
    with pytest.raises(EdsrError, match="hold one scale each: choose one with --scale"):
        export_model(model, tmp_path / "m.bin", fmt)
    with pytest.raises(EdsrError, match="not x8"):
        export_model(model, tmp_path / "m.bin", fmt, scale=8)
    assert not (tmp_path / "m.bin").exists()


def test_refuses_to_overwrite_and_unknown_format(tmp_path):
    dst = tmp_path / "m.pt"
    dst.write_bytes(b"keep")
    with pytest.raises(EdsrError, match="already exists"):
        export_model(small_edsr(2), dst, "torchscript")
    assert dst.read_bytes() == b"keep"
    with pytest.raises(EdsrError, match="unknown export format"):
        export_model(small_edsr(2), tmp_path / "m.tflite", "tflite")


@needs_onnx
def test_cli_export(tmp_path, capsys):
    ckpt = tmp_path / "mdsr.safetensors"
    save_model(small_mdsr(std=0.05), ckpt)
    code = main(["export", str(ckpt), "--format", "onnx", "-o", str(tmp_path / "m.onnx")])
    assert code == 1 and "choose one with --scale" in capsys.readouterr().err
    code = main(
        ["export", str(ckpt), "--format", "onnx", "--scale", "3", "-o", str(tmp_path / "m.onnx")]
    )
    out = capsys.readouterr().out
    assert code == 0 and (tmp_path / "m.onnx").is_file()
    assert "max |diff| vs PyTorch" in out or "not checked" in out
    assert (
        main(
            [
                "export",
                str(ckpt),
                "--format",
                "torchscript",
                "--scale",
                "2",
                "-o",
                str(tmp_path / "m.pt"),
            ]
        )
        == 0
    )
    if HAVE_ORT:
        diff = verify_export(load_model(ckpt), tmp_path / "m.onnx", "onnx", scale=3)
        assert diff is not None and diff <= 1e-3


def test_safetensors_export_keeps_every_scale_from_the_cli(tmp_path, capsys):
    # Issue 13.10: the help says safetensors keeps all scales; it used to fail with the ONNX
    # one-scale message after writing the file.
    ckpt = tmp_path / "mdsr.safetensors"
    model = small_mdsr(std=0.05)
    save_model(model, ckpt)
    out = tmp_path / "m.safetensors"
    code = main(["export", str(ckpt), "--format", "safetensors", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert load_model(out).scales == model.scales
    assert "x2/x3/x4" in capsys.readouterr().out


def test_a_failed_export_leaves_no_file(tmp_path, monkeypatch):
    import edsr.export as export_module

    monkeypatch.setattr(export_module, "verify_export", lambda *a, **k: 0.5)
    dst = tmp_path / "m.pt"
    with pytest.raises(EdsrError, match="differs from PyTorch by 0.5"):
        export_model(small_edsr(2), dst, "torchscript")
    assert list(tmp_path.iterdir()) == []
