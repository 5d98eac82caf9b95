"""int8 calibration: the activation ranges of a model, measured once on its training images.

Calibration is stored so it is done once: the activation ranges of a model (keyed by the sha256
of its weights and the calibration method) are written under ``$EDSR_HOME/int8``, where
:mod:`edsr.inference.quantize` also keeps the quantized graphs. The bundled model ships its
ranges (``assets/<name>.int8.json``, measured on its own training images, T91 + BSD200) with
the quality it was measured to keep, so it needs no calibration images at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edsr.errors import EdsrError, ImageError
from edsr.inference.onnx_graph import float_graph, onnxruntime_available, require_onnxruntime
from edsr.io.atomic import atomic_write
from edsr.io.cache import edsr_home
from edsr.io.datasets import find_images
from edsr.io.image import read_image, to_8bit
from edsr.models import SRModel
from edsr.resize import imresize

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
# The stream's channels differ in range (143 to 330 on the bundled model at x2), and one 8-bit
# scale per tensor serves them all; so the stream is carried divided by range**STREAM_ALPHA
# per channel (an exact rewrite of the weights, see SRModel.rescale_stream). Measured on Set5
# with the stage-4 bundled model at x2, dB vs fp32: none -0.042, alpha 1 -0.029, 0.5 -0.028
# (0.5 also spares the per-output-channel weight scales of the convs that read the stream).
STREAM_ALPHA = 0.5


def weights_digest(model: SRModel) -> str:
    """sha256 of the model's config and weights: the key its calibration is stored under."""
    h = hashlib.sha256(json.dumps(model.config(), sort_keys=True).encode())
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


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
def stream_peaks(model: SRModel, scale: int, crops: np.ndarray) -> torch.Tensor:
    """Each channel's largest magnitude in the residual stream, over the crops and over every
    point the stream is read at (the inputs of :meth:`~edsr.models.MDSR.stream_convs`' readers)."""
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
    return peak


def stream_factors(
    model: SRModel, scale: int, crops: np.ndarray, *, alpha: float = STREAM_ALPHA
) -> list[float]:
    """Per-channel factors that even out the residual stream's ranges: its
    :func:`stream_peaks` to the power ``alpha``, normalized to a geometric mean of 1."""
    f = stream_peaks(model, scale, crops).clamp_min(1e-3) ** alpha
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
    require_onnxruntime()
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


__all__ = [
    "BAR",
    "CROP",
    "MAX_CROPS",
    "METHOD",
    "STREAM_ALPHA",
    "Calibration",
    "cache_dir",
    "calibrate",
    "calibration_crops",
    "find_calibration",
    "int8_meets_bar",
    "split_tensors",
    "store_calibration",
    "stream_factors",
    "stream_peaks",
    "weights_digest",
]
