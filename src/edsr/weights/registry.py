"""The weights registry: every known weight set, with its settings, addresses, hash and numbers.

One frozen :class:`WeightsEntry` per file. It carries everything a checkpoint cannot say about
itself (above all ``res_scale``, which no tensor shape reveals), where to fetch it, how to
check it, and what it scores under which protocol. ``edsr weights list``, ``--model NAME`` and
the README's model table (``scripts/readme_models.py``) are all generated from here.

Our own trained model ships inside the package (``src/edsr/assets/``): its entry has
``bundled=<file name>``, no URLs, the full SHA-256, a :class:`Training` record, and metrics read
from the ``edsr eval --json`` reports stored beside it, so no number in it is typed by hand.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edsr.errors import EdsrError

ASSETS = Path(__file__).resolve().parent.parent / "assets"

PROTOCOL_DIV2K = "DIV2K 801-900, RGB, shave scale+6"
PROTOCOL_BENCHMARK = "Y (BT.601), shave scale"

_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class Metric:
    """One measured or published number, with the protocol it was measured under."""

    dataset: str  # "DIV2K-val", "Set5", "Set14", "B100", "Urban100", ...
    scale: int
    psnr: float
    ssim: float | None = None
    protocol: str = PROTOCOL_BENCHMARK
    # "published": copied from the authors (paper or release notes), not re-measured here;
    # "measured": produced by ``edsr eval --json`` in this project.
    kind: str = "published"
    self_ensemble: bool = False
    reference: str = ""


@dataclass(frozen=True)
class Training:
    """How a "trained here" weight set was made, precisely enough to run it again."""

    command: str
    iterations: int
    wall_time_s: float
    hardware: str
    data: str = ""
    notes: str = ""


@dataclass(frozen=True)
class WeightsEntry:
    """One weight set: architecture, every hyperparameter, where to get it and how to check it."""

    name: str
    arch: str  # "edsr" or "mdsr"
    scales: tuple[int, ...]  # one scale for EDSR; the branches, in order, for MDSR
    n_resblocks: int
    n_feats: int
    res_scale: float
    filename: str  # name in the cache (the official name, hash suffix included)
    sha256: str  # full hex digest, or its leading hex digits (8 at least) where only that is known
    parameters: int  # trainable parameters (MeanShift constants excluded), as in the spec's table
    license: str
    source: str  # "official" or "trained here"
    urls: tuple[str, ...] = ()  # tried in order
    size: int | None = None  # bytes, when known
    n_colors: int = 3
    rgb_range: float = 255.0
    metrics: tuple[Metric, ...] = ()
    description: str = ""
    bundled: str | None = None  # file name under src/edsr/assets/ when it ships in the package
    training: Training | None = None
    aliases: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        # Entries are hand-written; catch a typo at import time rather than at download time.
        if self.arch not in ("edsr", "mdsr"):
            raise ValueError(f"{self.name}: arch must be 'edsr' or 'mdsr', not {self.arch!r}")
        if self.arch == "edsr" and len(self.scales) != 1:
            raise ValueError(f"{self.name}: an EDSR entry has exactly one scale")
        if self.arch == "mdsr" and self.res_scale != 1.0:
            raise ValueError(f"{self.name}: MDSR has no residual scaling; res_scale must be 1.0")
        if not (8 <= len(self.sha256) <= 64 and _HEX.match(self.sha256)):
            raise ValueError(f"{self.name}: sha256 must be 8 to 64 lowercase hex digits")
        if self.source not in ("official", "trained here"):
            raise ValueError(f"{self.name}: source must be 'official' or 'trained here'")
        if self.source == "trained here" and self.training is None:
            raise ValueError(f"{self.name}: a 'trained here' entry needs its Training record")
        if not self.urls and self.bundled is None:
            raise ValueError(f"{self.name}: give download urls or a bundled file")

    @property
    def full_hash(self) -> bool:
        return len(self.sha256) == 64

    @property
    def scale(self) -> int | None:
        """The only scale of an EDSR entry; None for multi-scale MDSR."""
        return self.scales[0] if self.arch == "edsr" else None

    def config(self) -> dict:
        """The model config (as ``model.config()`` returns it) the weights belong to."""
        cfg: dict = {"arch": self.arch}
        if self.arch == "edsr":
            cfg["scale"] = self.scales[0]
        else:
            cfg["scales"] = list(self.scales)
        cfg.update(n_resblocks=self.n_resblocks, n_feats=self.n_feats)
        if self.arch == "edsr":
            cfg["res_scale"] = self.res_scale
        cfg.update(n_colors=self.n_colors, rgb_range=self.rgb_range)
        return cfg

    def metric(self, dataset: str, scale: int, *, self_ensemble: bool = False) -> Metric | None:
        for m in self.metrics:
            if m.dataset == dataset and m.scale == scale and m.self_ensemble == self_ensemble:
                return m
        return None


def metrics_from_eval_json(
    path: str | os.PathLike, *, kind: str = "measured", self_ensemble: bool | None = None
) -> tuple[Metric, ...]:
    """Read the rows of an ``edsr eval --json`` report as registry metrics.

    The protocol string is rebuilt from each row's own protocol record, so the registry states
    exactly what was measured. ``self_ensemble`` overrides what the report says, for reports
    written before the report recorded it.
    """
    report = json.loads(Path(path).read_text())
    out = []
    for r in report["results"]:
        p = r.get("protocol", {})
        channel = "Y (BT.601)" if p.get("y_channel", True) else "RGB"
        proto = f"{channel}, shave {p.get('shave', r['scale'])}"
        if p.get("gray_as_rgb"):
            proto += ", gray as RGB"
        ens = r.get("self_ensemble", report.get("self_ensemble", False))
        out.append(
            Metric(
                dataset=r["dataset"],
                scale=int(r["scale"]),
                psnr=round(float(r["psnr"]), 4),
                ssim=round(float(r["ssim"]), 4) if r.get("ssim") is not None else None,
                protocol=proto,
                kind=kind,
                self_ensemble=bool(ens if self_ensemble is None else self_ensemble),
                reference=Path(path).name,
            )
        )
    return tuple(out)


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
    blocks, feats, res = (16, 64, 1.0) if baseline else (32, 256, 0.1)
    return WeightsEntry(
        name=f"{family}-x{scale}",
        arch="edsr",
        scales=(scale,),
        n_resblocks=blocks,
        n_feats=feats,
        res_scale=res,
        filename=filename,
        sha256=file_hash,
        parameters=parameters,
        license=_LICENSE,
        source="official",
        urls=(_SNU + filename, _TORCHSR + mirror),
        metrics=_published(family, (scale,)),
        description=f"EDSR{' baseline' if baseline else ''} x{scale}, {blocks}x{feats}"
        + ("" if baseline else ", res_scale 0.1"),
        aliases=(stem,),
    )


def _official_mdsr(baseline: bool, file_hash: str, parameters: int) -> WeightsEntry:
    stem = "mdsr_baseline" if baseline else "mdsr"
    filename = f"{stem}-{file_hash}.pt"
    blocks = 16 if baseline else 80
    return WeightsEntry(
        name="mdsr-baseline" if baseline else "mdsr",
        arch="mdsr",
        scales=(2, 3, 4),
        n_resblocks=blocks,
        n_feats=64,
        res_scale=1.0,
        filename=filename,
        sha256=file_hash,
        parameters=parameters,
        license=_LICENSE,
        source="official",
        urls=(_SNU + filename,),
        metrics=_published("mdsr-baseline" if baseline else "mdsr", (2, 3, 4)),
        description=f"MDSR{' baseline' if baseline else ''}, x2/x3/x4 in one, {blocks}x64",
        aliases=(stem,),
    )


_BUILTIN: tuple[WeightsEntry, ...] = (
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
_BUNDLED_FILE = "mdsr_baseline_291-2c89d043.safetensors"
_BUNDLED_SHA256 = "2c89d043fced0bde7870c2ce394392172e798f38266548aa5471daa6fc05e7fa"
_BUNDLED_SIZE = 6464062
# Stages 1-2 from their log.csv (sum of logged seconds/iteration); stage 3 from its run
# directory (config.toml written to model.safetensors written, validation included).
_STAGE1_ITERS, _STAGE1_WALL_S = 2000, 6153.0
_STAGE2_ITERS, _STAGE2_WALL_S = 3600, 7194.0
_STAGE3_ITERS, _STAGE3_WALL_S = 12000, 7986.0
# The stage-2 file stage 3 started from; it was the bundled model until stage 3 replaced it
# (git history: commit ed133a8, src/edsr/assets/mdsr_baseline_291-ab9db885.safetensors).
_STAGE2_SHA256 = "ab9db885d27baf7199af7fa179a07c8a43f46ed40eee19fa53296e6a5b071445"
# The eval reports ``edsr eval --json`` wrote for the bundled file: the registry's numbers are
# read from them, never typed in.
BUNDLED_EVALS = ("mdsr_baseline_291.eval.json", "mdsr_baseline_291.eval-ensemble.json")
_DATA_291 = "T91 (91 images) + BSD200 (200 images): the classic 291-image set, HR PNGs; LR made by MATLAB bicubic"
_HARDWARE = (
    "a 2-core AMD EPYC CPU (AVX-512 BF16, no AMX), bf16 autocast channels-last, for stage 3 and "
    "a 2-core Intel Xeon CPU (AVX-512, no AMX/AVX-512 BF16), fp32 channels-last, for stages 1-2; "
    "24 GiB and torch 2.13.0+cpu on both"
)


def _bundled_mdsr() -> WeightsEntry:
    metrics: tuple[Metric, ...] = ()
    for name in BUNDLED_EVALS:
        if (ASSETS / name).is_file():
            metrics += metrics_from_eval_json(ASSETS / name)
    return WeightsEntry(
        name=_BUNDLED_NAME,
        arch="mdsr",
        scales=(2, 3, 4),
        n_resblocks=16,
        n_feats=64,
        res_scale=1.0,
        filename=_BUNDLED_FILE,
        sha256=_BUNDLED_SHA256,
        parameters=3_227_203,
        size=_BUNDLED_SIZE,
        license="MIT (this project)",
        source="trained here",
        bundled=_BUNDLED_FILE,
        metrics=metrics,
        description="MDSR baseline trained here on the 291-image set (fp16); the default model",
        training=Training(
            command=(
                "edsr train --preset mdsr-baseline --scale 2 3 4 --train T91 BSD200 --val Set5 "
                "--init-from mdsr_baseline_291-ab9db885.safetensors --iters 12000 "
                "--lr-decay-every 3000 --seed 1 --precision bf16 --val-every 500 "
                "--checkpoint-every 250 --out runs/mdsr-baseline-291"
            ),
            iterations=_STAGE1_ITERS + _STAGE2_ITERS + _STAGE3_ITERS,
            wall_time_s=_STAGE1_WALL_S + _STAGE2_WALL_S + _STAGE3_WALL_S,
            hardware=_HARDWARE,
            data=_DATA_291,
            notes=(
                f"Three stages, all counted above; the command is the last. Stage 1, an EDSR baseline "
                f"x2 ({_STAGE1_ITERS:,} iterations, {_STAGE1_WALL_S / 3600:.1f} h): `edsr train --preset "
                "edsr-baseline --scale 2 --train T91 --val Set5 --iters 2000 --out runs/edsr-baseline-x2`. "
                "Stage 2, the MDSR started from it (`--init-from` maps EDSR keys to MDSR's: body, head, "
                "final conv and x2 upsampler; the x3/x4 upsamplers and pre-process blocks from scratch), "
                f"{_STAGE2_ITERS:,} iterations, {_STAGE2_WALL_S / 3600:.1f} h: `edsr train --preset "
                "mdsr-baseline --scale 2 3 4 --train T91 BSD200 --val Set5 --init-from "
                "runs/edsr-baseline-x2/model.safetensors --iters 3600 --lr-decay-every 2100 "
                "--val-every 500 --checkpoint-every 250 --out runs/mdsr-baseline-291-stage2` (begun as "
                "`--iters 3400 --lr-decay-every 2550`, stopped with Ctrl-C at steps 1,552 and 2,069 and "
                "resumed with the final values before the old ones took effect; batches and learning "
                "rate are functions of the step, so it equals a straight run). Its model, stored in fp16 by "
                "`python scripts/bundle_model.py` "
                f"(SHA-256 {_STAGE2_SHA256}, its Set5 curve in docs/training/) starts stage 3, "
                "every tensor copied, with a fresh Adam state, a new seed, learning rate 1e-4 halved "
                f"every 3,000 updates ({_STAGE3_ITERS:,} iterations, {_STAGE3_WALL_S / 3600:.1f} h, "
                "bf16: 2.6x fp32 on that CPU, `python benchmarks/bench_train.py`). The shipped "
                "weights are the last ones, not the best on Set5, stored in fp16."
            ),
        ),
        aliases=("default", "bundled"),
    )


_BUILTIN += (_bundled_mdsr(),)

#: The model used when no ``--model`` is given: ships inside the package, so it needs no network.
DEFAULT = _BUNDLED_NAME

#: name -> entry, in display order. Mutable on purpose: :func:`register` adds entries (tests,
#: or a user's own weights) without editing this file.
REGISTRY: dict[str, WeightsEntry] = {e.name: e for e in _BUILTIN}


def default_model() -> str:
    """Name of the bundled default model (what ``--model`` means when it is left out).

    ``DEFAULT`` when it is registered, else the first bundled entry (a build that registers
    its own), else a user error.
    """
    if DEFAULT and DEFAULT in REGISTRY:
        return DEFAULT
    bundled = [e.name for e in REGISTRY.values() if e.bundled]
    if not bundled:
        raise EdsrError(
            "no model given and this installation has no bundled model; pass --model with "
            "a checkpoint file or a weights name (see 'edsr weights list')"
        )
    return bundled[0]


def register(entry: WeightsEntry, *, replace: bool = False) -> WeightsEntry:
    """Add ``entry`` so that ``--model NAME`` and ``edsr weights`` know it."""
    if entry.name in REGISTRY and not replace:
        raise EdsrError(f"a weights entry named {entry.name!r} already exists")
    REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def _key(text: str) -> str:
    return text.strip().lower().replace("_", "-")


def find_entry(name: str) -> WeightsEntry | None:
    """The entry called ``name`` (case and ``_``/``-`` ignored), or whose file name it is."""
    k = _key(name)
    for e in REGISTRY.values():
        if k == _key(e.name) or k == _key(e.filename) or k in (_key(a) for a in e.aliases):
            return e
    return None


def get_entry(name: str | WeightsEntry) -> WeightsEntry:
    """Like :func:`find_entry`, but an unknown name is a user error naming the close matches."""
    if isinstance(name, WeightsEntry):
        return name
    entry = find_entry(name)
    if entry is None:
        close = difflib.get_close_matches(_key(name), list(REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        known = ", ".join(REGISTRY)
        raise EdsrError(f"unknown weights {name!r}; {hint}known: {known} (see 'edsr weights list')")
    return entry


def list_entries() -> list[WeightsEntry]:
    return list(REGISTRY.values())


# --- tables --------------------------------------------------------------------------------


def _scales_text(e: WeightsEntry) -> str:
    return "/".join(f"x{s}" for s in e.scales)


def _metric_text(e: WeightsEntry, dataset: str) -> str:
    vals = [e.metric(dataset, s) for s in e.scales]
    if not any(vals):
        return "-"
    return " / ".join(f"{m.psnr:.2f}" if m else "-" for m in vals)


def _size_text(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.1f} MiB"


def format_table(
    entries: Iterable[WeightsEntry] | None = None, *, local: Mapping[str, str] | None = None
) -> str:
    """The plain-text table ``edsr weights list`` prints; ``local`` adds a column (name -> text)."""
    entries = list(REGISTRY.values()) if entries is None else list(entries)
    head = ["name", "arch", "scales", "BxF", "res_scale", "params", "size", "source", "DIV2K PSNR", "Set5 PSNR"]
    if local is not None:
        head.append("local")
    rows = [head]
    for e in entries:
        row = [
            e.name,
            e.arch,
            _scales_text(e),
            f"{e.n_resblocks}x{e.n_feats}",
            f"{e.res_scale:.1f}",
            f"{e.parameters / 1e6:.2f}M",
            _size_text(e.size),
            e.source,
            _metric_text(e, "DIV2K-val"),
            _metric_text(e, "Set5"),
        ]
        if local is not None:
            row.append(local.get(e.name, "-"))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(
        f"PSNR in dB. DIV2K: {PROTOCOL_DIV2K}; Set5: {PROTOCOL_BENCHMARK}; official rows published, "
        "trained-here rows measured. 'edsr weights info NAME' for the rest"
    )
    return "\n".join(lines)


def readme_table(entries: Iterable[WeightsEntry] | None = None) -> str:
    """The Markdown table between the README's ``<!-- models:start/end -->`` markers."""
    entries = list(REGISTRY.values()) if entries is None else list(entries)
    lines = [
        "| `--model` | architecture | res_scale | parameters | DIV2K-val PSNR | Set5 PSNR "
        "| source | license |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        arch = f"{e.arch.upper()} {e.n_resblocks}x{e.n_feats}, {_scales_text(e)}"
        source = e.source
        if e.training is not None:
            source += f" ({e.training.iterations:,} it)"
        psnr = f"{_metric_text(e, 'DIV2K-val')} | {_metric_text(e, 'Set5')}"
        lines.append(
            f"| `{e.name}` | {arch} | {e.res_scale:.1f} | {e.parameters:,} | {psnr} "
            f"| {source} | {e.license} |"
        )
    lines.append("")
    lines.append(
        f"PSNR in dB, x2 / x3 / x4. DIV2K-val: {PROTOCOL_DIV2K}; Set5: {PROTOCOL_BENCHMARK}. "
        "Official entries show the authors' published numbers (Set5: the paper's, for EDSR and "
        "MDSR), not re-measured here; entries trained here show `edsr eval --json` results. "
        "Generated from `edsr.weights.registry` by `python scripts/readme_models.py`."
    )
    for e in entries:
        if e.training is not None and e.metrics:
            lines += ["", metrics_table(e)]
    return "\n".join(lines)


def metrics_table(e: WeightsEntry) -> str:
    """Markdown table of a trained-here entry's measured PSNR / SSIM, plain and self-ensemble."""
    datasets = list(dict.fromkeys(m.dataset for m in e.metrics))
    cols = [(s, False) for s in e.scales] + [(s, True) for s in e.scales if e.metric(datasets[0], s, self_ensemble=True)]
    head = " | ".join(f"x{s}{'+' if ens else ''}" for s, ens in cols)
    protocols = {m.protocol.replace(f"shave {m.scale}", "shave scale") for m in e.metrics}
    protocol = protocols.pop() if len(protocols) == 1 else "protocol per row in the registry"
    lines = [
        f"`{e.name}`, measured by `edsr eval --json` (PSNR dB / SSIM; {protocol}; "
        "`+`: self-ensemble):",
        "",
        f"| data set | {head} |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for d in datasets:
        cells = []
        for s, ens in cols:
            m = e.metric(d, s, self_ensemble=ens)
            cells.append("-" if m is None else f"{m.psnr:.2f} / {m.ssim:.4f}" if m.ssim is not None else f"{m.psnr:.2f}")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    t = e.training
    assert t is not None
    lines += [
        "",
        f"Trained with `{t.command}` ({t.iterations:,} iterations, {t.wall_time_s / 3600:.1f} h on {t.hardware}).",
    ]
    if t.notes:
        lines.append(t.notes)
    return "\n".join(lines)


def describe(entry: WeightsEntry) -> str:
    """Every field of ``entry`` as ``edsr weights info`` prints it."""
    e = entry
    lines = [
        f"name:        {e.name}" + (f" (also {', '.join(e.aliases)})" if e.aliases else ""),
        f"description: {e.description}" if e.description else "",
        f"config:      {json.dumps(e.config())}",
        f"parameters:  {e.parameters:,}",
        f"file:        {e.filename}" + (f" (bundled: assets/{e.bundled})" if e.bundled else ""),
        f"size:        {'unknown' if e.size is None else f'{e.size:,} bytes'}",
        f"sha256:      {e.sha256}"
        + ("" if e.full_hash else " (leading digits; the full digest must start with them)"),
        f"license:     {e.license}",
        f"source:      {e.source}",
    ]
    if e.training is not None:
        t = e.training
        lines += [
            f"command:     {t.command}",
            f"iterations:  {t.iterations:,}",
            f"wall time:   {t.wall_time_s / 3600:.2f} h",
            f"hardware:    {t.hardware}",
        ]
        if t.data:
            lines.append(f"data:        {t.data}")
        if t.notes:
            lines.append(f"notes:       {t.notes}")
    for i, u in enumerate(e.urls):
        lines.append(f"{'urls:' if i == 0 else '':<13}{u}")
    for m in e.metrics:
        ssim = f" / {m.ssim:.4f}" if m.ssim is not None else ""
        ens = " (self-ensemble)" if m.self_ensemble else ""
        lines.append(
            f"{'metrics:' if m is e.metrics[0] else '':<13}{m.dataset} x{m.scale}{ens}: "
            f"{m.psnr:.2f} dB{ssim}  [{m.kind}; {m.protocol}]"
        )
    return "\n".join(line for line in lines if line)
