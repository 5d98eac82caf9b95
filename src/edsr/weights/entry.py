"""What a weights entry is: the file, its model, its numbers and how it was made.

One frozen :class:`WeightsEntry` per file. It carries everything a checkpoint cannot say about
itself (above all ``res_scale``, which no tensor shape reveals), where to fetch it, how to
check it, and what it scores under which protocol. The model's size is not repeated here: an
entry names the preset (``edsr.models.PRESETS``) it was trained as.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edsr.models import PRESETS, Preset

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
    """One weight set: its model (a preset and scales), where to get it and how to check it.

    ``preset`` is a name in ``edsr.models.PRESETS``, or a :class:`~edsr.models.Preset` of its
    own for weights of a size no preset has. ``res_scale`` is given only where it differs from
    the preset's; left out, it is filled in from the preset when the entry is made.
    """

    name: str
    preset: str | Preset
    # Read from the preset when the entry is made, never given: shown by ``weights list --json``.
    arch: str = field(init=False)  # "edsr" or "mdsr"
    n_resblocks: int = field(init=False)
    n_feats: int = field(init=False)
    scales: tuple[int, ...]  # one scale for EDSR; the branches, in order, for MDSR
    filename: str  # name in the cache (the official name, hash suffix included)
    sha256: str  # full hex digest, or its leading hex digits (8 at least) where only that is known
    parameters: int  # trainable parameters (MeanShift constants excluded), as in the spec's table
    license: str
    source: str  # "official" or "trained here"
    urls: tuple[str, ...] = ()  # tried in order
    res_scale: float | None = None
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
        if isinstance(self.preset, str) and self.preset not in PRESETS:
            raise ValueError(
                f"{self.name}: preset must be one of {', '.join(PRESETS)}, not {self.preset!r}"
            )
        p = self.model_preset
        object.__setattr__(self, "arch", p.arch)
        object.__setattr__(self, "n_resblocks", p.n_resblocks)
        object.__setattr__(self, "n_feats", p.n_feats)
        if self.res_scale is None:
            object.__setattr__(self, "res_scale", p.res_scale)
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
    def model_preset(self) -> Preset:
        """The preset the weights belong to: architecture, blocks, features."""
        return PRESETS[self.preset] if isinstance(self.preset, str) else self.preset

    @property
    def full_hash(self) -> bool:
        return len(self.sha256) == 64

    @property
    def hash_check(self) -> str:
        """What a file is checked against, exactly: the official files' names carry only the
        first 8 hex digits of their SHA-256 (32 bits), all the authors publish."""
        if self.full_hash:
            return "the full SHA-256"
        n = len(self.sha256)
        return f"the first {n} hex digits ({4 * n} bits) of the SHA-256, all that is published"

    @property
    def scale(self) -> int | None:
        """The only scale of an EDSR entry; None for multi-scale MDSR."""
        return self.scales[0] if self.arch == "edsr" else None

    def config(self) -> dict[str, Any]:
        """The model config (as ``model.config()`` returns it) the weights belong to."""
        cfg: dict[str, Any] = {"arch": self.arch}
        if self.arch == "edsr":
            cfg["scale"] = self.scales[0]
        else:
            cfg["scales"] = list(self.scales)
        cfg.update(n_resblocks=self.n_resblocks, n_feats=self.n_feats)
        if self.arch == "edsr":
            cfg["res_scale"] = self.res_scale
        cfg.update(n_colors=self.n_colors, rgb_range=self.rgb_range)
        return cfg

    def metric(
        self, dataset: str, scale: int, *, self_ensemble: bool = False, degradation: str = "clean"
    ) -> Metric | None:
        """The row for ``dataset`` at ``scale`` on LR degraded by ``degradation`` (the
        paper's lossless LR by default)."""
        for m in self.metrics:
            _, _, deg = m.protocol.partition(", LR ")
            if (
                m.dataset == dataset
                and m.scale == scale
                and m.self_ensemble == self_ensemble
                and (deg or "clean") == degradation
            ):
                return m
        return None


def metrics_from_eval_json(
    path: str | os.PathLike[str], *, kind: str = "measured", self_ensemble: bool | None = None
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
        if report.get("precision", "fp32") != "fp32":  # scored as `upscale` runs it
            proto += f", {report['precision']}"
        if r.get("degradation", "clean") != "clean":  # edsr eval --degrade: JPEG LR and such
            proto += f", LR {r['degradation']}"
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
