"""Running a model on user images.

Rooms: ``descriptor`` (what a loaded model is: :func:`describe`, scales, the receptive-field
probe), ``forward`` (forward pass and self-ensemble), ``memory`` (budgets), ``tiling`` (tile
plans and the tile loop), ``engine`` (the one pipeline, with sinks), ``estimate`` (time and
memory of a job), ``arrays`` (the PIL/numpy/tensor API), ``files`` (files and folders),
``video`` (videos through :mod:`edsr.io.video`), ``precision`` (bf16/fp16, compile).
"""

from edsr.inference.arrays import ImageLike, upscale, upscale_tensor
from edsr.inference.descriptor import (
    Model,
    ModelInfo,
    ModelProbe,
    describe,
    probe_model,
    resolve_scale,
    tile_memory,
)
from edsr.inference.engine import alpha_rows, run_tiled
from edsr.inference.estimate import LONG_JOB_SECONDS, JobEstimate, plan_job
from edsr.inference.files import BatchResult, output_paths, upscale_files, upscale_image_file
from edsr.inference.forward import dihedral, dihedral_inverse, ensemble_forward, sr_forward
from edsr.inference.memory import (
    default_memory_budget,
    format_bytes,
    host_available_memory,
    parse_memory,
)
from edsr.inference.precision import InferenceModel, prepare_model, resolve_precision
from edsr.inference.tiling import (
    OnTile,
    ShouldStop,
    TilePlan,
    Window,
    iter_tiles,
    min_tile,
    plan_axis,
    plan_tiles,
    receptive_field,
    tile_count,
)
from edsr.io.png import PngStripWriter

__all__ = [
    "LONG_JOB_SECONDS",
    "BatchResult",
    "ImageLike",
    "InferenceModel",
    "JobEstimate",
    "Model",
    "ModelInfo",
    "ModelProbe",
    "OnTile",
    "PngStripWriter",
    "ShouldStop",
    "TilePlan",
    "Window",
    "alpha_rows",
    "default_memory_budget",
    "describe",
    "dihedral",
    "dihedral_inverse",
    "ensemble_forward",
    "format_bytes",
    "host_available_memory",
    "iter_tiles",
    "min_tile",
    "output_paths",
    "parse_memory",
    "plan_axis",
    "plan_job",
    "plan_tiles",
    "prepare_model",
    "probe_model",
    "receptive_field",
    "resolve_precision",
    "resolve_scale",
    "run_tiled",
    "sr_forward",
    "tile_count",
    "tile_memory",
    "upscale",
    "upscale_files",
    "upscale_image_file",
    "upscale_tensor",
]
