"""Running the app with uvicorn on a socket bound here, so a busy port is a one-line error,
said before any model is loaded."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

import PIL.Image

from edsr.errors import EdsrError
from edsr.io.image import MAX_PIXELS_ENV
from edsr.serve.app import create_app
from edsr.serve.config import ServeConfig
from edsr.serve.models import load_models

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0 picks a free port); with ``listen``
    False, bound only (the port taken, connections refused) until :func:`listen` is called."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise EdsrError(f"cannot resolve --host {host!r} ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise _cannot_listen(host, port, e) from None
    sock.set_inheritable(True)
    if listen:
        start_listening(sock, host, port)
    return sock


def start_listening(sock: socket.socket, host: str, port: int) -> None:
    """Accept connections on ``sock``, made by :func:`bind`; closed on failure."""
    try:
        sock.listen(128)
    except OSError as e:  # another socket bound with SO_REUSEADDR got there first
        sock.close()
        raise _cannot_listen(host, port, e) from None


def _cannot_listen(host: str, port: int, e: OSError) -> EdsrError:
    return EdsrError(
        f"cannot listen on {host}:{port} ({e.strerror}); is another server using it? "
        "choose another --port"
    )


def _uvicorn_server(config: Any, app: Any) -> Any:
    """uvicorn's server, telling the app the moment a signal asks it to stop."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # uvicorn waits its grace period for the requests in flight, then cancels them (a
            # 500 and a CancelledError traceback in the log); told now, they answer 503.
            app.state.server.stop_soon()
            super().handle_exit(sig, frame)

    return Server(config)


def serve(
    models: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServeConfig | None = None,
    device: str | None = None,
    access_log: bool = True,
    precision: str | None = None,
    run_torchscript_code: bool = False,
) -> None:
    """Load ``models`` once, then serve the page and API until interrupted."""
    import uvicorn

    config = config or ServeConfig()
    if config.max_pixels > (PIL.Image.MAX_IMAGE_PIXELS or 0) and not os.environ.get(MAX_PIXELS_ENV):
        # read_image() applies Pillow's decompression-bomb limit; --max-pixels is the limit here
        os.environ[MAX_PIXELS_ENV] = str(config.max_pixels)
    if is_loopback(host) and config.allowed_hosts is None:
        config = dataclasses.replace(config, allowed_hosts=LOOPBACK_NAMES)
    # The port is taken before the models load (seconds to minutes), so a busy one or a bad
    # --host is said at once; it accepts connections only once there is a server to answer.
    sock = bind(host, port, listen=False)
    try:
        served = load_models(
            models, device=device, precision=precision, run_torchscript_code=run_torchscript_code
        )
        app = create_app(served, config, route=not models)  # no --model: the default route
        start_listening(sock, host, port)
    except BaseException:
        sock.close()
        raise
    real_port = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
    names = ", ".join(m.id for m in served)
    # Printed (and flushed) once the socket listens: scripts wait for this line.
    print(
        f"edsr serve: http://{shown}:{real_port}/ (models: {names}; workers {config.workers}, "
        f"queue {config.queue})",
        flush=True,
    )
    if not is_loopback(host):
        print(
            f"edsr serve: listening on {host}, not loopback: anyone who can reach this machine "
            "can use it",
            file=sys.stderr,
            flush=True,
        )
    logger = logging.getLogger("edsr.serve")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-9s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    uv = uvicorn.Config(
        app,
        log_level="info",
        access_log=access_log,
        # A last line of defence against connection floods (plain 503s); the app's own queue
        # and upload count answer long before this with JSON and Retry-After.
        limit_concurrency=64 + 4 * config.capacity + config.max_uploads,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    try:
        _uvicorn_server(uv, app).run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn has already shut down gracefully and re-raised the Ctrl-C: a normal stop.
        print("edsr serve: stopped", file=sys.stderr, flush=True)
    finally:
        sock.close()


@contextlib.contextmanager
def background_server(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread (tests, notebooks); yields its base URL.

    Startup and shutdown run the app's lifespan, so the temporary directory is removed on exit.
    """
    import uvicorn

    sock = bind(host, port)
    server = _uvicorn_server(uvicorn.Config(app, log_level=log_level, lifespan="on"), app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
