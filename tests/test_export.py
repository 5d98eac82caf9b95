"""Export to ONNX / TorchScript / safetensors: the files load elsewhere and match PyTorch."""

from __future__ import annotations

import importlib.util
import re
import warnings

import numpy as np
import pytest
import torch

from edsr import EdsrError, build_model, load_model, save_model
from edsr.cli import main
from edsr.export import export_model, single_scale_mdsr, verify_export
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


# --- exported files given back to --model and load_model (issue 22) ----------------------


def _lr_image(path, size=(37, 29)):
    """A real photo crop, odd-sized, as an LR input file."""
    from PIL import Image

    from conftest import DATA

    img = Image.open(DATA / "Set5" / "HR" / "butterfly.png").convert("RGB").crop((40, 60, 77, 89))
    assert img.size == size
    img.save(path)
    return np.asarray(img)


def _pixels(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path)).astype(np.int16)


@pytest.mark.parametrize(
    "fmt, name",
    [pytest.param("onnx", "m.onnx", marks=[needs_onnx, needs_ort]), ("torchscript", "m.pt")],
)
def test_exported_file_round_trips_through_model_and_load_model(tmp_path, capsys, fmt, name):
    from edsr import upscale
    from edsr.inference import describe
    from edsr.runtimes import ExportedModel

    source = small_mdsr(std=0.05)
    ckpt = tmp_path / "mdsr.safetensors"
    save_model(source, ckpt)
    exported = tmp_path / name
    argv = ["export", str(ckpt), "--format", fmt, "--scale", "3", "-o", str(exported)]
    assert main(argv) == 0, capsys.readouterr().err
    lr = _lr_image(tmp_path / "in.png")

    # load_model: the runner, described from what the export stored, same pixels. TorchScript
    # is code: it runs only with the opt-in, named the same in Python and on the command line.
    opt_in = ["--run-torchscript-code"] if fmt == "torchscript" else []
    if fmt == "torchscript":
        with pytest.raises(EdsrError, match="runs the code inside it"):
            load_model(exported)
    back = load_model(exported, run_torchscript_code=fmt == "torchscript")
    assert isinstance(back, ExportedModel) and back.scales == (3,)
    # what the file holds: the x3 branch of the MDSR, not its other two
    info, want = describe(back), describe(single_scale_mdsr(source, 3))
    assert (info.arch, info.n_colors, info.parameters) == ("mdsr", 3, want.parameters)
    assert info.receptive_field(3) == want.receptive_field(3)
    reference = np.asarray(upscale(lr, source, 3, precision="fp32")).astype(np.int16)
    whole = np.asarray(upscale(lr, back)).astype(np.int16)
    tiled = np.asarray(upscale(lr, back, tile=info.receptive_field(3) * 2 + 8)).astype(np.int16)
    assert whole.shape == (87, 111, 3)
    assert np.abs(whole - reference).max() <= 1
    assert np.abs(tiled - whole).max() <= 1  # exact tiles from the stored receptive field

    # --model: the same file through the CLI
    out = tmp_path / "out.png"
    assert (
        main(
            ["upscale", str(tmp_path / "in.png"), "-o", str(out), "--model", str(exported)] + opt_in
        )
        == 0
    )
    assert np.abs(_pixels(out) - reference).max() <= 1
    # it holds one scale, and its own precision
    assert (
        main(
            [
                "upscale",
                str(tmp_path / "in.png"),
                "-o",
                str(tmp_path / "x2.png"),
                "--model",
                str(exported),
                "--scale",
                "2",
                *opt_in,
            ]
        )
        == 1
    )
    assert "x3" in capsys.readouterr().err
    with pytest.raises(EdsrError, match="exported fp32 graph and runs in fp32 only"):
        upscale(lr, back, precision="bf16")


