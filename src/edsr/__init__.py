"""EDSR and MDSR super-resolution, exact to the paper and the authors' checkpoints.

>>> import edsr
>>> model = edsr.load_model("edsr_baseline_x2-1bc95232.pt")
>>> big = edsr.upscale(pil_image, model)
"""

from edsr.errors import CheckpointError, EdsrError, ImageError
from edsr.models import EDSR, MDSR, PRESETS, build_model, count_parameters
from edsr.route import upscale
from edsr.version import __version__
from edsr.weights import detect_config, load_model, save_model

__all__ = [
    "EDSR",
    "MDSR",
    "PRESETS",
    "CheckpointError",
    "EdsrError",
    "ImageError",
    "__version__",
    "build_model",
    "count_parameters",
    "detect_config",
    "load_model",
    "save_model",
    "upscale",
]
