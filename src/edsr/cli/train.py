"""`edsr train`: the paper's recipe, a run folder, `--resume`; `--recipe` for a model's stages."""

from __future__ import annotations

import argparse
from pathlib import Path

from edsr.cli.common import (
    degradation,
    output_folder,
    positive_float,
    positive_int,
    say_to_stderr,
    whole_number,
)
from edsr.errors import EdsrError
from edsr.inference.precision import TRAINING_PRECISIONS
from edsr.validators import MAX_PROCESSES


def add_train(sub: argparse._SubParsersAction) -> None:
    from edsr.models import PRESETS
    from edsr.training.config import MAX_LR, MAX_SEED, TrainConfig

    p = sub.add_parser(
        "train",
        help="train EDSR or MDSR with the paper's recipe",
        description="Train with the paper's recipe (L1, Adam 1e-4 halved every 2e5 updates, "
        "48x48 LR patches, batch 16). Values come from the preset's recipe, then --config, "
        "then flags. Under torchrun every process trains one shard of each batch.",
    )
    d = TrainConfig()  # the defaults shown are the ones the run gets (the paper's recipe)
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        help=f"model preset (default {d.preset}; each brings the paper's recipe)",
    )
    p.add_argument(
        "--scale",
        nargs="+",
        type=positive_int,
        dest="scales",
        help="scale(s); MDSR takes several (default: 2 for EDSR, 2 3 4 for MDSR)",
    )
    p.add_argument(
        "--train",
        nargs="+",
        help="training folders (DIV2K, HR/ benchmark layout, or flat), or names from "
        "'edsr data list' found in the data cache",
    )
    p.add_argument(
        "--val",
        help="validation set folder or data set name (PSNR/SSIM every --val-every iterations)",
    )
    p.add_argument(
        "--out", type=output_folder, help="run directory (default runs/<preset>-x<scale>)"
    )
    p.add_argument("--iters", type=positive_int, help=f"total iterations (default {d.iters})")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        help=f"global batch size, split over processes (default {d.batch_size})",
    )
    p.add_argument(
        "--patch-size",
        type=positive_int,
        help=f"LR patch size; HR = patch x scale (default {d.patch_size})",
    )
    p.add_argument(
        "--lr", type=positive_float(MAX_LR), help=f"initial learning rate (default {d.lr:g})"
    )
    p.add_argument(
        "--lr-decay-every",
        type=positive_int,
        help=f"halve the learning rate every N updates (default {d.lr_decay_every})",
    )
    p.add_argument(
        "--precision",
        choices=TRAINING_PRECISIONS,
        help=f"compute precision (default {d.precision})",
    )
    p.add_argument(
        "--init-from",
        help="trained model to start from, EDSR or MDSR: every matching layer is copied, "
        "an upsampler only from the same scale",
    )
    p.add_argument(
        "--val-every",
        type=positive_int,
        help=f"validate every N iterations (default {d.val_every})",
    )
    p.add_argument(
        "--checkpoint-every",
        type=positive_int,
        help=f"save a checkpoint every N iterations (default {d.checkpoint_every})",
    )
    p.add_argument(
        "--log-every",
        type=positive_int,
        help=f"log loss every N iterations (default {d.log_every})",
    )
    p.add_argument(
        "--workers",
        type=whole_number(0, MAX_PROCESSES),
        help=f"data loader processes (default {d.workers}: patches are cheap)",
    )
    p.add_argument("--seed", type=whole_number(0, MAX_SEED), help=f"random seed (default {d.seed})")
    p.add_argument(
        "--on-bad-image",
        choices=["skip", "fail"],
        help=f"what to do with unreadable training images (default {d.on_bad_image})",
    )
    p.add_argument(
        "--cache-dir",
        type=output_folder,
        help="where decoded images are cached (default: $EDSR_HOME/data)",
    )
    p.add_argument(
        "--degrade",
        type=degradation,
        metavar="SPEC",
        help="what happens to the LR patches: clean (the paper), jpeg:Q, jpeg:QMIN-QMAX (saved as "
        "JPEG by Pillow at a quality drawn per patch) or a mixture such as "
        f"clean:0.2,jpeg:30-95:0.8 (default {d.degrade})",
    )
    p.add_argument(
        "--val-degrade",
        type=degradation,
        metavar="SPEC",
        help=f"the same for the validation set's LR images, e.g. jpeg:75 (default {d.val_degrade})",
    )
    p.add_argument("--config", help="TOML file with config keys (see a run's config.toml)")
    p.add_argument(
        "--recipe",
        metavar="NAME|FILE",
        help="train every stage of a recipe (a package recipe such as mdsr-baseline-291, or a "
        "recipe file), each in its own run folder under --out (default runs/NAME)",
    )
    p.add_argument(
        "--data-root",
        nargs="+",
        metavar="DIR",
        help="folders where a recipe's data sets (T91, Set5, ...) are looked for, in order "
        "(default: the data cache `edsr data download` fills)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print a recipe's stages, their iterations and the time they would take here "
        "(a few training steps of each stage are timed); train nothing",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run exactly where it stopped (a recipe's folder: at its stage)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from edsr.datasets import find_data
    from edsr.training.config import resolve
    from edsr.training.loop import train

    flags = {
        "train": args.train,
        "val": args.val,
        "out": args.out,
        "iters": args.iters,
        "batch_size": args.batch_size,
        "patch_size": args.patch_size,
        "lr": args.lr,
        "lr_decay_every": args.lr_decay_every,
        "precision": args.precision,
        "init_from": args.init_from,
        "val_every": args.val_every,
        "checkpoint_every": args.checkpoint_every,
        "log_every": args.log_every,
        "workers": args.workers,
        "seed": args.seed,
        "on_bad_image": args.on_bad_image,
        "cache_dir": args.cache_dir,
        "degrade": args.degrade,
        "val_degrade": args.val_degrade,
    }
    if args.recipe or args.dry_run or (args.resume and Path(args.resume, "recipe.toml").is_file()):
        return _run_recipe(args, flags)
    if args.data_root:
        raise EdsrError("--data-root is for recipes (--recipe); give --train and --val folders")
    if args.resume:
        train(resume=args.resume, iters=args.iters, progress=not args.quiet)
        return 0
    cfg = resolve(args.preset, args.scales, args.config, flags)
    # names such as Set5 or DIV2K: ./Set5, else the data cache; the run records the folder
    cfg.train = [str(find_data(d)) for d in cfg.train]
    cfg.val = str(find_data(cfg.val)) if cfg.val else cfg.val
    train(cfg, overwrite=args.overwrite, progress=not args.quiet)
    return 0


# Flags that change no stage's result, so they may go with a recipe.
_RECIPE_FLAGS = ("out", "workers", "cache_dir")


def _run_recipe(args: argparse.Namespace, flags: dict[str, object]) -> int:
    from edsr.training.recipe import load_recipe, plan, run_recipe

    if not (args.recipe or args.resume):
        raise EdsrError("--dry-run shows a recipe's plan: give --recipe NAME or --resume RUN_DIR")
    given = [k for k, v in flags.items() if v is not None and k not in _RECIPE_FLAGS]
    given += [k for k in ("preset", "scales", "config") if getattr(args, k) is not None]
    if given:
        flag = "--" + given[0].replace("_", "-").replace("scales", "scale")
        raise EdsrError(
            f"{flag} does not go with a recipe, which sets every stage's settings; "
            "copy its file, edit it and give --recipe FILE"
        )
    if args.resume and args.out:
        raise EdsrError("--resume names the recipe's folder; leave out --out")
    recipe = load_recipe(args.recipe or Path(args.resume, "recipe.toml"))
    out = args.resume or args.out or f"runs/{recipe.name}"
    if args.dry_run:
        print(plan(recipe, out, data=args.data_root, say=say_to_stderr(args.quiet)))
        return 0
    again = f"edsr train --resume {out}"
    if args.data_root:
        again += f" --data-root {' '.join(map(str, args.data_root))}"
    if args.recipe and args.resume:
        again += f" --recipe {args.recipe}"
    run_recipe(
        recipe,
        out,
        data=args.data_root,
        resume=bool(args.resume),
        overwrite=args.overwrite,
        progress=not args.quiet,
        workers=args.workers,
        cache_dir=args.cache_dir,
        resume_hint=again,
    )
    return 0
