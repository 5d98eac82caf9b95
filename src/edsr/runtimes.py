"""Running the graphs ``edsr export`` writes: ONNX through onnxruntime, TorchScript through
torch.jit, behind the same ``model(x, scale)`` call as a loaded checkpoint.

An exported file holds one scale and no Python model, so what the rest of the package asks of
a model (its scales, colours, parameter count, the receptive field tiling needs) travels in the
file: export stores an :class:`ExportInfo` as JSON, in the ONNX ``metadata_props`` under
:data:`META_KEY`, or in the TorchScript archive as the extra file :data:`TORCHSCRIPT_EXTRA`.

This room sits on the ground floor so that both the weights resolver (which recognises the
files and returns an :class:`ExportedModel`) and inference (whose ``describe`` and
``probe_model`` read its :class:`ExportInfo`) can use it without importing each other.

A TorchScript archive is code, not data: ``torch.jit.load`` compiles and runs what the archive
holds (its ``__setstate__`` at load, its ``forward`` at every call), and anyone can write one
under a checkpoint's name. So its metadata is read from the zip without loading it, and it is
loaded only when the caller opts in by name (``run_torchscript_code=True``, the command line's
``--run-torchscript-code``). An ONNX graph is data: onnxruntime runs only its standard operators.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edsr.errors import CheckpointError, EdsrError, one_line
from edsr.validators import finite_float, int_in_range

#: The ONNX ``metadata_props`` key holding the :class:`ExportInfo` JSON.
META_KEY = "edsr"
#: The TorchScript extra file holding the :class:`ExportInfo` JSON.
TORCHSCRIPT_EXTRA = "edsr.json"
#: The exported kinds this room runs (:func:`edsr.weights.io.file_kind` names).
KINDS: tuple[str, ...] = ("onnx", "torchscript")
ORT_INSTALL = "running an ONNX file needs onnxruntime: pip install 'edsr[export]'"
#: The opt-in that lets a TorchScript archive run, on the command line and in Python.
RUN_CODE_FLAG = "--run-torchscript-code"
RUN_CODE_KEYWORD = "run_torchscript_code=True"
#: More than this in an archive's metadata is not edsr's metadata.
_MAX_INFO_BYTES = 1 << 20
#: The models' architectures and an export's precisions, as its metadata names them.
ARCHS = ("edsr", "mdsr")
PRECISIONS = ("fp32", "int8")
#: Colour channels an image has at most (RGBA); more is not an image model's input.
MAX_COLORS = 4
#: The largest receptive radius (LR pixels) an export may claim: MDSR's 80 blocks reach about
#: 170; the tiling pads every tile by it, so a claim of millions would ask for terabytes.
MAX_REACH = 1024


@dataclass(frozen=True)
class ExportInfo:
    """What an exported graph is: the model it came from, at one scale.

    ``probe`` holds the fields of :class:`edsr.inference.ModelProbe` measured on the source
    model at ``scale`` (``reach`` as a fraction string), so tiling stays exact without the
    Python model.
    """

    scale: int
    arch: str
    n_colors: int
    rgb_range: float
    precision: str  # "fp32" or "int8"
    parameters: int
    config: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> ExportInfo:
        """The metadata ``text`` of the file ``source``, every value checked: what a run reads
        of it (sizes, the tiling's reach, the precision) must be one an export writes."""
        damaged = f"{source} carries damaged edsr metadata"
        again = "export it again with 'edsr export'"
        try:
            d = json.loads(text)
            probe, config = d["probe"], d.get("config", {})
            if not (isinstance(probe, dict) and isinstance(config, dict)):
                raise TypeError("probe and config are objects")
            info = cls(
                scale=int_in_range(d["scale"], "scale"),
                arch=_one_of(d["arch"], "arch", ARCHS),
                n_colors=int_in_range(d["n_colors"], "n_colors", maximum=MAX_COLORS),
                rgb_range=finite_float(d["rgb_range"], "rgb_range"),
                precision=_one_of(d["precision"], "precision", PRECISIONS),
                parameters=int_in_range(d["parameters"], "parameters", maximum=2**53),
                config=config,
                probe=probe,
            )
            for key in ("n_resblocks", "n_feats"):  # shown as the model's size
                int_in_range(config[key], f"config {key}")
            reach = _reach(probe["reach"])
            if int_in_range(probe["overlap"], "overlap", minimum=0) != math.ceil(reach):
                raise EdsrError(f"overlap {probe['overlap']} is not the reach {reach} rounded up")
            for key in ("bytes_per_pixel", "out_bytes_per_pixel", "macs_per_pixel"):
                int_in_range(probe[key], key)
        except (KeyError, TypeError, ValueError, RecursionError) as e:
            what = f"no {e}" if isinstance(e, KeyError) else one_line(e)
            raise CheckpointError(f"{damaged} ({what}); {again}") from None
        except EdsrError as e:
            raise CheckpointError(f"{damaged}: {e}; {again}") from None
        return info


def _one_of(value: object, what: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise EdsrError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _reach(text: object) -> Fraction:
    """A receptive radius as an export stores it: a fraction string, from 0 to MAX_REACH."""
    if not isinstance(text, str):
        raise EdsrError(f"reach must be a fraction such as '37/2', got {text!r}")
    try:
        reach = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise EdsrError(f"reach must be a fraction such as '37/2', got {text!r}") from None
    if not 0 <= reach <= MAX_REACH:
        raise EdsrError(f"reach must be from 0 to {MAX_REACH} pixels, got {text!r}")
    return reach


def ort_session(path: str | os.PathLike[str]) -> Any:
    """An onnxruntime CPU session for ``path``, on PyTorch's thread count."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise EdsrError(ORT_INSTALL) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # onnxruntime's threads otherwise busy-wait after each run, taking the cores from whatever
    # runs next (measured: a oneDNN conv after an int8 run at 124 instead of 213 GFLOP/s on two
    # cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime's own types (Fail, InvalidGraph, ...)
        # Its refusals are data errors: weights declaring terabytes, external data outside the
        # file's folder or missing, operators it does not have, a damaged graph.
        raise CheckpointError(
            f"onnxruntime cannot load {path} ({_ort_reason(e)}); export it again with 'edsr export'"
        ) from None


def _ort_reason(error: Exception) -> str:
    """onnxruntime's message without its status prefix and source locations."""
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", one_line(error, limit=10_000))
    return one_line(re.sub(r"\S+\.(?:cc|h):\d+ \S+ ", "", text), limit=160)


class ExportedModel(nn.Module):
    """An exported file loaded back: ``forward(x, scale)`` takes and returns float32 NCHW in
    0..255, like a checkpoint's model, at the one scale the file holds. Inference only."""

    def __init__(self, path: Path, kind: str, info: ExportInfo, graph: Any) -> None:
        super().__init__()
        self.path = path
        self.kind = kind
        self.info = info
        if isinstance(graph, nn.Module):
            self.graph: Any = graph  # registered: .to(device) moves a TorchScript module
        else:
            object.__setattr__(self, "graph", graph)  # an onnxruntime session (CPU)

    @property
    def scales(self) -> tuple[int, ...]:
        return (self.info.scale,)

    @property
    def n_colors(self) -> int:
        return self.info.n_colors

    @property
    def precision(self) -> str:
        return self.info.precision

    @property
    def device(self) -> torch.device:
        p = next(iter(self.parameters()), None)
        return torch.device("cpu") if p is None else p.device

    def config(self) -> dict[str, Any]:
        return dict(self.info.config)

    def forward(self, x: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        if scale is not None and int(scale) != self.info.scale:
            raise EdsrError(
                f"{self.path.name} is an exported x{self.info.scale} graph; it cannot upscale "
                f"x{scale} (export that scale to its own file)"
            )
        try:
            if self.kind == "torchscript":
                out = self.graph(x.float())
            else:
                feed = x.detach().float().cpu().contiguous().numpy()
                (array,) = self.graph.run(["output"], {"input": feed})
                out = torch.from_numpy(array).to(x.device)
        except Exception as e:  # noqa: BLE001 - the graph's runtime raises its own types
            if isinstance(e, EdsrError):
                raise
            raise CheckpointError(f"{self.path} failed to run ({one_line(e, limit=160)})") from None
        # The metadata is a claim about the graph; what the graph returns is the fact.
        n, _, h, w = x.shape
        want = (n, self.info.n_colors, h * self.info.scale, w * self.info.scale)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise CheckpointError(
                f"{self.path} returned {got} for an input of {tuple(x.shape)}, where its edsr "
                f"metadata says x{self.info.scale} with {self.info.n_colors} colours "
                f"{want}: the metadata belongs to another graph"
            )
        return out

    def __repr__(self) -> str:  # not the TorchScript module's tree
        return f"ExportedModel({self.kind} x{self.info.scale} {self.info.precision}: {self.path})"


def load_exported(
    path: str | os.PathLike[str],
    kind: str,
    device: torch.device | None = None,
    *,
    run_torchscript_code: bool = False,
) -> ExportedModel:
    """Load an exported ONNX (``kind="onnx"``) or TorchScript file written by ``edsr export``.

    ONNX runs on the CPU through onnxruntime whatever ``device`` says; TorchScript moves to
    ``device``, and is loaded only with ``run_torchscript_code=True``: loading it runs the code
    it holds. Without it the file is refused on one line before anything of it runs.
    """
    path = Path(path)
    if kind == "onnx":
        info_text = _onnx_info(path)
    elif kind == "torchscript":
        info_text = torchscript_info(path)
    else:
        raise ValueError(f"unknown exported kind {kind!r}; expected one of {KINDS}")
    if info_text is None:
        what = "an ONNX graph" if kind == "onnx" else "a TorchScript archive"
        raise CheckpointError(
            f"{path} is {what} without edsr's metadata (not written by this version of "
            "'edsr export'); export it again from its checkpoint"
        )
    info = ExportInfo.from_json(info_text, str(path))
    if kind == "onnx":
        graph: Any = ort_session(path)
    else:
        if not run_torchscript_code:
            raise CheckpointError(
                f"{path} is a TorchScript archive: loading it runs the code inside it, so it "
                f"is loaded only if you trust its source and say so ({RUN_CODE_FLAG}; Python: "
                f"{RUN_CODE_KEYWORD}); its checkpoint or an ONNX export runs without that"
            )
        graph = _jit_load(path)
    model = ExportedModel(path, kind, info, graph).eval()
    if kind == "torchscript" and device is not None:
        model = model.to(device)
    with torch.no_grad():  # once, small: a graph unlike its metadata is refused at load
        model(torch.zeros(1, info.n_colors, 8, 8, device=model.device))
    return model


def _jit_load(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - torch.jit raises many types for damaged files
        raise CheckpointError(
            f"cannot load {path} as TorchScript ({one_line(e, limit=120)})"
        ) from None


def torchscript_info(path: str | os.PathLike[str]) -> str | None:
    """The :class:`ExportInfo` JSON a TorchScript archive carries (``<archive>/extra/
    edsr.json``), read from the zip as data: nothing in the archive is compiled or run. None
    when it has none."""
    try:
        with zipfile.ZipFile(path) as z:
            found = [
                i
                for i in z.infolist()
                if i.filename.count("/") == 2 and i.filename.endswith(f"/extra/{TORCHSCRIPT_EXTRA}")
            ]
            if len(found) != 1:
                return None
            if found[0].file_size > _MAX_INFO_BYTES:
                raise CheckpointError(
                    f"{path} claims {found[0].file_size:,} bytes of edsr metadata; "
                    "export it again with 'edsr export'"
                )
            with z.open(found[0]) as f:
                return f.read(_MAX_INFO_BYTES + 1).decode("utf-8", "replace")
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as e:
        raise CheckpointError(
            f"cannot read {path} as TorchScript ({one_line(e, limit=120)})"
        ) from None


def _onnx_info(path: Path) -> str | None:
    try:
        import onnx
    except ImportError:
        raise EdsrError(ORT_INSTALL.replace("onnxruntime", "onnx and onnxruntime")) from None
    try:
        # The weights are not needed to read the metadata.
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise CheckpointError(f"cannot read {path} as ONNX ({one_line(e, limit=120)})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    return meta.get(META_KEY)


__all__ = [
    "KINDS",
    "META_KEY",
    "ORT_INSTALL",
    "RUN_CODE_FLAG",
    "RUN_CODE_KEYWORD",
    "TORCHSCRIPT_EXTRA",
    "ExportInfo",
    "ExportedModel",
    "load_exported",
    "ort_session",
    "torchscript_info",
]
