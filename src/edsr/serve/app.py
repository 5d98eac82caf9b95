"""The ASGI application behind ``edsr serve``: HTTP API, page and the bounded work queue.

Design, and why:

- Every ``POST /v1/upscale`` is *admitted* before its body is read, and stays counted until its
  response has been sent. At most ``workers + queue`` are admitted at once; the next one gets
  503 with Retry-After. That bounds memory (each admitted request holds at most one upload and
  one image) whatever the load, instead of letting uploads pile up in RAM.
- Inference runs in a thread pool of ``workers`` threads, so the event loop keeps answering
  ``/healthz``, progress polls and rejections while the model computes (PyTorch releases the
  GIL inside its kernels).
- Work is cancelled, not merely abandoned: a forward pre-hook on each model checks a per-job
  flag before every tile, so a request that runs past the time limit or whose client went
  away stops within one tile and frees its slot. A slot is only released when its thread has
  really finished, so the concurrency bound is honest.
- Uploads are parsed in memory (bounded above), written to a per-request folder inside the
  server's own temporary directory only so :func:`edsr.io.image.read_image` can decode them
  (EXIF orientation, 16-bit PNGs, its error messages), and that folder is removed as soon as
  the response is sent; the whole directory goes at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import math
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from torch import nn

from edsr.errors import EdsrError
from edsr.inference import default_memory_budget, parse_memory, plan_tiles, upscale
from edsr.io.image import Image, read_image, write_image
from edsr.resize import imresize_np
from edsr.weights import registry
from edsr.weights.registry import WeightsEntry, find_entry

log = logging.getLogger("edsr.serve")

STATIC = Path(__file__).resolve().parent / "static"
BICUBIC = "bicubic"

# Pillow format names accepted as input: the formats edsr.io.image reads (IMAGE_EXTENSIONS).
# MPO is what Pillow calls many camera JPEGs; DIB is a BMP without the file header.
_INPUT_FORMATS = {"PNG", "JPEG", "MPO", "BMP", "DIB", "TIFF", "WEBP"}
_OUTPUT_FORMATS = {"png": (".png", "image/png"), "jpeg": (".jpg", "image/jpeg"),
                   "jpg": (".jpg", "image/jpeg"), "webp": (".webp", "image/webp")}  # fmt: skip
# Largest side each encoder accepts (Pillow's JPEG and WebP writers).
_MAX_SIDE = {"jpeg": 65535, "jpg": 65535, "webp": 16383}
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
# Room for the multipart framing and the small text fields around the image itself.
_MULTIPART_SLACK = 64 * 1024
_MAX_FIELDS = 16
_MAX_FIELD_BYTES = 1024
_FINISHED_JOBS_KEPT = 256  # for progress polls that arrive after the response
_FINISHED_JOB_TTL = 120.0


@dataclass(frozen=True)
class ServeConfig:
    """Limits of one server. ``max_memory`` is the tile working memory of each worker."""

    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 4_000_000
    workers: int = 1
    queue: int = 4
    timeout: float = 300.0
    max_memory: int | str | None = None
    tmp_dir: str | None = None
    # Host header values answered (any port); None answers every host. A server bound to
    # loopback sets this so a web page cannot reach it through DNS rebinding.
    allowed_hosts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise EdsrError(f"--workers must be at least 1, got {self.workers}")
        if self.queue < 0:
            raise EdsrError(f"--queue must be 0 or more, got {self.queue}")
        if self.max_upload_bytes < 1:
            raise EdsrError("--max-upload-mb must be positive")
        if self.max_pixels < 1:
            raise EdsrError(f"--max-pixels must be positive, got {self.max_pixels}")
        if not self.timeout > 0:
            raise EdsrError(f"--timeout must be positive, got {self.timeout}")

    @property
    def capacity(self) -> int:
        return self.workers + self.queue


@dataclass
class ServedModel:
    """A loaded model and what the registry knows about it (None for an unregistered file)."""

    id: str
    model: nn.Module
    spec: str
    entry: WeightsEntry | None

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(self.model.scales)


def default_model_spec() -> str | None:
    """The registry's bundled default model, if this installation ships one."""
    try:
        return registry.default_model()
    except EdsrError:
        return None


