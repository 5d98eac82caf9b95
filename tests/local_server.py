"""Test helpers for what crosses a process or a network: a free port, a torchrun command line,
and an HTTP file server on 127.0.0.1 that can misbehave on purpose."""

from __future__ import annotations

import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port() -> int:
    """A TCP port nobody listens on now: the kernel's pick for port 0 on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused_url(path: str) -> str:
    """An address on 127.0.0.1 where nothing listens: a server that is down."""
    return f"http://127.0.0.1:{free_port()}{path}"


def torchrun_cmd(*args: str, nproc: int = 2) -> list[str]:
    """``python -m torch.distributed.run ... -m edsr ARGS`` on a free local port."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "edsr",
        *args,
    ]


class LocalServer:
    """Serves ``routes``: path -> one of
    ("ok", body): honours ``Range: bytes=N-`` (206);
    ("norange", body): ignores Range (200, whole body);
    ("cut", body, n): promises the whole file, sends n bytes and closes, then serves ("ok", body);
    ("pause", body, n, seconds): as "cut", but waits ``seconds`` before closing (a stall);
    ("truncated", body, claimed): promises ``claimed`` bytes, sends half the body, every time;
    ("stall", seconds): sends 10 of 1000 promised bytes, then waits;
    ("status", code): answers that HTTP status;
    ("redirect", path): answers 302 to ``path`` (two that name each other are a loop).
    Unknown paths are 404. ``requests`` records (path, Range header) for each request; a
    watchdog stops the server after a minute whatever the test does."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                kind, *rest = server.routes.get(self.path, ("status", 404))
                if kind == "status":
                    self.send_error(rest[0])
                    return
                if kind == "redirect":
                    self.send_response(302)
                    self.send_header("Location", rest[0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if kind == "stall":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"x" * 10)
                    self.wfile.flush()
                    time.sleep(rest[0])
                    return
                body = rest[0]
                if kind == "truncated":
                    # HTTP/1.0: closing the connection early is how the transfer ends short.
                    self.send_response(200)
                    self.send_header("Content-Length", str(rest[1]))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    return
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and kind != "norange":
                    start = int(m.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if kind in ("cut", "pause"):
                    server.routes[self.path] = ("ok", body)
                    self.wfile.write(body[start : rest[1]])
                    if kind == "pause":
                        self.wfile.flush()
                        time.sleep(rest[2])
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.watchdog = threading.Timer(60, self.httpd.shutdown)
        self.watchdog.daemon = True

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self) -> LocalServer:
        self.thread.start()
        self.watchdog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.watchdog.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
