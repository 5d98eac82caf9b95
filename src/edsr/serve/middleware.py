"""The ASGI middleware of ``edsr serve``: what must happen before a request body is read or
after its answer has gone out, which route handlers cannot do.

- :class:`UploadGate`, for ``POST /v1/upscale``: the upload read in full first, within the
  upload limit, the upload time limit, the count of uploads in flight and one client's share
  of them (429 beyond it), and only then admission (503 when every worker is busy and the
  queue is full, or the server is stopping), so a slow client costs a socket, not a worker's
  place; a refused body drained (bounded) before the answer, since answering while the client
  still sends can reset the connection first.
- :class:`Guard`: the Host check against DNS rebinding, and the page's security headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Mapping

from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edsr.serve.config import ServeConfig
from edsr.serve.jobs import Busy, JobQueue, ShuttingDown, TooManyUploads

UPSCALE_PATH = "/v1/upscale"
# Room for the multipart framing and the small text fields around the image itself.
MULTIPART_SLACK = 64 * 1024
# The Swagger page runs an inline script, which the page's policy would forbid.
_DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/openapi.json")


class ApiError(HTTPException):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, message, dict(headers) if headers else None)
        self.status = status
        self.message = message


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _format_mb(n: int) -> str:
    if n < 2**20:
        return f"{n / 1024:.0f} KB"
    mb = n / 2**20
    return f"{mb:.0f} MB" if mb >= 10 or mb == int(mb) else f"{mb:.1f} MB"


def too_large(config: ServeConfig) -> str:
    return (
        f"the upload is larger than this server's limit of "
        f"{_format_mb(config.max_upload_bytes)} (--max-upload-mb)"
    )


async def drain(receive: Receive, limit: int) -> None:
    """Read and drop a request body we answer without using, up to ``limit`` bytes and 5 s:
    answering while the client still sends can reset the connection before it reads the
    answer."""

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


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


# Uploads are kept in memory up to this size, then in a temporary file (already unlinked, so
# nothing is left behind): waiting uploads cost little memory however many there are.
_SPOOL_BYTES = 1 << 20


class UploadGate:
    """Upload limits, then admission, for ``POST /v1/upscale``.

    The body is read here, whole (at most the upload limit, within ``upload_timeout``, one of
    at most ``max_uploads`` arriving at once), and handed on once it is in; the admission is
    taken then and held until the answer has been sent, so the count of requests in memory is
    honest. The compute deadline (event-loop time, ``timeout`` from admission) is left in
    ``scope["state"]["deadline"]``.
    """

    def __init__(self, app: ASGIApp, queue: JobQueue, config: ServeConfig) -> None:
        self.app = app
        self.queue = queue
        self.config = config
        self.limit = config.max_upload_bytes + MULTIPART_SLACK

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != UPSCALE_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            if int(declared) <= 4 * self.limit:
                await drain(receive, 4 * self.limit)
            await error_response(413, too_large(self.config))(scope, receive, send)
            return
        # Behind a reverse proxy every client has the proxy's address: raise the share there.
        client = scope["client"][0] if scope.get("client") else None
        with tempfile.SpooledTemporaryFile(_SPOOL_BYTES, dir=self.config.tmp_dir) as body:
            try:
                with self.queue.receiving(client):
                    arrived = await self._read_body(receive, body)
            except TooManyUploads as e:
                await drain(receive, self.limit)
                message = (
                    f"this client has {self.config.max_uploads_per_client} uploads arriving "
                    "already (--max-uploads-per-client); send the next when one is in"
                )
                await error_response(429, message, {"Retry-After": str(e.retry_after)})(
                    scope, receive, send
                )
                return
            except Busy as e:
                await drain(receive, self.limit)
                message = "too many uploads are arriving at once; try again shortly"
                await busy_response(e.retry_after, message)(scope, receive, send)
                return
            except ShuttingDown:
                await shutting_down_response()(scope, receive, send)
                return
            except _Refused as e:
                await e.response(scope, receive, send)
                return
            if not arrived:
                return  # the client went away before its upload was in: nobody to answer
            with contextlib.ExitStack() as admission:
                try:
                    admission.enter_context(self.queue.admit())
                except Busy as e:
                    await busy_response(e.retry_after)(scope, receive, send)
                    return
                except ShuttingDown:
                    await shutting_down_response()(scope, receive, send)
                    return
                loop = asyncio.get_running_loop()
                scope.setdefault("state", {})["deadline"] = loop.time() + self.config.timeout
                body.seek(0)
                delivered = False

                async def replay() -> Message:
                    nonlocal delivered
                    if delivered:  # the body is in; what comes now is the disconnect
                        return await receive()
                    chunk = await run_in_threadpool(body.read, _SPOOL_BYTES)
                    delivered = len(chunk) < _SPOOL_BYTES
                    return {"type": "http.request", "body": chunk, "more_body": not delivered}

                await self.app(scope, replay, send)

    async def _read_body(
        self, receive: Receive, body: tempfile.SpooledTemporaryFile[bytes]
    ) -> bool:
        """Write the body into ``body``; False if the client went away first. Raises
        :class:`_Refused` with the answer when the body is over the limit (413) or not in
        within the upload time limit (408)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.upload_timeout
        received = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                seconds = f"{self.config.upload_timeout:g}"
                # Closing the connection is the point: the rest of the body is not wanted.
                raise _Refused(
                    error_response(
                        408,
                        f"the upload did not arrive within this server's limit of {seconds} s "
                        "(--upload-timeout)",
                        {"Connection": "close"},
                    )
                ) from None
            if message["type"] != "http.request":
                return False
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.limit:
                if message.get("more_body", False):
                    await drain(receive, 4 * self.limit)
                raise _Refused(error_response(413, too_large(self.config)))
            if received > _SPOOL_BYTES:  # on disk from here: off the event loop
                await run_in_threadpool(body.write, chunk)
            else:
                body.write(chunk)
            if not message.get("more_body", False):
                return True


_PAGE_HEADERS = {
    # The page loads only its own files; images are blob: URLs made from the API's answers.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class Guard:
    """Host check (against DNS rebinding) and the page's security headers on every answer."""

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
                response = error_response(421, f"this server does not answer to host {host!r}")
                await response(scope, receive, send)
                return
        path = scope["path"]
        page = not path.startswith("/v1/") and path != "/healthz" and path not in _DOCS_PATHS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                if page:
                    headers += [(k.lower().encode(), v.encode()) for k, v in _PAGE_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


#: The answer to a request the server will not finish because it is stopping.
SHUTTING_DOWN = "the server is shutting down"


def shutting_down_response() -> JSONResponse:
    return error_response(503, SHUTTING_DOWN, {"Retry-After": "5"})


def busy_response(retry_after: int, message: str | None = None) -> JSONResponse:
    return error_response(
        503,
        message or "the server is busy (every worker running, the queue full); try again shortly",
        {"Retry-After": str(retry_after)},
    )
