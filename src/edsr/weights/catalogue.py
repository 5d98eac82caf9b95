"""The catalogue: every weight set this package knows, with its provenance.

The eight official checkpoints of the authors' release (EDSR-PyTorch), and our own trained
model, which ships inside the package (``src/edsr/assets/``): its entry has
``bundled=<file name>``, no URLs, the full SHA-256, a :class:`Training` record, and metrics read
from the ``edsr eval --json`` reports stored beside it, so no number in it is typed by hand.
``edsr.weights.registry`` serves these entries by name.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from edsr import defaults
from edsr.models import PRESETS
from edsr.weights.entry import (
    PROTOCOL_BENCHMARK,
    PROTOCOL_DIV2K,
    Metric,
    Training,
    WeightsEntry,
    metrics_from_eval_json,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found]

#: Where bundled weights (and their eval reports) live inside the installed package.
ASSETS = Path(__file__).resolve().parent.parent / "assets"

# --- the official checkpoints -------------------------------------------------------------

_SNU = "https://cv.snu.ac.kr/research/EDSR/models/"
# Mirror of the six EDSR files in torchSR's GitHub release v1.0.3. The addresses are verified
# against torchSR's own source (torchsr/models/edsr.py, its `url` table), read through the
# code index; nothing was downloaded from them (this machine has no internet). The spec says
# they hold the same keys. They are checked against the same official hash: if torchSR
# re-saved the files (new bytes), the check rejects them and the next address is tried, so a
# file is never trusted without a hash. No mirror of the two MDSR files is known.
_TORCHSR = "https://github.com/Coloquinte/torchSR/releases/download/v1.0.3/"
_LICENSE = "MIT (EDSR-PyTorch)"
_REF_DIV2K = "authors' release (EDSR-PyTorch), public checkpoints"
_REF_PAPER = "paper (Lim et al. 2017), Set5"

# Official DIV2K-validation PSNR of the public checkpoints, and the paper's Set5 numbers,
# both from EDSR_SPEC.md section 3. Only EDSR and MDSR have published Set5 numbers there.
_DIV2K = {
    "edsr-baseline": (34.61, 30.92, 28.95),
    "edsr": (35.03, 31.26, 29.25),
    "mdsr-baseline": (34.63, 30.94, 28.97),
    "mdsr": (34.92, 31.22, 29.24),
}
_SET5 = {"edsr": (38.11, 34.65, 32.46), "mdsr": (38.11, 34.66, 32.50)}


def _published(family: str, scales: Iterable[int]) -> tuple[Metric, ...]:
    out = []
    for s in scales:
        out.append(
            Metric(
                "DIV2K-val",
                s,
                _DIV2K[family][s - 2],
                None,
                PROTOCOL_DIV2K,
                "published",
                reference=_REF_DIV2K,
            )
        )
    for s in scales:
        if family in _SET5:
            out.append(
                Metric(
                    "Set5",
                    s,
                    _SET5[family][s - 2],
                    None,
                    PROTOCOL_BENCHMARK,
                    "published",
                    reference=_REF_PAPER,
                )
            )
    return tuple(out)


def _official_edsr(scale: int, baseline: bool, file_hash: str, parameters: int) -> WeightsEntry:
    family = "edsr-baseline" if baseline else "edsr"
    stem = f"edsr_baseline_x{scale}" if baseline else f"edsr_x{scale}"
    filename = f"{stem}-{file_hash}.pt"
    mirror = f"edsr64_x{scale}.pt" if baseline else f"edsr_x{scale}.pt"
    return WeightsEntry(
        name=f"{family}-x{scale}",
        preset=family,
        scales=(scale,),
        filename=filename,
        sha256=file_hash,
        parameters=parameters,
        license=_LICENSE,
        source="official",
        urls=(_SNU + filename, _TORCHSR + mirror),
        metrics=_published(family, (scale,)),
        description=f"{PRESETS[family].description}, x{scale}",
        aliases=(stem,),
    )


def _official_mdsr(baseline: bool, file_hash: str, parameters: int) -> WeightsEntry:
    family = "mdsr-baseline" if baseline else "mdsr"
    stem = family.replace("-", "_")
    filename = f"{stem}-{file_hash}.pt"
    return WeightsEntry(
        name=family,
        preset=family,
        scales=(2, 3, 4),
        filename=filename,
        sha256=file_hash,
        parameters=parameters,
        license=_LICENSE,
        source="official",
        urls=(_SNU + filename,),
        metrics=_published(family, (2, 3, 4)),
        description=PRESETS[family].description,
        aliases=(stem,),
    )


_OFFICIAL: tuple[WeightsEntry, ...] = (
    _official_edsr(2, True, "1bc95232", 1_369_859),
    _official_edsr(3, True, "abf2a44e", 1_554_499),
    _official_edsr(4, True, "6b446fab", 1_517_571),
    _official_edsr(2, False, "0edfb8a3", 40_729_603),
    _official_edsr(3, False, "ea3ef2c6", 43_680_003),
    _official_edsr(4, False, "4f62e9ef", 43_089_923),
    _official_mdsr(True, "a00cab12", 3_227_203),
    _official_mdsr(False, "4a78bedf", 7_953_987),
)

# --- trained here, bundled ------------------------------------------------------------------

_BUNDLED_NAME = "mdsr-baseline-291"
_BUNDLED_FILE = "mdsr_baseline_291-e2883ec0.safetensors"
_BUNDLED_SHA256 = "e2883ec06c26afd24792b0bb6d06bedc4ee154a71a55d1ca260d5356746fd9d9"
_BUNDLED_SIZE = 6464062
# Every stage's settings are in the recipe (the one place: `edsr train --recipe`); the entry
# reads its iterations from it. Wall times: stages 1-2, 4 and 5 from their log.csv (sum of
# logged seconds/iteration, stage 4 to the shipped step); stage 3 from its run directory
# (config.toml written to model.safetensors written, validation included).
_RECIPE = "mdsr-baseline-291"
_RECIPE_FILE = ASSETS / "recipes" / f"{_RECIPE}.toml"
_STAGE_WALL_S = (6153.0, 7194.0, 7986.0, 7131.4, 7311.1)
# The stage-2 file stage 3 started from; it was the bundled model until stage 3 replaced it
# (git history: commit ed133a8, src/edsr/assets/mdsr_baseline_291-ab9db885.safetensors).
_STAGE2_SHA256 = "ab9db885d27baf7199af7fa179a07c8a43f46ed40eee19fa53296e6a5b071445"
# The stage-3 file stage 4 started from, the bundled model until stage 4 replaced it (git
# history: commit ecde893, src/edsr/assets/mdsr_baseline_291-2c89d043.safetensors).
_STAGE3_SHA256 = "2c89d043fced0bde7870c2ce394392172e798f38266548aa5471daa6fc05e7fa"
# The stage-4 file stage 5 started from, the bundled model until stage 5 replaced it (git
# history: commit 52a993d, src/edsr/assets/mdsr_baseline_291-40d95979.safetensors).
_STAGE4_SHA256 = "40d9597905ec3755022ec673c1a489763a3065a010b3241ddedac16ba974d98b"


def _recipe_iterations(path: Path) -> tuple[int, ...]:
    """Each stage's iterations, as the recipe file gives them."""
    with open(path, "rb") as f:
        return tuple(int(stage["iters"]) for stage in tomllib.load(f)["stage"])


