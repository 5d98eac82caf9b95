"""Files and folders: where each result goes, checks before any work, one image file through
the model (in memory or streamed as PNG strips), and batches that survive bad inputs."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from edsr import defaults
from edsr.errors import EdsrError, ImageError
from edsr.inference.descriptor import Model, resolve_scale
from edsr.inference.distributed import SINGLE, Ranks
from edsr.inference.engine import ArraySink, StripSink, TileBar, array_input, chain, run_tiled
from edsr.inference.estimate import Announcer, plan_job
from edsr.inference.job import JOB_FILE, FolderJob, check_continues, read_job, write_job
from edsr.inference.memory import format_bytes, host_available_memory
from edsr.inference.precision import compute_model, prepare_model
from edsr.inference.tiling import OnTile, ShouldStop
from edsr.io.atomic import atomic_open, check_folder_writable, check_writable, remove_stale_temps
from edsr.io.datasets import find_images, own_outputs
from edsr.io.image import OUTPUT_EXTENSIONS, max_side, read_image, write_image
from edsr.io.png import PngStripWriter
from edsr.io.video import VIDEO_EXTENSIONS

#: With a progress display, an image that would run as one pass longer than this is split
#: into tiles of about this many seconds, so the display moves within the image.
PROGRESS_TILE_SECONDS = 10.0

#: ``say(line)``: where one-line notes for the user go (the CLI prints them unless --quiet).
Say = Callable[[str], None]


class ModelChoice(Protocol):
    """Picks the model for each input file when the user named none (:mod:`edsr.route`
    builds it from :func:`edsr.defaults.route`): ``choice(path)`` is ``(model, why)``, ``why``
    one line naming the model and the reason. ``default`` decides the scale and runs videos."""

    @property
    def default(self) -> Model: ...

    def __call__(self, path: Path) -> tuple[Model, str]: ...


@dataclass
class BatchResult:
    """What :func:`upscale_files` did: the files ``written``, the inputs skipped because their
    output exists (``skip_existing``), and the inputs that ``failed``, each with its one-line
    reason. Iterating it (and ``len``) gives the written files."""

    written: list[Path] = field(default_factory=list)
    skipped_existing: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    kind: str = "image"  # "image" or "video": what was written
    chosen: list[tuple[Path, str]] = field(default_factory=list)  # (input, which model and why)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self, output: str | os.PathLike[str]) -> str:
        """One line: what was written where, what was skipped and why."""
        n = len(self.written)
        parts = [f"wrote {n} {self.kind}{'s' if n != 1 else ''} to {output}"]
        if self.skipped_existing:
            parts.append(f"skipped {len(self.skipped_existing)} already written")
        models: dict[str, int] = {}  # which model the route chose, and for how many inputs
        for _, why in self.chosen:
            name = why.split(":", 1)[0]
            models[name] = models.get(name, 0) + 1
        if models:
            each = [f"{name} ({n})" for name, n in models.items()]
            parts.append(f"model{'s' if len(models) > 1 else ''} {', '.join(each)}")
        if self.failed:
            names = ", ".join(p.name for p, _ in self.failed[:5])
            more = ", ..." if len(self.failed) > 5 else ""
            parts.append(f"{len(self.failed)} failed: {names}{more}")
        return "; ".join(parts)

    def __iter__(self) -> Iterator[Path]:
        return iter(self.written)

    def __len__(self) -> int:
        return len(self.written)


def output_paths(
    inputs: Sequence[Path], roots: Sequence[Path | None], output: str | os.PathLike[str], scale: int
) -> list[Path]:
    """Where each input's result goes: ``<stem>_x<scale>.png`` under ``output``, keeping the
    sub-directory an input had below the directory it was found in, so that equal names in
    different folders never collide. A single image may name the output file directly; an
    output with an image suffix for several images, or with an unknown suffix, is refused
    rather than silently becoming a folder."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix and not output.is_dir():
        if suffix not in OUTPUT_EXTENSIONS:
            allowed = ", ".join(sorted(OUTPUT_EXTENSIONS))
            raise EdsrError(
                f"{output}: '{suffix}' is not an image format ({allowed}); to write into a "
                "folder of that name, create it first"
            )
        if len(inputs) == 1:
            return [output]
        raise EdsrError(
            f"{output} names one file but there are {len(inputs)} images; give a folder"
        )
    outs = []
    for path, root in zip(inputs, roots, strict=True):
        rel = path.relative_to(root).parent if root is not None else Path()
        outs.append(output / rel / f"{path.stem}_x{scale}.png")
    seen: dict[Path, Path] = {}
    for src, dst in zip(inputs, outs, strict=True):
        if dst in seen:
            raise EdsrError(f"{src} and {seen[dst]} would both be written to {dst}; rename one")
        seen[dst] = src
    return outs


