"""Training configuration: one typed dataclass, the paper's recipes, TOML files and flags."""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edsr.degrade import parse_degradation
from edsr.errors import EdsrError
from edsr.inference.memory import format_bytes, host_available_memory
from edsr.inference.precision import TRAINING_PRECISIONS
from edsr.io.atomic import atomic_write
from edsr.models import PRESETS, check_scales
from edsr.validators import (
    MAX_PROCESSES,
    finite_float,
    input_file,
    int_in_range,
    output_folder,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found]


LR_SCHEDULES = ("step", "cosine")
#: Above it Adam diverges at once: a typo, not a recipe.
MAX_LR = 1.0
#: NumPy's seeds are 32-bit.
MAX_SEED = 2**32 - 1


def step_memory(cfg: TrainConfig) -> int:
    """Bytes one training step keeps for its backward pass, in float32 (an upper bound:
    bf16 autocast keeps less): per block its conv, ReLU and sum outputs, the upsampler's
    outputs at HR size, and the HR patches, output and loss."""
    p = PRESETS[cfg.preset]
    s = max(cfg.scales)
    lr_px, hr_px = cfg.patch_size**2, (cfg.patch_size * s) ** 2
    floats = cfg.batch_size * (
        p.n_feats * lr_px * (4 * p.n_resblocks + 6) + 2 * p.n_feats * hr_px + 9 * hr_px
    )
    return 4 * floats


def _memory_on_hand() -> int:
    free = host_available_memory()
    if torch.cuda.is_available():  # a GPU run keeps its activations there
        free = max(free, torch.cuda.get_device_properties(0).total_memory)
    return free


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.toml`` beside the run."""

    preset: str = "edsr-baseline"
    scales: list[int] = field(default_factory=lambda: [2])
    train: list[str] = field(default_factory=list)
    val: str | None = None
    out: str = "runs/edsr-baseline-x2"
    iters: int = 300_000
    batch_size: int = 16  # global: split over data-parallel ranks
    patch_size: int = 48  # LR patch; the HR patch is patch_size * scale
    lr: float = 1e-4
    lr_decay_every: int = 200_000
    lr_decay_factor: float = 0.5
    lr_schedule: str = "step"  # step: x lr_decay_factor every lr_decay_every | cosine: to lr_min
    lr_min: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    precision: str = "auto"  # fp32 | bf16 | fp16 | auto
    channels_last: bool = True
    init_from: str | None = None
    val_every: int = 1000
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0
    workers: int = 0
    spike_factor: float = 10.0  # skip a batch whose loss exceeds this times the running mean
    on_bad_image: str = "skip"  # skip | fail
    cache_dir: str | None = None
    degrade: str = "clean"  # what happens to the LR patches (edsr.degrade): jpeg:40-95, ...
    val_degrade: str = "clean"  # ... and to the validation set's LR images

    def validate(self, *, run_paths: bool = True) -> None:
        """Refuse a bad value on one line. ``run_paths=False`` leaves out the run folder and
        ``init_from``: a recipe stage's values are checked before the recipe sets them."""
        if self.preset not in PRESETS:
            raise EdsrError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        self.scales = list(check_scales(self.scales))
        if PRESETS[self.preset].arch == "edsr" and len(self.scales) != 1:
            raise EdsrError(
                f"{self.preset} is single-scale: give one --scale (MDSR presets take several)"
            )
        if not self.train:
            raise EdsrError("no training data: give --train DIR")
        # an empty name is no folder: read as a path it is the current folder, whatever it holds
        if "" in self.train:
            raise EdsrError("a training folder is named by an empty text; give its path")
        if self.val == "":
            raise EdsrError("the validation set is named by an empty text; give it or leave it out")
        for name in (
            "iters",
            "batch_size",
            "patch_size",
            "lr_decay_every",
            "val_every",
            "checkpoint_every",
            "log_every",
        ):
            int_in_range(getattr(self, name), name.replace("_", "-"))
        # nan or inf here would train to a model of nans, and say "done"
        finite_float(self.lr, "learning rate", maximum=MAX_LR)
        finite_float(self.lr_decay_factor, "lr_decay_factor", maximum=1.0)
        finite_float(self.adam_eps, "adam_eps")
        finite_float(self.spike_factor, "spike_factor")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise EdsrError(f"{name} must be from 0 to below 1, got {getattr(self, name)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise EdsrError(
                f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not {self.lr_schedule!r}"
            )
        if not 0 <= self.lr_min <= self.lr:
            raise EdsrError(f"lr_min must be between 0 and lr ({self.lr:g}), got {self.lr_min:g}")
        if self.precision not in TRAINING_PRECISIONS:
            raise EdsrError(
                f"precision must be one of {', '.join(TRAINING_PRECISIONS)}, not {self.precision!r}"
            )
        if self.on_bad_image not in ("skip", "fail"):
            raise EdsrError(f"on_bad_image must be 'skip' or 'fail', not {self.on_bad_image!r}")
        # what a step would ask of this machine, before a tensor of that size is made
        need, have = step_memory(self), _memory_on_hand()
        if need > have:
            raise EdsrError(
                f"a training step of {self.preset} with batch {self.batch_size} and "
                f"{self.patch_size} px LR patches needs about {format_bytes(need)}; this "
                f"machine has {format_bytes(have)} free: use a smaller patch_size or batch_size"
            )
        int_in_range(self.workers, "workers", minimum=0, maximum=MAX_PROCESSES)
        int_in_range(self.seed, "seed", minimum=0, maximum=MAX_SEED)
        if run_paths:
            output_folder(self.out, "the run folder")
        if run_paths and self.init_from is not None:  # before hours of decoding, not after
            input_file(self.init_from, "--init-from")
        if self.cache_dir is not None:
            output_folder(self.cache_dir, "the cache folder")
        self.degrade = str(parse_degradation(self.degrade))
        self.val_degrade = str(parse_degradation(self.val_degrade))