_STAGE_ITERS = _recipe_iterations(_RECIPE_FILE)
# The eval reports ``edsr eval --json`` wrote for the bundled file: the registry's numbers are
# read from them, never typed in.
BUNDLED_EVALS = (
    "mdsr_baseline_291.eval.json",
    "mdsr_baseline_291.eval-ensemble.json",  # Set5, Set14
    "mdsr_baseline_291.eval-ensemble-b100.json",
)
_DATA_291 = (
    "T91 (91 images) + BSD200 (200 images): the classic 291-image set, HR PNGs; "
    "LR made by MATLAB bicubic"
)
_HARDWARE = (
    "a 2-core AMD EPYC CPU (AVX-512 BF16, no AMX), bf16 autocast channels-last, for stages 3-5 "
    "and a 2-core Intel Xeon CPU (AVX-512, no AMX/AVX-512 BF16), fp32 channels-last, for "
    "stages 1-2; 24 GiB and torch 2.13.0+cpu on both"
)


# How the runs of the recipe's stages went (``edsr weights info``, the README): the facts the
# recipe file cannot hold.
_NOTES_291 = (
    f"The recipe, src/edsr/{_RECIPE_FILE.relative_to(ASSETS.parent).as_posix()}, holds every "
    f"stage's settings (`edsr train --recipe {_RECIPE} --dry-run` lists them); its data: "
    f"`edsr data download T91 BSD200 Set5`. Its {len(_STAGE_ITERS)} stages ran as follows. "
    f"Stage 1, an EDSR baseline x2 on T91: {_STAGE_ITERS[0]:,} iterations, "
    f"{_STAGE_WALL_S[0] / 3600:.1f} h. Stage 2, the MDSR started from it (`init_from` maps "
    "EDSR keys to MDSR's: body, head, final conv and x2 upsampler; the x3/x4 upsamplers and "
    f"pre-process blocks from scratch): {_STAGE_ITERS[1]:,} iterations, "
    f"{_STAGE_WALL_S[1] / 3600:.1f} h, begun as `--iters 3400 --lr-decay-every 2550`, stopped "
    "with Ctrl-C at steps 1,552 and 2,069 and resumed with the final values before the old "
    "ones took effect (batches and learning rate are functions of the step, so it equals a "
    f"straight run). Its model in fp16 (SHA-256 {_STAGE2_SHA256}) started stage 3: "
    f"{_STAGE_ITERS[2]:,} iterations, {_STAGE_WALL_S[2] / 3600:.1f} h in bf16 (2.6x fp32 on "
    "that CPU, `python benchmarks/bench_train.py`). Its model in fp16 (SHA-256 "
    f"{_STAGE3_SHA256}) started stage 4, begun as `--iters 60000 --lr-decay-every 15000`, "
    "interrupted twice and resumed from its checkpoints at steps 1,250 and 1,380 with the "
    "final values, before the old ones took effect; it ran to step 8,000, and the weights it "
    "handed on (the bundled model until stage 5) are its best on Set5, the validation set: "
    f"step {_STAGE_ITERS[3]:,} (mean of x2/x3/x4 34.17 dB; 34.16 at step 8,000), reached "
    f"after {_STAGE_WALL_S[3] / 3600:.1f} h, stored in fp16, where the recipe's fourth stage "
    "stops. "
    f"That model (SHA-256 {_STAGE4_SHA256}) started stage 5, 64 px LR patches (images under "
    "64 px at a scale left out of it: 7 at x2, 51 at x3, 72 at x4) and a cosine rate from "
    f"2e-5 to 1e-6: {_STAGE_ITERS[4]:,} iterations, {_STAGE_WALL_S[4] / 3600:.1f} h in bf16, "
    "stopped with Ctrl-C at step 510 and resumed from there; its last step ships. Against "
    "stage 4, plain PSNR summed over Set5, Set14, B100 and Urban100 at x2/x3/x4 rose "
    "0.010 dB: B100 +0.012/+0.010/+0.007 (82-85 of 100 images better at each scale), "
    "Urban100 +0.015/+0.006/+0.001, Set14 within 0.004, Set5 -0.012/-0.016/-0.007."
)


