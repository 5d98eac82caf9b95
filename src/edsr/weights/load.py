"""From a name, a file or nothing to a loaded model: the one resolver behind ``edsr.load_model``,
``--model`` and the server, and the conversion ``edsr weights import`` does.

A model is named by a checkpoint file, or by a registry name (``mdsr-baseline-291``,
``edsr-x2``, or an official file name such as ``edsr_x2-0edfb8a3.pt``), which is downloaded
into the cache when missing and hash-checked; no name at all means the bundled default, which
needs no network.
"""

from __future__ import annotations

import functools
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edsr import defaults
from edsr.errors import CheckpointError, EdsrError
from edsr.io.cache import sha256_file
from edsr.models import SRModel
from edsr.runtimes import KINDS as EXPORTED_KINDS
from edsr.runtimes import ExportedModel, load_exported
from edsr.validators import MAX_RES_SCALE, finite_float
from edsr.weights.download import download_weights, hash_matches
from edsr.weights.entry import WeightsEntry
from edsr.weights.io import file_kind, model_from_state_dict, read_checkpoint, save_model
from edsr.weights.registry import default_model, find_entry, get_entry, known_names, list_entries

#: What ``load_model`` accepts as a model: a file, a registry name, or None for the default.
ModelSpec = str | os.PathLike[str] | None

# Suffixes that mark a model name as a file name, so a missing file gets "does not exist"
# rather than "unknown weights name".
_FILE_SUFFIXES = {".pt", ".pth", ".safetensors", ".ckpt", ".bin", ".tar", ".onnx", ".ts", ".jit"}


@dataclass
class ModelSource:
    """Which model a spec names, for a record read later (an eval report, a folder job's
    settings): ``name`` is the registry name, or the file as given; ``scales`` the registry's
    (None for a file: only loading it tells).

    :attr:`sha256` is the registry's hash for an entry (the download checked the file against
    it), else the file's, hashed on first use and kept; None for a folder or a hub id.
    """

    name: str
    path: Path | None = None  # the file, for a spec that is not a registry entry
    scales: tuple[int, ...] | None = None
    registry_sha256: str | None = field(default=None, repr=False)

    @functools.cached_property
    def sha256(self) -> str | None:
        if self.registry_sha256 is not None:
            return self.registry_sha256
        if self.path is not None and self.path.is_file():
            return sha256_file(self.path)
        return None


#: The source of each model :func:`load_model` returned (see :func:`source_of`).
_SOURCES: weakref.WeakKeyDictionary[nn.Module, ModelSource] = weakref.WeakKeyDictionary()


def model_source(spec: ModelSpec = None) -> ModelSource:
    """What ``spec`` names (as :func:`load_model` resolves it), without loading it: a registry
    entry costs nothing; a file is hashed only when :attr:`ModelSource.sha256` is asked for."""
    found = _resolve(spec)
    if isinstance(found, WeightsEntry):
        return ModelSource(found.name, scales=found.scales, registry_sha256=found.sha256)
    return ModelSource(str(spec), path=found)


def source_of(model: nn.Module) -> ModelSource | None:
    """The :class:`ModelSource` of a model :func:`load_model` (or :func:`load_weights`)
    returned; None for a model built another way."""
    return _SOURCES.get(model)


def load_model(
    spec: ModelSpec = None,
    *,
    scale: int | None = None,
    res_scale: float | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    run_torchscript_code: bool = False,
) -> SRModel | ExportedModel:
    """Load a model, in eval mode: the bundled default, a registry entry, or a checkpoint file.

    ``spec`` left out is the bundled default (offline, from the package's own files). A
    registry name is downloaded into the cache when missing (``$EDSR_OFFLINE=1`` forbids the
    network), hash-checked, and built with the entry's settings. A file may be any accepted
    layout: the authors' ``.pt`` files, dicts wrapping them (``state_dict``, ``model``,
    ``params``, ``params_ema``, a GAN's generator, ...), ``module.``/``_orig_mod.``/``netG.``
    prefixes, BasicSR's EDSR layout, super-image's files, folders and hub ids (``scale`` picks
    the file; see :mod:`edsr.weights.superimage`), and this project's safetensors; its
    hyperparameters come from the embedded config or the tensor shapes. An existing file wins
    over a registry name of the same spelling.

    ``res_scale`` overrides the entry's or file's (shapes cannot show it; the paper's
    convention is used for files without a config). ``scale``, when given, must be one the
    model has. ``device``: None is :data:`edsr.defaults.DEVICE` (``auto``: CUDA when present).

    An ONNX or TorchScript file written by ``edsr export`` comes back as an
    :class:`~edsr.runtimes.ExportedModel` that runs it (onnxruntime on the CPU, torch.jit on
    ``device``): it upscales, tiles and serves like a checkpoint's model, at its one scale, but
    cannot be trained or exported again. A TorchScript file is code: loading it runs what it
    holds, so it is refused unless ``run_torchscript_code=True`` says you trust it (its metadata
    is read without loading it, so a file of another kind is told apart first).
    """
    if res_scale is not None:
        finite_float(res_scale, "res_scale", maximum=MAX_RES_SCALE)
    target = _device(device)
    found = _resolve(spec)
    if isinstance(found, WeightsEntry):
        return load_weights(
            found, scale=scale, res_scale=res_scale, device=target, progress=progress
        )
    model: SRModel | ExportedModel
    kind = file_kind(found) if found.is_file() and found.stat().st_size else None
    if kind in EXPORTED_KINDS:
        if res_scale is not None:
            raise EdsrError(f"{found} is an exported graph: its res_scale is folded in already")
        model = load_exported(found, str(kind), target, run_torchscript_code=run_torchscript_code)
        _check_scale(model.scales, scale, str(found))
    else:
        model = _finish(_load_file(found, res_scale, scale), scale, str(found), target)
    _SOURCES[model] = ModelSource(str(spec), path=found)
    return model