def load_models(
    specs: Sequence[str], *, device: str | None = None, progress: bool = True
) -> list[ServedModel]:
    """Load each ``--model`` value once (files or registry names; comma-separated lists too)."""
    from edsr.weights import resolve_model

    names: list[str] = []
    for spec in specs:
        names += [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        names = [registry.default_model()]
    served: list[ServedModel] = []
    seen: set[str] = set()
    for spec in dict.fromkeys(names):  # keeps order, drops repeats
        path = Path(spec)
        entry = find_entry(path.name) if path.is_file() else find_entry(spec)
        model = resolve_model(spec, device=device, progress=progress)
        model.eval()
        base = entry.name if entry is not None and not path.is_file() else path.stem
        mid, n = base, 2
        while mid.lower() in seen or mid.lower() == BICUBIC:
            mid, n = f"{base}-{n}", n + 1
        seen.add(mid.lower())
        served.append(ServedModel(mid, model, spec, entry))
    return served


# ---------------------------------------------------------------------------------------------
# Jobs, progress and cancellation
# ---------------------------------------------------------------------------------------------


class _Cancelled(Exception):
    """Raised inside the worker thread when its job was cancelled (time limit, disconnect)."""


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Job:
    """One upscale request as seen by ``GET /v1/progress/{id}`` and by its worker thread."""

    def __init__(self, job_id: str, seq: int) -> None:
        self.id = job_id
        self.seq = seq
        self.state = "queued"  # queued -> running -> encoding -> done | failed | cancelled
        self.done = 0
        self.total = 0
        self.cancel = threading.Event()
        self.abandoned = False  # the request stopped waiting; its thread cleans up alone
        self.finished: float | None = None


_local = threading.local()


def _pre_hook(module: nn.Module, args: tuple) -> None:
    job: Job | None = getattr(_local, "job", None)
    if job is not None and job.cancel.is_set():
        raise _Cancelled


def _post_hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
    job: Job | None = getattr(_local, "job", None)
    if job is not None:
        job.done = min(job.done + 1, job.total) if job.total else job.done + 1


# One pair of hooks per model however many apps share it (tests build several apps).
_HOOKS: weakref.WeakKeyDictionary[nn.Module, list] = weakref.WeakKeyDictionary()


def _hook(model: nn.Module) -> None:
    entry = _HOOKS.get(model)
    if entry is None:
        handles = (
            model.register_forward_pre_hook(_pre_hook),
            model.register_forward_hook(_post_hook),
        )
        _HOOKS[model] = [handles, 1]
    else:
        entry[1] += 1


def _unhook(model: nn.Module) -> None:
    entry = _HOOKS.get(model)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        for h in entry[0]:
            h.remove()
        del _HOOKS[model]


# ---------------------------------------------------------------------------------------------
# Request parsing
# ---------------------------------------------------------------------------------------------


@dataclass
class _Upload:
    data: bytes
    filename: str


def _parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, str], _Upload | None]:
    """Fields and the image part of a multipart/form-data body held in memory."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart/form-data body without a boundary")
    parts: list[dict[str, Any]] = []
    cur: dict[str, Any] = {}
    header: list[bytes] = [b"", b""]

    def on_part_begin() -> None:
        cur.clear()
        cur.update(headers={}, data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        cur["headers"][header[0].decode("latin-1").lower()] = header[1].decode("latin-1")
        header[0], header[1] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        cur["data"] += data[start:end]

    def on_part_end() -> None:
        if len(parts) >= _MAX_FIELDS:
            raise ApiError(400, f"too many form fields (at most {_MAX_FIELDS})")
        parts.append(dict(cur))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except Exception as e:  # python-multipart raises several types for malformed input
        raise ApiError(400, f"malformed multipart/form-data body ({e})") from None
    fields: dict[str, str] = {}
    upload = None
    for part in parts:
        _, disp = parse_options_header(part["headers"].get("content-disposition", ""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in disp or name in ("image", "file"):
            if upload is not None:
                raise ApiError(400, "send one image per request (form field 'image')")
            fname = disp.get(b"filename", b"image").decode("utf-8", "replace")
            upload = _Upload(bytes(part["data"]), fname)
        elif name:
            if len(part["data"]) > _MAX_FIELD_BYTES:
                raise ApiError(400, f"form field {name!r} is too long")
            fields[name] = part["data"].decode("utf-8", "replace").strip()
    return fields, upload


def _parse_bool(name: str, text: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ApiError(422, f"{name} must be true or false, not {text!r}")


def _safe_stem(filename: str) -> str:
    stem = Path(filename.replace("\\", "/")).stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:80]
    return stem or "image"


def _format_mb(n: int) -> str:
    if n < 2**20:
        return f"{n / 1024:.0f} KB"
    mb = n / 2**20
    return f"{mb:.0f} MB" if mb >= 10 or mb == int(mb) else f"{mb:.1f} MB"


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class EdsrServer:
    """State shared by the requests of one app: models, limits, slots, jobs, temp directory."""

    def __init__(self, models: Sequence[ServedModel], config: ServeConfig) -> None:
        if not models:
            raise EdsrError("give at least one model to serve")
        self.models = list(models)
        self.by_id = {m.id.lower(): m for m in self.models}
        self.config = config
        self.bicubic_scales = tuple(sorted({s for m in self.models for s in m.scales}))
        self.pool: ThreadPoolExecutor | None = None
        self.slots: asyncio.Semaphore | None = None
        self.tmp_root: Path | None = None
        self.admitted = 0
        self.running = 0
        self.jobs: dict[str, Job] = {}
        self._seq = 0
        self.started = time.monotonic()
        self.avg_seconds = 2.0  # running mean of job times, for Retry-After
        self.budget = self._budget()
        self._warm_up()

    # -- set-up -----------------------------------------------------------------------------

    def _budget(self) -> int:
        if self.config.max_memory is not None:
            return parse_memory(self.config.max_memory)
        device = next(self.models[0].model.parameters()).device
        # Each worker gets its share of the library's default, capped on the CPU so that one
        # request cannot take half the machine's memory; tiles only get smaller, not wrong.
        share = default_memory_budget(device) // self.config.workers
        return share if device.type == "cuda" else min(share, 2 * 1024**3)

    def _warm_up(self) -> None:
        # probe_model() runs a forward pass with hooks on every layer: doing it here for every
        # scale, before any request, keeps concurrent requests from ever probing at once, and
        # finds a memory budget too small for a model now rather than on the first upload.
        for m in self.models:
            for s in m.scales:
                plan_tiles(m.model, (1, 3, 64, 64), s, max_memory=self.budget)

    async def startup(self) -> None:
        self.pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="edsr-serve")
        self.slots = asyncio.Semaphore(self.config.workers)
        self.tmp_root = Path(tempfile.mkdtemp(prefix="edsr-serve-", dir=self.config.tmp_dir))
        for m in self.models:
            _hook(m.model)
        log.info("temporary files under %s", self.tmp_root)

    async def shutdown(self) -> None:
        for job in self.jobs.values():
            job.cancel.set()
        if self.pool is not None:
            # The threads stop at their next tile (the cancel flag); wait for that so the
            # temporary directory is not removed under them.
            await asyncio.get_running_loop().run_in_executor(None, self.pool.shutdown, True)
        for m in self.models:
            _unhook(m.model)
        if self.tmp_root is not None:
            shutil.rmtree(self.tmp_root, ignore_errors=True)

    # -- small endpoints --------------------------------------------------------------------

    def limits(self) -> dict[str, Any]:
        c = self.config
        return {
            "max_upload_bytes": c.max_upload_bytes,
            "max_pixels": c.max_pixels,
            "timeout_s": c.timeout,
            "workers": c.workers,
            "queue": c.queue,
            "formats": ["png", "jpeg", "webp"],
        }

    async def healthz(self, request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "models": [m.id for m in self.models],
                "workers": self.config.workers,
                "running": self.running,
                "admitted": self.admitted,
                "capacity": self.config.capacity,
                "uptime_s": round(time.monotonic() - self.started, 1),
            },
            headers={"Cache-Control": "no-store"},
        )

    async def list_models(self, request: Request) -> Response:
        out = []
        for i, m in enumerate(self.models):
            out.append(_describe(m.id, m.entry, m.model, loaded=True, default=i == 0))
        out.append(
            {
                "id": BICUBIC,
                "loaded": True,
                "default": False,
                "arch": "bicubic",
                "scales": list(self.bicubic_scales),
                "description": "MATLAB-compatible bicubic interpolation (the baseline)",
                "psnr": [],
            }
        )
        loaded = {id(m.entry) for m in self.models if m.entry is not None}
        for e in registry.REGISTRY.values():
            if id(e) not in loaded:
                out.append(_describe(e.name, e, None, loaded=False, default=False))
        return JSONResponse({"default": self.models[0].id, "models": out, "limits": self.limits()})

    async def progress(self, request: Request) -> Response:
        job = self.jobs.get(request.path_params["job"])
        if job is None:
            raise ApiError(404, "unknown job; it may not have started yet, or ended a while ago")
        body: dict[str, Any] = {
            "job": job.id,
            "state": job.state,
            "done": job.done,
            "total": job.total,
        }
        if job.state == "queued":
            body["position"] = 1 + sum(
                1 for j in self.jobs.values() if j.state == "queued" and j.seq < job.seq
            )
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    # -- POST /v1/upscale -------------------------------------------------------------------

    def _retry_after(self) -> str:
        waiting = max(1, self.admitted)
        return str(max(1, min(120, math.ceil(self.avg_seconds * waiting / self.config.workers))))

    async def upscale_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Raw ASGI so that admission happens before the body is read and the bookkeeping
        runs after the response has gone out (or the client has gone)."""
        request = Request(scope, receive)
        if self.admitted >= self.config.capacity:
            response = _error(
                503,
                f"the server is busy ({self.config.workers} running, {self.config.queue} waiting);"
                " try again shortly",
                {"Retry-After": self._retry_after()},
            )
            await _drain(receive, self.config.max_upload_bytes + _MULTIPART_SLACK)
            await response(scope, receive, send)
            return
        self.admitted += 1
        req_dir: list[Path] = []  # set once the work owns a folder
        try:
            try:
                response = await self._upscale(request, req_dir)
            except ApiError as e:
                response = _error(e.status, e.message, e.headers)
            except ClientDisconnect:
                return
            await response(scope, receive, send)
        finally:
            self.admitted -= 1
            for d in req_dir:
                shutil.rmtree(d, ignore_errors=True)

    async def _upscale(self, request: Request, req_dir: list[Path]) -> Response:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        deadline = t0 + self.config.timeout
        body = await self._read_body(request, deadline)
        ctype = request.headers.get("content-type", "")
        params = dict(request.query_params)
        if ctype.lower().startswith("multipart/form-data"):
            fields, upload = _parse_multipart(body, ctype)
            params.update(fields)
        elif ctype.lower().startswith(("image/", "application/octet-stream")):
            upload = _Upload(body, params.get("filename", "image"))
        else:
            raise ApiError(
                415,
                "send the image as multipart/form-data (field 'image') or as the raw body with "
                "an image/* content type",
            )
        del body
        if upload is None or not upload.data:
            raise ApiError(422, "no image in the request (multipart form field 'image')")
        if len(upload.data) > self.config.max_upload_bytes:
            raise self._too_large()

        model, scale, ensemble, fmt = self._options(params)
        width, height, has_alpha = self._inspect(upload.data)
        if fmt in _MAX_SIDE and max(width, height) * scale > _MAX_SIDE[fmt]:
            raise ApiError(
                422,
                f"the {width * scale}x{height * scale} result is too large for {fmt.upper()} "
                f"(at most {_MAX_SIDE[fmt]} pixels a side); ask for png",
            )
        if fmt in ("jpeg", "jpg") and has_alpha:
            raise ApiError(422, "JPEG cannot store transparency; ask for png or webp")

        job = self._new_job(params.get("job"))
        watch = asyncio.ensure_future(_wait_disconnect(request.receive))
        try:
            assert self.slots is not None and self.pool is not None
            try:
                await _race(self.slots.acquire(), deadline, watch)
            except TimeoutError:
                self._finish(job, "failed")
                raise ApiError(
                    503,
                    f"the server stayed busy for the whole time limit ({self.config.timeout:g} s);"
                    " try again later",
                    {"Retry-After": self._retry_after()},
                ) from None
            except _Disconnected:
                self._finish(job, "cancelled")
                raise ClientDisconnect from None
            try:
                folder = Path(tempfile.mkdtemp(prefix="req-", dir=self._tmp_root()))
            except OSError as e:
                self.slots.release()
                self._finish(job, "failed")
                raise self._disk_error(e) from None
            self.running += 1
            job.state = "running"
            started = loop.time()
            fut = loop.run_in_executor(
                self.pool, self._work, job, folder, upload, model, scale, ensemble, fmt
            )
            del upload

            def done(f: asyncio.Future) -> None:
                self.running -= 1
                assert self.slots is not None
                self.slots.release()
                if not f.cancelled() and f.exception() is None:
                    secs = loop.time() - started
                    self.avg_seconds = 0.7 * self.avg_seconds + 0.3 * secs
                if job.abandoned:
                    shutil.rmtree(folder, ignore_errors=True)

            fut.add_done_callback(done)
            try:
                out_path, w, h = await _race(asyncio.shield(fut), deadline, watch)
            except TimeoutError:
                job.cancel.set()
                job.abandoned = True
                self._finish(job, "cancelled")
                raise ApiError(
                    504,
                    f"the upscale took longer than this server's limit of {self.config.timeout:g} s;"
                    " try a smaller image, a smaller scale or no self-ensemble",
                ) from None
            except _Disconnected:
                job.cancel.set()
                job.abandoned = True
                self._finish(job, "cancelled")
                raise ClientDisconnect from None
            except ApiError:
                self._finish(job, "failed")
                raise
            except _Cancelled:
                self._finish(job, "cancelled")
                raise ApiError(503, "the server is shutting down", {"Retry-After": "5"}) from None
            except EdsrError as e:
                self._finish(job, "failed")
                raise ApiError(422, str(e)) from None
            except (MemoryError, RuntimeError) as e:
                self._finish(job, "failed")
                if isinstance(e, MemoryError) or "memory" in str(e).lower():
                    raise ApiError(
                        503,
                        "the server ran out of memory for this image; try a smaller one or later",
                        {"Retry-After": self._retry_after()},
                    ) from None
                raise
            except OSError as e:
                self._finish(job, "failed")
                raise self._disk_error(e) from None
            except BaseException:
                # Cancelled ourselves (shutdown): make sure the thread stops too.
                job.cancel.set()
                job.abandoned = True
                raise
            req_dir.append(folder)
        finally:
            watch.cancel()

        self._finish(job, "done")
        media = _OUTPUT_FORMATS[fmt][1]
        elapsed = loop.time() - t0
        log.info("%s: %s x%d%s %dx%d -> %s in %.2f s", job.id, model.id if model else BICUBIC,
                 scale, " +ensemble" if ensemble else "", width, height, fmt, elapsed)  # fmt: skip
        return FileResponse(
            out_path,
            media_type=media,
            filename=out_path.name,
            content_disposition_type="inline",
            headers={
                "Cache-Control": "no-store",
                "X-Job-Id": job.id,
                "X-Model": model.id if model else BICUBIC,
                "X-Scale": str(scale),
                "X-Image-Width": str(w),
                "X-Image-Height": str(h),
                "X-Elapsed-S": f"{elapsed:.3f}",
            },
        )

    def _tmp_root(self) -> Path:
        if self.tmp_root is None:  # an app driven without its lifespan (should not happen)
            self.tmp_root = Path(tempfile.mkdtemp(prefix="edsr-serve-", dir=self.config.tmp_dir))
        return self.tmp_root

    def _disk_error(self, e: OSError) -> ApiError:
        log.error("temporary files: %s", e)
        return ApiError(
            503,
            f"the server cannot write its temporary files ({e.strerror or e}); try again later",
            {"Retry-After": self._retry_after()},
        )

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            f"the upload is larger than this server's limit of "
            f"{_format_mb(self.config.max_upload_bytes)} (--max-upload-mb)",
        )

    async def _read_body(self, request: Request, deadline: float) -> bytes:
        """The whole body, at most the upload limit plus the multipart framing.

        Too large a body is answered 413 once the rest of it has been read and dropped (up to
        four times the limit): a server that answers while the client is still sending resets
        the connection, and the client never sees why.
        """
        limit = self.config.max_upload_bytes + _MULTIPART_SLACK
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise ApiError(400, "invalid Content-Length header") from None
            if size > limit:
                if size <= 4 * limit:
                    await _drain(request.receive, 4 * limit)
                raise self._too_large()
        body = bytearray()
        more = True

        async def read() -> None:
            nonlocal more
            while more and len(body) <= limit:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect
                body.extend(message.get("body", b""))
                more = bool(message.get("more_body", False))

        try:
            await asyncio.wait_for(read(), max(0.0, deadline - asyncio.get_running_loop().time()))
        except asyncio.TimeoutError:
            raise ApiError(408, "the upload did not arrive within the time limit") from None
        if len(body) > limit:
            body.clear()
            if more:
                await _drain(request.receive, 4 * limit)
            raise self._too_large()
        return bytes(body)

    def _options(self, p: dict[str, str]) -> tuple[ServedModel | None, int, bool, str]:
        name = p.get("model", "").strip()
        if not name:
            model: ServedModel | None = self.models[0]
        elif name.lower() == BICUBIC:
            model = None
        else:
            model = self.by_id.get(name.lower())
            if model is None:
                have = ", ".join([m.id for m in self.models] + [BICUBIC])
                hint = " (known to the registry, but not loaded here)" if find_entry(name) else ""
                raise ApiError(422, f"unknown model {name!r}{hint}; this server has: {have}")
        scales = model.scales if model is not None else self.bicubic_scales
        text = p.get("scale", "").strip()
        if not text:
            scale = scales[0]
        else:
            try:
                scale = int(text)
            except ValueError:
                raise ApiError(422, f"scale must be a whole number, not {text!r}") from None
            if scale not in scales:
                have = ", ".join(f"x{s}" for s in scales)
                raise ApiError(
                    422, f"model {model.id if model else BICUBIC} upscales {have}, not x{scale}"
                )
        ensemble = _parse_bool("ensemble", p.get("ensemble", "false"))
        if model is None and ensemble:
            ensemble = False  # the flips of bicubic are bicubic
        fmt = (p.get("format") or "png").strip().lower()
        if fmt not in _OUTPUT_FORMATS:
            raise ApiError(422, f"format must be png, jpeg or webp, not {fmt!r}")
        return model, scale, ensemble, fmt

    def _inspect(self, data: bytes) -> tuple[int, int, bool]:
        """Size and transparency from the header only: the pixel limit is checked before any
        pixel is decoded, so a small file claiming a huge image costs nothing."""
        try:
            with PIL.Image.open(BytesIO(data)) as im:
                fmt, (w, h), mode, info = im.format, im.size, im.mode, im.info
        except PIL.UnidentifiedImageError:
            raise ApiError(
                415, "not an image, or in a format that cannot be read; send PNG, JPEG, WebP, "
                "BMP or TIFF"
            ) from None  # fmt: skip
        except PIL.Image.DecompressionBombError:
            raise self._too_many_pixels(None) from None
        except Exception as e:  # a damaged header; Pillow raises many types
            raise ApiError(422, f"the image is corrupt ({_oneline(e)})") from None
        if fmt not in _INPUT_FORMATS:
            raise ApiError(
                415, f"{fmt} images are not supported; send PNG, JPEG, WebP, BMP or TIFF"
            )
        if w * h > self.config.max_pixels:
            raise self._too_many_pixels((w, h))
        if w == 0 or h == 0:
            raise ApiError(422, f"the image has zero size ({w}x{h})")
        alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in info
        return w, h, alpha

    def _too_many_pixels(self, size: tuple[int, int] | None) -> ApiError:
        what = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels" if size else "too many pixels"
        return ApiError(
            422,
            f"the image has {what}, above this server's limit of {self.config.max_pixels:,} "
            "pixels (--max-pixels); send a smaller image",
        )

    def _new_job(self, wanted: str | None) -> Job:
        now = time.monotonic()
        old = [
            k for k, j in self.jobs.items()
            if j.finished is not None and now - j.finished > _FINISHED_JOB_TTL
        ]  # fmt: skip
        for k in old:
            del self.jobs[k]
        finished = [k for k, j in self.jobs.items() if j.finished is not None]
        for k in finished[: max(0, len(finished) - _FINISHED_JOBS_KEPT)]:
            del self.jobs[k]
        if wanted:
            if not _JOB_ID.match(wanted):
                raise ApiError(422, "job must be 8 to 64 letters, digits, '-' or '_'")
            if wanted in self.jobs and self.jobs[wanted].finished is None:
                raise ApiError(409, f"job {wanted!r} is already running")
        self._seq += 1
        job = Job(wanted or uuid.uuid4().hex, self._seq)
        self.jobs[job.id] = job
        return job

    @staticmethod
    def _finish(job: Job, state: str) -> None:
        job.state = state
        job.finished = time.monotonic()

    # -- the worker thread ------------------------------------------------------------------

    def _work(
        self,
        job: Job,
        folder: Path,
        upload: _Upload,
        served: ServedModel | None,
        scale: int,
        ensemble: bool,
        fmt: str,
    ) -> tuple[Path, int, int]:
        """Decode, upscale and encode in ``folder``; returns the output file and its size."""
        _local.job = job
        stem = _safe_stem(upload.filename)
        try:
            if job.cancel.is_set():
                raise _Cancelled
            src = folder / "upload.bin"
            src.write_bytes(upload.data)
            upload.data = b""  # the request still references the upload; free the bytes
            try:
                img = read_image(src)
            except EdsrError as e:
                # Say "the image", not the server's temporary path.
                msg = str(e).replace(f"{src}: ", "").replace(str(src), "the image")
                raise ApiError(422, msg) from None
            finally:
                src.unlink(missing_ok=True)
            pixels = img.pixels
            if img.alpha is not None:
                pixels = np.concatenate([img.pixels, img.alpha[:, :, None]], axis=2)
            del img
            h, w = pixels.shape[:2]
            if served is None:
                out = _bicubic(pixels, scale)
                job.total = job.done = 1
            else:
                plan = plan_tiles(
                    served.model, (1, 3, h, w), scale, max_memory=self.budget, ensemble=ensemble
                )
                job.total = plan.count * (8 if ensemble else 1)
                out = upscale(
                    pixels, served.model, scale, max_memory=self.budget, ensemble=ensemble
                )
            del pixels
            if job.cancel.is_set():
                raise _Cancelled
            job.state = "encoding"
            c = 1 if out.shape[2] in (1, 2) else 3
            alpha = out[:, :, c] if out.shape[2] in (2, 4) else None
            rgb = out[:, :, :c]
            if fmt != "png" and out.dtype == np.uint16:
                # JPEG and WebP hold 8 bits: round 0..65535 to 0..255
                rgb = ((rgb.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
                if alpha is not None:
                    alpha = ((alpha.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
            result = Image(
                np.ascontiguousarray(rgb), None if alpha is None else np.ascontiguousarray(alpha)
            )
            del out, rgb, alpha
            ext = _OUTPUT_FORMATS[fmt][0]
            suffix = "_bicubic" if served is None else ""
            dst = folder / f"{stem}_x{scale}{suffix}{ext}"
            try:
                write_image(dst, result)
            except EdsrError as e:
                raise ApiError(422, str(e).replace(f"{dst}: ", "")) from None
            return dst, result.pixels.shape[1], result.pixels.shape[0]
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            _local.job = None
            _release_memory()


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_malloc_trim() if sys.platform.startswith("linux") else None


def _release_memory() -> None:
    """Hand the freed heap back to the system after each job.

    glibc keeps what a job freed in its arenas, and with images of ever new sizes the
    fragments pile up. Measured with benchmarks/load_serve.py (300 requests, 2 workers,
    edsr-baseline x2 on 48-72 pixel inputs): without this call the server's peak RSS grew from
    483 MB in the first half of the run to 616 MB in the second; with it, 374 MB then 375 MB.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _bicubic(pixels: np.ndarray, scale: int) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return imresize_np(pixels, scale)
    out = imresize_np(pixels.astype(np.float32), scale)
    return np.clip(np.round(out), 0, 65535).astype(np.uint16)


def _describe(
    mid: str, entry: WeightsEntry | None, model: nn.Module | None, *, loaded: bool, default: bool
) -> dict[str, Any]:
    d: dict[str, Any] = {"id": mid, "loaded": loaded, "default": default}
    if entry is not None:
        d.update(
            arch=entry.arch,
            scales=list(entry.scales),
            description=entry.description,
            parameters=entry.parameters,
            source=entry.source,
            license=entry.license,
            registry_name=entry.name,
        )
    if model is not None:
        cfg = model.config()
        d.update(
            arch=cfg["arch"],
            scales=list(model.scales),
            n_resblocks=cfg["n_resblocks"],
            n_feats=cfg["n_feats"],
            parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        )
        d.setdefault("source", "file")
        d.setdefault("description", f"{cfg['arch'].upper()} {cfg['n_resblocks']}x{cfg['n_feats']}")
    d["psnr"] = [
        {
            "dataset": m.dataset,
            "scale": m.scale,
            "psnr": m.psnr,
            "ssim": m.ssim,
            "protocol": m.protocol,
            "kind": m.kind,
            "self_ensemble": m.self_ensemble,
        }
        for m in (entry.metrics if entry is not None else ())
    ]
    return d


# ---------------------------------------------------------------------------------------------
# ASGI helpers
# ---------------------------------------------------------------------------------------------


class _Disconnected(Exception):
    pass


async def _wait_disconnect(receive: Receive) -> None:
    # Once the body has been read, the next ASGI message is the disconnect (or never comes).
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _race(aw: Awaitable[Any], deadline: float, watch: asyncio.Future) -> Any:
    """Await ``aw`` until ``deadline``; TimeoutError after it, _Disconnected if ``watch`` ends."""
    task = asyncio.ensure_future(aw)
    timeout = max(0.0, deadline - asyncio.get_running_loop().time())
    try:
        done, _ = await asyncio.wait(
            {task, watch}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    except BaseException:
        task.cancel()
        raise
    if task in done:
        return task.result()
    task.cancel()
    if watch in done:
        raise _Disconnected
    raise TimeoutError


async def _drain(receive: Receive, limit: int) -> None:
    """Read and drop a request body we answer without using, up to ``limit`` bytes and 5 s:
    answering while the client still sends can reset the connection before it reads the answer."""

    async def run() -> None:
        seen = 0
        while seen <= limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(run(), 5.0)


def _oneline(e: object) -> str:
    return " ".join(str(e).split())[:200]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error(exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"not found: {request.url.path}", 405: f"method {request.method} not allowed"}
    return _error(exc.status_code, message.get(exc.status_code, str(exc.detail)), exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s", request.url.path, exc_info=exc)
    return _error(500, f"internal error: {type(exc).__name__}; see the server's log")


_PAGE_HEADERS = {
    # The page loads only its own files; images are blob: URLs made from the API's answers.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class _Guard:
    """Pure ASGI middleware: Host check (DNS rebinding) and headers on every response."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...] | None) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.allowed is not None:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.allowed:
                response = _error(421, f"this server does not answer to host {host!r}")
                await response(scope, receive, send)
                return
        page = not scope["path"].startswith("/v1/") and scope["path"] != "/healthz"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                if page:
                    headers += [(k.lower().encode(), v.encode()) for k, v in _PAGE_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _Asgi:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def create_app(models: Sequence[ServedModel], config: ServeConfig | None = None) -> Starlette:
    """The ASGI app serving ``models`` (loaded once, shared by all requests) under ``config``."""
    from starlette.middleware import Middleware

    server = EdsrServer(models, config or ServeConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await server.startup()
        try:
            yield
        finally:
            await server.shutdown()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    routes = [
        Route("/", index, methods=["GET", "HEAD"]),
        Route("/healthz", server.healthz, methods=["GET", "HEAD"]),
        Route("/v1/models", server.list_models, methods=["GET"]),
        Route("/v1/progress/{job}", server.progress, methods=["GET"]),
        # An object, not a method, so that Starlette hands it the raw ASGI call.
        Route("/v1/upscale", _Asgi(server.upscale_app), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers: dict[Any, Callable] = {
        ApiError: _api_error,
        HTTPException: _http_error,
        Exception: _internal_error,
    }
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_Guard, allowed_hosts=server.config.allowed_hosts)],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.server = server
    return app