def _should_stream(nbytes: int, dst: Path, stream: bool | None) -> bool:
    if stream is not None:
        return stream and dst.suffix.lower() == ".png"
    # A quarter of the free RAM: the output is then the largest thing in memory by far.
    return dst.suffix.lower() == ".png" and nbytes > host_available_memory() // 4


def upscale_image_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    model: Model,
    scale: int | None = None,
    *,
    overwrite: bool = False,
    tile: int | None = None,
    max_memory: int | str | None = None,
    ensemble: bool = False,
    stream: bool | None = None,
    progress: bool = False,
    on_tile: OnTile | None = None,
    should_stop: ShouldStop | None = None,
    say: Say | None = None,
) -> Path:
    """Upscale one image file into ``dst`` (format from its suffix).

    The output is assembled in memory and written atomically, or, for a PNG too large to hold
    (over a quarter of the free RAM, or when ``stream`` is True), written band by band as the
    tiles finish, so memory stays at one band of rows plus the tiles' working memory. A job
    estimated at over a minute is said to ``say`` (time, tiles, memory): timed on its first
    tile when it has several (see :class:`~edsr.inference.estimate.Announcer`).
    ``progress`` shows the tiles of the image; ``on_tile``/``should_stop`` as in
    :func:`~edsr.inference.upscale`.
    """
    src, dst = Path(src), Path(dst)
    scale = resolve_scale(model, scale)
    img = read_image(src)
    h, w, c = img.pixels.shape
    suffix = dst.suffix.lower()
    limit = max_side(suffix)
    if max(h, w) * scale > limit:
        raise ImageError(
            f"{dst}: the {w * scale}x{h * scale} result is too large for {suffix} files (at most "
            f"{limit} pixels a side); write a .png file instead"
        )
    pixels = (
        img.pixels
        if img.alpha is None
        else np.concatenate([img.pixels, img.alpha[:, :, None]], axis=2)
    )
    vr = float(img.max_value)
    total_c = pixels.shape[2]
    nbytes = h * w * scale * scale * total_c * pixels.dtype.itemsize
    streaming = _should_stream(nbytes, dst, stream)
    if not streaming and nbytes > host_available_memory() // 2:
        raise EdsrError(
            f"{dst}: the {w * scale}x{h * scale} result ({format_bytes(nbytes)}) does not fit in "
            "memory; write a .png file, which is written in strips"
        )
    check_writable(dst, overwrite=overwrite)
    estimate = plan_job(
        model,
        (1, total_c, h, w),
        scale,
        tile=tile,
        max_memory=max_memory,
        ensemble=ensemble,
        max_tile_seconds=PROGRESS_TILE_SECONDS if progress or on_tile else None,
    )
    announce = Announcer(estimate, say, src.name) if say is not None else None
    bar = TileBar(progress, desc=src.name)
    opts: dict[str, Any] = {
        "plan": estimate.plan,
        "ensemble": ensemble,
        "on_tile": chain(announce, bar, on_tile),
        "should_stop": should_stop,
    }
    x = array_input(pixels, vr)
    try:
        if streaming:
            with atomic_open(dst, overwrite=overwrite) as f:
                writer = PngStripWriter(
                    f, w * scale, h * scale, total_c, pixels.dtype, icc_profile=img.icc_profile
                )
                run_tiled(model, x, scale, StripSink(writer, pixels.dtype, vr), **opts)
                writer.close()
            return dst
        out = np.empty((h * scale, w * scale, total_c), pixels.dtype)
        run_tiled(model, x, scale, ArraySink(out, vr, True), **opts)
    finally:
        bar.close()
    result = dataclasses.replace(  # keeps what else the file carried (its colour profile)
        img,
        pixels=np.ascontiguousarray(out[:, :, :c]),
        alpha=np.ascontiguousarray(out[:, :, c]) if img.alpha is not None else None,
    )
    return write_image(dst, result, overwrite=overwrite)


def _prepared(model: Model, precision: str | None, compile: bool) -> Model:
    # the same prepared copy edsr.upscale runs, unless compiling (a one-off, not kept)
    if not compile:
        return compute_model(model, precision)
    return prepare_model(model, precision=precision or defaults.PRECISION, compile=True)


