"""The HTTP side of ``edsr serve`` on FastAPI: the API, the page, and errors as JSON.

Every error is answered ``{"error": message}``: 408 for an upload not in within
--upload-timeout, 413 for an upload over --max-upload-mb, 415 for what is not an image, 422 for
a bad option, a corrupt image or one over --max-pixels, 503 with Retry-After when the workers
are busy and the queue is full (or too many uploads are arriving), 504 past --timeout. The
schema is at ``/openapi.json`` and its documentation at ``/docs`` (assets served here). The
work itself is :mod:`edsr.serve.jobs` (queue, time limit, cancellation) and
:mod:`edsr.serve.worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from io import BytesIO
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field, StringConstraints, ValidationError
from pydantic.json_schema import SkipJsonSchema
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import Receive

from edsr import defaults
from edsr.errors import EdsrError
from edsr.inference import default_memory_budget, describe, parse_memory, plan_tiles
from edsr.io.image import IMAGE_EXTENSIONS, first_frame_note
from edsr.serve.config import ServeConfig
from edsr.serve.jobs import Busy, Gone, JobIdInUse, JobQueue, JobState, ShuttingDown, TimedOut
from edsr.serve.middleware import (
    SHUTTING_DOWN,
    UPSCALE_PATH,
    ApiError,
    Guard,
    UploadGate,
    error_response,
    too_large,
)
from edsr.serve.models import BICUBIC, ServedModel, bicubic_scales, load_command, model_listing
from edsr.serve.worker import (
    Header,
    ImageRejected,
    OutputFormat,
    Result,
    UnsupportedImage,
    check_output,
    inspect,
    upscale_upload,
)
from edsr.version import __version__
from edsr.weights.registry import find_entry

log = logging.getLogger("edsr.serve")

STATIC = Path(__file__).resolve().parent / "static"
DOCS_ASSETS = "/docs/assets"


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, in one line")


class PsnrRecord(BaseModel):
    dataset: str
    scale: int
    psnr: float
    ssim: float | None
    protocol: str = Field(description="how it was measured: channel, border shaved, LR")
    kind: str = Field(description="'published' (the authors' numbers) or 'measured' here")
    self_ensemble: bool


class ModelInfo(BaseModel):
    """One model: a loaded one (with how it runs here), bicubic, or a registry entry this
    server does not hold (with the command that would serve it). Fields that do not apply to
    an entry are left out."""

    id: str = Field(description="the name a request's 'model' gives")
    loaded: bool = Field(description="whether this server can use it now")
    default: bool
    arch: str
    scales: list[int]
    default_scale: int
    description: str
    parameters: int | None = None
    source: str | None = Field(None, description="'official', 'trained here' or 'file'")
    license: str | None = None
    registry_name: str | None = None
    precision: str | None = Field(None, description="the compute path it runs (loaded only)")
    device: str | None = None
    n_resblocks: int | None = None
    n_feats: int | None = None
    load_with: str | None = Field(
        None, description="for a model not loaded: the command that serves it beside these"
    )
    psnr: list[PsnrRecord] = Field(description="its scores on record")


class Limits(BaseModel):
    max_upload_bytes: int
    max_pixels: int
    timeout_s: float
    upload_timeout_s: float
    max_uploads: int
    max_uploads_per_client: int
    workers: int
    queue: int
    formats: list[str]
    input_extensions: list[str]


class ModelList(BaseModel):
    default: str = Field(description="the model a request naming none gets")
    models: list[ModelInfo]
    limits: Limits


_JOB_ID = r"^[A-Za-z0-9_-]{8,64}$"


class UpscaleOptions(BaseModel):
    """The options of ``POST /v1/upscale``: form fields beside the image, or query parameters
    when the image is the raw request body.

    A form has no null: an option left out takes its default, so the schema offers no null
    (SkipJsonSchema) although the fields hold None inside.
    """

    model: str | SkipJsonSchema[None] = Field(
        None, description="a loaded model's id, or 'bicubic' (default: the first model)"
    )
    scale: int | SkipJsonSchema[None] = Field(
        None,
        description="one of the model's scales (default: its only one, else x4, else its "
        "largest: the CLI's default)",
    )
    ensemble: bool = Field(False, description="self-ensemble (x8 the work, a little sharper)")
    format: OutputFormat = Field(OutputFormat.png, description="the result's format")
    job: Annotated[str, StringConstraints(pattern=_JOB_ID)] | SkipJsonSchema[None] = Field(
        None,
        description="an id for progress polls (GET /v1/progress/{job}); 8-64 letters, digits, "
        "'-' or '_'",
    )
    filename: str | SkipJsonSchema[None] = Field(
        None, description="the upload's name, for a raw body"
    )


# Messages for values the schema refuses, by field; the rest get pydantic's own words.
_FIELD_MESSAGES = {
    "scale": "scale must be a whole number, not {input!r}",
    "ensemble": "ensemble must be true or false, not {input!r}",
    "format": "format must be png, jpeg or webp, not {input!r}",
    "job": "job must be 8 to 64 letters, digits, '-' or '_'",
}


def _validation_message(errors: Sequence[Any]) -> str:
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ())]
    # a union's error is located inside the field ("scale", "int"): name the field itself
    field = next((p for p in loc if p in UpscaleOptions.model_fields), loc[-1] if loc else "")
    if field in _FIELD_MESSAGES:
        return _FIELD_MESSAGES[field].format(input=first.get("input"))
    return f"{field}: {first.get('msg', 'invalid value')}" if field else "invalid request"


def _safe_stem(filename: str) -> str:
    stem = Path(filename.replace("\\", "/")).stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:80]
    return stem or "image"


async def _wait_disconnect(receive: Receive) -> None:
    # Once the body has been read, the next ASGI message is the disconnect (or never comes).
    while (await receive())["type"] != "http.disconnect":
        pass


def _stream(f: BinaryIO) -> Iterator[bytes]:
    try:
        while chunk := f.read(1 << 20):
            yield chunk
    finally:
        f.close()


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------


class EdsrServer:
    """What the requests of one app share: models, limits, the job queue, the temp directory."""

    def __init__(
        self, models: Sequence[ServedModel], config: ServeConfig, *, route: bool = False
    ) -> None:
        if not models:
            raise EdsrError("give at least one model to serve")
        self.models = list(models)
        # route: a request naming no model gets the one edsr.defaults.route picks for its file
        self.route = route
        self.by_id = {m.id.lower(): m for m in self.models}
        self.config = config
        self.bicubic_scales = bicubic_scales(self.models)
        self.queue = JobQueue(
            workers=config.workers,
            queue=config.queue,
            timeout=config.timeout,
            uploads=config.max_uploads,
            uploads_per_client=config.max_uploads_per_client,
            upload_timeout=config.upload_timeout,
        )
        self.tmp_root: Path | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's, once it runs
        self.started = time.monotonic()
        self.budget = self._budget()
        # Probing a model (for tiling) runs it once per scale: do it now, before any request,
        # so concurrent requests never probe at once and a budget too small for a model is
        # found at start rather than on the first upload.
        for m in self.models:
            for s in m.scales:
                plan_tiles(m.model, (1, 3, 64, 64), s, max_memory=self.budget)

    def _budget(self) -> int:
        if self.config.max_memory is not None:
            return parse_memory(self.config.max_memory)
        device = describe(self.models[0].model).device
        # Each worker gets its share of the library's default, capped on the CPU so that one
        # request cannot take half the machine's memory; tiles only get smaller, not wrong.
        share = default_memory_budget(device) // self.config.workers
        return share if device.type == "cuda" else min(share, 2 * 1024**3)

    def stop_soon(self) -> None:
        """The server was told to stop (SIGTERM, Ctrl-C): the requests in flight answer 503
        now instead of being cancelled at the end of the grace period. Safe from a signal
        handler or another thread."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.queue.shut_down)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        self.loop = asyncio.get_running_loop()
        self.queue.start()
        self.tmp_root = Path(tempfile.mkdtemp(prefix="edsr-serve-", dir=self.config.tmp_dir))
        log.info("temporary files under %s", self.tmp_root)
        try:
            yield
        finally:
            await self.queue.close()
            shutil.rmtree(self.tmp_root, ignore_errors=True)

    def limits(self) -> Limits:
        # Built as the schema's type, so a limit added here cannot be dropped from the listing
        c = self.config
        return Limits(
            max_upload_bytes=c.max_upload_bytes,
            max_pixels=c.max_pixels,
            timeout_s=c.timeout,
            upload_timeout_s=c.upload_timeout,
            max_uploads=c.max_uploads,
            max_uploads_per_client=c.max_uploads_per_client,
            workers=c.workers,
            queue=c.queue,
            formats=[f.value for f in OutputFormat],
            input_extensions=sorted(IMAGE_EXTENSIONS),
        )

    def choose(
        self, o: UpscaleOptions, header: Header | None = None
    ) -> tuple[ServedModel | None, int, str]:
        """The model (None: bicubic), scale and why: the options name them, or, with
        ``route``, the default route picks the model for the file ``header`` describes."""
        name = (o.model or "").strip()
        model: ServedModel | None
        why = "named by the request"
        if not name and self.route and header is not None:
            routed, why = defaults.route(header.jpeg_quality)
            model = self.by_id.get((routed or self.models[0].id).lower(), self.models[0])
        elif not name:
            model = self.models[0]
            why = "this server's default"
        elif name.lower() == BICUBIC:
            model = None
        else:
            model = self.by_id.get(name.lower())
            if model is None:
                have = ", ".join([m.id for m in self.models] + [BICUBIC])
                entry = find_entry(name)
                hint = ""
                if entry is not None:  # a model is loaded when the server starts, not later
                    hint = (
                        f" (known to the registry, but not loaded here; to serve it, restart "
                        f"the server as `{load_command(self.models, entry.name)}`)"
                    )
                raise ApiError(422, f"unknown model {name!r}{hint}; this server has: {have}")
        scales = model.scales if model is not None else self.bicubic_scales
        if o.scale is None:
            return model, defaults.default_scale(scales), why
        if o.scale not in scales:
            have = ", ".join(f"x{s}" for s in scales)
            raise ApiError(
                422, f"model {model.id if model else BICUBIC} upscales {have}, not x{o.scale}"
            )
        return model, o.scale, why

    async def upscale(
        self, request: Request, options: UpscaleOptions, image: UploadFile | None
    ) -> Response:
        t0 = time.monotonic()
        upload: BinaryIO
        if image is not None:
            upload, filename, size = image.file, image.filename or "image", image.size or 0
        else:
            ctype = request.headers.get("content-type", "").lower()
            if ctype.startswith("multipart/form-data"):
                raise ApiError(422, "no image in the request (multipart form field 'image')")
            if not ctype.startswith(("image/", "application/octet-stream")):
                raise ApiError(
                    415,
                    "send the image as multipart/form-data (field 'image') or as the raw body "
                    "with an image/* content type",
                )
            try:
                options = UpscaleOptions.model_validate(dict(request.query_params))
            except ValidationError as e:
                raise RequestValidationError(e.errors()) from None
            data = await request.body()
            upload, filename, size = BytesIO(data), options.filename or "image", len(data)
        if size == 0:
            raise ApiError(
                422,
                "no image in the request (multipart form field 'image')"
                if image is not None
                else "the request body is empty: send the image's bytes as the body",
            )
        if size > self.config.max_upload_bytes:
            raise ApiError(413, too_large(self.config))
        self.choose(options)  # an unknown model or scale is said before the upload is read
        # off the event loop: counting an animation's frames reads the whole file
        header = await run_in_threadpool(inspect, upload, self.config.max_pixels)
        served, scale, why = self.choose(options, header)
        ensemble = options.ensemble and served is not None  # the flips of bicubic are bicubic
        fmt = options.format
        check_output(header, scale, fmt)
        try:
            job = self.queue.new_job(options.job)
        except JobIdInUse:
            raise ApiError(409, f"job {options.job!r} is already running") from None
        work = functools.partial(
            upscale_upload, upload=upload, model=served.model if served else None, scale=scale,
            ensemble=ensemble, fmt=fmt, max_memory=self.budget, tmp_dir=str(self.tmp_root),
        )  # fmt: skip
        try:
            result = await self.queue.run(
                job,
                work,
                deadline=request.state.deadline,
                gone=_wait_disconnect(request.receive),
                discard=Result.close,
            )
        except Busy as e:
            raise ApiError(
                503,
                f"the server stayed busy for the whole time limit ({self.config.timeout:g} s);"
                " try again later",
                {"Retry-After": str(e.retry_after)},
            ) from None
        except TimedOut:
            raise ApiError(
                504,
                f"the upscale took longer than this server's limit of {self.config.timeout:g} s;"
                " try a smaller image, a smaller scale or no self-ensemble",
            ) from None
        except Gone:
            return Response(status_code=499)  # nobody is listening
        except ShuttingDown:
            raise ApiError(503, SHUTTING_DOWN, {"Retry-After": "5"}) from None
        except (MemoryError, RuntimeError) as e:
            if isinstance(e, MemoryError) or "memory" in str(e).lower():
                raise ApiError(
                    503,
                    "the server ran out of memory for this image; try a smaller one or later",
                    {"Retry-After": str(self.queue.retry_after())},
                ) from None
            raise
        except EdsrError as e:
            raise ApiError(422, str(e)) from None
        except OSError as e:
            log.error("temporary files: %s", e)
            raise ApiError(
                503,
                f"the server cannot write its temporary files ({e.strerror or e}); try later",
                {"Retry-After": str(self.queue.retry_after())},
            ) from None

        model_id = served.id if served else BICUBIC
        name = f"{_safe_stem(filename)}_x{scale}{'' if served else '_bicubic'}{fmt.suffix}"
        elapsed = time.monotonic() - t0
        log.info("%s: %s x%d%s %dx%d -> %s in %.2f s", job.id, model_id, scale,
                 " +ensemble" if ensemble else "", header.width, header.height, fmt.value,
                 elapsed)  # fmt: skip
        headers = {
            "Content-Length": str(result.size),
            "Content-Disposition": f'inline; filename="{name}"',
            "Cache-Control": "no-store",
            "X-Job-Id": job.id,
            "X-Model": model_id,
            "X-Model-Reason": why,
            "X-Scale": str(scale),
            "X-Image-Width": str(result.width),
            "X-Image-Height": str(result.height),
            "X-Elapsed-S": f"{elapsed:.3f}",
        }
        if header.frames > 1:
            headers["X-Warning"] = first_frame_note(header.format, header.frames)
        return StreamingResponse(
            _stream(result.file),
            media_type=fmt.media_type,
            headers=headers,
            background=BackgroundTask(result.close),
        )

    def progress(self, job_id: str) -> dict[str, Any]:
        job = self.queue.get(job_id)
        if job is None:
            raise ApiError(404, "unknown job; it may not have started yet, or ended a while ago")
        body = job.progress()
        if job.state is JobState.QUEUED:
            body["position"] = self.queue.position(job)
        return body

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "models": [m.id for m in self.models],
            "workers": self.config.workers,
            "running": self.queue.running,
            "admitted": self.queue.admitted,
            "uploading": self.queue.uploading,
            "capacity": self.config.capacity,
            "uptime_s": round(time.monotonic() - self.started, 1),
        }


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in [
        (408, "the upload did not arrive within --upload-timeout"),
        (413, "the upload is over --max-upload-mb"),
        (415, "not an image, or not in a format the server reads"),
        (422, "a bad option, a corrupt image, or one over --max-pixels"),
        (503, "every worker busy and the queue full (see Retry-After)"),
        (504, "the upscale ran past --timeout; the work was stopped"),
    ]
}
_IMAGE_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the upscaled image",
        "content": {f.media_type: {} for f in OutputFormat},
    }
}


