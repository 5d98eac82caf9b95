"""Checkpoints: loading any accepted layout, shape-based detection, conversion and saving,
and the registry of known weights with its hash-checked download cache."""

import os

from edsr.weights.convert import normalize_state_dict
from edsr.weights.detect import detect_config, paper_res_scale
from edsr.weights.download import (
    cache_dir,
    download_weights,
    import_checkpoint,
    is_cached,
    load_weights,
    verify_file,
    weights_path,
)
from edsr.weights.io import load_model, model_from_state_dict, read_checkpoint, save_model
from edsr.weights.registry import (
    REGISTRY,
    Metric,
    Training,
    WeightsEntry,
    default_model,
    find_entry,
    get_entry,
    list_entries,
    register,
    unregister,
)

__all__ = [
    "REGISTRY",
    "Metric",
    "Training",
    "default_model",
    "WeightsEntry",
    "cache_dir",
    "detect_config",
    "download_weights",
    "find_entry",
    "get_entry",
    "import_checkpoint",
    "is_cached",
    "list_entries",
    "load_model",
    "load_weights",
    "model_from_state_dict",
    "normalize_state_dict",
    "paper_res_scale",
    "read_checkpoint",
    "register",
    "resolve_model",
    "save_model",
    "unregister",
    "verify_file",
    "weights_path",
]

# Suffixes that mark a --model value as a file name, so a missing file gets "does not exist"
# rather than "unknown weights name".
_FILE_SUFFIXES = {".pt", ".pth", ".safetensors", ".ckpt", ".bin", ".tar"}


def resolve_model(
    spec: str,
    *,
    scale: int | None = None,
    res_scale: float | None = None,
    device: str | None = None,
    progress: bool = True,
):
    """Turn a ``--model`` value into a loaded model on ``device`` (default: CUDA when present).

    ``spec`` is a checkpoint file, or a registry name (``edsr-x2``, ``mdsr``, or an official
    file name such as ``edsr_x2-0edfb8a3.pt``), downloaded into the cache when missing and
    hash-checked. An existing file wins over a registry name of the same spelling.
    """
    from pathlib import Path

    import torch

    from edsr.errors import EdsrError

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        try:
            torch.device(device)
        except RuntimeError:
            raise EdsrError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EdsrError(f"device {device!r} asked for, but no CUDA GPU is available; use --device cpu")
    path = Path(spec)
    if path.is_file():
        return load_model(spec, scale=scale, res_scale=res_scale, device=device)
    entry = find_entry(spec)
    if entry is not None:
        return load_weights(
            entry, scale=scale, res_scale=res_scale, device=device, progress=progress
        )
    if path.exists() or path.suffix.lower() in _FILE_SUFFIXES or "/" in spec or os.sep in spec:
        return load_model(spec, scale=scale, res_scale=res_scale, device=device)
    raise EdsrError(
        f"--model {spec!r} is neither a file nor a known weights name "
        f"({', '.join(REGISTRY)}; see 'edsr weights list')"
    )