def upscale_files(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    model: Model | ModelChoice,
    scale: int | None = None,
    *,
    overwrite: bool = False,
    skip_existing: bool = False,
    progress: bool = True,
    tile: int | None = None,
    max_memory: int | str | None = None,
    ensemble: bool = False,
    precision: str | None = None,
    compile: bool = False,
    frames: int | None = None,
    stream: bool | None = None,
    should_stop: ShouldStop | None = None,
    say: Say | None = None,
    ranks: Ranks = SINGLE,
    job: FolderJob | None = None,
) -> BatchResult:
    """Upscale image files, directories or one video into ``output``.

    Before any work: every destination is checked (an existing one is an error without
    ``overwrite``, skipped with ``skip_existing`` unless its input was modified after it was
    written, then replaced), the output folders must be writable, and
    temporaries a killed earlier run left there are removed. In a batch of several images, an
    input that cannot be read goes to :attr:`BatchResult.failed` with its reason and the run
    goes on; nothing is half-written. A run of one image raises its error instead. ``say``
    gets one-line notes (the estimate before a long image). Without
    ``scale``: the model's only scale, else x4. Images are tiled (see
    :func:`~edsr.inference.upscale_tensor`), so any size fits in memory;
    ``precision`` (None: :data:`edsr.defaults.PRECISION`) and ``compile`` prepare the model
    once (see :func:`~edsr.inference.precision.compute_model`); ``frames`` limits videos.

    ``ranks`` (from :func:`edsr.inference.distributed.join` under torchrun) splits the images
    over the processes, each with ``model`` on its own device: rank 0 alone does the checks
    above, the others wait for them, then each upscales its share
    (:meth:`~edsr.inference.distributed.Ranks.shard`) and every rank returns the whole run's
    result, the same as one process gives. Progress and notes show on rank 0 only.

    ``model`` may be a :class:`ModelChoice` (the default route): each image then runs on the
    model it picks, each model prepared once, and :attr:`BatchResult.chosen` says which and why.

    ``job`` (the command line's: :class:`~edsr.inference.job.FolderJob`) is what ``model`` and
    the options are, recorded in a folder ``output`` when the job starts, after the checks, so
    a re-run can continue it (:mod:`edsr.inference.job`); a folder that records another job is
    refused unless ``overwrite``. Stopped by Ctrl-C or SIGTERM, a batch re-raises that
    interrupt with one line saying how far it got and how to finish.
    """
    from edsr.inference.video import upscale_video

    choice = None if isinstance(model, torch.nn.Module) else model
    if choice is not None:
        model = choice.default
    assert isinstance(model, torch.nn.Module)
    scale = resolve_scale(model, scale)
    if job is not None and job.scale is None:
        job = dataclasses.replace(job, scale=scale)
    if overwrite and skip_existing:
        raise EdsrError("--overwrite and --skip-existing contradict each other; give one")
    if frames is not None and frames < 1:
        raise EdsrError(f"--frames must be at least 1, got {frames}")
    paths = [Path(i) for i in inputs]
    videos = [p for p in paths if _is_video(p)]
    if videos and len(paths) > 1:
        raise EdsrError("give one video at a time (images and folders can be given together)")
    if videos and ranks.spread:
        raise EdsrError("a video is not split over processes; upscale it without torchrun")
    if not ranks.main:
        say, progress = None, False
    if frames is not None and not videos and say is not None:
        say("--frames only applies to videos; ignored")
    opts: dict[str, Any] = {"tile": tile, "max_memory": max_memory, "ensemble": ensemble}
    if videos:
        plan = plan_outputs(paths, output, scale, overwrite=overwrite, skip_existing=skip_existing)
        if not plan.jobs:
            return BatchResult(skipped_existing=plan.skipped, kind="video")
        dst = plan.jobs[0][1]
        overwrite = overwrite or dst in plan.stale  # out of date, as an image's: replaced
        check_folder_writable(dst.parent)
        remove_stale_temps(dst.parent)
        model = _prepared(model, precision, compile)
        written = upscale_video(
            videos[0],
            dst,
            model,
            scale,
            overwrite=overwrite,
            frames=frames,
            progress=progress,
            should_stop=should_stop,
            **opts,
        )
        return BatchResult(written=[written], kind="video")

    # One rank checks the output place and clears stale temporaries while the others wait:
    # no rank writes before that is done, and none removes a temporary another is writing.
    plan, made = ranks.from_main(
        lambda: _plan_images(
            paths, output, scale, overwrite=overwrite, skip_existing=skip_existing, say=say, job=job
        )
    )
    n_files, jobs, skipped, stale = plan.files, plan.jobs, plan.skipped, plan.stale
    finished = [0]  # images this process has written, for the line said when it is stopped

    def work() -> list[tuple[int, Path | str, str]]:
        ready: dict[int, Model] = {}  # each model prepared once, by id

        def prepared(m: Model) -> Model:
            if id(m) not in ready:
                ready[id(m)] = _prepared(m, precision, compile)
            return ready[id(m)]

        # (job index, written file or why it failed, which model and why: "" without a choice)
        done: list[tuple[int, Path | str, str]] = []
        mine = ranks.shard(list(enumerate(jobs)))
        bar = tqdm(mine, desc=f"upscale x{scale}", unit="img", disable=not progress)
        for i, (src, dst) in bar:
            bar.set_postfix_str(src.name)
            chosen, why = (model, "") if choice is None else choice(src)
            try:
                written = upscale_image_file(
                    src,
                    dst,
                    prepared(chosen),
                    scale,
                    overwrite=overwrite or dst in stale,
                    stream=stream,
                    progress=progress,
                    should_stop=should_stop,
                    say=say,
                    **opts,
                )
            except ImageError as e:
                if n_files == 1:
                    raise
                done.append((i, str(e), why))
                continue
            done.append((i, written, why))
            finished[0] += 1
        return done

    try:
        shares = ranks.gather(work)
    except BaseException as e:
        if ranks.main and not finished[0]:
            # a job stopped or failed before writing anything is no job to continue: the
            # record it made goes, and the folders made for it
            for path in made:
                with contextlib.suppress(OSError):
                    path.rmdir() if path.is_dir() else path.unlink()
        if not isinstance(e, KeyboardInterrupt) or n_files < 2:  # Ctrl-C, SIGTERM: Terminated
            raise
        # Under torchrun this process knows its own share only: no count then.
        k = "" if ranks.spread else f" after {len(skipped) + finished[0]} of {n_files} images"
        how = (
            "again"
            if skip_existing
            else "with --skip-existing in place of --overwrite"
            if overwrite
            else "with --skip-existing"
        )
        raise type(e)(f"stopped{k}; run the same command {how} to finish") from e
    result = BatchResult(skipped_existing=skipped)
    for i, outcome, why in sorted(o for share in shares for o in share):
        if isinstance(outcome, str):
            result.failed.append((jobs[i][0], outcome))
        else:
            result.written.append(outcome)
            if why:
                result.chosen.append((jobs[i][0], why))
    return result


