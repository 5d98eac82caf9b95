"""Several processes started by torchrun: which one this is, its device and threads, the
process group, the share of a file list each one takes, and small results brought together.

torchrun tells each process who it is through the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``). Without it (``WORLD_SIZE`` unset or 1) everything here
is a no-op: :data:`SINGLE` runs functions in place and lets their errors through.

A command spread over ranks keeps one rule so that no rank waits forever for another: every
step whose outcome can differ between ranks (loading a model, checking the output place, the
work itself) runs through :meth:`Ranks.check`, :meth:`Ranks.gather` or :meth:`Ranks.from_main`,
which exchange the outcome, so an error on one rank is raised on all of them: on rank 0 as
itself (it is the one that reports it), elsewhere as :class:`ReportedByRankZero`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from edsr import defaults
from edsr.errors import EdsrError

T = TypeVar("T")

#: How long a rank waits in a collective for the others. Long, because the last exchange of a
#: sharded run waits for the slowest rank's share (images are not all the same size, and one
#: may take many minutes on a CPU); an error on a rank is exchanged, not waited for, and a
#: rank that dies is noticed by torchrun, which stops the others at once, so this only bounds
#: the wait for a rank that hangs or a node that is lost.
TIMEOUT = datetime.timedelta(hours=2)


class ReportedByRankZero(EdsrError):
    """Raised on ranks other than 0 when a step failed somewhere: rank 0 raises (and the CLI
    prints) the error itself; the other ranks stop quietly."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a torchrun job (one rank: a plain run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that checks the output place, prints, and writes reports."""
        return self.rank == 0

    @property
    def spread(self) -> bool:
        """More than one rank: the collectives below really exchange."""
        return self.world > 1

    def device(self, requested: str | None = None) -> str:
        """The device for this rank's model. Nothing asked is :data:`edsr.defaults.DEVICE`;
        ``auto``: CUDA where present, ``cuda:LOCAL_RANK`` for a rank of several, else the CPU;
        a plain ``cuda`` for a rank of several is its own GPU too; anything else (``cpu``,
        ``cuda:N``) is kept as asked."""
        requested = defaults.resolve_device(requested)
        if requested == "cuda" and self.spread and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share: item ``i`` goes to rank ``i % world``. Every rank computes the
        same split from the same sorted list, with no exchange and no reading of the files;
        dealing the list out like cards spreads large and small images alike."""
        return list(items[self.rank :: self.world])

    def check(self, fn: Callable[[], T], *, main_first: bool = False) -> T:
        """Run ``fn`` on every rank and return this rank's result, once all ranks know that
        every one succeeded (else the error is raised on all, see the module). With
        ``main_first``, rank 0 runs it before the others start (a download into a shared
        cache happens once)."""
        if not self.spread:
            return fn()
        if main_first:
            mine = self._exchange(fn if self.main else _nothing)[0]
            later = self._exchange(_nothing if self.main else fn)[0]
            return mine if self.main else later  # type: ignore[return-value]
        return self._exchange(fn)[0]

    def gather(self, fn: Callable[[], T]) -> list[T]:
        """Run ``fn`` on every rank; every rank gets all results, in rank order (they must be
        small and picklable). An error on any rank is raised on all, see the module."""
        if not self.spread:
            return [fn()]
        return self._exchange(fn, share=True)

    def from_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give its result (small, picklable) to every rank. The
        others wait for it, so it also orders: nothing after it starts before it is done."""
        if not self.spread:
            return fn()
        box: list[Any] = [None]
        local: BaseException | None = None
        if self.main:
            ok, value = _run(fn)
            box[0] = (True, value) if ok else (False, _sendable(value, self.rank))
            local = None if ok else value
        dist.broadcast_object_list(box, src=0)
        if not box[0][0]:
            self._raise([box[0]], local=local)
        result: T = box[0][1]
        return result

    def barrier(self) -> None:
        if self.spread:
            dist.barrier()

    def _exchange(self, fn: Callable[[], T], *, share: bool = False) -> list[T]:
        ok, value = _run(fn)
        sent = (True, value if share else None) if ok else (False, _sendable(value, self.rank))
        outcomes: list[Any] = [None] * self.world
        dist.all_gather_object(outcomes, sent)
        if not all(o for o, _ in outcomes):
            self._raise(outcomes, local=None if ok else value)
        if share:
            return [v for _, v in outcomes]
        return [value]

    def _raise(self, outcomes: list[tuple[bool, Any]], local: BaseException | None) -> None:
        if not self.main:
            raise ReportedByRankZero("reported by rank 0")
        if local is not None:
            raise local
        raise next(v for ok, v in outcomes if not ok)


#: The plain, single-process run.
SINGLE = Ranks()


def _nothing() -> None:
    return None


def _run(fn: Callable[[], T]) -> tuple[bool, Any]:
    """``(True, result)`` or ``(False, error)``; Ctrl-C and SIGTERM are not caught."""
    try:
        return True, fn()
    except Exception as e:  # noqa: BLE001 - told to every rank, raised again on rank 0
        return False, e


def _sendable(error: BaseException, rank: int) -> Exception:
    """The error as it travels to the other ranks: a user's error as itself (its one line is
    what rank 0 prints), anything else as a one-line description naming the rank it was on."""
    if isinstance(error, EdsrError):
        try:
            pickle.dumps(error)
            return error
        except Exception:  # noqa: BLE001 - a subclass that does not pickle: keep its line
            return EdsrError(str(error))
    return RuntimeError(f"rank {rank}: {type(error).__name__}: {error}")


def from_env() -> Ranks:
    """This process's place, from torchrun's environment (a single process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return Ranks(
        rank=int(os.environ["RANK"]),
        world=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
    )


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def join(timeout: datetime.timedelta = TIMEOUT) -> Ranks:
    """Join the process group torchrun set up (gloo on CPUs, NCCL on GPUs) and give this
    process its share of the machine: its own GPU (``cuda:LOCAL_RANK``) or, on CPUs, the cores
    divided by the processes on this machine, so that they do not fight over them (torchrun
    would leave each at one thread). A single process: nothing is done."""
    ranks = from_env()
    if not ranks.spread:
        return ranks
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(ranks.local_rank)
    else:
        torch.set_num_threads(max(1, cpu_cores() // ranks.local_world))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    return ranks


@contextlib.contextmanager
def process_group(timeout: datetime.timedelta = TIMEOUT) -> Iterator[Ranks]:
    """:func:`join` for the length of a command; the group is left again at its end."""
    initialized = dist.is_initialized()
    ranks = join(timeout)
    try:
        yield ranks
    finally:
        if ranks.spread and not initialized and dist.is_initialized():
            dist.destroy_process_group()
