"""The bounded work queue behind ``edsr serve``: admission, worker threads, the time limit,
cancellation and progress. Nothing here knows HTTP; the app turns the outcomes into answers.

Why it is shaped this way:

- A request is *admitted* once its upload has arrived and stays counted until its answer has
  gone out. At most ``workers + queue`` are admitted at once and the next one is refused
  (:class:`Busy`). Uploads still arriving are counted apart (at most ``uploads``), so a client
  that sends slowly, or half a body and then nothing, holds a socket and an upload's place for
  at most the upload time limit, never a worker's place. Memory stays bounded whatever the
  load: an arriving upload holds at most 1 MiB in memory (the rest waits in a temporary file),
  an admitted request at most one upload and one image.
- The work runs in a pool of ``workers`` threads, so the event loop keeps answering health
  checks, progress polls and refusals while the model computes (PyTorch releases the GIL).
- One client (by address) may have at most ``uploads_per_client`` uploads arriving at once
  (:class:`TooManyUploads`), so one client cannot hold every upload's place.
- Work is stopped, not merely abandoned: a job past its deadline or whose client went away has
  its stop flag set, the worker sees it through ``should_stop`` before its next tile and
  returns. A worker slot is given back only when its thread has really finished, so
  ``running`` is honest and a timed-out job cannot keep a worker busy.
- When the server is told to stop (SIGTERM), :meth:`JobQueue.shut_down` stops every job and
  every request waiting for or running one ends at once with :class:`ShuttingDown`, inside
  the server's grace period rather than cancelled at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from edsr.errors import Cancelled

T = TypeVar("T")

_FINISHED_JOBS_KEPT = 256  # for progress polls that arrive after the answer
_FINISHED_JOB_TTL = 120.0


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    ENCODING = "encoding"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Busy(Exception):
    """No room: every worker is busy and the queue is full (``waited`` False), or no worker
    came free before the deadline (``waited`` True). ``retry_after`` is in seconds."""

    def __init__(self, retry_after: int, *, waited: bool = False) -> None:
        super().__init__("busy")
        self.retry_after = retry_after
        self.waited = waited


class TimedOut(Exception):
    """The job ran past its deadline; it has been told to stop."""


class Gone(Exception):
    """The client went away; its job has been told to stop."""


class ShuttingDown(Exception):
    """The job was stopped, or the request refused, because the server is closing."""


class TooManyUploads(Exception):
    """This client already has its share of the uploads arriving; ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many uploads from this client")
        self.retry_after = retry_after


class JobIdInUse(Exception):
    """A client asked for the id of a job that is still running."""