@pytest.mark.slow
@needs_onnx
@needs_ort
def test_int8_onnx_round_trip_states_the_record_measure(tmp_path, capsys, edsr_home):
    from conftest import DATA
    from edsr import upscale
    from edsr.inference.calibration import find_calibration
    from edsr.inference.quantize import int8_tolerance
    from sr_helpers import trained_small_mdsr

    source = trained_small_mdsr()
    ckpt = tmp_path / "small.safetensors"
    save_model(source, ckpt)
    out = tmp_path / "small-int8.onnx"
    argv = ["export", str(ckpt), "--format", "onnx", "--precision", "int8", "-o", str(out)]
    assert main([*argv, "--calibrate", str(DATA / "Set5" / "HR")]) == 0
    said = capsys.readouterr().out
    assert "PSNR" in said and "p99.9" in said and "max |diff|" not in said
    calib = find_calibration(source)
    assert calib is not None
    tolerance = int8_tolerance(calib)

    lr = _lr_image(tmp_path / "in.png")
    reference = np.asarray(upscale(lr, source, precision="fp32")).astype(np.int16)
    back = load_model(out)
    assert back.precision == "int8"
    got = np.asarray(upscale(lr, back)).astype(np.int16)
    assert np.abs(got - reference).max() > 0  # really int8
    assert np.percentile(np.abs(got - reference), 99.9) <= tolerance
    cli_out = tmp_path / "out.png"
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(cli_out), "--model", str(out)]) == 0
    assert np.array_equal(_pixels(cli_out), got)
    # eval scores it as exported: no --precision needed (fp32 is the default for checkpoints)
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--data", str(DATA / "Set5"), "--scale", "2"]) == 0
    assert re.search(r"Set5\s+x2\s+\d+\.\d+", capsys.readouterr().out)

    # outside the record's tolerance: refused, nothing written
    import edsr.export as export_module

    capsys.readouterr()
    monkey = pytest.MonkeyPatch()
    monkey.setattr(export_module, "int8_tolerance", lambda calib: 0.0)
    try:
        again = tmp_path / "again.onnx"
        assert main([*argv[:-1], str(again)]) == 1
    finally:
        monkey.undo()
    err = capsys.readouterr().err
    assert "outside its record's tolerance" in err and len(err.strip().splitlines()) == 1
    assert not again.exists()


@needs_onnx
def test_exported_onnx_is_portable_to_old_opencv(tmp_path):
    # OpenCV before 4.11 has no DepthToSpace and takes an Identity's input for a layer output
    import onnx

    path = export_model(small_mdsr(std=0.05), tmp_path / "m.onnx", "onnx", scale=4).path
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops == {"Conv", "Relu", "Add", "ConvTranspose"}


@needs_onnx
@pytest.mark.parametrize(
    "make, scale",
    [(lambda: small_edsr(4, res_scale=0.1, std=0.05), 4), (lambda: small_mdsr(std=0.05), 3)],
    ids=["edsr-x4", "mdsr-x3"],
)
def test_exported_onnx_runs_in_opencv(tmp_path, make, scale):
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is not installed")
    model = make()
    path = export_model(model, tmp_path / "m.onnx", "onnx", scale=scale).path
    for h, w in [(17, 23), (31, 12)]:
        x = torch.rand(1, 3, h, w) * 255
        net = cv2.dnn.readNetFromONNX(str(path))  # a fresh net per size: no cached shapes
        net.setInput(x.numpy())
        got = net.forward()
        want = reference(model, x, scale)
        assert got.shape == want.shape
        levels = np.abs(np.clip(got, 0, 255).round() - np.clip(want, 0, 255).round())
        assert levels.max() <= 1


@pytest.mark.parametrize(
    "content, looks",
    [
        (b"model weights go here\n", "looks like text"),
        (b"<!DOCTYPE html><html>404</html>", "HTML page"),
        ("zip", "looks like a zip archive"),
        ("tar", "looks like a tar archive"),
    ],
)
def test_a_file_of_another_kind_says_what_it_looks_like(tmp_path, capsys, content, looks):
    import tarfile
    import zipfile

    path = tmp_path / "model.pt"
    if content == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "hello")
    elif content == "tar":
        (tmp_path / "a.txt").write_text("hello")
        with tarfile.open(path, "w") as t:
            t.add(tmp_path / "a.txt", arcname="a.txt")
    else:
        path.write_bytes(content)
    with pytest.raises(EdsrError, match=looks):
        load_model(path)
    _lr_image(tmp_path / "in.png")
    assert (
        main(
            [
                "upscale",
                str(tmp_path / "in.png"),
                "-o",
                str(tmp_path / "o.png"),
                "--model",
                str(path),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and looks in err and "--model takes" in err
    assert "ONNX or TorchScript" in err and "pickled" not in err


@needs_onnx
def test_an_exported_graph_is_not_a_checkpoint_to_convert(tmp_path, capsys):
    from edsr.weights import read_checkpoint

    path = export_model(small_edsr(2), tmp_path / "m.onnx", "onnx").path
    with pytest.raises(EdsrError, match="exported ONNX graph, not a checkpoint"):
        read_checkpoint(path)
    assert main(["export", str(path), "--format", "torchscript", "-o", str(tmp_path / "m.pt")]) == 1
    assert "exported graph already" in capsys.readouterr().err


def test_export_refuses_a_suffix_that_contradicts_the_format(tmp_path, capsys):
    # checked at the door: the model named does not even exist
    argv = [
        "export",
        str(tmp_path / "missing.pt"),
        "--format",
        "onnx",
        "-o",
        str(tmp_path / "m.png"),
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "m.png is not a name for an ONNX file" in err
    with pytest.raises(EdsrError, match=r"name it \*.safetensors"):
        export_model(small_edsr(2), tmp_path / "m.onnx", "safetensors")
    assert list(tmp_path.iterdir()) == []
