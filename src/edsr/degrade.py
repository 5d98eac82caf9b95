"""Degradations: what happens to an LR image after it is made, as one spec every door reads.

The paper's LR is MATLAB bicubic kept lossless (``clean``). The images people upscale are
mostly JPEGs, so a spec can also say ``jpeg:Q`` (the LR saved by Pillow as a JPEG at quality
``Q``, 4:2:0 chroma as Pillow writes by default, and decoded again), ``jpeg:QMIN-QMAX`` (a
quality drawn uniformly from that range, each end included) and weighted mixtures
(``clean:0.3,jpeg:40-95:0.7``: each term ``kind[:quality][:weight]``, the weights relative).

Training draws a term and a quality per patch, from a generator the caller seeds with
(seed, step), so a resumed run sees the same patches as a straight one; evaluation draws per
image from (image name, scale), so a score is the same on every run. The decoded-LR cache
holds the clean LR only: a degradation is applied to each patch or image as it is used, so
no cache entry depends on the spec.

JPEG quality is read back from a file's quantization tables (:func:`estimate_jpeg_quality`):
Pillow, libjpeg and most cameras scale the standard tables of the JPEG specification (Annex K)
by the IJG rule, so the nearest scaled table names the quality the file was saved at.
"""

from __future__ import annotations

import functools
import io
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from edsr.errors import EdsrError

__all__ = [
    "CLEAN",
    "Degradation",
    "Draw",
    "Term",
    "estimate_jpeg_quality",
    "jpeg_quality",
    "jpeg_roundtrip",
    "parse_degradation",
]

#: The kinds a term may have.
KINDS = ("clean", "jpeg", "jpeg444")
#: Pillow's ``subsampling`` for each JPEG kind: 2 is 4:2:0 (its default), 0 is 4:4:4.
_SUBSAMPLING = {"jpeg": 2, "jpeg444": 0}
_HELP = "give e.g. clean, jpeg:75, jpeg:40-95 or clean:0.3,jpeg:40-95:0.7"


@dataclass(frozen=True)
class Term:
    """One way of degrading: ``kind``, a quality range (JPEG), and a relative weight."""

    kind: str
    qmin: int = 0
    qmax: int = 0
    weight: float = 1.0

    def __str__(self) -> str:
        if self.kind == "clean":
            return "clean"
        q = f"{self.qmin}" if self.qmin == self.qmax else f"{self.qmin}-{self.qmax}"
        return f"{self.kind}:{q}"


@dataclass(frozen=True)
class Draw:
    """One drawn degradation: ``clean``, or a JPEG kind at one ``quality``."""

    kind: str
    quality: int = 0

    def apply(self, lr: np.ndarray) -> np.ndarray:
        """``lr`` (H, W, C) uint8 degraded; a clean draw returns it unchanged."""
        if self.kind == "clean":
            return lr
        return jpeg_roundtrip(lr, self.quality, subsampling=_SUBSAMPLING[self.kind])


@dataclass(frozen=True)
class Degradation:
    """A weighted set of :class:`Term`; ``str()`` gives the spec back in canonical form."""

    terms: tuple[Term, ...]

    def __str__(self) -> str:
        if len(self.terms) == 1:
            return str(self.terms[0])
        total = sum(t.weight for t in self.terms)
        return ",".join(f"{t}:{t.weight / total:.4g}" for t in self.terms)

    @property
    def clean(self) -> bool:
        """True when nothing is ever changed: the paper's inputs."""
        return all(t.kind == "clean" for t in self.terms)

    def draw(self, rng: np.random.Generator, n: int) -> list[Draw]:
        """``n`` draws: a term by weight, then a quality uniform over its range."""
        w = np.array([t.weight for t in self.terms], dtype=np.float64)
        picks = rng.choice(len(self.terms), size=n, p=w / w.sum())
        u = rng.random(n)  # drawn for every item, so a term's draws do not shift the others'
        out = []
        for k, x in zip(picks, u, strict=True):
            t = self.terms[int(k)]
            if t.kind == "clean":
                out.append(Draw("clean"))
            else:
                out.append(Draw(t.kind, t.qmin + int(x * (t.qmax - t.qmin + 1))))
        return out

    def for_image(self, name: str, scale: int) -> Draw:
        """The draw evaluation uses for one image at one scale: the same on every run."""
        seed = zlib.crc32(name.encode("utf-8"))
        return self.draw(np.random.default_rng([seed, scale]), 1)[0]


CLEAN = Degradation((Term("clean"),))


