"""Benchmark evaluation under the paper's protocol (EDSR spec, section 3).

HR images are cropped to a multiple of the scale; LR images come from the data set's
``LR_bicubic`` folder when it has one, else from MATLAB-exact bicubic downscaling of the HR
image. Outputs are quantized to 0..255 before PSNR/SSIM, which are measured on the Y
channel with ``scale`` pixels shaved (benchmarks) or on RGB with ``scale + 6`` (DIV2K).
"""

from __future__ import annotations

import functools
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from edsr import defaults
from edsr.datasets import find_data
from edsr.degrade import CLEAN, Degradation, parse_degradation
from edsr.errors import EdsrError, ImageError
from edsr.inference import describe, ensemble_forward, sr_forward
from edsr.inference.distributed import SINGLE, Ranks
from edsr.inference.precision import InferenceModel, prepare_model, unwrap
from edsr.io.atomic import check_writable
from edsr.io.datasets import DataSet, Skip, find_dataset, own_outputs
from edsr.io.image import read_image, to_8bit, write_png
from edsr.metrics import SSIM_WINDOW, psnr, ssim
from edsr.models import SRModel
from edsr.resize import bicubic_lr, imresize, mod_crop
from edsr.runtimes import ExportedModel
from edsr.validators import int_in_range
from edsr.version import __version__
from edsr.weights import source_of

BICUBIC = "bicubic"


@dataclass(frozen=True)
class Protocol:
    y_channel: bool
    shave: int
    gray_as_rgb: bool = False


def discover(path: str | os.PathLike[str], *, skip: Skip | None = None) -> DataSet:
    """The evaluation data set ``path`` names (a folder, or a catalogued name found in the data
    cache: :func:`~edsr.datasets.find_data`); DIV2K: its ``valid`` split. ``skip`` leaves out
    what the evaluation writes there (:func:`saved_images`)."""
    return find_dataset(find_data(path), split="valid", what="data", skip=skip)


def saved_images(save_images: str | os.PathLike[str]) -> Skip:
    """What ``--save-images`` writes (``SAVE/<data set>/x<s>/<stem>_x<s>.png``), left out of
    the data sets read, so a folder evaluated with its outputs saved inside it scores the same
    images on every run."""
    root = os.path.realpath(save_images)

    def written(p: Path) -> bool:
        parts = Path(os.path.relpath(os.path.join(os.path.realpath(p.parent), p.name), root)).parts
        m = re.fullmatch(r"x(\d+)", parts[1]) if len(parts) == 3 else None
        return m is not None and parts[2].endswith(f"_x{m.group(1)}.png")

    return own_outputs(save_images, written)


def saved_image(
    save_images: str | os.PathLike[str], evalset: DataSet, hr: Path, scale: int
) -> Path:
    """Where ``--save-images`` writes the output for ``hr`` at ``scale`` (:func:`saved_images`)."""
    return Path(save_images) / evalset.name / f"x{scale}" / f"{hr.stem}_x{scale}.png"


def check_saved_images(
    save_images: str | os.PathLike[str] | None,
    sets: Sequence[DataSet],
    scales: Sequence[int],
    *,
    overwrite: bool,
) -> None:
    """Refuse, before any model is loaded or image scored, a ``--save-images`` file that
    exists without ``overwrite``: the run would otherwise stop at it, its work lost."""
    if save_images is None or overwrite:
        return
    for evalset in sets:
        for scale in scales:
            for hr in evalset.hr_files:
                dst = saved_image(save_images, evalset, hr, scale)
                if os.path.lexists(dst):
                    check_writable(dst, overwrite=False)


def default_protocol(
    evalset: DataSet, scale: int, *, y_channel: bool | None, shave: int | None, gray_as_rgb: bool
) -> Protocol:
    """The paper's convention: DIV2K on RGB with scale + 6 shaved, everything else Y with scale."""
    div2k = evalset.kind == "div2k"
    return Protocol(
        y_channel=(not div2k) if y_channel is None else y_channel,
        shave=(scale + 6 if div2k else scale) if shave is None else shave,
        gray_as_rgb=gray_as_rgb,
    )


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)