class Job:
    """One piece of work, as seen by progress polls and by the worker thread that runs it.

    The worker passes :meth:`on_tile` and :meth:`should_stop` to
    :func:`edsr.inference.upscale`; the queue sets the stop flag.
    """

    def __init__(self, job_id: str, seq: int) -> None:
        self.id = job_id
        self.seq = seq
        self.state = JobState.QUEUED
        self.done = 0
        self.total = 0
        self.finished: float | None = None
        self._stop = threading.Event()

    def on_tile(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    def encoding(self) -> None:
        self.state = JobState.ENCODING

    def end(self, state: JobState) -> None:
        self.state = state
        self.finished = time.monotonic()

    def progress(self) -> dict[str, Any]:
        return {"job": self.id, "state": self.state.value, "done": self.done, "total": self.total}


class JobQueue:
    """``workers`` threads, room for ``queue`` more requests, ``timeout`` seconds a request,
    ``uploads`` requests whose upload is still arriving, ``uploads_per_client`` of them from
    one client, which may wait ``upload_timeout`` for one of its own to arrive."""

    def __init__(
        self,
        *,
        workers: int,
        queue: int,
        timeout: float,
        uploads: int = 16,
        uploads_per_client: int = 4,
        upload_timeout: float = 30.0,
    ) -> None:
        self.workers = workers
        self.capacity = workers + queue
        self.timeout = timeout
        self.max_uploads = uploads
        self.max_uploads_per_client = uploads_per_client
        self.upload_timeout = upload_timeout
        self.uploading = 0  # requests whose upload is still arriving
        self.uploading_from: dict[str, int] = {}  # the same, by client address
        self.closing = False
        self.admitted = 0  # requests held, from after their upload until after their answer
        self.running = 0  # worker threads busy, until each has really returned
        self.jobs: dict[str, Job] = {}
        self._seq = 0
        self._avg_seconds = 2.0  # running mean of job times, for retry_after
        self._pool: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._closed: asyncio.Event | None = None

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="edsr-serve")
        self._slots = asyncio.Semaphore(self.workers)
        self._closed = asyncio.Event()

    def shut_down(self) -> None:
        """The server is stopping: every job is told to stop, every request waiting for or
        running one ends with :class:`ShuttingDown` now, and no request is admitted again.
        On the event loop's thread."""
        self.closing = True
        for job in self.jobs.values():
            job.stop()
        if self._closed is not None:
            self._closed.set()

    async def close(self) -> None:
        """Stop every job and wait for the workers to return."""
        self.shut_down()
        if self._pool is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)

    # -- admission ------------------------------------------------------------------------

    def retry_after(self) -> int:
        waiting = max(1, self.admitted)
        return max(1, min(120, math.ceil(self._avg_seconds * waiting / self.workers)))

    @contextlib.contextmanager
    def receiving(self, client: str | None = None) -> Iterator[None]:
        """Hold an upload's place while its body arrives: :class:`TooManyUploads` if
        ``client`` (an address) has its share arriving already, :class:`Busy` if every place
        is taken."""
        if client is not None and self.uploading_from.get(client, 0) >= self.max_uploads_per_client:
            # by then each of its uploads has arrived or been refused
            raise TooManyUploads(max(1, math.ceil(self.upload_timeout)))
        with self._hold("uploading", self.max_uploads):
            if client is None:
                yield
                return
            self.uploading_from[client] = self.uploading_from.get(client, 0) + 1
            try:
                yield
            finally:
                self.uploading_from[client] -= 1
                if not self.uploading_from[client]:
                    del self.uploading_from[client]

    def admit(self) -> contextlib.AbstractContextManager[None]:
        """Hold a place for one request for the duration of the block; :class:`Busy` if full,
        :class:`ShuttingDown` once the server is stopping."""
        return self._hold("admitted", self.capacity)

    @contextlib.contextmanager
    def _hold(self, counter: str, limit: int) -> Iterator[None]:
        # The counters are touched only on the event loop's thread: no lock is needed.
        if self.closing:
            raise ShuttingDown
        if getattr(self, counter) >= limit:
            raise Busy(self.retry_after())
        setattr(self, counter, getattr(self, counter) + 1)
        try:
            yield
        finally:
            setattr(self, counter, getattr(self, counter) - 1)

    # -- jobs -----------------------------------------------------------------------------

    def new_job(self, wanted: str | None = None) -> Job:
        """A queued job, with the client's id if given (progress polls use it)."""
        self._forget_old_jobs()
        if wanted and wanted in self.jobs and self.jobs[wanted].finished is None:
            raise JobIdInUse(wanted)
        self._seq += 1
        job = Job(wanted or uuid.uuid4().hex, self._seq)
        self.jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def position(self, job: Job) -> int:
        """1 for the next queued job to get a worker."""
        return 1 + sum(
            1 for j in self.jobs.values() if j.state is JobState.QUEUED and j.seq < job.seq
        )

    def _forget_old_jobs(self) -> None:
        now = time.monotonic()
        ended = [(k, j.finished) for k, j in self.jobs.items() if j.finished is not None]
        stale = {k for k, t in ended if now - t > _FINISHED_JOB_TTL}
        excess = {k for k, _ in ended[: max(0, len(ended) - _FINISHED_JOBS_KEPT)]}
        for k in stale | excess:
            del self.jobs[k]

    async def run(
        self,
        job: Job,
        work: Callable[[Job], T],
        *,
        deadline: float,
        gone: Awaitable[Any],
        discard: Callable[[T], None] | None = None,
    ) -> T:
        """Run ``work(job)`` on a worker once one is free, until ``deadline`` (event-loop time).

        Raises :class:`Busy` (no worker came free in time), :class:`TimedOut`, :class:`Gone`
        (``gone`` finished first), :class:`ShuttingDown`, or what ``work`` raised. A result
        that arrives after the caller gave up is handed to ``discard``. ``gone`` is run's to
        await and is cancelled when run returns.
        """
        assert self._slots is not None and self._pool is not None, "start() was not called"
        assert self._closed is not None
        loop = asyncio.get_running_loop()
        watch = asyncio.ensure_future(gone)
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            try:
                await _race(self._slots.acquire(), deadline, watch, closed)
            except TimeoutError:
                job.end(JobState.FAILED)
                raise Busy(self.retry_after(), waited=True) from None
            except (Gone, ShuttingDown, asyncio.CancelledError):
                job.end(JobState.CANCELLED)
                raise
            self.running += 1
            job.state = JobState.RUNNING
            started = loop.time()
            abandoned = False
            fut = loop.run_in_executor(self._pool, work, job)

            def worker_returned(f: asyncio.Future[T]) -> None:
                self.running -= 1
                assert self._slots is not None
                self._slots.release()
                if f.cancelled() or f.exception() is not None:
                    return
                self._avg_seconds = 0.7 * self._avg_seconds + 0.3 * (loop.time() - started)
                if abandoned and discard is not None:
                    discard(f.result())

            fut.add_done_callback(worker_returned)
            try:
                result = await _race(asyncio.shield(fut), deadline, watch, closed)
            except (TimeoutError, Gone, ShuttingDown, asyncio.CancelledError) as e:
                job.stop()
                abandoned = True
                job.end(JobState.CANCELLED)
                if isinstance(e, TimeoutError):
                    raise TimedOut from None
                raise
            except Cancelled:
                job.end(JobState.CANCELLED)
                raise ShuttingDown from None
            except BaseException:
                job.end(JobState.FAILED)
                raise
            job.end(JobState.DONE)
            return result
        finally:
            watch.cancel()
            closed.cancel()


async def _race(
    aw: Awaitable[T], deadline: float, watch: asyncio.Future[Any], closed: asyncio.Future[Any]
) -> T:
    """Await ``aw`` until ``deadline``: TimeoutError after it, :class:`Gone` if ``watch``
    ends, :class:`ShuttingDown` if ``closed`` does."""
    task = asyncio.ensure_future(aw)
    timeout = max(0.0, deadline - asyncio.get_running_loop().time())
    try:
        done, _ = await asyncio.wait(
            {task, watch, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    except BaseException:
        task.cancel()
        raise
    if task in done:
        return task.result()
    task.cancel()
    if watch in done:
        raise Gone
    if closed in done:
        raise ShuttingDown
    raise TimeoutError