def _measured(reports: Iterable[str]) -> tuple[Metric, ...]:
    """The rows of the eval reports beside the bundled file, those present, in order."""
    metrics: tuple[Metric, ...] = ()
    for name in reports:
        if (ASSETS / name).is_file():
            metrics += metrics_from_eval_json(ASSETS / name)
    return metrics


def _bundled(
    name: str,
    file: str,
    sha256: str,
    size: int,
    evals: tuple[str, ...],
    description: str,
    training: Training,
    aliases: tuple[str, ...],
) -> WeightsEntry:
    """A model trained here and shipped in the package: an MDSR baseline x2/x3/x4 in fp16,
    its metrics read from the eval reports beside it."""
    return WeightsEntry(
        name=name,
        preset="mdsr-baseline",
        scales=(2, 3, 4),
        filename=file,
        sha256=sha256,
        parameters=3_227_203,
        size=size,
        license="MIT (this project)",
        source="trained here",
        bundled=file,
        metrics=_measured(evals),
        description=description,
        training=training,
        aliases=aliases,
    )


def _bundled_mdsr() -> WeightsEntry:
    return _bundled(
        _BUNDLED_NAME,
        _BUNDLED_FILE,
        _BUNDLED_SHA256,
        _BUNDLED_SIZE,
        BUNDLED_EVALS,
        "MDSR baseline trained here on the 291-image set (fp16); the default model",
        Training(
            command=f"edsr train --recipe {_RECIPE}",
            iterations=sum(_STAGE_ITERS),
            wall_time_s=sum(_STAGE_WALL_S),
            hardware=_HARDWARE,
            data=_DATA_291,
            notes=_NOTES_291,
        ),
        ("default", "bundled"),
    )