def load_pair(
    evalset: DataSet, hr_path: Path, scale: int, degrade: Degradation = CLEAN
) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR, HR) as uint8 (C, H, W) tensors, HR cropped to a multiple of ``scale``; the LR
    degraded by ``degrade``'s draw for this image and scale."""
    hr = to_8bit(read_image(hr_path).pixels)
    h, w = mod_crop(hr, scale).shape[:2]
    if h == 0 or w == 0:
        raise EdsrError(
            f"{hr_path} ({hr.shape[1]}x{hr.shape[0]}) is smaller than the scale x{scale}"
        )
    hr_t = _chw(mod_crop(hr, scale))
    draw = degrade.for_image(hr_path.name, scale)
    lr_path = evalset.lr_path(hr_path, scale)
    if lr_path is None:
        return _chw(draw.apply(bicubic_lr(hr, scale))), hr_t
    lr = to_8bit(read_image(lr_path).pixels)
    if lr.shape[:2] != (h // scale, w // scale):
        raise EdsrError(
            f"{lr_path} is {lr.shape[1]}x{lr.shape[0]}, but {hr_path.name} cropped to x{scale} "
            f"needs {w // scale}x{h // scale}; the LR image does not belong to this HR image"
        )
    if lr.shape[2] != hr.shape[2]:
        # Some copies store a gray image as RGB: measure in the HR image's channels.
        lr = lr[:, :, :1] if hr.shape[2] == 1 else np.repeat(lr, 3, axis=2)
    return _chw(draw.apply(np.ascontiguousarray(lr))), hr_t


@torch.no_grad()
def super_resolve(
    model: SRModel | InferenceModel | ExportedModel | str,
    lr: torch.Tensor,
    scale: int,
    *,
    ensemble: bool = False,
) -> torch.Tensor:
    """uint8 (C, h, w) -> uint8 (C, h*s, w*s), quantized as the protocol requires.

    ``ensemble`` averages the 8 flips/rotations before quantizing (the paper's "+" rows).
    """
    if isinstance(model, str):
        return imresize(lr, float(scale))
    device = describe(model).device
    x = lr.unsqueeze(0).to(device=device, dtype=torch.float32)
    y = (ensemble_forward if ensemble else sr_forward)(model, x, scale)[0]
    return y.clamp(0, 255).round().to(torch.uint8).cpu()


def evaluate(
    model: SRModel | InferenceModel | ExportedModel | str,
    data: Sequence[str | os.PathLike[str]],
    scales: Sequence[int],
    *,
    y_channel: bool | None = None,
    shave: int | None = None,
    gray_as_rgb: bool = False,
    save_images: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    ensemble: bool = False,
    progress: bool = True,
    ranks: Ranks = SINGLE,
    precision: str | None = None,
    degrade: str | Degradation | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (or ``"bicubic"``) on each data set at each scale.

    ``data``: folders, or catalogued names found in the data cache (``Set5``). ``ensemble``
    scores the geometric self-ensemble (EDSR+ / MDSR+); bicubic has none.
    An unreadable image is reported on stderr (one line), left out of the means and listed
    under ``"skipped"``; a data set with no readable image at all is an :class:`EdsrError`.

    Returns ``{"model", "model_sha256", "architecture", "precision", "edsr_version",
    "protocol": {...}, "self_ensemble", "results": [{"dataset", "scale", "degradation", "psnr",
    "ssim", "images", "skipped", "seconds", "protocol", "per_image": [...]}], "skipped":
    [{"dataset", "image", "error"}]}``, the structure ``--json`` writes. ``model`` is the
    registry name or the file as :func:`~edsr.weights.load_model` was given it
    (:func:`~edsr.weights.source_of`), ``"bicubic"``, or None for a model built in Python.

    ``ranks`` (from :func:`edsr.inference.distributed.join` under torchrun) splits each data
    set's images over the processes (:meth:`~edsr.inference.distributed.Ranks.shard`), each
    with ``model`` on its own device; the per-image scores are gathered in file order and
    averaged as one process averages them, so every rank returns the report one process would
    (the ``seconds`` are the wall time of all ranks together). Progress shows on rank 0 only.

    ``precision`` (fp32, bf16, fp16, int8, auto; None: :data:`edsr.defaults.SCORING_PRECISION`,
    the published protocol's fp32) prepares a plain model with
    :func:`~edsr.inference.precision.prepare_model`, so every path is scored by one protocol;
    an already prepared model is used as it is.

    ``degrade`` (:mod:`edsr.degrade`; None: clean) is applied to each LR image before the model
    sees it, ``jpeg:75`` for the JPEGs people have; a range or mixture is drawn per image from
    its name and the scale, so a score is the same on every run. The report names it.
    """
    deg = parse_degradation(degrade)
    if isinstance(model, str) and model != BICUBIC:
        raise EdsrError(f"unknown model {model!r}")
    if not scales:
        raise EdsrError("give at least one --scale")
    if shave is not None:
        int_in_range(shave, "shave", minimum=0)
    if ensemble and isinstance(model, str):
        raise EdsrError("--ensemble needs a trained model; bicubic has no ensemble")
    source = None if isinstance(model, str) else source_of(unwrap(model))
    if not isinstance(model, str):
        info = describe(model)
        bad = [s for s in scales if s not in info.scales]
        if bad:
            have = ", ".join(f"x{s}" for s in info.scales)
            raise EdsrError(f"the model upscales {have}; it cannot be evaluated at x{bad[0]}")
        if not isinstance(model, InferenceModel):
            # fp32 channels-last: the same float32 arithmetic in oneDNN's fastest layout (1.2x
            # for MDSR-baseline on a 2-core CPU); the original model is left as it is. An
            # exported graph is scored in the precision it was exported in ("auto" takes it).
            default = "auto" if isinstance(model, ExportedModel) else defaults.SCORING_PRECISION
            model = prepare_model(model, precision=precision or default)
    skip = saved_images(save_images) if save_images is not None else None
    sets = [discover(d, skip=skip) for d in data]
    for evalset in sets:  # before any work: a mixed LR protocol is refused, not averaged
        for scale in scales:
            evalset.check_lr(scale)
    check_saved_images(save_images, sets, scales, overwrite=overwrite)
    results = []
    skipped: list[dict[str, str]] = []
    for evalset in sets:
        unreadable: dict[Path, str] = {}
        mine = ranks.shard(list(enumerate(evalset.hr_files)))  # the same share at every scale
        for scale in scales:
            proto = default_protocol(
                evalset, scale, y_channel=y_channel, shave=shave, gray_as_rgb=gray_as_rgb
            )
            start = time.perf_counter()
            score = functools.partial(
                _score_share,
                model,
                evalset,
                [(i, p) for i, p in mine if p not in unreadable],
                scale,
                proto,
                ensemble=ensemble,
                save_images=save_images,
                overwrite=overwrite,
                progress=progress and ranks.main,
                degrade=deg,
            )
            per_image = []
            for i, outcome in sorted(o for share in ranks.gather(score) for o in share):
                if isinstance(outcome, str):
                    unreadable[evalset.hr_files[i]] = outcome
                    skipped.append(
                        {
                            "dataset": evalset.name,
                            "image": evalset.hr_files[i].name,
                            "error": outcome,
                        }
                    )
                else:
                    per_image.append(outcome)
            if not per_image:
                raise EdsrError(
                    f"no readable image in {evalset.name}; the first error: "
                    f"{next(iter(unreadable.values()))}"
                )
            results.append(
                {
                    "dataset": evalset.name,
                    "scale": scale,
                    "self_ensemble": ensemble,
                    "degradation": str(deg),
                    "psnr": float(np.mean([r["psnr"] for r in per_image])),
                    "ssim": float(np.mean([r["ssim"] for r in per_image])),
                    "images": len(per_image),
                    "skipped": len(unreadable),
                    "seconds": time.perf_counter() - start,
                    "protocol": asdict(proto),
                    "per_image": per_image,
                }
            )
    return {
        # Which model, so that two reports can be told apart: the registry name or the file as
        # given, and its SHA-256 (the registry's hash for an entry); None for a model that was
        # not loaded from a name or a file (built in Python).
        "model": model if isinstance(model, str) else (source.name if source else None),
        "model_sha256": source.sha256 if source else None,
        "architecture": None if isinstance(model, str) else model.config(),
        # what computed the outputs: fp32 is the published protocol's (bicubic: exact)
        "precision": model.precision if isinstance(model, InferenceModel) else "fp32",
        "edsr_version": __version__,
        "protocol": {
            "lr": "MATLAB bicubic (antialiased Keys a=-0.5) of HR cropped to a multiple of the "
            "scale, or the data set's LR_bicubic images",
            "degradation": str(deg)
            + ("" if deg.clean else " (edsr.degrade: the LR saved by Pillow as JPEG, decoded)"),
            "quantize": "outputs rounded to integers 0..255",
            "y_channel": "BT.601 studio-range luma (MATLAB rgb2ycbcr), gray images on their own "
            "values"
            if y_channel is not False
            else "off",
            "shave": "scale (benchmarks), scale + 6 (DIV2K)" if shave is None else shave,
            "psnr": "mean over images of per-image PSNR",
            "ssim": "Wang et al., Gaussian 11x11 sigma 1.5, valid positions",
        },
        "self_ensemble": ensemble,
        "results": results,
        "skipped": skipped,
    }


def _score_share(
    model: SRModel | InferenceModel | ExportedModel | str,
    evalset: DataSet,
    share: list[tuple[int, Path]],
    scale: int,
    proto: Protocol,
    *,
    ensemble: bool,
    save_images: str | os.PathLike[str] | None,
    overwrite: bool,
    progress: bool,
    degrade: Degradation,
) -> list[tuple[int, dict[str, Any] | str]]:
    """Score ``share``, ``(index, HR file)`` pairs of ``evalset``: ``(index, {"image", "psnr",
    "ssim"})`` for each image, or ``(index, error)`` for one that cannot be read."""
    out: list[tuple[int, dict[str, Any] | str]] = []
    bar = tqdm(
        share, desc=f"{evalset.name} x{scale}", unit="img", disable=not progress, leave=False
    )
    for i, hr_path in bar:
        try:
            lr, hr = load_pair(evalset, hr_path, scale, degrade)
        except ImageError as e:
            out.append((i, str(e)))
            tqdm.write(f"skipped unreadable image: {e}", file=sys.stderr)
            continue
        h, w = hr.shape[-2:]
        if min(h, w) - 2 * proto.shave < SSIM_WINDOW:  # before the work it would waste
            left = f"{max(0, w - 2 * proto.shave)}x{max(0, h - 2 * proto.shave)}"
            raise EdsrError(
                f"{hr_path} ({w}x{h}) shaved by {proto.shave} leaves {left} pixels, less than "
                f"SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window; give a smaller --shave"
            )
        sr = super_resolve(model, lr, scale, ensemble=ensemble)
        kw: dict[str, Any] = dict(
            crop_border=proto.shave, y_channel=proto.y_channel, gray_as_rgb=proto.gray_as_rgb
        )
        p = float(psnr(sr, hr, **kw)[0])
        s = float(ssim(sr, hr, **kw)[0])
        out.append((i, {"image": hr_path.name, "psnr": p, "ssim": s}))
        if save_images is not None:
            dst = saved_image(save_images, evalset, hr_path, scale)
            write_png(dst, sr.permute(1, 2, 0).numpy(), overwrite=overwrite)
    return out


def format_table(report: dict[str, Any]) -> str:
    """The results as a text table, its header naming the model (and the first 8 hex digits of
    its SHA-256) and precision; a last line names the images that could not be read."""
    head = f"{'dataset':<12} {'scale':>5} {'PSNR':>9} {'SSIM':>8} {'images':>6} {'seconds':>8}"
    name = report.get("model")
    name = name if isinstance(name, str) else "a model built in Python"
    digest = report.get("model_sha256")
    which = f"{name} (sha256 {digest[:8]})" if digest else name
    if name != BICUBIC:
        which += f", {report.get('precision', 'fp32')}"
    rows = [f"{head}  protocol  [{which}]"]
    for r in report["results"]:
        p = r["protocol"]
        proto = f"{'Y' if p['y_channel'] else 'RGB'}, shave {p['shave']}"
        if r.get("degradation", "clean") != "clean":
            proto += f", LR {r['degradation']}"
        ps = "inf" if r["psnr"] == float("inf") else f"{r['psnr']:.4f}"
        scale = f"x{r['scale']}" + ("+" if r.get("self_ensemble") else "")
        rows.append(
            f"{r['dataset']:<12} {scale:>5} {ps:>9} {r['ssim']:>8.4f} {r['images']:>6} "
            f"{r['seconds']:>8.1f}  {proto}"
        )
    skipped = report.get("skipped", [])
    if skipped:
        names = ", ".join(f"{s['dataset']}/{s['image']}" for s in skipped)
        rows.append(f"skipped {len(skipped)} unreadable image(s): {names}")
    return "\n".join(rows)
