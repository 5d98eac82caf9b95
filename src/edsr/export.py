"""Exporting a model for other runtimes: ONNX, TorchScript, or this project's safetensors.

ONNX and TorchScript files hold one upscaling factor each: the graph takes a float32
(N, C, H, W) image in 0..255 of any height and width and returns (N, C, H*s, W*s), unclamped.
An MDSR model therefore needs ``scale`` when it has several (export each scale to its own
file). Safetensors files are checkpoints: they keep all of an MDSR's scales unless ``scale``
picks one. Residual scaling is folded into the convolutions of ONNX and TorchScript graphs.

``onnx`` (and ``onnxruntime`` to verify) are optional: ``pip install 'edsr[export]'``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edsr.errors import EdsrError
from edsr.io.atomic import atomic_write, check_writable
from edsr.models import MDSR, SRModel

FORMATS: tuple[str, ...] = ("onnx", "torchscript", "safetensors")
ONNX_OPSET = 17


class FixedScale(nn.Module):
    """``forward(x)`` = ``model(x, scale)``: a graph with one input, for tracing and ONNX."""

    def __init__(self, model: SRModel, scale: int) -> None:
        super().__init__()
        self.model = model
        self.scale = int(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.scale)


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
    one = MDSR(
        scales=(scale,),
        n_resblocks=model.n_resblocks,
        n_feats=model.n_feats,
        n_colors=model.n_colors,
        rgb_range=model.rgb_range,
    )
    sd = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[0] in ("pre_process", "upsample"):
            if int(parts[1]) != k:
                continue
            key = ".".join([parts[0], "0", *parts[2:]])
        sd[key] = value
    one.load_state_dict(sd, strict=True)
    return one.to(next(model.parameters()).device).eval()


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


def export_torchscript(
    model: SRModel, path: str | os.PathLike, *, scale: int | None = None, overwrite: bool = False
) -> Path:
    """Trace the model at one scale; load it back with ``torch.jit.load(path)``."""
    scale = _export_scale(model, scale)
    module = _graph_module(model, scale)
    with torch.no_grad(), _quiet_deprecations():
        traced = torch.jit.trace(module, _example(model), check_trace=False)
    with atomic_write(path, overwrite=overwrite) as tmp, _quiet_deprecations():
        torch.jit.save(traced, str(tmp))
    return Path(path)


def export_onnx(
    model: SRModel,
    path: str | os.PathLike,
    *,
    scale: int | None = None,
    overwrite: bool = False,
    opset: int = ONNX_OPSET,
) -> Path:
    """Write an ONNX graph with dynamic batch, height and width (input ``input``, output ``output``)."""
    try:
        import onnx
    except ImportError:
        raise EdsrError("ONNX export needs the onnx package: pip install 'edsr[export]'") from None
    scale = _export_scale(model, scale)
    module = _graph_module(model, scale)
    dims = {0: "batch", 2: "height", 3: "width"}
    with atomic_write(path, overwrite=overwrite) as tmp:
        with torch.no_grad(), _quiet_deprecations():
            # The TorchScript-based exporter (dynamo=False) needs no onnxscript and gives a
            # plain static graph with symbolic H and W; its output dims are named for clarity.
            torch.onnx.export(
                module,
                (_example(model),),
                str(tmp),
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={
                    "input": dims,
                    "output": {0: "batch", 2: "out_height", 3: "out_width"},
                },
                opset_version=opset,
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        meta = {
            "scale": str(scale),
            "input_range": "0..255 float32 RGB, NCHW",
            "model_config": str(model.config()),
            "producer": "edsr",
        }
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return Path(path)


def export_safetensors(
    model: SRModel, path: str | os.PathLike, *, scale: int | None = None, overwrite: bool = False
) -> Path:
    """This project's checkpoint format (config in the header); all MDSR scales unless ``scale``."""
    from edsr.weights import save_model

    if isinstance(model, MDSR) and scale is not None:
        _export_scale(model, scale)
        model = single_scale_mdsr(model, int(scale))
    elif scale is not None:
        _export_scale(model, scale)
    # Not folded: the config records res_scale, and loading applies it.
    return save_model(model, path, overwrite=overwrite)


def export_model(
    model: SRModel,
    path: str | os.PathLike,
    format: str,
    *,
    scale: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Export ``model`` to ``path`` as ``format`` (onnx, torchscript or safetensors)."""
    if format not in FORMATS:
        raise EdsrError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    check_writable(Path(path), overwrite=overwrite)
    model = model.eval()
    if format == "onnx":
        return export_onnx(model, path, scale=scale, overwrite=overwrite)
    if format == "torchscript":
        return export_torchscript(model, path, scale=scale, overwrite=overwrite)
    return export_safetensors(model, path, scale=scale, overwrite=overwrite)


def verify_export(
    model: SRModel,
    path: str | os.PathLike,
    format: str,
    *,
    scale: int | None = None,
    size: tuple[int, int] = (21, 34),
) -> float | None:
    """Max |difference| on 0..255 between the exported file and PyTorch on a random image of a
    size other than the one traced; None where the runtime is not installed (onnxruntime)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, model.n_colors, *size, generator=g) * 255
    if format == "safetensors":
        from edsr.weights import load_model

        loaded = load_model(path)
        scale = _export_scale(loaded, scale)
        with torch.no_grad():
            got = loaded(x, scale)
    elif format == "torchscript":
        scale = _export_scale(model, scale)
        with _quiet_deprecations():
            loaded = torch.jit.load(str(path))
        with torch.no_grad():
            got = loaded(x)
    else:
        scale = _export_scale(model, scale)
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    device = next(model.parameters()).device
    with torch.no_grad():
        want = model(x.to(device), scale).float().cpu()
    return float(np.abs(got.float().numpy() - want.numpy()).max())


__all__ = [
    "FORMATS",
    "FixedScale",
    "export_model",
    "export_onnx",
    "export_safetensors",
    "export_torchscript",
    "single_scale_mdsr",
    "verify_export",
]