def recipe(preset: str, scales: list[int] | None = None) -> TrainConfig:
    """The paper's recipe for a preset (section 2 of the spec): L1, Adam 1e-4 halved every 2e5."""
    if preset not in PRESETS:
        raise EdsrError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if not scales:  # none given; an empty list given is refused by validate()
        scales = [2, 3, 4] if PRESETS[preset].arch == "mdsr" else [2]
    tag = preset if PRESETS[preset].arch == "mdsr" else f"{preset}-x{scales[0]}"
    return TrainConfig(preset=preset, scales=list(scales), out=f"runs/{tag}")


def _coerce(name: str, value: object, hint: object) -> object:
    """Check a TOML/flag value against the dataclass field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(name, value, next(a for a in args if a is not type(None)))
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        return [_coerce(name, v, args[0]) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # a whole number of hundreds of digits
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise EdsrError(
        f"config key {name!r}: expected {getattr(hint, '__name__', hint)}, got {value!r}"
    )


def checked_values(values: dict, *, source: str) -> dict[str, Any]:
    """``values`` (a TOML file's or flags') with known keys only, each of its field's type."""
    hints = typing.get_type_hints(TrainConfig)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise EdsrError(
            f"unknown config key(s) in {source}: {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(known))}"
        )
    return {k: _coerce(k, v, hints[k]) for k, v in values.items()}


def apply_overrides(cfg: TrainConfig, values: dict, *, source: str) -> TrainConfig:
    return dataclasses.replace(cfg, **checked_values(values, source=source))


def read_toml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise EdsrError(f"config file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EdsrError(f"{p} is not valid TOML: {e}") from None
    # A [train] table is accepted as well as top-level keys.
    return data.get("train", data) if isinstance(data.get("train"), dict) else data


def resolve(
    preset: str | None, scales: list[int] | None, config_file: str | None, flags: dict
) -> TrainConfig:
    """Recipe of the preset, then the config file, then command-line flags (last wins)."""
    file_values = read_toml(config_file) if config_file else {}
    # typed first: the preset and scales pick the recipe the rest of the file changes
    file_values = checked_values(file_values, source=str(config_file))
    preset = preset or file_values.get("preset", TrainConfig.preset)
    scales = scales or file_values.get("scales")
    cfg = recipe(preset, list(scales) if scales else None)
    cfg = dataclasses.replace(cfg, **file_values)
    cfg = apply_overrides(
        cfg, {k: v for k, v in flags.items() if v is not None}, source="the command line"
    )
    cfg.preset = preset
    if scales:
        cfg.scales = [int(s) for s in scales]
    cfg.validate()
    return cfg


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def to_toml(cfg: TrainConfig) -> str:
    lines = ["# Resolved configuration of this run; `edsr train --config` reads it back."]
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if v is None:
            lines.append(f"# {f.name} = (not set)")
        else:
            lines.append(f"{f.name} = {toml_value(v)}")
    return "\n".join(lines) + "\n"


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    with atomic_write(path, overwrite=True) as tmp:
        tmp.write_text(to_toml(cfg))


def load_config(path: str | os.PathLike) -> TrainConfig:
    return apply_overrides(TrainConfig(), read_toml(path), source=str(path))
