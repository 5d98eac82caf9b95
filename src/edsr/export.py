"""Exporting a model for other runtimes: ONNX, TorchScript, or this project's safetensors.

ONNX and TorchScript files hold one upscaling factor each: the graph takes a float32
(N, C, H, W) image in 0..255 of any height and width and returns (N, C, H*s, W*s), unclamped.
An MDSR model therefore needs ``scale`` when it has several (export each scale to its own
file). Safetensors files are checkpoints: they keep all of an MDSR's scales unless ``scale``
picks one. Residual scaling is folded into the convolutions of ONNX and TorchScript graphs.

``onnx`` (and ``onnxruntime`` to verify) are optional: ``pip install 'edsr[export]'``.

``precision="int8"`` (ONNX only) writes onnxruntime's statically quantized graph (see
:mod:`edsr.inference.quantize`), calibrated on ``calibrate`` (a folder of training images) or
on the activation ranges already stored for these weights.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edsr.errors import EdsrError
from edsr.inference import describe, probe_model
from edsr.inference.descriptor import probe_fields
from edsr.inference.onnx_graph import FixedScale, float_graph, onnxruntime_available, portable
from edsr.inference.quantize import Int8Check, Int8Engine, int8_check, int8_engine, int8_tolerance
from edsr.io.atomic import atomic_write, check_writable
from edsr.models import MDSR, SRModel, model_from_config
from edsr.runtimes import META_KEY, TORCHSCRIPT_EXTRA, ExportInfo, load_exported

FORMATS: tuple[str, ...] = ("onnx", "torchscript", "safetensors")
EXPORT_PRECISIONS: tuple[str, ...] = ("fp32", "int8")
_NAMES = {"onnx": "an ONNX", "torchscript": "a TorchScript", "safetensors": "a safetensors"}
#: The file name suffixes each format is written under (the first is the usual one).
SUFFIXES: dict[str, tuple[str, ...]] = {
    "onnx": (".onnx",),
    "torchscript": (".pt", ".pth", ".ts", ".jit", ".torchscript"),
    "safetensors": (".safetensors",),
}


def _export_scale(model: SRModel, scale: int | None) -> int:
    if scale is None:
        if len(model.scales) == 1:
            return model.scales[0]
        have = ", ".join(str(s) for s in model.scales)
        raise EdsrError(
            f"this MDSR model has scales {have}; ONNX and TorchScript files hold one scale each: "
            "choose one with --scale (and export the others to their own files)"
        )
    scale = int(scale)
    if scale not in model.scales:
        have = ", ".join(f"x{s}" for s in model.scales)
        raise EdsrError(f"this model upscales {have}, not x{scale}")
    return scale


def single_scale_mdsr(model: MDSR, scale: int) -> MDSR:
    """An MDSR holding only the branch for ``scale`` (same outputs at that scale)."""
    k = model.branch(scale)
    one = model_from_config({**model.config(), "scales": [scale]})  # every setting kept
    assert isinstance(one, MDSR)
    sd = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[0] in ("pre_process", "upsample"):
            if int(parts[1]) != k:
                continue
            key = ".".join([parts[0], "0", *parts[2:]])
        sd[key] = value
    one.load_state_dict(sd, strict=True)
    return one.to(describe(model).device).eval()


def _graph_module(model: SRModel, scale: int) -> FixedScale:
    return FixedScale(model.fold_res_scale().float().cpu().eval(), scale).eval()


def _example(model: SRModel) -> torch.Tensor:
    # Odd, non-square: a traced graph that wrongly hard-codes a size shows up at once.
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, model.n_colors, 19, 23, generator=g) * 255


@contextlib.contextmanager
def _quiet_deprecations():
    # torch.jit and the TorchScript-based ONNX exporter warn that they are deprecated; both
    # still produce the most portable files, and a user of the CLI cannot act on the warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def check_suffix(path: str | os.PathLike, format: str) -> Path:
    """``path``, refused unless its suffix is one of ``format``'s (:data:`SUFFIXES`)."""
    dest = Path(path)
    if dest.suffix.lower() not in SUFFIXES[format]:
        want = " or *".join(SUFFIXES[format][:2])
        raise EdsrError(
            f"{dest.name} is not a name for {_NAMES[format]} file: name it *{want}, or pick "
            "the --format its suffix means"
        )
    return dest