def _name_the_choices(schema: dict[str, Any], server: EdsrServer) -> dict[str, Any]:
    """What the route's signature cannot tell the schema: in a form the image is required (it
    is optional in the signature only because the raw body is the other way to send it), and
    the models and scales this server has. A client that keeps to the schema is then served."""
    form_ref = schema["paths"][UPSCALE_PATH]["post"]["requestBody"]["content"]
    name = form_ref["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
    form = schema["components"]["schemas"][name]
    image = form["properties"]["image"]
    image.update(next(c for c in image.pop("anyOf", [image]) if c.get("type") != "null"))
    image["minLength"] = 1  # an empty part is no image
    form["required"] = sorted({*form.get("required", []), "image"})
    options = schema["components"]["schemas"]["UpscaleOptions"]["properties"]
    options["model"]["enum"] = [m.id for m in server.models] + [BICUBIC]
    options["scale"]["enum"] = list(server.bicubic_scales)
    return schema


def create_app(
    models: Sequence[ServedModel], config: ServeConfig | None = None, *, route: bool = False
) -> FastAPI:
    """The ASGI app serving ``models`` (loaded once, shared by all requests) under ``config``.
    ``route``: a request that names no model gets the one :func:`edsr.defaults.route` picks
    for its file (a JPEG below a quality: the JPEG-aware model), when it is served here."""
    server = EdsrServer(models, config or ServeConfig(), route=route)
    # The API page's scripts and styles come from this server (the fastapi-offline package
    # ships them), not from a CDN, so /docs works on a machine without internet.
    app = FastAPIOffline(
        title="edsr serve",
        version=__version__,
        summary="EDSR and MDSR super-resolution over HTTP",
        lifespan=server.lifespan,
        redoc_url=None,
        static_url=DOCS_ASSETS,
        favicon_url="/static/favicon.svg",
    )
    app.state.server = server

    @app.post(UPSCALE_PATH, response_class=Response, responses={**_IMAGE_ANSWER, **_ERRORS})
    async def upscale_image(
        request: Request,
        options: Annotated[UpscaleOptions, Form()],
        image: Annotated[UploadFile | None, File(description="the image to upscale")] = None,
    ) -> Response:
        """Upscale one image (multipart field ``image``, or the raw body with the options as
        query parameters)."""
        return await server.upscale(request, options, image)

    # exclude_unset: a field that does not apply to a model is left out, not sent as null
    @app.get("/v1/models", response_model_exclude_unset=True)
    async def list_models() -> ModelList:
        """The loaded models (the first is the default), bicubic, and the registry's others,
        with their PSNR on record and, for those not loaded, the command that serves them;
        and this server's limits."""
        return ModelList.model_validate(
            {
                "default": server.models[0].id,
                "models": model_listing(server.models),
                "limits": server.limits(),
            }
        )

    @app.get("/v1/progress/{job}", responses={404: {"model": ErrorBody}})
    async def progress(job: str) -> JSONResponse:
        """How far a job is: queued (with its position), running (tiles done of total),
        encoding, done, failed or cancelled."""
        return JSONResponse(server.progress(job), headers={"Cache-Control": "no-store"})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Alive, with the count of running and admitted requests."""
        return JSONResponse(server.health(), headers={"Cache-Control": "no-store"})

    app.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _name_the_choices(FastAPI.openapi(app), server)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(HTTPException)
    async def httperror_response(request: Request, exc: HTTPException) -> Response:
        message = {404: f"not found: {request.url.path}",
                   405: f"method {request.method} not allowed"}  # fmt: skip
        text = exc.detail if isinstance(exc, ApiError) else None
        text = text or message.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, text, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return error_response(422, _validation_message(exc.errors()))

    @app.exception_handler(UnsupportedImage)
    async def not_an_image(request: Request, exc: UnsupportedImage) -> Response:
        return error_response(415, str(exc))

    @app.exception_handler(ImageRejected)
    async def rejected(request: Request, exc: ImageRejected) -> Response:
        return error_response(422, str(exc))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s", request.url.path, exc_info=exc)
        return error_response(500, f"internal error: {type(exc).__name__}; see the server's log")

    app.add_middleware(UploadGate, queue=server.queue, config=server.config)
    app.add_middleware(Guard, allowed_hosts=server.config.allowed_hosts)
    return app