# --- the JPEG-aware model, bundled: what the default route gives a JPEG input ----------------

_JPEG_FILE = "mdsr_baseline_291_jpeg-4574f011.safetensors"
_JPEG_SHA256 = "4574f01110109d7a294df786cf5fd98e51e7b191f9dfdb890904698c1cb561d8"
_JPEG_SIZE = 6464062
# The logged seconds/iteration of its run summed over its steps (log.csv): 1.01 h, partly beside
# other jobs on the machine (quiet, 0.42-0.45 s/iteration).
_JPEG_WALL_S = 3648.1
#: Its eval reports: lossless LR first (the rows a plain lookup finds), then JPEG LR.
JPEG_EVALS = ("mdsr_baseline_291_jpeg.eval.json", "mdsr_baseline_291_jpeg.eval-jpeg.json")
# What a JPEG model's recipe may start from: a bundled model, by its full SHA-256.
_STARTS = {_BUNDLED_NAME: _BUNDLED_SHA256, defaults.JPEG_MODEL: _JPEG_SHA256}


def _trained_on_jpeg(
    name: str,
    file: str,
    sha256: str,
    size: int,
    evals: tuple[str, ...],
    wall_time_s: float,
    description: str,
    notes: str,
    alias: str,
) -> WeightsEntry:
    """A bundled MDSR fine-tuned here for JPEG inputs by the recipe of its own name, which says
    what it started from."""
    recipe = ASSETS / "recipes" / f"{name}.toml"
    with open(recipe, "rb") as f:
        (stage,) = tomllib.load(f)["stage"]
    init = stage["init"]
    training = Training(
        command=f"edsr train --recipe {name}",
        iterations=int(stage["iters"]),
        wall_time_s=wall_time_s,
        hardware="a 2-core Intel Xeon CPU (AMX), bf16 autocast channels-last, 24 GiB, "
        "torch 2.13.0+cpu",
        data=_DATA_291 + "; each LR patch degraded as the recipe's `degrade` says",
        notes=f"Started from {init} (SHA-256 {_STARTS[init]}); the recipe, "
        f"src/edsr/assets/recipes/{name}.toml, holds its settings: {notes}",
    )
    return _bundled(name, file, sha256, size, evals, description, training, (alias,))


def _bundled_jpeg() -> WeightsEntry:
    return _trained_on_jpeg(
        defaults.JPEG_MODEL,
        _JPEG_FILE,
        _JPEG_SHA256,
        _JPEG_SIZE,
        JPEG_EVALS,
        _JPEG_WALL_S,
        "the bundled MDSR fine-tuned for JPEG inputs of every quality (fp16); what a JPEG of "
        "unknown quality gets (--degradation jpeg), and the start of the middle band's model",
        "each LR patch "
        "left lossless (10%) or saved by Pillow as JPEG with 4:2:0 (70%) or 4:4:4 (20%) "
        "chroma at a quality drawn from 30-97, the HR patch clean. The run was begun with "
        "8,000 iterations, stopped with Ctrl-C at step 1,577 and resumed with the recipe's "
        "5,000 (the cosine rate is a function of step / iters); its last step ships. Set5 "
        "with LR saved at JPEG q75 (its validation) rose from 32.08/29.66/27.98 dB at "
        "x2/x3/x4 (the clean model) to 33.59/30.73/28.84. On lossless LR it is 0.4-1.8 dB "
        "below the clean model, so the default route gives it JPEGs only; the table for "
        "both on lossless and JPEG LR is docs/jpeg/table.md (scripts/jpeg_table.py).",
        "jpeg",
    )