@dataclass
class OutputPlan:
    """What :func:`upscale_files` does with the inputs: the images (or video) found, the
    ``(src, dst)`` jobs, the inputs skipped as already written, the outputs replaced because
    their input changed since, and the files left out of the inputs as this command's results."""

    files: int
    jobs: list[tuple[Path, Path]]
    skipped: list[Path]
    stale: set[Path]
    left_out: list[Path]
    folder: bool  # the output is a folder (a job is recorded there), not one file


def writes_folder(inputs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str]) -> bool:
    """True when :func:`upscale_files` writes ``inputs`` into the folder ``output`` (where a
    job is recorded), not into one file: one video, or an ``output`` with a suffix that is not
    a folder, is one file (see :func:`output_paths`)."""
    if _one_video([Path(i) for i in inputs]):
        return False
    return not (Path(output).suffix and not Path(output).is_dir())


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.is_dir()


def _one_video(paths: Sequence[Path]) -> bool:
    return len(paths) == 1 and _is_video(paths[0])


def plan_outputs(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    scale: int,
    *,
    overwrite: bool = False,
    skip_existing: bool = False,
) -> OutputPlan:
    """The :class:`OutputPlan` of an :func:`upscale_files` run, with its refusals (an output
    that would replace an input, an existing output without ``overwrite`` or
    ``skip_existing``), reading the file system only: what a door checks before it loads a
    model, since loading one takes seconds these refusals do not need.

    Outputs are never inputs: folders are scanned without the output folder when it lies
    inside them, and without the ``*_x<scale>.png`` files in it (the names results get), so a
    rerun into a folder inside the input, or into the input folder itself, reads only what
    the user put there."""
    from edsr.inference.video import video_output_path

    paths = [Path(i) for i in inputs]
    left_out: list[Path] = []
    folder = writes_folder(paths, output)
    if _one_video(paths):
        files = paths
        dests = [video_output_path(paths[0], output, scale)]
    else:
        skip, left_out = _results_left_out(output, scale)
        files = []
        roots: list[Path | None] = []
        for item in paths:
            found = find_images([item], skip=skip)
            files += found
            roots += [item if item.is_dir() else None] * len(found)
        dests = output_paths(files, roots, output, scale)
    inputs_real = {os.path.realpath(f) for f in files}
    for src, dst in zip(files, dests, strict=True):  # with or without --overwrite
        if os.path.realpath(dst) in inputs_real:
            raise EdsrError(
                f"{dst} would be written over an input of this job ({src} reads it); "
                "give another output name: an input is never replaced"
            )
    skipped: list[Path] = []
    jobs: list[tuple[Path, Path]] = []
    stale: set[Path] = set()
    existing: list[Path] = []
    for src, dst in zip(files, dests, strict=True):
        check_writable(dst, overwrite=True)  # a folder in its place, a file in its path
        if os.path.lexists(dst):
            if skip_existing:
                if not _changed_since(src, dst):
                    skipped.append(src)
                    continue
                stale.add(dst)
            elif not overwrite:
                existing.append(dst)
        jobs.append((src, dst))
    if existing:
        raise _exist_error(existing)
    return OutputPlan(len(files), jobs, skipped, stale, left_out, folder)


