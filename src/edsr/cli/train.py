"""`edsr train`: the paper's recipe, a run folder, `--resume`."""

from __future__ import annotations

import argparse

from edsr.cli.common import (
    positive_int,
)
from edsr.inference.precision import TRAINING_PRECISIONS


def add_train(sub: argparse._SubParsersAction) -> None:
    from edsr.models import PRESETS
    from edsr.training.config import TrainConfig

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
        "--train", nargs="+", help="training folders (DIV2K, HR/ benchmark layout, or flat)"
    )
    p.add_argument("--val", help="validation set folder (PSNR/SSIM every --val-every iterations)")
    p.add_argument("--out", help="run directory (default runs/<preset>-x<scale>)")
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
    p.add_argument("--lr", type=float, help=f"initial learning rate (default {d.lr:g})")
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
        type=int,
        help=f"data loader processes (default {d.workers}: patches are cheap)",
    )
    p.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")
    p.add_argument(
        "--on-bad-image",
        choices=["skip", "fail"],
        help=f"what to do with unreadable training images (default {d.on_bad_image})",
    )
    p.add_argument("--cache-dir", help="where decoded images are cached (default: $EDSR_HOME/data)")
    p.add_argument("--config", help="TOML file with config keys (see a run's config.toml)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly where it stopped")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from edsr.training.config import resolve
    from edsr.training.loop import train

    if args.resume:
        train(resume=args.resume, iters=args.iters, progress=not args.quiet)
        return 0
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
    }
    cfg = resolve(args.preset, args.scales, args.config, flags)
    train(cfg, overwrite=args.overwrite, progress=not args.quiet)
    return 0