def _quality(text: str, spec: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        qmin, qmax = int(lo), int(hi if sep else lo)
    except ValueError:
        raise EdsrError(
            f"degradation {spec!r}: JPEG quality {text!r} is not Q or QMIN-QMAX"
        ) from None
    if not (1 <= qmin <= qmax <= 100):
        raise EdsrError(
            f"degradation {spec!r}: JPEG quality must be from 1 to 100, low end first; got {text!r}"
        )
    return qmin, qmax


def _weight(text: str, spec: str) -> float:
    try:
        w = float(text)
    except ValueError:
        raise EdsrError(f"degradation {spec!r}: weight {text!r} is not a number") from None
    if not (math.isfinite(w) and w > 0):
        raise EdsrError(f"degradation {spec!r}: a weight must be a finite number above 0")
    return w


def parse_degradation(spec: str | Degradation | None) -> Degradation:
    """A spec (see the module's text) as a :class:`Degradation`; None is ``clean``."""
    if spec is None:
        return CLEAN
    if isinstance(spec, Degradation):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise EdsrError(f"a degradation is text: {_HELP}")
    terms: list[Term] = []
    for part in spec.replace(" ", "").lower().split(","):
        kind, *args = part.split(":")
        if kind not in KINDS:
            raise EdsrError(f"degradation {spec!r}: unknown kind {kind!r}; {_HELP}")
        if kind == "clean":
            if len(args) > 1:
                raise EdsrError(f"degradation {spec!r}: clean takes a weight at most; {_HELP}")
            terms.append(Term("clean", weight=_weight(args[0], spec) if args else 1.0))
        else:
            if not args or len(args) > 2:
                raise EdsrError(f"degradation {spec!r}: {kind} needs a quality; {_HELP}")
            qmin, qmax = _quality(args[0], spec)
            w = _weight(args[1], spec) if len(args) == 2 else 1.0
            terms.append(Term(kind, qmin, qmax, w))
    return Degradation(tuple(terms))


def jpeg_roundtrip(lr: np.ndarray, quality: int, *, subsampling: int = 2) -> np.ndarray:
    """``lr`` (H, W, 1 or 3) uint8 saved as a JPEG by Pillow at ``quality`` (``subsampling``
    as Pillow takes it: 2 is 4:2:0, 0 is 4:4:4) and decoded: the bytes ``edsr downscale
    --jpeg`` writes, so both give the same pixels."""
    buf = io.BytesIO()
    jpeg_image(lr).save(buf, format="JPEG", quality=int(quality), subsampling=subsampling)
    out = np.array(Image.open(buf).convert("L" if lr.shape[2] == 1 else "RGB"))  # writable
    return out.reshape(lr.shape)


def jpeg_image(lr: np.ndarray) -> Image.Image:
    """``lr`` as the Pillow image a JPEG is written from (gray as ``L``, colour as ``RGB``)."""
    if lr.dtype != np.uint8 or lr.ndim != 3 or lr.shape[2] not in (1, 3):
        raise ValueError(f"expected an (H, W, 1|3) uint8 array, got {lr.shape} {lr.dtype}")
    return Image.fromarray(np.ascontiguousarray(lr[:, :, 0] if lr.shape[2] == 1 else lr))


@functools.cache
def _reference_tables() -> np.ndarray:
    """(100, 64): the luminance table Pillow writes at each quality 1..100 (IJG scaling of
    Annex K), in the order Pillow reports tables, so a file's table compares entry by entry."""
    tables = []
    for q in range(1, 101):
        buf = io.BytesIO()
        Image.new("L", (8, 8)).save(buf, format="JPEG", quality=q)
        with Image.open(buf) as im:
            tables.append(list(im.quantization[0]))
    return np.asarray(tables, dtype=np.float64)


def estimate_jpeg_quality(tables: Mapping[int, Sequence[int]] | None) -> int | None:
    """The IJG quality (1..100) whose luminance table is nearest to ``tables[0]`` (Pillow's
    ``Image.quantization``), on a log scale so that small and large steps weigh alike; None
    for no tables. An encoder with tables of its own gets the quality its tables resemble."""
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    t = np.log(np.maximum(np.asarray(tables[0], dtype=np.float64), 1.0))
    ref = np.log(_reference_tables())
    return int(np.argmin(np.abs(ref - t).mean(axis=1))) + 1


def jpeg_quality(source: str | os.PathLike[str] | Image.Image) -> int | None:
    """The quality a JPEG file (or a Pillow image opened from one) was saved at, estimated
    from its tables; None for anything that is not a JPEG or cannot be opened. Only the
    header is read."""
    if isinstance(source, Image.Image):
        if source.format != "JPEG":
            return None
        return estimate_jpeg_quality(getattr(source, "quantization", None))
    try:
        with Image.open(source) as im:
            if im.format != "JPEG":
                return None
            return estimate_jpeg_quality(getattr(im, "quantization", None))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
