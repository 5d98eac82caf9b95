"""Training data: folders of HR images, a decoded cache, and reproducible random patches.

Every batch is a pure function of (seed, step): the scale, the images, the crop positions
and the dihedral transforms are drawn from a generator seeded with both. Resuming at step
``t`` therefore replays exactly the batches a straight run would have seen, any number of
loader workers can prefetch in parallel without changing the order, and data-parallel ranks
cut the same global batch into disjoint shards.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edsr.degrade import CLEAN, Degradation
from edsr.errors import EdsrError, ImageError
from edsr.io.atomic import atomic_write
from edsr.io.cache import edsr_home, sha256_file
from edsr.io.datasets import find_dataset
from edsr.io.image import read_image, to_8bit
from edsr.resize import bicubic_lr

log = logging.getLogger(__name__)

# Bump when the way LR images are made changes, so old caches are not reused.
CACHE_VERSION = 1


@dataclass(frozen=True)
class Source:
    """One training image: the HR file and, per scale, an LR file if the data set has one."""

    hr: Path
    lr: dict[int, Path]


def find_sources(dirs: Sequence[str | os.PathLike[str]], scales: Sequence[int]) -> list[Source]:
    """Training images of each folder (benchmark, DIV2K ``train`` split, or flat layout)."""
    sources: list[Source] = []
    for d in dirs:
        ds = find_dataset(d, split="train", what="training")
        for hr in ds.hr_files:
            lr = {s: p for s in scales if (p := ds.lr_path(hr, s)) is not None}
            sources.append(Source(hr, lr))
    return sources


def default_cache_dir() -> Path:
    return edsr_home() / "data"


class ImageCache:
    """Decoded uint8 arrays (HR, and LR per scale) stored as ``.npy`` files.

    Each file is written atomically and listed with its SHA-256 in an index written last, so
    an interrupted run leaves either a complete entry or none; a damaged file is detected on
    load, reported, and rebuilt.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def _key(self, src: Source, scale: int | None) -> str:
        st = src.hr.stat()
        lr = src.lr.get(scale) if scale else None
        ident = [str(src.hr.resolve()), st.st_size, st.st_mtime_ns, scale, CACHE_VERSION]
        if lr is not None:
            lst = lr.stat()
            ident += [str(lr.resolve()), lst.st_size, lst.st_mtime_ns]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:24]

    def get(
        self, src: Source, scale: int | None, make: Callable[[], np.ndarray], *, mmap: bool
    ) -> np.ndarray:
        key = self._key(src, scale)
        npy, meta = self.root / f"{key}.npy", self.root / f"{key}.json"
        if npy.is_file() and meta.is_file():
            try:
                info = json.loads(meta.read_text())
                if npy.stat().st_size == info["bytes"] and sha256_file(npy) == info["sha256"]:
                    return np.load(npy, mmap_mode="r" if mmap else None)
            except (OSError, ValueError, KeyError):
                pass
            warnings.warn(
                f"cache entry for {src.hr.name} (x{scale or 1}) is damaged; rebuilding it",
                stacklevel=2,
            )
        arr = make()
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_write(npy, overwrite=True) as tmp, open(tmp, "wb") as f:
            np.save(f, arr)
        info = {
            "bytes": npy.stat().st_size,
            "sha256": sha256_file(npy),
            "source": str(src.hr),
            "scale": scale,
        }
        with atomic_write(meta, overwrite=True) as tmp:
            tmp.write_text(json.dumps(info))
        return np.load(npy, mmap_mode="r") if mmap else arr


def _read_rgb(path: Path) -> np.ndarray:
    pixels = to_8bit(read_image(path).pixels)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels)


def _make_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    return bicubic_lr(np.asarray(hr), scale)  # the one LR maker, shared with eval and downscale


