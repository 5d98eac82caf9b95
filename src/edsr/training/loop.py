"""The training loop: the paper's recipe, exact resume, DDP via torchrun, in one function.

:func:`train` reads top to bottom: setup (everything a user can get wrong is checked before
the run folder is written), then one plain loop over the steps: the batch of this step, the
forward pass, L1, Adam, then logging, validation and checkpoints. What the run folder holds
(checkpoints, RNG state, CSV logs, curves) is in :mod:`edsr.training.run`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from edsr.degrade import parse_degradation
from edsr.errors import EdsrError, Terminated
from edsr.evaluate import evaluate
from edsr.inference.distributed import join
from edsr.inference.precision import precision_name, resolve_precision
from edsr.io.atomic import check_folder_writable
from edsr.io.datasets import find_dataset
from edsr.models import SRModel, build_model
from edsr.training.config import TrainConfig, load_config, save_config
from edsr.training.data import PatchDataset, batch_loader
from edsr.training.run import RunFolder, rng_state, set_rng_state
from edsr.weights import save_model
from edsr.weights.transfer import init_from


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The rate as a pure function of the step, so resuming cannot halve it twice."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr_min + (cfg.lr - cfg.lr_min) * 0.5 * (1 + math.cos(math.pi * step / cfg.iters))
    return cfg.lr * cfg.lr_decay_factor ** (step // cfg.lr_decay_every)


def train(
    cfg: TrainConfig | None = None,
    *,
    resume: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    iters: int | None = None,
    progress: bool = True,
    resume_hint: str | None = None,
) -> Path:
    """Train (or resume) a run; returns the path of the final model file.

    ``resume`` is a run directory: its saved config is used (``iters`` may extend it) and
    training continues exactly where the newest intact checkpoint left it. Ctrl-C or SIGTERM
    saves a checkpoint at the end of the current step and raises ``KeyboardInterrupt``
    (:class:`~edsr.errors.Terminated` for SIGTERM);
    a second one stops at once. ``resume_hint`` is the command that continues it, when that is
    not ``edsr train --resume RUN_DIR`` (a stage of a recipe).
    """
    # -- Setup: what can fail is checked before the run folder is touched ------------------
    rank, world, device = _setup_distributed()
    say = functools.partial(_say, rank)

    if resume is not None:
        run = RunFolder(resume)
        if not run.config.is_file():
            raise EdsrError(
                f"{run.path} is not a training run (no config.toml); "
                f"start one with --out {run.path}"
            )
        cfg = load_config(run.config)
        cfg.out = str(run.path)
        if iters is not None:
            cfg.iters = iters
    elif cfg is None:
        raise EdsrError("train needs a config or --resume RUN_DIR")
    cfg.validate()
    run = RunFolder(cfg.out)
    scales = tuple(cfg.scales)
    if cfg.batch_size % world:
        raise EdsrError(
            f"batch size {cfg.batch_size} does not split over {world} processes; "
            f"use a multiple of {world}"
        )
    if cfg.precision == "fp16" and device.type != "cuda":
        raise EdsrError("fp16 training needs a CUDA GPU; on a CPU use --precision bf16 or fp32")
    dtype = resolve_precision(cfg.precision, device)
    if cfg.val:
        find_dataset(cfg.val, what="validation")
    if resume is None:
        run.check_new(overwrite=overwrite)
    if rank == 0:
        # Tried, not only checked: a path the checks pass may still refuse a folder (/proc/x).
        for folder in (run.path, cfg.cache_dir):
            if folder is not None:
                check_folder_writable(folder)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = build_model(cfg.preset, scale=scales[0], scales=scales)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
    )
    state = run.latest_checkpoint(say) if resume is not None else None
    if resume is not None and state is None:
        say(f"no intact checkpoint in {run.path}; starting from step 0")
    if state is None and cfg.init_from:
        # Before the data is decoded, so a wrong file is refused in seconds. A resumed run
        # without a checkpoint starts as a new one does (a recipe's stage from the last).
        _init_from(model, cfg.init_from, say)
    data = PatchDataset(
        cfg.train,
        scales,
        patch_size=cfg.patch_size,
        cache_dir=cfg.cache_dir,
        on_bad_image=cfg.on_bad_image,
        progress=progress and rank == 0,
        degrade=parse_degradation(cfg.degrade),
    )

    # -- The run folder: written from here on ----------------------------------------------
    if rank == 0:
        if resume is None:
            run.clear()
        save_config(cfg, run.config)
    step, best, loss_ema = 0, -math.inf, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, best, loss_ema = state["step"], state["best_psnr"], state["loss_ema"]
        set_rng_state(state["rng"])
        if rank == 0:
            run.truncate_logs(step)
        say(f"resumed {run.path} at step {step}")

    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)  # type: ignore[call-overload]
    for s in optimizer.state.values():  # resume on another device
        for k, v in s.items():
            if isinstance(v, torch.Tensor) and k != "step":
                s[k] = v.to(device)
    net: torch.nn.Module = model
    if world > 1:
        # MDSR leaves the other scales' branches without gradients in every step.
        net = torch.nn.parallel.DistributedDataParallel(
            model, find_unused_parameters=model.config()["arch"] == "mdsr"
        )
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    amp_dtype = None if dtype == torch.float32 else dtype

    say(
        f"training {cfg.preset} x{'/'.join(map(str, scales))} on {len(data)} images, "
        f"{precision_name(dtype)}, batch {cfg.batch_size} over {world} process(es), "
        f"device {device}"
    )
    if rank == 0 and cfg.val:
        run.bicubic_reference(cfg.val, scales, cfg.val_degrade)
        if state is None and step == 0:  # the starting point: the curve shows what training gained
            best = _validate(run, model, cfg, 0, best, say)
    loader = batch_loader(
        data,
        step,
        cfg.iters,
        cfg.batch_size,
        seed=cfg.seed,
        rank=rank,
        world_size=world,
        workers=cfg.workers,
    )
    bar = tqdm(
        total=cfg.iters,
        initial=step,
        desc="train",
        unit="it",
        disable=not (progress and rank == 0),
        dynamic_ncols=True,
    )
    window_loss, window_n, window_t, skipped = 0.0, 0, time.perf_counter(), 0
    stopping = False

    # -- The loop ----------------------------------------------------------------------------
    model.train()
    with bar, _StopSignals() as stop:
        for batch_step, scale, lr_u8, hr_u8 in loader:
            assert batch_step == step, (batch_step, step)
            for g in optimizer.param_groups:
                g["lr"] = learning_rate(cfg, step)
            lr_img = lr_u8.to(device, non_blocking=True).float()
            lr_img = lr_img.contiguous(memory_format=memory_format)
            hr_img = hr_u8.to(device, non_blocking=True).float()
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = net(lr_img, scale)
            loss = F.l1_loss(out.float(), hr_img)
            # One all-reduce carries the mean loss and whether any rank was asked to stop,
            # so every rank leaves the loop after the same step.
            shared = torch.stack([loss.detach().float(), loss.new_tensor(float(stop.requested))])
            if world > 1:
                dist.all_reduce(shared)
            value, stopping = float(shared[0]) / world, bool(shared[1] > 0)

            # A non-finite or exploding loss would wreck Adam's moments: skip that batch.
            spike = loss_ema is not None and step > 100 and value > cfg.spike_factor * loss_ema
            optimizer.zero_grad(set_to_none=True)
            if not math.isfinite(value) or spike:
                skipped += 1
                say(
                    f"warning: step {step}: loss {value:.4g} (running mean "
                    f"{loss_ema or float('nan'):.4g}); batch skipped"
                )
                if world > 1:  # keep DDP's collectives matched across ranks
                    (out.sum() * 0).backward()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss_ema = value if loss_ema is None else 0.98 * loss_ema + 0.02 * value
                window_loss += value
                window_n += 1
            step += 1
            bar.update(1)

            last = step == cfg.iters
            if step % cfg.log_every == 0 or last:
                sec = (time.perf_counter() - window_t) / (step % cfg.log_every or cfg.log_every)
                mean_loss = window_loss / window_n if window_n else float("nan")
                lr_now = learning_rate(cfg, step - 1)
                bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr_now:.2e}")
                if rank == 0:
                    run.log_loss([step, f"{mean_loss:.5f}", f"{lr_now:.3e}", f"{sec:.4f}", skipped])
                window_loss, window_n, window_t = 0.0, 0, time.perf_counter()
            if (step % cfg.val_every == 0 or last) and rank == 0 and cfg.val:
                best = _validate(run, model, cfg, step, best, say)
            if (step % cfg.checkpoint_every == 0 or last or stopping) and rank == 0:
                _checkpoint(run, model, optimizer, cfg, step, best, loss_ema)
            if stopping:
                break

    if stopping and step < cfg.iters:
        say(
            f"interrupted at step {step}; checkpoint saved. "
            f"Continue with: {resume_hint or f'edsr train --resume {run.path}'}"
        )
        raise stop.interrupt()
    if rank == 0:
        save_model(model, run.final_model, overwrite=True, metadata={"step": str(step)})
        run.draw_curves()
        best_note = (
            f" (best validation {best:.2f} dB: {run.best_model})" if math.isfinite(best) else ""
        )
        say(f"done: {run.final_model}{best_note}")
    if world > 1:
        dist.barrier()
    return run.final_model


def _say(rank: int, msg: str) -> None:
    """Progress lines come from rank 0 only, through tqdm so they do not break its bar."""
    if rank == 0:
        tqdm.write(msg)


def _init_from(model: SRModel, path: str, say: Callable[[str], None]) -> None:
    transfer = init_from(model, path)
    say(f"init from {path}: loaded {transfer.loaded} tensors, skipped {len(transfer.skipped)}:")
    for line in transfer.skipped:
        say(f"  skipped {line}")


def _checkpoint(
    run: RunFolder,
    model: SRModel,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    step: int,
    best: float,
    loss_ema: float | None,
) -> None:
    """Full state first, then the weights-only copy: a crash between them loses nothing."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "best_psnr": best,
        "loss_ema": loss_ema,
        "rng": rng_state(),
        "config": dataclasses.asdict(cfg),
    }
    run.save_checkpoint(state, step)
    save_model(model, run.latest_model, overwrite=True, metadata={"step": str(step)})
    run.draw_curves()