_HQ_NAME = "mdsr-baseline-291-jpeg-hq"
_HQ_FILE = "mdsr_baseline_291_jpeg_hq-21221498.safetensors"
_HQ_SHA256 = "212214982e76a7d86fc28ef35630d1d8031bf0e49e06ae16b398d0364ea27258"
_HQ_SIZE = 6464062
# The logged seconds/iteration of its run summed over its steps (log.csv): 0.48 h, most of it
# beside other jobs on the machine (quiet, 0.37-0.40 s/iteration: about 10 minutes).
_HQ_WALL_S = 1717.6
#: Its eval reports: lossless LR first, then JPEG q90 LR.
HQ_EVALS = ("mdsr_baseline_291_jpeg_hq.eval.json", "mdsr_baseline_291_jpeg_hq.eval-jpeg.json")


def _bundled_jpeg_hq() -> WeightsEntry:
    return _trained_on_jpeg(
        _HQ_NAME,
        _HQ_FILE,
        _HQ_SHA256,
        _HQ_SIZE,
        HQ_EVALS,
        _HQ_WALL_S,
        "the bundled MDSR fine-tuned for high-quality JPEG inputs (q80-96, fp16); the default "
        f"route's model for JPEGs at quality {defaults.route_band(_HQ_NAME)}",
        "each LR patch saved by Pillow as JPEG with 4:2:0 (70%) or 4:4:4 (30%) chroma at a "
        "quality drawn from 80-96, the HR patch clean; its last step ships. Set5 with LR saved "
        "at JPEG q90 (its validation) rose from 34.51/31.65/29.71 dB at x2/x3/x4 (the clean "
        "model) to 35.34/32.21/30.12. The route's bounds between it, the clean model and "
        f"{_MQ_NAME} are measured in docs/jpeg/table.md (scripts/jpeg_table.py).",
        "jpeg-hq",
    )


# --- the middle band's model: the JPEG model fine-tuned further on q55-85 -------------------

_MQ_NAME = "mdsr-baseline-291-jpeg-mq"
_MQ_FILE = "mdsr_baseline_291_jpeg_mq-d7ae932f.safetensors"
_MQ_SHA256 = "d7ae932fb295044ca1d06e5a7f66f4b3f08a6a69e36bb08e377de720eb4487b4"
_MQ_SIZE = 6464062
_MQ_WALL_S = 1216.1
MQ_EVALS = ("mdsr_baseline_291_jpeg_mq.eval.json", "mdsr_baseline_291_jpeg_mq.eval-jpeg.json")


def _bundled_jpeg_mq() -> WeightsEntry:
    return _trained_on_jpeg(
        _MQ_NAME,
        _MQ_FILE,
        _MQ_SHA256,
        _MQ_SIZE,
        MQ_EVALS,
        _MQ_WALL_S,
        "the JPEG model fine-tuned further on JPEG inputs at q55-85 (fp16); the default route's "
        f"model for JPEGs at quality {defaults.route_band(_MQ_NAME)}",
        "each LR patch saved by Pillow as JPEG with 4:2:0 (75%) or 4:4:4 (25%) chroma at a "
        "quality drawn from 55-85, the HR patch clean, at a rate from 3e-5 (a higher one first "
        "undoes the trained model); its last step ships. Set5 with LR saved at JPEG q75 (its "
        f"validation) rose from 33.59/30.73/28.84 dB at x2/x3/x4 ({defaults.JPEG_MODEL}) to "
        "33.65/30.80/28.90. The route's bounds between it, the high-quality model and the clean "
        "one are measured in docs/jpeg/table.md (scripts/jpeg_table.py).",
        "jpeg-mq",
    )


#: Every entry, in display order: the official files, then the bundled models.
CATALOGUE: tuple[WeightsEntry, ...] = (
    *_OFFICIAL,
    _bundled_mdsr(),
    _bundled_jpeg(),
    _bundled_jpeg_mq(),
    _bundled_jpeg_hq(),
)

#: The model used when no model is named: it ships inside the package, so it needs no network.
DEFAULT = _BUNDLED_NAME