def export_info(model: SRModel, scale: int, precision: str = "fp32") -> ExportInfo:
    """What an exported file of ``model`` at ``scale`` carries for loading it back: the
    single-scale model's (an MDSR's other branches are not in the file)."""
    if isinstance(model, MDSR) and len(model.scales) > 1:
        model = single_scale_mdsr(model, scale)
    info = describe(model)
    return ExportInfo(
        scale=scale,
        arch=info.arch,
        n_colors=info.n_colors,
        rgb_range=info.rgb_range,
        precision=precision,
        parameters=info.parameters,
        config=model.config(),
        probe=probe_fields(probe_model(model, scale)),
    )


def _write_torchscript(model: SRModel, dest: Path, scale: int) -> None:
    module = _graph_module(model, scale)
    extra = {TORCHSCRIPT_EXTRA: export_info(model, scale).to_json()}
    with torch.no_grad(), _quiet_deprecations():
        traced = torch.jit.trace(module, _example(model), check_trace=False)
        torch.jit.save(traced, str(dest), _extra_files=extra)


def _write_onnx(
    model: SRModel, dest: Path, scale: int, int8_from: str | os.PathLike | bool = False
) -> Int8Engine | None:
    """The fp32 graph, or with ``int8_from`` the int8 one (True: stored calibration; the
    engine that made it is returned)."""
    try:
        import onnx
    except ImportError:
        raise EdsrError("ONNX export needs the onnx package: pip install 'edsr[export]'") from None

    engine = None
    if int8_from is False:
        proto = portable(float_graph(model, scale))
    else:
        calibrate_on = None if int8_from is True else int8_from
        engine = int8_engine(model, calibrate_on=calibrate_on)
        proto = onnx.load(str(engine.graph_path(scale)))
    precision = "fp32" if engine is None else "int8"
    meta = {
        "scale": str(scale),
        "input_range": "0..255 float32 RGB, NCHW",
        "precision": precision,
        "producer": "edsr",
        META_KEY: export_info(model, scale, precision).to_json(),
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dest))
    return engine


def _write_safetensors(model: SRModel, dest: Path, scale: int | None) -> None:
    from edsr.weights import save_model

    if isinstance(model, MDSR) and scale is not None:
        model = single_scale_mdsr(model, scale)
    # Not folded: the config records res_scale, and loading applies it. The destination is
    # already the atomic writer's temporary file, hence overwrite.
    save_model(model, dest, overwrite=True)


@dataclass(frozen=True)
class Exported:
    """A written export: where, which scales it holds, and how far it is from PyTorch."""

    path: Path
    format: str
    scales: tuple[int, ...]
    max_diff: float | None  # None: not checked (no onnxruntime, check=False, or int8)
    int8: Int8Check | None = None  # int8: measured against fp32 as the int8 record is

    def __fspath__(self) -> str:
        return str(self.path)


def export_model(
    model: SRModel,
    path: str | os.PathLike,
    format: str,
    *,
    scale: int | None = None,
    overwrite: bool = False,
    check: bool = True,
    tolerance: float = 1e-3,
    precision: str = "fp32",
    calibrate: str | os.PathLike | None = None,
) -> Exported:
    """Export ``model`` to ``path`` as ``format`` (onnx, torchscript or safetensors).

    The file is written to a temporary name, loaded back and compared with PyTorch on an image
    of another size (``check``); only an export within ``tolerance`` (0..255 scale) is put in
    place, so a failed export leaves no file behind. ONNX and TorchScript hold one scale;
    safetensors keeps all of an MDSR's scales unless ``scale`` picks one.

    ``precision="int8"`` (ONNX): the int8 graph, calibrated on the images in ``calibrate``
    (training images; the ranges are stored, so later int8 runs of these weights reuse them)
    or on ranges stored before. int8 differs from fp32 by design, so its check is the int8
    record's measure (:func:`~edsr.inference.quantize.int8_check`: PSNR of both against a
    photo, p99.9 of their gray-level difference), and an export beyond the record's tolerance
    is refused.

    ``path`` must carry a suffix of the format (:data:`SUFFIXES`): a ``.png`` holding ONNX is
    refused.
    """
    if format not in FORMATS:
        raise EdsrError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if precision not in EXPORT_PRECISIONS:
        raise EdsrError(f"export precision must be fp32 or int8, not {precision!r}")
    if precision == "int8" and format != "onnx":
        raise EdsrError("int8 export is ONNX only: use --format onnx")
    if calibrate is not None and precision != "int8":
        raise EdsrError("--calibrate is for --precision int8")
    if format == "safetensors":
        scales = model.scales if scale is None else (_export_scale(model, scale),)
    else:
        scales = (_export_scale(model, scale),)
    dest = check_suffix(path, format)
    check_writable(dest, overwrite=overwrite)
    model = model.eval()
    max_diff: float | None = None
    measured: Int8Check | None = None
    with atomic_write(dest, overwrite=overwrite) as tmp:
        if format == "onnx":
            int8_from = (calibrate or True) if precision == "int8" else False
            engine = _write_onnx(model, tmp, scales[0], int8_from)
            if engine is not None and check:
                measured = _check_int8(model, tmp, scales[0], engine)
                if not measured.ok:
                    raise EdsrError(
                        f"the int8 export is outside its record's tolerance ({measured.summary()});"
                        f" nothing was written to {dest}: calibrate on the model's training "
                        "images (--calibrate DIR)"
                    )
        elif format == "torchscript":
            _write_torchscript(model, tmp, scales[0])
        else:
            _write_safetensors(model, tmp, scale)
        if check and precision == "fp32":
            max_diff = verify_export(model, tmp, format, scale=scale)
            if max_diff is not None and not max_diff <= tolerance:
                raise EdsrError(
                    f"the {format} export differs from PyTorch by {max_diff:.3g} (more than "
                    f"{tolerance:g}); nothing was written to {dest}"
                )
    return Exported(dest, format, tuple(scales), max_diff, measured)


