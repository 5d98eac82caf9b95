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
import os
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edsr.errors import CheckpointError, EdsrError, one_line

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
        try:
            d = json.loads(text)
            return cls(
                scale=int(d["scale"]),
                arch=str(d["arch"]),
                n_colors=int(d["n_colors"]),
                rgb_range=float(d["rgb_range"]),
                precision=str(d["precision"]),
                parameters=int(d["parameters"]),
                config=dict(d.get("config", {})),
                probe=dict(d["probe"]),
            )
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(
                f"{source} carries damaged edsr metadata; export it again with 'edsr export'"
            ) from None


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
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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
        if self.kind == "torchscript":
            return self.graph(x.float())
        feed = x.detach().float().cpu().contiguous().numpy()
        (out,) = self.graph.run(["output"], {"input": feed})
        return torch.from_numpy(out).to(x.device)

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
