"""Weights: what each known weight set is (``entry``), the catalogue of them (``catalogue``), the
registry that finds them by name (``registry``), their hash-checked download cache
(``download``), checkpoint files of any accepted layout (``io``, ``convert``, ``detect``), the
one resolver from a name, a file or nothing to a loaded model (``load``), and the text tables
(``table``)."""

from edsr.weights.catalogue import CATALOGUE, DEFAULT
from edsr.weights.convert import normalize_state_dict
from edsr.weights.detect import detect_config, paper_res_scale
from edsr.weights.download import (
    cache_dir,
    download_weights,
    hash_matches,
    is_cached,
    verify_file,
    weights_path,
)
from edsr.weights.entry import Metric, Training, WeightsEntry, metrics_from_eval_json
from edsr.weights.io import model_from_state_dict, read_checkpoint, save_model
from edsr.weights.load import (
    ModelSource,
    ModelSpec,
    import_checkpoint,
    load_model,
    load_weights,
    model_source,
    source_of,
)
from edsr.weights.registry import (
    REGISTRY,
    default_model,
    find_entry,
    get_entry,
    known_names,
    list_entries,
    register,
    unregister,
)
from edsr.weights.table import describe, format_table, metrics_table, readme_table

__all__ = [
    "CATALOGUE",
    "DEFAULT",
    "REGISTRY",
    "Metric",
    "ModelSource",
    "ModelSpec",
    "Training",
    "WeightsEntry",
    "cache_dir",
    "default_model",
    "describe",
    "detect_config",
    "download_weights",
    "find_entry",
    "format_table",
    "get_entry",
    "hash_matches",
    "import_checkpoint",
    "is_cached",
    "known_names",
    "list_entries",
    "load_model",
    "load_weights",
    "metrics_from_eval_json",
    "metrics_table",
    "model_from_state_dict",
    "model_source",
    "normalize_state_dict",
    "paper_res_scale",
    "read_checkpoint",
    "readme_table",
    "register",
    "save_model",
    "source_of",
    "unregister",
    "verify_file",
    "weights_path",
]
