"""The limits of one ``edsr serve`` server, checked once when it is configured."""

from __future__ import annotations

from dataclasses import dataclass

from edsr import validators
from edsr.errors import EdsrError


@dataclass(frozen=True)
class ServeConfig:
    """Limits of one server. ``max_memory`` is the tile working memory of each worker.

    ``timeout`` bounds a request from the moment its upload has arrived (waiting for a worker
    and the upscale); ``upload_timeout`` bounds the upload itself, and at most ``max_uploads``
    may be arriving at once, so slow clients hold sockets and memory, never a worker's place;
    ``max_uploads_per_client`` of them from one client address, so one client cannot hold
    them all.
    """

    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 4_000_000
    workers: int = 1
    queue: int = 4
    timeout: float = 300.0
    upload_timeout: float = 30.0
    max_uploads: int = 16
    max_uploads_per_client: int = 4
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
        for flag, seconds in (
            ("--timeout", self.timeout),
            ("--upload-timeout", self.upload_timeout),
        ):
            validators.finite_float(seconds, flag)
        if self.max_uploads < 1:
            raise EdsrError(f"--max-uploads must be at least 1, got {self.max_uploads}")
        if self.max_uploads_per_client < 1:
            raise EdsrError(
                f"--max-uploads-per-client must be at least 1, got {self.max_uploads_per_client}"
            )
        if self.tmp_dir is not None:
            # Checked here, before a server starts: the temp folder is made at startup, where a
            # failure is a framework's traceback instead of a line that says what to fix.
            validators.existing_folder(self.tmp_dir, "--tmp-dir")

    @property
    def capacity(self) -> int:
        """Requests held at once: one per worker plus the queue; the next one gets 503."""
        return self.workers + self.queue
