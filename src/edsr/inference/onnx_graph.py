"""The float ONNX graph of a model at one scale: what ``edsr export --format onnx`` writes and
what int8 calibration and quantization start from."""

from __future__ import annotations

import io
import warnings
from typing import Any

import torch
from torch import nn

from edsr.errors import EdsrError
from edsr.models import SRModel

ONNX_OPSET = 17
INSTALL = "int8 inference needs onnxruntime and onnx: pip install 'edsr[export]'"


class FixedScale(nn.Module):
    """``forward(x)`` = ``model(x, scale)``: a graph with one input, for tracing and ONNX."""

    def __init__(self, model: SRModel, scale: int) -> None:
        super().__init__()
        self.model = model
        self.scale = int(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.scale)


def float_graph(model: SRModel, scale: int, *, opset: int = ONNX_OPSET) -> Any:
    """The fp32 ONNX graph (an ``onnx.ModelProto``) of ``model`` at ``scale``.

    Residual scaling is folded; input ``input`` and output ``output`` are float32 NCHW 0..255
    with dynamic batch, height and width. ``edsr export --format onnx`` writes this graph.
    """
    try:
        import onnx
    except ImportError:
        raise EdsrError("ONNX needs the onnx package: pip install 'edsr[export]'") from None
    module = FixedScale(model.fold_res_scale().float().cpu().eval(), scale).eval()
    # Odd, non-square: a traced graph that wrongly hard-codes a size shows up at once.
    example = torch.rand(1, model.n_colors, 19, 23, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter warns that it is deprecated; it still gives the most
        # portable static graph (symbolic H and W, no onnxscript needed).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (example * 255,),
            buf,  # type: ignore[arg-type]  # a file object is accepted; the stubs say paths
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={
                "input": {0: "batch", 2: "height", 3: "width"},
                "output": {0: "batch", 2: "out_height", 3: "out_width"},
            },
            opset_version=opset,
            do_constant_folding=True,
        )
    return onnx.load_model_from_string(buf.getvalue())


def onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def require_onnxruntime() -> None:
    if not onnxruntime_available():
        raise EdsrError(INSTALL)


__all__ = [
    "INSTALL",
    "ONNX_OPSET",
    "FixedScale",
    "float_graph",
    "onnxruntime_available",
    "require_onnxruntime",
]
