"""The float ONNX graph of a model at one scale: what ``edsr export --format onnx`` writes and
what int8 calibration and quantization start from."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
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


def portable(graph: Any) -> Any:
    """``graph`` (an fp32 :func:`float_graph`, changed in place) in operators that OpenCV's
    ``cv2.dnn`` runs from 4.5 on, as well as onnxruntime, at any height and width.

    OpenCV before 4.11 has no ``DepthToSpace`` layer and cannot run the reshapes with computed
    shapes that spell it otherwise, so each pixel shuffle (CRD, block r) becomes a transposed
    convolution with stride r, one group per output channel and fixed 0/1 weights: output
    pixel (c, y*r+i, x*r+j) is input channel c*r*r + i*r + j times 1, exactly. And the exporter's
    ``Identity`` of a weight (the two mean shifts share one matrix) becomes a copy of that
    weight: OpenCV 4.5 takes an Identity's input for a layer output. The output tensors keep
    their names. The int8 graphs keep ``DepthToSpace``, which onnxruntime runs in int8.
    """
    from onnx import TensorProto, helper, numpy_helper

    weights = {t.name: t for t in graph.graph.initializer}
    made_by = {o: n for n in graph.graph.node for o in n.output}
    nodes = list(graph.graph.node)
    del graph.graph.node[:]
    for node in nodes:
        if node.op_type == "Identity" and node.input[0] in weights:
            copy = TensorProto()
            copy.CopyFrom(weights[node.input[0]])
            copy.name = node.output[0]
            graph.graph.initializer.append(copy)
            continue
        if node.op_type == "DepthToSpace":
            attrs = {a.name: a for a in node.attribute}
            mode = attrs["mode"].s.decode() if "mode" in attrs else "DCR"
            if mode != "CRD":
                raise ValueError(f"expected a CRD pixel shuffle, got {mode} in {node.name}")
            r = int(attrs["blocksize"].i)
            maker = made_by[node.input[0]]
            channels = int(weights[maker.input[1]].dims[0])  # the conv feeding the shuffle
            w = np.zeros((channels, 1, r, r), np.float32)
            k = np.arange(channels)
            w[k, 0, (k % (r * r)) // r, k % r] = 1.0
            name = f"{node.output[0]}.shuffle"
            graph.graph.initializer.append(numpy_helper.from_array(w, name))
            graph.graph.node.append(
                helper.make_node(
                    "ConvTranspose",
                    [node.input[0], name],
                    list(node.output),
                    name=node.name,
                    kernel_shape=[r, r],
                    strides=[r, r],
                    group=channels // (r * r),
                )
            )
            continue
        graph.graph.node.append(node)
    return graph


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
    "portable",
    "require_onnxruntime",
]
