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

Calibration is stored so it is done once: the activation ranges of a model (keyed by the sha256
of its weights and the calibration method) are written under ``$EDSR_HOME/int8``, together with
the quantized graphs. The bundled model ships its ranges (``assets/<name>.int8.json``, measured
on its own training images, T91 + BSD200) with the quality it was measured to keep, so it needs
no calibration images at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edsr.errors import EdsrError, ImageError
from edsr.io.atomic import atomic_write
from edsr.io.cache import edsr_home
from edsr.io.datasets import find_images
from edsr.io.image import read_image, to_8bit
from edsr.models import SRModel
from edsr.resize import imresize

ONNX_OPSET = 17
# Chosen by measurement with the bundled model (see calibrate()): the stream and the tensors
# it is made of are clipped at a percentile, the ones around a ReLU or a pixel shuffle keep
# their extremes (split_tensors). With the stream rescaled, dB vs fp32 at x2, Set5 / Urban100:
# percentile-99.999 everywhere -0.028 / -0.048, p99.9 2 / 16 gray levels; split-99.999
# -0.038 / -0.014, 2 / 8; minmax for the conv outputs that add to the stream as well -0.050 /
# (8 images) p99.9 3. Clipping a ReLU's peak cuts the sharpest edges (Urban100's windows); a
# wide 8-bit step on the stream costs everywhere (Set5).
METHOD = "split-99.999"
CROP = 48  # LR calibration crop: the training patch size
MAX_CROPS = 48
# What becomes int8: every convolution's input, weights and output, but not the residual
# stream itself (see float_stream). Measured on Set5 with the stage-3 bundled model,
# percentile-99.999, dB vs fp32 at x2/x3/x4: all of it int8 -0.106/-0.059/-0.046; the
# stream's additions in float, each conv still reading it through int8, -0.032/-0.015/-0.012
# (a PyTorch simulation of the graph, which reproduces the full-int8 loss within 0.004 dB).
# Simulated one at a time, quantizing only the stream costs -0.067 (block sums) and -0.044
# (head, last body conv, global sum), the block-internal activations under 0.005 each: the
# 8-bit step of a tensor that carries the image from the head to the tail is what shows.
QUANTIZED_OPS: tuple[str, ...] = ("Conv", "Relu", "DepthToSpace")
# The stream's channels differ in range (143 to 330 on the bundled model at x2), and one 8-bit
# scale per tensor serves them all; so the stream is carried divided by range**STREAM_ALPHA
# per channel (an exact rewrite of the weights, see SRModel.rescale_stream). Measured on Set5
# with the stage-4 bundled model at x2, dB vs fp32: none -0.042, alpha 1 -0.029, 0.5 -0.028
# (0.5 also spares the per-output-channel weight scales of the convs that read the stream).
STREAM_ALPHA = 0.5
# Part of the cached graph's file name: graphs built by another layout are not reused.
LAYOUT = "float-stream"
_INSTALL = "int8 inference needs onnxruntime and onnx: pip install 'edsr[export]'"


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


def float_nodes(graph: Any) -> list[str]:
    """The convolutions kept in float: the mean shifts, the head and the last conv.

    They are the first two and the last two Conv nodes of the graph (sub_mean, head; tail's
    last conv, add_mean): 3-channel layers whose int8 step would show in the output image,
    and together under 1% of the arithmetic.
    """
    convs = [n.name for n in graph.graph.node if n.op_type == "Conv"]
    return convs[:2] + convs[-2:]