def _check_int8(model: SRModel, path: Path, scale: int, engine: Int8Engine) -> Int8Check:
    # The written file, run by the runner --model uses, against the fp32 model.
    graph = load_exported(path, "onnx")
    return int8_check(model, lambda x: graph(x, scale), scale, int8_tolerance(engine.calib))


def export_torchscript(
    model: SRModel, path: str | os.PathLike, *, scale: int | None = None, overwrite: bool = False
) -> Exported:
    """Trace the model at one scale; load it back with ``torch.jit.load(path)``."""
    return export_model(model, path, "torchscript", scale=scale, overwrite=overwrite)


def export_onnx(
    model: SRModel, path: str | os.PathLike, *, scale: int | None = None, overwrite: bool = False
) -> Exported:
    """An ONNX graph with dynamic batch, height and width (input ``input``, output ``output``)."""
    return export_model(model, path, "onnx", scale=scale, overwrite=overwrite)


def export_safetensors(
    model: SRModel, path: str | os.PathLike, *, scale: int | None = None, overwrite: bool = False
) -> Exported:
    """This project's checkpoint format (config in the header); all MDSR scales unless ``scale``."""
    return export_model(model, path, "safetensors", scale=scale, overwrite=overwrite)


def verify_export(
    model: SRModel,
    path: str | os.PathLike,
    format: str,
    *,
    scale: int | None = None,
    size: tuple[int, int] = (21, 34),
) -> float | None:
    """Max |difference| on 0..255 between the exported file and PyTorch on a random image of a
    size other than the one traced, over every scale the file holds; None where the runtime is
    not installed (onnxruntime)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, model.n_colors, *size, generator=g) * 255
    device = describe(model).device
    runs: list[tuple[int, torch.Tensor]] = []
    if format == "safetensors":
        from edsr.weights import load_model

        loaded = load_model(path, device="cpu")
        with torch.no_grad():
            runs = [(s, loaded(x, s)) for s in loaded.scales]
    else:
        # Through the runner that --model and load_model use for these files.
        scale = _export_scale(model, scale)
        if format == "onnx" and not onnxruntime_available():
            return None
        graph = load_exported(path, format, run_torchscript_code=True)  # the file just traced
        with torch.no_grad():
            runs = [(scale, graph(x, scale))]
    worst = 0.0
    for s, got in runs:
        with torch.no_grad():
            want = model(x.to(device), s).float().cpu()
        worst = max(worst, float(np.abs(got.float().numpy() - want.numpy()).max()))
    return worst


__all__ = [
    "EXPORT_PRECISIONS",
    "FORMATS",
    "SUFFIXES",
    "Exported",
    "check_suffix",
    "FixedScale",
    "export_info",
    "export_model",
    "export_onnx",
    "export_safetensors",
    "export_torchscript",
    "single_scale_mdsr",
    "verify_export",
]
