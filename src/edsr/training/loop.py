"""The training loop: one readable function, the paper's recipe, exact resume, DDP via torchrun.

Run directory layout::

    config.toml               resolved configuration (read back by --resume)
    log.csv                   step, loss, lr, seconds/iteration, skipped batches
    val.csv                   step, scale, PSNR, SSIM
    bicubic.csv               bicubic PSNR/SSIM on the validation set (the line to beat)
    loss.png, psnr.png        curves, redrawn as training goes
    checkpoints/state-*.pt    full training state (the newest two are kept) + .sha256
    model_latest.safetensors  weights at the last checkpoint; model_best.safetensors too
    model.safetensors         the final model, for `edsr eval` and `edsr upscale`
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from edsr.errors import EdsrError
from edsr.evaluate import BICUBIC, evaluate
from edsr.inference.precision import cpu_has_native_bf16
from edsr.io.atomic import atomic_write, sha256_file
from edsr.models import SRModel, build_model
from edsr.training.config import TrainConfig, load_config, save_config
from edsr.training.data import PatchDataset, batch_loader
from edsr.training.plot import line_chart
from edsr.weights import detect_config, read_checkpoint, save_model

log = logging.getLogger("edsr.training.loop")

_RUN_FILES = ("config.toml", "log.csv", "val.csv", "bicubic.csv", "loss.png", "psnr.png", "model.safetensors",
              "model_latest.safetensors", "model_best.safetensors")
# Fault injection for the resume test: SIGKILL this process right after the checkpoint at
# this step is on disk, as a power cut or OOM killer would.
_KILL_AFTER_ENV = "EDSR_FAULT_KILL_AFTER_CHECKPOINT"


def _say(msg: str, rank: int) -> None:
    if rank == 0:
        tqdm.write(msg)


def pick_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise EdsrError("fp16 training needs a CUDA GPU; on a CPU use --precision bf16 or fp32")
    return precision


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Step decay as a pure function of the step, so resuming cannot halve it twice."""
    return cfg.lr * cfg.lr_decay_factor ** (step // cfg.lr_decay_every)


def _source_key(key: str, own_cfg: dict, src_cfg: dict) -> tuple[str | None, str]:
    """Name in the source file of our tensor ``key`` (None: do not copy it), and why.

    EDSR keeps its final conv at ``tail.1`` after the upsampler ``tail.0``; MDSR keeps one
    upsampler per scale in ``upsample.i`` and the final conv at ``tail.0``. Translating
    between the two lets a trained single-scale body start a multi-scale model and back.
    An upsampler is copied only from a model of the same scale: another scale's pixel
    shuffle has a different shape and meaning.
    """
    src_arch, own_arch = src_cfg["arch"], own_cfg["arch"]
    src_scales = src_cfg["scales"] if src_arch == "mdsr" else [src_cfg["scale"]]
    own_scales = own_cfg["scales"] if own_arch == "mdsr" else [own_cfg["scale"]]
    if own_arch == "edsr" and key.startswith("tail.0."):
        scale, rest = own_scales[0], key[len("tail.0."):]
    elif own_arch == "mdsr" and key.startswith("upsample."):
        index, rest = key[len("upsample."):].split(".", 1)
        scale = own_scales[int(index)]
    else:
        final = {"edsr": "tail.1.", "mdsr": "tail.0."}
        if key.startswith(final[own_arch]):
            return final[src_arch] + key[len(final[own_arch]):], "final conv"
        return key, ""
    if scale not in src_scales:
        return None, f"x{scale} upsampler (the file has x{'/x'.join(map(str, src_scales))}; trained from scratch)"
    prefix = "tail.0." if src_arch == "edsr" else f"upsample.{src_scales.index(scale)}."
    return prefix + rest, f"x{scale} upsampler"


def init_from(model: SRModel, path: str, rank: int = 0) -> list[str]:
    """Copy every tensor of a trained model that fits ours; return the skipped keys with reasons.

    Works across EDSR and MDSR of the same width: the body, head and final conv carry
    over, an upsampler only where the file has the same scale.
    """
    src, src_cfg, _ = read_checkpoint(path)
    if src_cfg is None:
        src_cfg = detect_config(src)
    own_cfg = model.config()
    own = model.state_dict()
    load, skipped = {}, []
    for k, v in own.items():
        sk, why = _source_key(k, own_cfg, src_cfg)
        if sk is None:
            skipped.append(f"{k}: {why}")
        elif sk not in src:
            skipped.append(f"{k}: not in {Path(path).name}")
        elif tuple(src[sk].shape) != tuple(v.shape):
            skipped.append(f"{k}: shape {tuple(src[sk].shape)} in the file, {tuple(v.shape)} here")
        else:
            load[k] = src[sk].to(v.dtype)
    if not any(k.startswith("body.") for k in load):
        raise EdsrError(f"{path} shares no body weights with {own_cfg['arch']} {model.n_resblocks}x{model.n_feats}")
    model.load_state_dict(load, strict=False)
    _say(f"init from {path}: loaded {len(load)} tensors, skipped {len(skipped)}:", rank)
    for line in skipped:
        _say(f"  skipped {line}", rank)
    return skipped


# ---------------------------------------------------------------------------------------
# Checkpoints


def save_state(run: Path, state: dict, step: int, keep: int = 2) -> Path:
    ckdir = run / "checkpoints"
    path = ckdir / f"state-{step:08d}.pt"
    with atomic_write(path, overwrite=True) as tmp:
        torch.save(state, tmp)
        digest = sha256_file(tmp)
    with atomic_write(path.with_suffix(".pt.sha256"), overwrite=True) as tmp:
        tmp.write_text(digest + "\n")
    for old in sorted(ckdir.glob("state-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".pt.sha256").unlink(missing_ok=True)
    return path


def load_latest_state(run: Path, rank: int = 0) -> dict | None:
    """Newest checkpoint whose hash and contents check out; a damaged one is reported and passed over."""
    for path in sorted((run / "checkpoints").glob("state-*.pt"), reverse=True):
        try:
            expected = path.with_suffix(".pt.sha256").read_text().strip()
            if sha256_file(path) != expected:
                raise ValueError("SHA-256 does not match")
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any damage means: use the previous one
            _say(f"warning: checkpoint {path.name} is damaged ({type(e).__name__}: {e}); trying the previous one", rank)
    return None


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()[1]),
        "numpy": [int(x) for x in np_state[1]] + [int(np_state[2])],
    }


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    random.setstate((3, tuple(s["python"]), None))
    np.random.set_state(("MT19937", np.array(s["numpy"][:-1], dtype=np.uint32), s["numpy"][-1]))


# ---------------------------------------------------------------------------------------
# Logs and plots


def _append_csv(path: Path, header: list[str], row: list) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(header)
        w.writerow(row)


def _truncate_csv(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from, so the log has no duplicates."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    with atomic_write(path, overwrite=True) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(keep)


def draw_curves(run: Path) -> None:
    def read(name: str) -> list[dict]:
        p = run / name
        return list(csv.DictReader(p.read_text().splitlines())) if p.exists() else []

    rows = read("log.csv")
    if rows:
        line_chart(run / "loss.png", {"L1 loss": ([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows])},
                   title="training loss", xlabel="iteration", ylabel="L1 (0..255)", log_y=True)
    vals = read("val.csv")
    if vals:
        series: dict[str, tuple[list, list]] = {}
        for r in vals:
            xs, ys = series.setdefault(f"x{r['scale']}", ([], []))
            xs.append(int(r["step"]))
            ys.append(float(r["psnr"]))
        refs = {f"x{r['scale']} bicubic": float(r["psnr"]) for r in read("bicubic.csv")}
        line_chart(run / "psnr.png", series, title="validation PSNR (Y); dashed: bicubic", xlabel="iteration",
                   ylabel="PSNR dB", references=refs)


def bicubic_reference(run: Path, val: str, scales: Sequence[int]) -> None:
    """Score bicubic on the validation set once, so the PSNR chart shows what training must beat."""
    path = run / "bicubic.csv"
    have = {int(r["scale"]) for r in csv.DictReader(path.read_text().splitlines())} if path.exists() else set()
    todo = [s for s in scales if s not in have]
    if todo:
        for r in evaluate(BICUBIC, [val], todo, progress=False)["results"]:
            _append_csv(path, ["scale", "psnr", "ssim"], [r["scale"], f"{r['psnr']:.4f}", f"{r['ssim']:.5f}"])


# ---------------------------------------------------------------------------------------
# Distributed


def _setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        rank = dist.get_rank()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, torch.device("cpu")
    return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare_run_dir(run: Path, *, resume: bool, overwrite: bool) -> None:
    if (run / "config.toml").exists() and not (resume or overwrite):
        raise EdsrError(f"{run} already holds a training run; continue it with --resume {run} or replace it with --overwrite")
    if overwrite and not resume:
        for name in _RUN_FILES:
            (run / name).unlink(missing_ok=True)
        for p in (run / "checkpoints").glob("state-*"):
            p.unlink()
    run.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------------------
# The loop


def train(
    cfg: TrainConfig | None = None,
    *,
    resume: str | os.PathLike | None = None,
    overwrite: bool = False,
    iters: int | None = None,
    progress: bool = True,
) -> Path:
    """Train (or resume) a run; returns the path of the final model file.

    ``resume`` is a run directory: its saved config is used (``iters`` may extend it) and
    training continues exactly where the newest intact checkpoint left it.
    """
    rank, world, device = _setup_distributed()
    if resume is not None:
        run = Path(resume)
        if not (run / "config.toml").is_file():
            raise EdsrError(f"{run} is not a training run (no config.toml); start one with --out {run}")
        cfg = load_config(run / "config.toml")
        cfg.out = str(run)
        if iters is not None:
            cfg.iters = iters
    elif cfg is None:
        raise EdsrError("train needs a config or --resume RUN_DIR")
    cfg.validate()
    run = Path(cfg.out)
    if cfg.batch_size % world:
        raise EdsrError(f"batch size {cfg.batch_size} does not split over {world} processes; use a multiple of {world}")
    if cfg.val and not Path(cfg.val).exists():
        raise EdsrError(f"validation set {cfg.val} does not exist")
    if rank == 0:
        prepare_run_dir(run, resume=resume is not None, overwrite=overwrite)
        save_config(cfg, run / "config.toml")
    precision = pick_precision(cfg.precision, device)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    data = PatchDataset(cfg.train, cfg.scales, patch_size=cfg.patch_size, cache_dir=cfg.cache_dir,
                        on_bad_image=cfg.on_bad_image, progress=progress and rank == 0)
    scales = tuple(cfg.scales)
    model = build_model(cfg.preset, scale=scales[0], scales=scales)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                 betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    step, best, loss_ema = 0, -math.inf, None
    state = load_latest_state(run, rank) if resume is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, best, loss_ema = state["step"], state["best_psnr"], state["loss_ema"]
        _set_rng_state(state["rng"])
        for name in ("log.csv", "val.csv"):
            if rank == 0:
                _truncate_csv(run / name, step)
        _say(f"resumed {run} at step {step}", rank)
    elif resume is not None:
        _say(f"no intact checkpoint in {run}; starting from step 0", rank)
    elif cfg.init_from:
        init_from(model, cfg.init_from, rank)

    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    for s in optimizer.state.values():  # resume on another device
        for k, v in s.items():
            if isinstance(v, torch.Tensor) and k != "step":
                s[k] = v.to(device)
    net: torch.nn.Module = model
    if world > 1:
        # MDSR leaves the other scales' branches without gradients in every step.
        net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=model.config()["arch"] == "mdsr")
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def checkpoint(at: int) -> None:
        if rank != 0:
            return
        save_state(run, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": at,
                         "best_psnr": best, "loss_ema": loss_ema, "rng": _rng_state(),
                         "config": dataclasses.asdict(cfg)}, at)
        save_model(model, run / "model_latest.safetensors", overwrite=True, metadata={"step": str(at)})
        draw_curves(run)
        if os.environ.get(_KILL_AFTER_ENV) == str(at):
            os.kill(os.getpid(), signal.SIGKILL)

    def validate(at: int) -> None:
        nonlocal best
        if rank != 0 or not cfg.val:
            return
        model.eval()
        report = evaluate(model, [cfg.val], scales, progress=False)
        model.train()
        for r in report["results"]:
            _append_csv(run / "val.csv", ["step", "scale", "psnr", "ssim"], [at, r["scale"], f"{r['psnr']:.4f}", f"{r['ssim']:.5f}"])
        mean = float(np.mean([r["psnr"] for r in report["results"]]))
        summary = ", ".join(f"x{r['scale']} {r['psnr']:.2f} dB" for r in report["results"])
        _say(f"step {at}: validation {summary}", rank)
        if mean > best:
            best = mean
            save_model(model, run / "model_best.safetensors", overwrite=True, metadata={"step": str(at), "psnr": f"{mean:.4f}"})

    if rank == 0:
        _say(f"training {cfg.preset} x{'/'.join(map(str, scales))} on {len(data)} images, {precision}, "
             f"batch {cfg.batch_size} over {world} process(es), device {device}", rank)
    loader = batch_loader(data, step, cfg.iters, cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world, workers=cfg.workers)
    bar = tqdm(total=cfg.iters, initial=step, desc="train", unit="it", disable=not (progress and rank == 0), dynamic_ncols=True)
    if rank == 0 and cfg.val:
        bicubic_reference(run, cfg.val, scales)
    if step == 0 and state is None:
        validate(0)  # the starting point, so the curve shows what training gained
    model.train()
    window_loss, window_n, window_t, skipped = 0.0, 0, time.perf_counter(), 0
    # Ctrl-C only sets a flag, acted on between steps, so the checkpoint it triggers never
    # holds weights one update ahead of its step counter. A second Ctrl-C stops at once.
    stop = {"requested": False}

    def on_sigint(signum: int, frame: object) -> None:
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True

    in_main = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGINT, on_sigint) if in_main else None
    try:
        for batch_step, scale, lr_u8, hr_u8 in loader:
            assert batch_step == step, (batch_step, step)
            for g in optimizer.param_groups:
                g["lr"] = learning_rate(cfg, step)
            lr_img = lr_u8.to(device, non_blocking=True).float().contiguous(memory_format=memory_format)
            hr_img = hr_u8.to(device, non_blocking=True).float()
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = net(lr_img, scale)
            loss = F.l1_loss(out.float(), hr_img)
            value = loss.detach()
            if world > 1:
                dist.all_reduce(value)
                value /= world
            value = float(value)
            # A non-finite or exploding loss would wreck Adam's moments: skip that batch.
            spike = loss_ema is not None and step > 100 and value > cfg.spike_factor * loss_ema
            optimizer.zero_grad(set_to_none=True)
            if not math.isfinite(value) or spike:
                skipped += 1
                _say(f"warning: step {step}: loss {value:.4g} (running mean {loss_ema or float('nan'):.4g}); batch skipped", rank)
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
            if step % cfg.log_every == 0 or step == cfg.iters:
                now = time.perf_counter()
                sec = (now - window_t) / max(1, cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every)
                mean_loss = window_loss / window_n if window_n else float("nan")
                bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{learning_rate(cfg, step - 1):.2e}")
                if rank == 0:
                    _append_csv(run / "log.csv", ["step", "loss", "lr", "sec_per_iter", "skipped"],
                                [step, f"{mean_loss:.5f}", f"{learning_rate(cfg, step - 1):.3e}", f"{sec:.4f}", skipped])
                window_loss, window_n, window_t = 0.0, 0, time.perf_counter()
            if step % cfg.val_every == 0 or step == cfg.iters:
                validate(step)
            if step % cfg.checkpoint_every == 0 or step == cfg.iters:
                checkpoint(step)
            if stop["requested"]:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        bar.close()
        if rank == 0:
            checkpoint(step)
            _say(f"interrupted at step {step}; checkpoint saved. Continue with: edsr train --resume {run}", rank)
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous_handler)
    bar.close()
    final = run / "model.safetensors"
    if rank == 0:
        save_model(model, final, overwrite=True, metadata={"step": str(step)})
        draw_curves(run)
        _say(f"done: {final}" + (f" (best validation {best:.2f} dB: {run / 'model_best.safetensors'})" if math.isfinite(best) else ""), rank)
    if world > 1:
        dist.barrier()
    return final