def weights_digest(model: SRModel) -> str:
    """sha256 of the model's config and weights: the key its calibration is stored under."""
    h = hashlib.sha256(json.dumps(model.config(), sort_keys=True).encode())
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """Activation ranges of one model: ``ranges[scale][tensor] = (low, high)``."""

    digest: str
    method: str
    source: str  # what it was measured on
    ranges: dict[int, dict[str, tuple[float, float]]]
    quality: dict[str, Any] = field(default_factory=dict)  # measured PSNR cost, if any
    # Per scale, the factors the residual stream is divided by before quantizing (the ranges
    # were measured on the rescaled model); none for calibrations made before it was done.
    stream: dict[int, list[float]] = field(default_factory=dict)

    def prepared(self, model: SRModel, scale: int) -> SRModel:
        """``model`` as these ranges were measured on it at ``scale`` (stream rescaled)."""
        if scale not in self.stream:
            return model
        return model.rescale_stream(torch.tensor(self.stream[scale]), scale)

    def fingerprint(self) -> str:
        """A short hash of everything a quantized graph is built from."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def meets_bar(self) -> bool:
        """True when int8 was measured to stay within the quality bar (see :data:`BAR`)."""
        return bool(self.quality.get("meets_bar", False))

    def to_json(self) -> str:
        return json.dumps(
            {
                "digest": self.digest,
                "method": self.method,
                "source": self.source,
                "quality": self.quality,
                "stream": {str(s): f for s, f in sorted(self.stream.items())},
                "ranges": {str(s): r for s, r in sorted(self.ranges.items())},
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        d = json.loads(text)
        ranges = {
            int(s): {k: (float(v[0]), float(v[1])) for k, v in r.items()}
            for s, r in d["ranges"].items()
        }
        stream = {int(s): [float(v) for v in f] for s, f in d.get("stream", {}).items()}
        return cls(d["digest"], d["method"], d["source"], ranges, d.get("quality", {}), stream)


# The quality bar int8 must meet for ``auto`` to pick it: Set5 and Urban100 PSNR (Y, shave =
# scale) within 0.03 dB of fp32 at every scale, outputs within 2 gray levels at the 99.9th
# percentile.
BAR = {"psnr_db": 0.03, "gray_levels_p999": 2.0}


def cache_dir(digest: str) -> Path:
    """Where the calibration and quantized graphs of the weights ``digest`` are stored."""
    return edsr_home() / "int8" / digest[:32]


def _method_parts(method: str) -> tuple[str, float | None]:
    kind, _, value = method.partition("-")
    if kind not in ("minmax", "percentile", "split", "entropy"):
        raise EdsrError(
            f"unknown calibration method {method!r}; use minmax, percentile-P, split-P, entropy"
        )
    return kind, float(value) if value else None


def split_tensors(graph: Any) -> set[str]:
    """The tensors ``split-P`` calibrates by their extremes: the inputs and outputs of every
    ReLU and pixel shuffle (a block's inner activation, the upsampler's)."""
    out: set[str] = set()
    for node in graph.graph.node:
        if node.op_type in ("Relu", "DepthToSpace"):
            out.update(node.input[:1])
            out.update(node.output)
    return out


def calibration_crops(
    folder: str | os.PathLike[str], scale: int, n_colors: int, *, limit: int = MAX_CROPS
) -> np.ndarray:
    """(N, C, CROP, CROP) float32 LR crops: HR images of ``folder`` shrunk by MATLAB bicubic.

    The crops are spread evenly over the folder's images and taken at fixed seeded positions,
    so a calibration is reproducible; images too small for a crop are passed over.
    """
    try:
        files = find_images([folder])
    except ImageError as e:
        raise EdsrError(f"calibration images: {e}") from None
    step = max(1, len(files) // limit)
    per_image = min(8, -(-limit // len(files)))  # a few images give several crops each
    rng = np.random.default_rng(0)
    crops: list[np.ndarray] = []
    for path in files[::step]:
        try:
            hr = to_8bit(read_image(path).pixels)
        except ImageError:
            continue
        if hr.shape[2] != n_colors:
            hr = hr[:, :, :1] if n_colors == 1 else np.repeat(hr[:, :, :1], 3, axis=2)
        h, w = hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale
        if min(h, w) < CROP * scale:
            continue
        t = torch.from_numpy(np.ascontiguousarray(hr[:h, :w])).permute(2, 0, 1)
        lr = imresize(t, 1.0 / scale).float().numpy()
        for _ in range(per_image):
            y = int(rng.integers(0, lr.shape[1] - CROP + 1))
            x = int(rng.integers(0, lr.shape[2] - CROP + 1))
            crops.append(lr[:, y : y + CROP, x : x + CROP])
        if len(crops) >= limit:
            break
    if len(crops) < 8:
        raise EdsrError(
            f"{folder} has {len(crops)} image(s) of at least {CROP * scale}x{CROP * scale} "
            "pixels; calibration needs 8 or more (use the model's training images)"
        )
    return np.stack(crops).astype(np.float32)


def _measure_ranges(graph: Any, crops: np.ndarray, method: str) -> dict[str, tuple[float, float]]:
    kind, value = _method_parts(method)
    if kind == "split":
        clipped = _measure_one(graph, crops, f"percentile-{value or 99.999:g}")
        extremes = _measure_one(graph, crops, "minmax")
        wide = split_tensors(graph)
        return {k: extremes[k] if k in wide else v for k, v in clipped.items()}
    return _measure_one(graph, crops, method)


def _measure_one(graph: Any, crops: np.ndarray, method: str) -> dict[str, tuple[float, float]]:
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    kind, value = _method_parts(method)
    options: dict[str, Any] = {}
    if kind == "percentile":
        options = {"percentile": value or 99.999}
    elif kind == "entropy":
        options = {"num_bins": 2048}
    calib_method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[kind]
    batches = [crops[i : i + 8] for i in range(0, len(crops) - len(crops) % 8, 8)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.items, None)
            return None if batch is None else {"input": batch}

    with tempfile.TemporaryDirectory(prefix="edsr-calib-") as tmp:
        src = Path(tmp) / "float.onnx"
        onnx.save(graph, str(src))
        calibrator = create_calibrator(
            src,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=calib_method,
            extra_options=options,
        )
        # onnxruntime prints its progress on stdout, which is the CLI's output.
        with contextlib.redirect_stdout(sys.stderr):
            calibrator.collect_data(Reader())
            data = calibrator.compute_data()
    out: dict[str, tuple[float, float]] = {}
    for name, td in data.data.items():
        low, high = td.range_value
        out[name] = (float(np.asarray(low).min()), float(np.asarray(high).max()))
    return out


@torch.no_grad()
def stream_factors(
    model: SRModel, scale: int, crops: np.ndarray, *, alpha: float = STREAM_ALPHA
) -> list[float]:
    """Per-channel factors that even out the residual stream's ranges: each channel's largest
    magnitude over the crops and over every point the stream is read at, to the power
    ``alpha``, normalized to a geometric mean of 1."""
    peak = torch.zeros(model.n_feats)

    def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        peak.copy_(torch.maximum(peak, args[0].abs().amax(dim=(0, 2, 3))))

    _, readers = model.stream_convs(scale)
    handles = [c.register_forward_pre_hook(hook) for c in readers]
    try:
        for i in range(0, len(crops), 8):
            model(torch.from_numpy(crops[i : i + 8]), scale)
    finally:
        for h in handles:
            h.remove()
    f = peak.clamp_min(1e-3) ** alpha
    return (f / f.log().mean().exp()).tolist()


def calibrate(
    model: SRModel,
    folder: str | os.PathLike[str],
    *,
    scales: Sequence[int] | None = None,
    method: str = METHOD,
    save: bool = True,
) -> Calibration:
    """Measure ``model``'s activation ranges on the images in ``folder`` (training images).

    Never calibrate on the images you evaluate on: the ranges would fit the test set. The
    result is stored under :func:`cache_dir` (``save``) and used by every later int8 run of
    the same weights. Method: ``percentile-P`` clips each activation at its P-th percentile
    of absolute values, ``entropy`` minimizes the KL divergence, ``minmax`` keeps the extremes,
    ``split-P`` keeps them only around ReLUs and pixel shuffles (:func:`split_tensors`) and
    clips the rest at the P-th percentile. :data:`METHOD` says what was measured to keep the
    most quality.
    """
    _require_onnxruntime()
    _method_parts(method)
    model = model.float().cpu().eval()
    ranges, stream = {}, {}
    for s in scales or model.scales:
        crops = calibration_crops(folder, s, model.n_colors)
        stream[int(s)] = stream_factors(model, s, crops)
        rescaled = model.rescale_stream(torch.tensor(stream[int(s)]), s)
        ranges[int(s)] = _measure_ranges(float_graph(rescaled, s), crops, method)
    source = f"{Path(folder).name} ({CROP}px LR)"
    calib = Calibration(weights_digest(model), method, source, ranges, stream=stream)
    if save:
        store_calibration(calib)
    return calib


def store_calibration(calib: Calibration) -> Path:
    """Write ``calib`` to the cache (atomically); returns the file."""
    dest = cache_dir(calib.digest) / f"{calib.method}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(dest, overwrite=True) as tmp:
        tmp.write_text(calib.to_json() + "\n")
    return dest


def _shipped() -> list[Calibration]:
    found = []
    for item in resources.files("edsr.assets").iterdir():
        if item.name.endswith(".int8.json"):
            found.append(Calibration.from_json(item.read_text()))
    return found


def find_calibration(model: SRModel, method: str | None = None) -> Calibration | None:
    """The stored calibration of these weights: the cache first, then the ones shipped."""
    digest = weights_digest(model)
    folder = cache_dir(digest)
    methods = [method] if method else [METHOD]
    for m in methods:
        path = folder / f"{m}.json"
        if path.is_file():
            calib = Calibration.from_json(path.read_text())
            if calib.digest == digest:
                return calib
    if method is None and folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            calib = Calibration.from_json(path.read_text())
            if calib.digest == digest:
                return calib
    for calib in _shipped():
        if calib.digest == digest and (method is None or calib.method == method):
            return calib
    return None


def int8_meets_bar(model: nn.Module) -> bool:
    """True when these weights have a stored int8 calibration measured to meet :data:`BAR`."""
    if not onnxruntime_available():
        return False
    try:
        calib = find_calibration(model)  # type: ignore[arg-type]
    except (OSError, ValueError, KeyError):
        return False
    return calib is not None and calib.meets_bar()


# --------------------------------------------------------------------------------------------
# Quantized graphs and the engine
# --------------------------------------------------------------------------------------------


def onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _require_onnxruntime() -> None:
    if not onnxruntime_available():
        raise EdsrError(_INSTALL)


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
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            # onnxruntime's threads otherwise busy-wait after each run, taking the cores
            # from whatever runs next (measured: a oneDNN conv after an int8 run at 124
            # instead of 213 GFLOP/s on two cores).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.log_severity_level = 3
            self._sessions[scale] = ort.InferenceSession(
                str(self.graph_path(scale)), options, providers=["CPUExecutionProvider"]
            )
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
    _require_onnxruntime()
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
    "BAR",
    "METHOD",
    "Calibration",
    "FixedScale",
    "Int8Engine",
    "cache_dir",
    "calibrate",
    "calibration_crops",
    "find_calibration",
    "float_graph",
    "float_nodes",
    "float_stream",
    "int8_engine",
    "int8_meets_bar",
    "onnxruntime_available",
    "quantized_graph",
    "split_tensors",
    "store_calibration",
    "stream_factors",
    "weights_digest",
]
