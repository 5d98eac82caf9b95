"""int8 inference: onnxruntime static quantization, calibrated once per weights and cached.

The model is exported to ONNX at one scale, its activation ranges are measured on calibration
images (training images, never the ones it is evaluated on), and every convolution except the
ones that touch image values (the mean shifts, the 3-channel head and the last conv) becomes an
int8 convolution with per-output-channel weight scales. onnxruntime runs the result with its
x86 int8 kernels (VNNI dot products where the CPU has them).

Why onnxruntime and not PyTorch's PT2E quantization: measured here (2-core EPYC, AVX-512 VNNI,
MDSR-baseline x4 on 128x128, load average ~4), onnxruntime int8 0.61 s, PT2E with the x86
inductor quantizer under torch.compile 0.75 s; PT2E also needs the separate ``torchao`` package
and 23 s of compilation per input shape (every tile size), onnxruntime none. Calling oneDNN's
int8 convolutions directly (``torch.ops.onednn.qconv2d_pointwise``, the ReLU and the residual
sum fused as post-ops) runs 16 residual blocks on 128x128 at 544 GOP/s, no faster than
onnxruntime's graph (556): on two cores the stream's float passes, not the kernels, set the pace.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edsr.errors import EdsrError
from edsr.inference.calibration import BAR, Calibration, cache_dir, calibrate, find_calibration
from edsr.inference.onnx_graph import float_graph, require_onnxruntime
from edsr.io.atomic import atomic_write
from edsr.io.image import read_image, to_8bit
from edsr.metrics import psnr
from edsr.models import SRModel
from edsr.resize import bicubic_lr
from edsr.runtimes import ort_session

# What becomes int8: every convolution's input, weights and output, but not the residual
# stream itself (see float_stream). Measured on Set5 with the stage-3 bundled model,
# percentile-99.999, dB vs fp32 at x2/x3/x4: all of it int8 -0.106/-0.059/-0.046; the
# stream's additions in float, each conv still reading it through int8, -0.032/-0.015/-0.012
# (a PyTorch simulation of the graph, which reproduces the full-int8 loss within 0.004 dB).
# Simulated one at a time, quantizing only the stream costs -0.067 (block sums) and -0.044
# (head, last body conv, global sum), the block-internal activations under 0.005 each: the
# 8-bit step of a tensor that carries the image from the head to the tail is what shows.
QUANTIZED_OPS: tuple[str, ...] = ("Conv", "Relu", "DepthToSpace")
# Part of the cached graph's file name: graphs built by another layout are not reused.
LAYOUT = "float-stream"


def float_nodes(graph: Any) -> list[str]:
    """The convolutions kept in float: the mean shifts, the head and the last conv.

    They are the first two and the last two Conv nodes of the graph (sub_mean, head; tail's
    last conv, add_mean): 3-channel layers whose int8 step would show in the output image,
    and together under 1% of the arithmetic.
    """
    convs = [n.name for n in graph.graph.node if n.op_type == "Conv"]
    return convs[:2] + convs[-2:]


def quantized_graph(
    model: SRModel,
    scale: int,
    calib: Calibration,
    *,
    ops: Sequence[str] = QUANTIZED_OPS,
    keep_float: Sequence[str] = (),
) -> Any:
    """The int8 ONNX graph of ``model`` at ``scale`` (QDQ, per-channel int8 weights, uint8
    activations from ``calib``'s ranges) for the node types ``ops``; :func:`float_nodes` and
    the nodes named in ``keep_float`` stay in float."""
    from onnxruntime.quantization import CalibrationMethod, QuantType
    from onnxruntime.quantization.calibrate import TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
    from onnxruntime.quantization.registry import QDQRegistry

    if scale not in calib.ranges:
        raise EdsrError(f"the int8 calibration of this model has no x{scale}; calibrate again")
    graph = float_graph(calib.prepared(model, scale), scale)
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory(prefix="edsr-int8-") as tmp:
        src = Path(tmp) / "float.onnx"
        onnx.save(graph, str(src))
        shaped = load_model_with_shape_infer(src)
    names = {v.name for v in shaped.graph.value_info} | {"input", "output"}
    names |= {o for n in shaped.graph.node for o in n.output}
    missing = [n for n in calib.ranges[scale] if n not in names]
    if missing:
        raise EdsrError(
            "the stored int8 calibration does not match this model's graph (made by another "
            "PyTorch version?); calibrate again with --calibrate DIR"
        )
    kept = float_nodes(graph) + list(keep_float)
    tensors = TensorsData(
        CalibrationMethod.MinMax,
        {
            k: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
            for k, (lo, hi) in calib.ranges[scale].items()
        },
    )
    quantizer = QDQQuantizer(
        shaped,
        True,  # per_channel
        False,  # reduce_range: VNNI and AMX need no 7-bit weights
        QuantType.QInt8,
        QuantType.QUInt8,
        tensors,
        [],
        kept,
        [op for op in ops if op in QDQRegistry],
        {"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    quantizer.quantize_model()
    quantizer.model.topological_sort()  # the inserted Q/DQ nodes come last otherwise
    return float_stream(quantizer.model.model, kept)


def float_stream(graph: Any, kept: Sequence[str]) -> Any:
    """Rewire ``graph`` (in place) so each float Add reads the residual stream unquantized.

    onnxruntime hands every consumer of a quantized tensor its dequantized copy, the float
    additions included, so the stream would still be rounded to 8 bits after every block.
    Here an Add's input that is a dequantized copy of a float tensor (made by another Add or
    by a float conv: the stream) is pointed back at that tensor; the convs keep reading it
    through its Q/DQ pair, so they stay int8. A quantized conv's output keeps its Q/DQ: that
    is what lets onnxruntime fuse the conv into one int8 kernel.
    """
    made_by = {o: n for n in graph.graph.node for o in n.output}
    kept_names = set(kept)

    def float_source(tensor: str) -> str | None:
        dq = made_by.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        q = made_by.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            return None
        raw = q.input[0]
        maker = made_by.get(raw)
        if maker is not None and (maker.op_type == "Add" or maker.name in kept_names):
            return raw
        return None

    for node in graph.graph.node:
        if node.op_type != "Add":
            continue
        for i, tensor in enumerate(node.input):
            raw = float_source(tensor)
            if raw is not None:
                node.input[i] = raw
    return graph


# The int8 check of an export: a crop of a bundled sample photo (HR), made LR the papers' way.
CHECK_IMAGE = "zebra.png"
CHECK_CROP = 192  # HR pixels a side: divisible by 2, 3 and 4


@dataclass(frozen=True)
class Int8Check:
    """int8 against fp32, measured as the int8 record measures it: PSNR against the HR image
    (Y, shave = scale) for both, and the 99.9th percentile of their gray-level difference."""

    psnr_fp32: float
    psnr_int8: float
    p999: float
    tolerance: float  # the most gray levels (p99.9) the record allows these weights

    @property
    def ok(self) -> bool:
        return self.p999 <= self.tolerance

    def summary(self) -> str:
        return (
            f"int8 vs fp32: PSNR {self.psnr_int8:.2f} vs {self.psnr_fp32:.2f} dB "
            f"({self.psnr_int8 - self.psnr_fp32:+.3f}), p99.9 {self.p999:g} gray levels "
            f"(tolerance {self.tolerance:g})"
        )


def int8_tolerance(calib: Calibration) -> float:
    """The p99.9 gray levels int8 may differ from fp32 by for these weights: the worst the
    record measured (its ``quality``), else what the bar asks (:data:`BAR`)."""
    measured = calib.quality.get("p999_gray_levels", {})
    levels = [float(v) for per_set in measured.values() for v in per_set.values()]
    return max(levels) if levels else float(BAR["gray_levels_p999"])


@torch.no_grad()
def int8_check(
    model: SRModel,
    run_int8: Callable[[torch.Tensor], torch.Tensor],
    scale: int,
    tolerance: float,
) -> Int8Check:
    """Measure ``run_int8`` (the int8 graph at ``scale``) against ``model`` in fp32."""
    sample = resources.files("edsr.assets") / "samples" / CHECK_IMAGE
    with resources.as_file(sample) as path:
        hr = to_8bit(read_image(path).pixels)[:CHECK_CROP, :CHECK_CROP, : model.n_colors]
    lr = bicubic_lr(hr, scale)
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float()
    fp = model.float().cpu().eval()(x, scale).round().clamp(0, 255)
    q = run_int8(x).round().clamp(0, 255)
    target = torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1)[None]
    return Int8Check(
        psnr_fp32=float(psnr(fp, target, crop_border=scale)[0]),
        psnr_int8=float(psnr(q, target, crop_border=scale)[0]),
        p999=float(np.percentile((fp - q).abs().numpy(), 99.9)),
        tolerance=tolerance,
    )


class Int8Engine:
    """``engine(x, scale)``: float32 NCHW 0..255 in, float32 out, through onnxruntime int8."""

    def __init__(self, model: SRModel, calib: Calibration) -> None:
        self.model = model
        self.calib = calib
        self.folder = cache_dir(calib.digest)
        self._sessions: dict[int, Any] = {}

    def graph_path(self, scale: int) -> Path:
        """The cached int8 graph at ``scale`` (written on first use)."""
        name = f"{self.calib.method}-{LAYOUT}-{self.calib.fingerprint()}-x{scale}.onnx"
        path = self.folder / name
        if not path.is_file():
            import onnx

            graph = quantized_graph(self.model, scale, self.calib)
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, overwrite=True) as tmp:
                onnx.save(graph, str(tmp))
        return path

    def session(self, scale: int) -> Any:
        if scale not in self._sessions:
            self._sessions[scale] = ort_session(self.graph_path(scale))
        return self._sessions[scale]

    def __call__(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        if x.device.type != "cpu":
            raise EdsrError("int8 runs on the CPU; use --device cpu or another --precision")
        feed = x.detach().float().contiguous().numpy()
        (out,) = self.session(int(scale)).run(["output"], {"input": feed})
        return torch.from_numpy(out)


def int8_engine(
    model: SRModel, *, calibrate_on: str | os.PathLike[str] | None = None
) -> Int8Engine:
    """The int8 engine of ``model``: stored calibration (cache, then shipped), else a new one
    on ``calibrate_on``; without either it is an :class:`EdsrError` that says what to do."""
    require_onnxruntime()
    model = model.float().cpu().eval()
    calib = None if calibrate_on is not None else find_calibration(model)
    if calib is None:
        if calibrate_on is None:
            raise EdsrError(
                "int8 needs this model's activation ranges, measured once on its training "
                "images: edsr export MODEL --format onnx --precision int8 --calibrate DIR"
            )
        calib = calibrate(model, calibrate_on)
    return Int8Engine(model, calib)


__all__ = [
    "CHECK_IMAGE",
    "LAYOUT",
    "QUANTIZED_OPS",
    "Int8Check",
    "Int8Engine",
    "float_nodes",
    "float_stream",
    "int8_check",
    "int8_engine",
    "int8_tolerance",
    "quantized_graph",
]
