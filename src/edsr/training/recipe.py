"""Recipes: a model's whole training, stage after stage, in one TOML file.

The package's recipes are ``assets/recipes/<name>.toml`` (the format is told at the top of
``mdsr-baseline-291.toml``). :func:`run_recipe` trains every stage with :func:`train`, each in
its own run folder under ``out``::

    out/recipe.toml              the recipe as run, every stage spelled out (read by --resume)
    out/1-<stage>/ ...           one run folder per stage (see edsr.training.run)
    out/<n>-<stage>/model-fp16.safetensors   a stage's model stored in fp16 (``save_as``)
    out/model.safetensors        the last stage's model: what the recipe makes

A stage is done when its model holds all its iterations; a run killed anywhere continues with
the first stage that is not, from that stage's newest checkpoint (the loop's exact resume).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open

from edsr import defaults
from edsr.datasets import data_root, find_data
from edsr.errors import EdsrError
from edsr.inference.precision import resolve_precision
from edsr.io.atomic import atomic_write, check_folder_writable
from edsr.io.datasets import find_dataset
from edsr.models import SRModel, build_model
from edsr.training.config import TrainConfig, checked_values, read_toml, toml_value
from edsr.training.config import recipe as preset_recipe
from edsr.training.loop import train
from edsr.training.run import RunFolder
from edsr.weights import download_weights, load_model, save_model
from edsr.weights.catalogue import ASSETS
from edsr.weights.registry import find_entry

#: Where the package's recipes live: ``<name>.toml``.
RECIPES = ASSETS / "recipes"
#: How a stage's model may be handed on: fp32 as trained, or stored in fp16.
SAVE_AS = {"fp32": None, "fp16": torch.float16}
_SET_BY_RECIPE = ("out", "init_from")


@dataclass(frozen=True)
class Stage:
    """One stage: its name, what it starts from, how it hands its model on, and its settings.

    ``values`` are config keys (the recipe's defaults merged in); ``train`` and ``val`` hold
    data set names, resolved to folders by :func:`with_data`.
    """

    name: str
    values: dict[str, Any]
    # "previous": the model the stage before wrote; a registry name: that model; None: random
    init: str | None = None
    save_as: str = "fp32"

    def config(self) -> TrainConfig:
        """The stage's training config, data still named; the runner sets ``out``, ``init_from``."""
        values = checked_values(self.values, source=f"stage {self.name!r}")
        cfg = preset_recipe(values.get("preset", TrainConfig.preset), values.get("scales"))
        cfg = dataclasses.replace(cfg, **values)
        cfg.validate(run_paths=False)  # train() checks the run folder the recipe gives it
        return cfg

    def table(self) -> dict[str, Any]:
        """The stage as one [[stage]] table of a recipe file, every key spelled out."""
        own = {"name": self.name, "init": self.init, "save_as": self.save_as}
        return {k: v for k, v in {**own, **self.values}.items() if v is not None}


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    stages: tuple[Stage, ...]
    source: str  # the file it was read from

    @property
    def iterations(self) -> int:
        return sum(s.config().iters for s in self.stages)

    def to_toml(self) -> str:
        lines = [
            f"# Recipe {self.name} as run (from {self.source}); `edsr train --resume` reads it.",
            f"name = {toml_value(self.name)}",
            f"description = {toml_value(self.description)}",
        ]
        for stage in self.stages:
            lines += ["", "[[stage]]"]
            lines += [f"{k} = {toml_value(v)}" for k, v in stage.table().items()]
        return "\n".join(lines) + "\n"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.toml"))


def load_recipe(name_or_file: str | os.PathLike[str]) -> Recipe:
    """A recipe by name (``assets/recipes/NAME.toml``) or from a TOML file."""
    path = Path(name_or_file)
    if not path.is_file():
        if str(name_or_file) not in recipe_names():
            raise EdsrError(
                f"no recipe {str(name_or_file)!r}: give a recipe file or one of "
                f"{', '.join(recipe_names())}"
            )
        path = RECIPES / f"{name_or_file}.toml"
    data = read_toml(path)
    return parse_recipe(data, source=str(path))


def parse_recipe(data: dict[str, Any], *, source: str) -> Recipe:
    """Check a recipe's tables; every stage's config is validated here, before any training."""
    name = data.get("name")
    tables = data.get("stage")
    if not isinstance(name, str) or not isinstance(tables, list) or not tables:
        raise EdsrError(f"{source} is not a recipe: it needs a name and [[stage]] tables")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise EdsrError(f"{source}: defaults must be a table of config keys ([defaults])")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise EdsrError(f"{source}: description must be text")
    stages: list[Stage] = []
    for i, table in enumerate(tables, 1):
        where = f"{source}, stage {i}"
        if not isinstance(table, dict):
            raise EdsrError(f"{where}: a stage is a [[stage]] table of config keys")
        values = {**defaults, **table}
        stage_name = values.pop("name", None)
        if not isinstance(stage_name, str) or not stage_name.replace("-", "").isalnum():
            raise EdsrError(f"{where}: give it a name of letters, digits and dashes")
        if stage_name in (s.name for s in stages):
            raise EdsrError(f"{where}: the name {stage_name!r} is taken by an earlier stage")
        if "iters" not in table:
            raise EdsrError(f"{where}: say how many iterations it runs (iters = N)")
        for key in _SET_BY_RECIPE:
            if key in values:
                raise EdsrError(f"{where}: {key} is set by the recipe; remove it")
        init = values.pop("init", None)
        if init == "previous" and not stages:
            raise EdsrError(f'{where}: init = "previous" needs a stage before it')
        if init not in (None, "previous") and (
            not isinstance(init, str) or find_entry(init) is None
        ):
            raise EdsrError(
                f'{where}: init must be "previous", a model name from `edsr weights list`, '
                f"or absent; got {init!r}"
            )
        save_as = values.pop("save_as", "fp32")
        if save_as not in SAVE_AS:
            raise EdsrError(f"{where}: save_as must be one of {', '.join(SAVE_AS)}")
        stage = Stage(stage_name, values, init, save_as)
        stage.config()  # unknown keys and bad values fail now, not hours in
        stages.append(stage)
    return Recipe(name, description, tuple(stages), source)


# --- data sets by name ------------------------------------------------------------------------


def data_roots(roots: Sequence[str | os.PathLike[str]] | None) -> list[Path]:
    """Where named data sets are looked for: ``roots`` in order, else the data root."""
    return [Path(r) for r in roots] if roots else [data_root()]


def find_named(name: str, roots: Sequence[Path]) -> Path:
    """The folder of the data set ``name``: :func:`edsr.datasets.find_data` in each root."""
    for root in roots:
        try:
            path = find_data(name, root)
        except EdsrError:  # catalogued but not in this root: try the next
            continue
        if path.is_dir():
            return path
    where = ", ".join(str(r) for r in roots)
    raise EdsrError(
        f"no data set {name!r} in {where}; run `edsr data download {name}` "
        "or give --data-root DIR holding it"
    )


def with_data(cfg: TrainConfig, roots: Sequence[Path]) -> TrainConfig:
    """``cfg`` with its named training and validation sets replaced by their folders."""
    train_dirs = [str(find_named(n, roots)) for n in cfg.train]
    val = str(find_named(cfg.val, roots)) if cfg.val else None
    for d in train_dirs:
        find_dataset(d, split="train", what="training")
    return dataclasses.replace(cfg, train=train_dirs, val=val)


# --- running ------------------------------------------------------------------------------------


def check_folders(
    out: str | os.PathLike[str], cache_dir: str | None, configs: Sequence[TrainConfig]
) -> None:
    """The folders a recipe run writes (its own, its caches) tried before a stage starts."""
    caches = {cache_dir} if cache_dir else {c.cache_dir for c in configs if c.cache_dir}
    for folder in [out, *sorted(caches)]:
        check_folder_writable(folder)


def stage_folder(out: Path, index: int, stage: Stage) -> RunFolder:
    return RunFolder(out / f"{index}-{stage.name}")


def stage_output(run: RunFolder, stage: Stage) -> Path:
    """The model a stage hands on: its final model, or that stored in fp16."""
    return run.final_model if stage.save_as == "fp32" else run.path / "model-fp16.safetensors"


def stage_step(run: RunFolder, stage: Stage) -> int:
    """How far the stage got: the step of its handed-on model, else of its newest checkpoint."""
    output = stage_output(run, stage)
    if output.is_file():
        try:
            with safe_open(str(output), "pt") as f:
                return int((f.metadata() or {}).get("step", 0))
        except (OSError, ValueError):  # a damaged file: the checkpoints decide
            pass
    return run.last_step() or 0


def run_recipe(
    recipe: Recipe,
    out: str | os.PathLike[str],
    *,
    data: Sequence[str | os.PathLike[str]] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
    cache_dir: str | None = None,
    resume_hint: str | None = None,
    say: Callable[[str], None] = print,
) -> Path:
    """Train every stage of ``recipe`` in order under ``out``; returns ``out/model.safetensors``.

    ``resume`` continues the recipe run in ``out``, whose stages must begin ``recipe``'s (a
    recipe may gain stages); ``overwrite`` starts it again; ``data`` lists the folders the
    named data sets are looked for in. Every stage's data is found before anything is written.
    """
    out = Path(out)
    saved = out / "recipe.toml"
    if saved.is_file() and not overwrite:
        if not resume:
            raise EdsrError(
                f"{out} already holds a recipe run; continue it with --resume {out} "
                "or replace it with --overwrite"
            )
        before = load_recipe(saved)
        if [s.table() for s in before.stages] != [s.table() for s in recipe.stages][
            : len(before.stages)
        ]:
            raise EdsrError(
                f"{out} was run with other stages than {recipe.source}; "
                "give another --out or --overwrite"
            )
    elif resume and not overwrite:
        raise EdsrError(f"{out} holds no recipe run (no recipe.toml); start one with --recipe")
    elif RunFolder(out).config.is_file():
        raise EdsrError(f"{out} is a single training run; give the recipe another --out")
    roots = data_roots(data)
    configs = [with_data(s.config(), roots) for s in recipe.stages]
    check_folders(out, cache_dir, configs)
    hint = resume_hint or f"edsr train --resume {out}"

    out.mkdir(parents=True, exist_ok=True)
    if overwrite:  # nothing of the run before may pass for done, nor be resumed
        (out / "model.safetensors").unlink(missing_ok=True)
        for i, stage in enumerate(recipe.stages, 1):
            run = stage_folder(out, i, stage)
            stage_output(run, stage).unlink(missing_ok=True)
            if run.path.is_dir():
                run.clear()
    with atomic_write(saved, overwrite=True) as tmp:
        tmp.write_text(recipe.to_toml())

    previous: Path | None = None
    n = len(recipe.stages)
    for i, (stage, cfg) in enumerate(zip(recipe.stages, configs, strict=True), 1):
        run = stage_folder(out, i, stage)
        output = stage_output(run, stage)
        cfg.out = str(run.path)
        cfg.init_from = str(previous) if stage.init == "previous" else None
        if stage.init not in (None, "previous"):
            cfg.init_from = str(download_weights(stage.init, progress=progress))
        if workers is not None:
            cfg.workers = workers
        cfg.cache_dir = cache_dir or cfg.cache_dir
        step = stage_step(run, stage)
        if output.is_file() and step == cfg.iters:
            say(f"stage {i}/{n} {stage.name}: done ({cfg.iters:,} iterations)")
        elif run.holds_run():
            say(f"stage {i}/{n} {stage.name}: continuing at step {step:,} of {cfg.iters:,}")
            train(resume=run.path, iters=cfg.iters, progress=progress, resume_hint=hint)
        else:
            say(f"stage {i}/{n} {stage.name}: {cfg.iters:,} iterations")
            train(cfg, overwrite=True, progress=progress, resume_hint=hint)
        if not (output.is_file() and stage_step(run, stage) == cfg.iters):
            model = load_model(run.final_model, device="cpu")
            assert isinstance(model, SRModel)  # the run's own safetensors, never a graph
            meta = {"step": str(cfg.iters), "recipe": recipe.name, "stage": stage.name}
            save_model(model, output, dtype=SAVE_AS[stage.save_as], overwrite=True, metadata=meta)
        previous = output
    assert previous is not None
    final = out / "model.safetensors"
    with atomic_write(final, overwrite=True) as tmp:
        shutil.copyfile(previous, tmp)
    say(f"recipe {recipe.name} done: {final}")
    return final


# --- the plan and its time ----------------------------------------------------------------------


@dataclass(frozen=True)
class StepTime:
    """One training step's wall-clock seconds, and the share of this process's threads' time
    it got (CPU time over wall time times threads: 1 where nothing else ran; 1 on a GPU)."""

    seconds: float
    share: float


def time_step(cfg: TrainConfig, device: torch.device, *, timed: int = 2) -> StepTime:
    """Time one training step of ``cfg``'s shape on ``device``, averaged over its scales.

    The loop's step (channels-last, autocast in the stage's precision, L1, Adam) on random
    patches: per scale one warm-up step, then the mean of ``timed`` steps. MDSR draws its scale
    uniformly per step, so the mean over scales is its expected step time.
    """
    torch.manual_seed(0)
    scales = tuple(cfg.scales)
    dtype = resolve_precision(cfg.precision, device)
    amp = None if dtype == torch.float32 else dtype
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = build_model(cfg.preset, scale=scales[0], scales=scales)
    model = model.to(device=device, memory_format=fmt)  # type: ignore[call-overload]
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=cfg.lr)
    b, p = cfg.batch_size, cfg.patch_size
    per_scale, wall, cpu = [], 0.0, 0.0
    for s in scales:
        lr = (torch.rand(b, 3, p, p, device=device) * 255).contiguous(memory_format=fmt)
        hr = torch.rand(b, 3, p * s, p * s, device=device) * 255
        times = []
        for k in range(1 + timed):
            t, c = time.perf_counter(), time.process_time()
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                sr = model(lr, s)
            loss = F.l1_loss(sr.float(), hr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
            if k:
                wall, cpu = wall + times[-1], cpu + time.process_time() - c
        per_scale.append(statistics.mean(times[1:]))
    share = 1.0 if device.type != "cpu" else min(1.0, cpu / (wall * torch.get_num_threads()))
    return StepTime(statistics.mean(per_scale), share)


def _rate(x: float) -> str:
    mantissa, exponent = f"{x:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}" if x else "0"


def _schedule(cfg: TrainConfig) -> str:
    if cfg.lr_schedule == "cosine":
        return f"{_rate(cfg.lr)} cosine to {_rate(cfg.lr_min)}"
    return f"{_rate(cfg.lr)} x{cfg.lr_decay_factor:g} every {cfg.lr_decay_every:,}"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def plan(
    recipe: Recipe,
    out: str | os.PathLike[str] | None = None,
    *,
    data: Sequence[str | os.PathLike[str]] | None = None,
    device: str | torch.device | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> str:
    """What ``run_recipe`` would do: the stages, their iterations, where ``out`` stands, and
    the time it would take here, measured by :func:`time_step` (nothing is written)."""
    dev = torch.device(defaults.resolve_device(None if device is None else str(device)))
    configs = [s.config() for s in recipe.stages]
    roots = data_roots(data)
    # What would stop the run stops the plan, before seconds of timing: data, folders.
    found = [with_data(c, roots) for c in configs]
    if out is not None:
        check_folders(out, None, found)
    running = out is not None and (Path(out) / "recipe.toml").is_file()
    measured: dict[tuple[Any, ...], StepTime] = {}
    head = ["#", "stage", "model", "train", "patch", "batch", "iters", "lr", "precision", "seed"]
    head += ["init", "done", "s/it", "time"]
    rows = [head]
    total_s = share_s = 0.0
    for i, (stage, cfg) in enumerate(zip(recipe.stages, configs, strict=True), 1):
        shape = (cfg.preset, tuple(cfg.scales), cfg.batch_size, cfg.patch_size, cfg.precision)
        if shape not in measured:
            say(f"timing stage {i} ({stage.name}) on {dev} ...")
            measured[shape] = time_step(cfg, dev)
        done = stage_step(stage_folder(Path(out), i, stage), stage) if running and out else 0
        left = (cfg.iters - done) * measured[shape].seconds
        total_s += left
        share_s += left * measured[shape].share
        rows.append(
            [
                str(i),
                stage.name,
                f"{cfg.preset} x{'/'.join(map(str, cfg.scales))}",
                "+".join(cfg.train),
                str(cfg.patch_size),
                str(cfg.batch_size),
                f"{cfg.iters:,}",
                _schedule(cfg),
                cfg.precision,
                str(cfg.seed),
                {None: "random", "previous": f"stage {i - 1}"}.get(stage.init, str(stage.init)),
                f"{done:,}",
                f"{measured[shape].seconds:.2f}",
                _hours(left),
            ]
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = [
        f"recipe {recipe.name}: {recipe.description}",
        f"  from {recipe.source}; {len(configs)} stages, {recipe.iterations:,} iterations"
        + (f"; run folder {out}" if out is not None else ""),
        "",
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"estimated time to run: {_hours(total_s)}")
    if share_s < 0.8 * total_s:  # CPU time counts threads spinning in wait: "at most"
        lines.append(
            f"this machine was busy while timing: the steps got at most "
            f"{share_s / total_s:.0%} of its {torch.get_num_threads()} threads' time, so the "
            "estimate holds while it stays this busy"
        )
    names = sorted({n for c in configs for n in [*c.train, *([c.val] if c.val else [])]})
    lines += [f"data {name}: {find_named(name, roots)}" for name in names]
    lines.append(
        f"estimate: on {dev} ({torch.get_num_threads()} threads, torch {torch.__version__}), "
        "each stage's step timed on random patches of its shape (model, scales, batch, patch, "
        "precision: per scale 1 warm-up and the mean of 2 steps, averaged over the scales), "
        "times the iterations left; validation and the first decoding of the training images "
        "are not counted."
    )
    return "\n".join(lines)