def _exist_error(existing: Sequence[Path]) -> EdsrError:
    # Both ways on: a stopped job is finished with --skip-existing, redone with --overwrite.
    if len(existing) == 1:
        return EdsrError(
            f"{existing[0]} already exists; pass --skip-existing to leave it and go on, or "
            "--overwrite to replace it"
        )
    return EdsrError(
        f"{existing[0]} and {len(existing) - 1} more outputs already exist; pass "
        "--skip-existing to leave them and finish the rest, or --overwrite to redo them"
    )


def _plan_images(
    paths: Sequence[Path],
    output: str | os.PathLike[str],
    scale: int,
    *,
    overwrite: bool,
    skip_existing: bool,
    say: Say | None = None,
    job: FolderJob | None = None,
) -> tuple[OutputPlan, list[Path]]:
    """:func:`plan_outputs`, then what :func:`upscale_files` does before any work: the
    output folders checked writable, the temporaries a killed run left removed, and the job
    recorded in a folder output (after a record of another job is refused); with what the
    record made (a new record, the folders made for it, deepest first) to remove if the job
    writes nothing."""
    plan = plan_outputs(paths, output, scale, overwrite=overwrite, skip_existing=skip_existing)
    recorded = read_job(output) if job is not None and plan.folder else None
    if job is not None and plan.folder and not overwrite:
        check_continues(recorded, job, output)
    left_out = plan.left_out
    if left_out and say is not None:
        names = ", ".join(str(p) for p in left_out[:3]) + (", ..." if len(left_out) > 3 else "")
        say(f"not read as inputs (results of this command go there): {names}")
    for folder in sorted({dst.parent for _, dst in plan.jobs}):
        check_folder_writable(folder)
        remove_stale_temps(folder)
    if job is not None and plan.folder and job != recorded:
        folder = Path(output)
        made = [p for p in (folder / JOB_FILE, folder, *folder.parents) if not os.path.lexists(p)]
        write_job(output, job)
        return plan, made
    return plan, []


def _results_left_out(
    output: str | os.PathLike[str], scale: int
) -> tuple[Callable[[Path, Path], bool], list[Path]]:
    """The ``skip`` for :func:`find_images` that leaves this run's outputs out of its inputs,
    and the list it fills with what it left out. ``output`` naming one file: that file."""
    output = Path(output)
    left_out: list[Path] = []
    if output.suffix and not output.is_dir():
        target = os.path.realpath(output)
        inner = own_outputs(output.parent, lambda p: os.path.realpath(p) == target, tree=False)
    else:
        name = re.compile(rf".+_x{scale}\.png", re.IGNORECASE)  # output_paths' names
        inner = own_outputs(output, lambda p: name.fullmatch(p.name) is not None)

    def skip(root: Path, path: Path) -> bool:
        if inner(root, path):
            left_out.append(path)
            return True
        return False

    return skip, left_out


def _changed_since(src: Path, dst: Path) -> bool:
    """True when ``src`` was modified after its output ``dst`` was written, or ``dst`` is empty
    (no image is 0 bytes; this package's atomic writes never leave one): with
    ``--skip-existing`` such an output is out of date, and is replaced."""
    try:
        st = dst.stat()
        return st.st_size == 0 or src.stat().st_mtime_ns > st.st_mtime_ns
    except OSError:
        return False  # a dangling output link: left alone, as any existing output
