"""The run folder a training keeps: checkpoints, RNG state, CSV logs and curves.

Layout::

    config.toml               resolved configuration (read back by --resume)
    log.csv                   step, loss, lr, seconds/iteration, skipped batches
    val.csv                   step, scale, PSNR, SSIM
    bicubic.csv               bicubic PSNR/SSIM on the validation set (the line to beat)
    loss.png, psnr.png        curves, redrawn at every checkpoint
    checkpoints/state-*.pt    full training state (the newest two are kept) + .sha256
    model_latest.safetensors  weights at the last checkpoint; model_best.safetensors too
    model.safetensors         the final model, for `edsr eval` and `edsr upscale`

A folder is a run once it holds a checkpoint or a final model: a start that failed before
its first checkpoint leaves nothing worth protecting, so starting again there is allowed.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from edsr.errors import EdsrError
from edsr.evaluate import BICUBIC, evaluate
from edsr.io.atomic import atomic_write
from edsr.io.cache import sha256_file
from edsr.training.plot import line_chart

_RUN_FILES = (
    "config.toml",
    "log.csv",
    "val.csv",
    "bicubic.csv",
    "loss.png",
    "psnr.png",
    "model.safetensors",
    "model_latest.safetensors",
    "model_best.safetensors",
)
LOSS_HEADER = ["step", "loss", "lr", "sec_per_iter", "skipped"]
VAL_HEADER = ["step", "scale", "psnr", "ssim"]


class RunFolder:
    """One training run's folder (see the module's docstring for what it holds)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.config = self.path / "config.toml"
        self.checkpoints = self.path / "checkpoints"
        self.final_model = self.path / "model.safetensors"
        self.latest_model = self.path / "model_latest.safetensors"
        self.best_model = self.path / "model_best.safetensors"

    def holds_run(self) -> bool:
        """True once a checkpoint or a final model is here: work a new start would destroy."""
        return self.final_model.exists() or any(self.checkpoints.glob("state-*.pt"))

    def check_new(self, *, overwrite: bool) -> None:
        """Refuse to start over a run unless told to; writes nothing."""
        if self.holds_run() and not overwrite:
            raise EdsrError(
                f"{self.path} already holds a training run; continue it with "
                f"--resume {self.path} or replace it with --overwrite"
            )

    def clear(self) -> None:
        """Remove what an earlier run (or an earlier failed start) left, and create the folder."""
        for name in _RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for p in self.checkpoints.glob("state-*"):
            p.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    # Checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self, state: dict[str, Any], step: int, keep: int = 2) -> Path:
        """Write the full training state at ``step``; older ones beyond ``keep`` go after it."""
        path = self.checkpoints / f"state-{step:08d}.pt"
        # A file object, not a path: torch then raises the OSError itself (disk full stays
        # "disk full" in atomic_write's message instead of a generic RuntimeError).
        with atomic_write(path, overwrite=True) as tmp:
            with open(tmp, "wb") as f:
                torch.save(state, f)
            digest = sha256_file(tmp)
        with atomic_write(path.with_suffix(".pt.sha256"), overwrite=True) as tmp:
            tmp.write_text(digest + "\n")
        for old in sorted(self.checkpoints.glob("state-*.pt"))[:-keep]:
            old.unlink(missing_ok=True)
            old.with_suffix(".pt.sha256").unlink(missing_ok=True)
        return path

    def last_step(self) -> int | None:
        """The step of the newest checkpoint file (read from its name, not checked), or None."""
        steps = [int(p.stem.split("-")[1]) for p in self.checkpoints.glob("state-*.pt")]
        return max(steps, default=None)

    def latest_checkpoint(self, warn: Callable[[str], None]) -> dict[str, Any] | None:
        """Newest checkpoint whose hash and contents check out; damaged ones are passed over."""
        for path in sorted(self.checkpoints.glob("state-*.pt"), reverse=True):
            try:
                expected = path.with_suffix(".pt.sha256").read_text().strip()
                if sha256_file(path) != expected:
                    raise ValueError("SHA-256 does not match")
                state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
                return state
            except Exception as e:  # noqa: BLE001 - any damage means: use the previous one
                warn(
                    f"warning: checkpoint {path.name} is damaged ({type(e).__name__}: {e}); "
                    "trying the previous one"
                )
        return None

    # Logs and curves -----------------------------------------------------------------------

    def log_loss(self, row: Sequence[object]) -> None:
        _append_csv(self.path / "log.csv", LOSS_HEADER, row)

    def log_validation(self, step: int, results: Sequence[dict[str, Any]]) -> None:
        for r in results:
            row = [step, r["scale"], f"{r['psnr']:.4f}", f"{r['ssim']:.5f}"]
            _append_csv(self.path / "val.csv", VAL_HEADER, row)

    def truncate_logs(self, step: int) -> None:
        """Drop rows logged after the checkpoint we resume from, so logs have no duplicates."""
        for name in ("log.csv", "val.csv"):
            path = self.path / name
            if not path.exists():
                continue
            with open(path, newline="") as f:
                rows = list(csv.reader(f))
            if not rows:
                continue
            keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
            with atomic_write(path, overwrite=True) as tmp, open(tmp, "w", newline="") as f:
                csv.writer(f).writerows(keep)

    def bicubic_reference(self, val: str, scales: Sequence[int], degrade: str = "clean") -> None:
        """Score bicubic on the validation set once: the PSNR chart's line to beat (on LR
        degraded as the validation's, ``degrade``)."""
        path = self.path / "bicubic.csv"
        have = {int(r["scale"]) for r in _read_csv(path)}
        todo = [s for s in scales if s not in have]
        if todo:
            for r in evaluate(BICUBIC, [val], todo, progress=False, degrade=degrade)["results"]:
                row = [r["scale"], f"{r['psnr']:.4f}", f"{r['ssim']:.5f}"]
                _append_csv(path, ["scale", "psnr", "ssim"], row)

    def draw_curves(self) -> None:
        rows = _read_csv(self.path / "log.csv")
        if rows:
            steps, losses = [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]
            line_chart(
                self.path / "loss.png",
                {"L1 loss": (steps, losses)},
                title="training loss",
                xlabel="iteration",
                ylabel="L1 (0..255)",
                log_y=True,
            )
        vals = _read_csv(self.path / "val.csv")
        if vals:
            series: dict[str, tuple[list[int], list[float]]] = {}
            for r in vals:
                xs, ys = series.setdefault(f"x{r['scale']}", ([], []))
                xs.append(int(r["step"]))
                ys.append(float(r["psnr"]))
            refs = {
                f"x{r['scale']} bicubic": float(r["psnr"])
                for r in _read_csv(self.path / "bicubic.csv")
            }
            line_chart(
                self.path / "psnr.png",
                series,
                title="validation PSNR (Y); dashed: bicubic",
                xlabel="iteration",
                ylabel="PSNR dB",
                references=refs,
            )


def _read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines())) if path.exists() else []


def _append_csv(path: Path, header: Sequence[str], row: Sequence[object]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(header)
        w.writerow(row)


# RNG state: resuming restores every generator, so a resumed run draws what a straight one would.


def rng_state() -> dict[str, Any]:
    np_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()[1]),
        "numpy": [int(x) for x in np_state[1]] + [int(np_state[2])],
    }


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    random.setstate((3, tuple(s["python"]), None))
    numpy = s["numpy"]
    # No cached Gaussian: nothing here draws normal numbers from the legacy generator.
    np.random.set_state(("MT19937", np.array(numpy[:-1], dtype=np.uint32), numpy[-1], 0, 0.0))
