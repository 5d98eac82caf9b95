"""Checkpoints: loading any accepted layout, shape-based detection, conversion and saving."""

from edsr.weights.convert import normalize_state_dict
from edsr.weights.detect import detect_config, paper_res_scale
from edsr.weights.io import load_model, model_from_state_dict, read_checkpoint, save_model

__all__ = [
    "detect_config",
    "load_model",
    "model_from_state_dict",
    "normalize_state_dict",
    "paper_res_scale",
    "read_checkpoint",
    "save_model",
]


def resolve_model(
    spec: str,
    *,
    scale: int | None = None,
    res_scale: float | None = None,
    device: str | None = None,
):
    """Turn a ``--model`` value into a loaded model on ``device`` (default: CUDA when present)."""
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
    return load_model(spec, scale=scale, res_scale=res_scale, device=device)