def _validate(
    run: RunFolder,
    model: SRModel,
    cfg: TrainConfig,
    step: int,
    best: float,
    say: Callable[[str], None],
) -> float:
    """Score the validation set, log it, keep the best model; returns the new best mean PSNR."""
    model.eval()
    assert cfg.val is not None
    results = evaluate(model, [cfg.val], cfg.scales, progress=False, degrade=cfg.val_degrade)
    results = results["results"]
    model.train()
    run.log_validation(step, results)
    say(
        f"step {step}: validation "
        + ", ".join(f"x{r['scale']} {r['psnr']:.2f} dB" for r in results)
    )
    mean = float(np.mean([r["psnr"] for r in results]))
    if mean > best:
        meta = {"step": str(step), "psnr": f"{mean:.4f}"}
        save_model(model, run.best_model, overwrite=True, metadata=meta)
        return mean
    return best


class _StopSignals:
    """Ctrl-C and SIGTERM (``timeout``, ``docker stop``, SLURM) ask the loop to stop.

    The handler only sets a flag, read between steps, so the checkpoint it leads to never
    holds weights one update ahead of its step counter; a second signal stops at once
    (KeyboardInterrupt, no checkpoint). The previous handlers come back on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self.terminated = False  # SIGTERM: the command exits 143, not Ctrl-C's 130
        self._previous: dict[int, Any] = {}

    def interrupt(self) -> KeyboardInterrupt:
        return Terminated() if self.terminated else KeyboardInterrupt()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.terminated = self.terminated or signum == signal.SIGTERM
        if self.requested:
            raise self.interrupt()
        self.requested = True

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():  # signals go to the main one
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _setup_distributed() -> tuple[int, int, torch.device]:
    ranks = join()  # torchrun's process group, this rank's GPU or share of the CPU cores
    return ranks.rank, ranks.world, torch.device(ranks.device())