class PatchDataset:
    """HR/LR pairs for each scale, held in RAM or memory-mapped, sampled into patch batches."""

    def __init__(
        self,
        dirs: Sequence[str | os.PathLike],
        scales: Sequence[int],
        *,
        patch_size: int = 48,
        cache_dir: str | os.PathLike | None = None,
        on_bad_image: str = "skip",
        ram_budget_bytes: int = 4 << 30,
        progress: bool = True,
        degrade: Degradation = CLEAN,
    ) -> None:
        if patch_size < 1:
            raise EdsrError(f"patch size must be positive, got {patch_size}")
        self.scales = tuple(int(s) for s in scales)
        self.patch_size = int(patch_size)
        self.degrade = degrade
        sources = find_sources(dirs, self.scales)
        cache = ImageCache(Path(cache_dir) if cache_dir else default_cache_dir())
        # Estimate the decoded size from the headers' pixel counts (cheap) to choose RAM or mmap.
        est = sum(os.path.getsize(s.hr) for s in sources) * 4
        mmap = est > ram_budget_bytes
        self.hr: list[np.ndarray] = []
        self.lr: dict[int, list[np.ndarray]] = {s: [] for s in self.scales}
        self.names: list[str] = []
        skipped_bad: list[str] = []
        for src in tqdm(
            sources, desc="decoding training images", unit="img", disable=not progress, leave=False
        ):
            try:
                hr = cache.get(src, None, functools.partial(_read_rgb, src.hr), mmap=mmap)
                lrs = {}
                for s in self.scales:
                    if s in src.lr:
                        make = functools.partial(_read_rgb, src.lr[s])
                    else:
                        make = functools.partial(_make_lr, np.asarray(hr), s)
                    lrs[s] = cache.get(src, s, make, mmap=mmap)
                    want = (hr.shape[0] // s, hr.shape[1] // s)
                    if lrs[s].shape[:2] != want:
                        raise EdsrError(
                            f"{src.lr.get(s, src.hr)} is {lrs[s].shape[1]}x{lrs[s].shape[0]}, "
                            f"expected {want[1]}x{want[0]} for x{s}"
                        )
            except ImageError as e:
                if on_bad_image == "fail":
                    raise
                skipped_bad.append(str(e))
                continue
            self.hr.append(hr)
            for s in self.scales:
                self.lr[s].append(lrs[s])
            self.names.append(src.hr.name)
        if skipped_bad:
            warnings.warn(
                f"skipped {len(skipped_bad)} unreadable image(s): {skipped_bad[0]}"
                + (" ..." if len(skipped_bad) > 1 else ""),
                stacklevel=2,
            )
        # Images whose LR version is smaller than a patch cannot give a full patch at that
        # scale: they are left out of that scale only (not padded, which would teach borders).
        self.eligible: dict[int, np.ndarray] = {}
        for s in self.scales:
            ok = [
                i
                for i, a in enumerate(self.lr[s])
                if a.shape[0] >= patch_size and a.shape[1] >= patch_size
            ]
            small = len(self.lr[s]) - len(ok)
            if small:
                warnings.warn(
                    f"x{s}: {small} image(s) smaller than a {patch_size}x{patch_size} LR patch "
                    "are skipped at this scale",
                    stacklevel=2,
                )
            if not ok:
                raise EdsrError(
                    f"no training image is large enough for {patch_size}x{patch_size} "
                    f"LR patches at x{s}"
                )
            self.eligible[s] = np.asarray(ok)

    def __len__(self) -> int:
        return len(self.hr)

    def batch(
        self, step: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1
    ) -> tuple[int, torch.Tensor, torch.Tensor]:
        """(scale, LR (b, 3, p, p), HR (b, 3, p*s, p*s)) uint8: this rank's shard of ``step``."""
        rng = np.random.default_rng([seed, step])
        scale = self.scales[int(rng.integers(len(self.scales)))]
        pool = self.eligible[scale]
        picks = pool[rng.integers(len(pool), size=batch_size)]
        u = rng.random((batch_size, 2))
        dihedral = rng.integers(8, size=batch_size)
        # The degradation draws come from a generator of their own, so a clean run's batches
        # are the ones they were before degradations existed; drawn for the whole global batch,
        # so every rank's shard holds the draws one process would give those patches.
        draws = (
            None
            if self.degrade.clean
            else self.degrade.draw(np.random.default_rng([seed, step, 1]), batch_size)
        )
        per_rank = batch_size // world_size
        p, hp = self.patch_size, self.patch_size * scale
        lr_out = np.empty((per_rank, p, p, 3), np.uint8)
        hr_out = np.empty((per_rank, hp, hp, 3), np.uint8)
        for j, i in enumerate(range(rank * per_rank, (rank + 1) * per_rank)):
            lr_img, hr_img = self.lr[scale][picks[i]], self.hr[picks[i]]
            y = int(u[i, 0] * (lr_img.shape[0] - p + 1))
            x = int(u[i, 1] * (lr_img.shape[1] - p + 1))
            lr_out[j] = dihedral_np(lr_img[y : y + p, x : x + p], int(dihedral[i]))
            if draws is not None:  # after the turn: a photo's blocks lie on its own grid
                lr_out[j] = draws[i].apply(lr_out[j])
            hr_out[j] = dihedral_np(
                hr_img[y * scale : y * scale + hp, x * scale : x * scale + hp], int(dihedral[i])
            )
        lr_t = torch.from_numpy(lr_out).permute(0, 3, 1, 2)
        hr_t = torch.from_numpy(hr_out).permute(0, 3, 1, 2)
        return scale, lr_t, hr_t


def dihedral_np(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square: ``k % 4`` quarter turns, then a flip if ``k >= 4``."""
    a = np.rot90(a, k % 4, axes=(0, 1))
    return a[:, ::-1] if k >= 4 else a


class BatchStream(torch.utils.data.IterableDataset):
    """Batches for steps ``start .. stop-1`` in order; worker ``w`` of ``n`` makes ``w, w+n, ...``

    The DataLoader takes one item from each worker in turn, so the order is the step order
    whatever the number of workers.
    """

    def __init__(
        self,
        data: PatchDataset,
        start: int,
        stop: int,
        batch_size: int,
        *,
        seed: int,
        rank: int,
        world_size: int,
    ):
        super().__init__()
        self.data, self.start, self.stop, self.batch_size = data, start, stop, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        wid, n = (info.id, info.num_workers) if info else (0, 1)
        for step in range(self.start + wid, self.stop, n):
            scale, lr, hr = self.data.batch(
                step, self.batch_size, seed=self.seed, rank=self.rank, world_size=self.world_size
            )
            yield step, scale, lr, hr


def batch_loader(
    data: PatchDataset,
    start: int,
    stop: int,
    batch_size: int,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
) -> torch.utils.data.DataLoader:
    stream = BatchStream(data, start, stop, batch_size, seed=seed, rank=rank, world_size=world_size)
    return torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