def load_weights(
    entry: str | WeightsEntry,
    *,
    scale: int | None = None,
    res_scale: float | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> SRModel:
    """Download (if needed), verify and load a registry entry, with the entry's settings.

    The model is built from the registry's config, not guessed from the file, so settings that
    no tensor shape shows (``res_scale`` 0.1 for the large EDSR) are always right; ``res_scale``
    overrides it on purpose only.
    """
    e = get_entry(entry)
    target = _device(device)
    path = download_weights(e, progress=progress)
    sd, _, _ = read_checkpoint(path, authors=True)  # hash-checked: the authors' convention
    model = model_from_state_dict(sd, config=_config(e, res_scale), source=f"{e.name} ({path})")
    model = _finish(model, scale, e.name, target)
    _SOURCES[model] = ModelSource(e.name, scales=e.scales, registry_sha256=e.sha256)
    return model


def import_checkpoint(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    res_scale: float | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Convert any accepted checkpoint (or a registry name) to this project's safetensors.

    Returns the written path and the model config stored in it. A file whose hash is a
    registry entry's takes that entry's settings (its ``res_scale`` above all); other files
    get the shape-detected config and the paper's ``res_scale`` convention unless given.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise EdsrError(f"{dest} already exists; pass --overwrite to replace it")
    if res_scale is not None:
        finite_float(res_scale, "res_scale", maximum=MAX_RES_SCALE)
    found = _resolve(source)
    entry = found if isinstance(found, WeightsEntry) else _entry_for_file(found)
    if isinstance(found, WeightsEntry):
        model = load_weights(found, res_scale=res_scale, device="cpu", progress=progress)
    elif entry is not None:
        sd, _, _ = read_checkpoint(found, authors=True)
        model = model_from_state_dict(sd, config=_config(entry, res_scale), source=str(found))
    else:
        model = _load_file(found, res_scale)
    meta = {"source_file": Path(source).name}
    if entry is not None:
        meta.update(registry_name=entry.name, source_sha256=entry.sha256, license=entry.license)
    save_model(model, dest, dtype=dtype, overwrite=overwrite, metadata=meta)
    return dest, model.config()


def _resolve(spec: ModelSpec) -> WeightsEntry | Path:
    """What ``spec`` names: a registry entry, or a file path (which may not exist)."""
    if spec is None:
        return get_entry(default_model())
    path = Path(spec)
    if not isinstance(spec, str) or path.is_file():
        return path
    entry = find_entry(spec)
    if entry is not None:
        return entry
    if path.exists() or path.suffix.lower() in _FILE_SUFFIXES or "/" in spec or os.sep in spec:
        return path  # reading it says what is wrong: missing, a folder, ...
    raise EdsrError(f"{spec!r} is neither a file nor a known weights name; {known_names(spec)}")


def _device(device: str | torch.device | None) -> torch.device:
    if isinstance(device, torch.device):
        return device
    device = defaults.resolve_device(device)
    try:
        target = torch.device(device)
    except RuntimeError:
        raise EdsrError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise EdsrError(
            f"device {device!r} asked for, but no CUDA GPU is available; use --device cpu"
        )
    if target.type == "cuda" and (target.index or 0) >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise EdsrError(
            f"device {device!r} asked for, but this machine has {n} CUDA GPU(s): cuda:0 to "
            f"cuda:{n - 1}"
        )
    others = {
        "mps": ("MPS (Apple GPU)", getattr(torch.backends, "mps", None)),
        "xpu": ("XPU (Intel GPU)", getattr(torch, "xpu", None)),
    }
    if target.type in others:
        backend, module = others[target.type]
        if module is None or not module.is_available():
            raise EdsrError(
                f"device {device!r} asked for, but this PyTorch has no {backend} support or "
                "the machine no such GPU; use --device cpu"
            )
    return target


def _config(entry: WeightsEntry, res_scale: float | None) -> dict[str, Any]:
    config = entry.config()
    if res_scale is not None:  # EDSR's and MDSR's blocks both scale their residual
        config["res_scale"] = float(res_scale)
    return config


def _load_file(path: Path, res_scale: float | None, scale: int | None = None) -> SRModel:
    # scale picks the file in a super-image folder or hub id (one file per scale there)
    sd, config, _ = read_checkpoint(path, scale=scale)
    try:
        return model_from_state_dict(sd, config=config, res_scale=res_scale, source=str(path))
    except CheckpointError as e:
        # Shape detection does not know the file name; the user needs it.
        raise CheckpointError(str(e) if str(path) in str(e) else f"{path}: {e}") from None


def _finish(model: SRModel, scale: int | None, source: str, device: torch.device) -> SRModel:
    _check_scale(model.scales, scale, source)
    return model.to(device)


def _check_scale(scales: tuple[int, ...], scale: int | None, source: str) -> None:
    if scale is not None and int(scale) not in scales:
        have = ", ".join(f"x{s}" for s in scales)
        raise CheckpointError(
            f"{source} is an {have} model; it cannot upscale x{scale} (use --scale "
            f"{scales[0]} or weights trained for that scale)"
        )


def _entry_for_file(path: Path) -> WeightsEntry | None:
    """The registry entry whose hash this file has, if any."""
    if not path.is_file():
        return None
    digest = sha256_file(path)
    return next((e for e in list_entries() if hash_matches(digest, e.sha256)), None)
