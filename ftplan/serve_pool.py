"""Worker processes that answer `ftplan serve`'s planning requests, each request with a deadline.

Planning is pure-Python CPU work: in the server's own process it would hold the GIL, so one slow request
would stall the event loop and every page and catalog request with it, and a thread cannot be stopped when
its client has gone. Here each request runs in one of `workers` processes; the server process only reads
bodies and relays answers. A request that outlives `timeout_s`, or whose client disconnects, has its worker
killed (SIGKILL: the work stops at once) and a fresh worker takes its place. At most `max_waiting`
requests wait for a worker; beyond that the answer is "busy" at once. Workers start from a forkserver that
has imported the planner once (`multiprocessing`'s forkserver start method), ignore SIGINT (the server stops
them), die with the server on Linux (PR_SET_PDEATHSIG), run at a lower scheduling priority than the server
process (so that on a saturated machine the pages still answer), and run in a scratch folder of their own, so
that a name in a request never resolves against the server's working directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftplan.serve_work import Job, WorkSettings

# scheduling priority of workers below the server process (Unix nice): on a saturated machine the event loop
# that answers pages, catalogs and the next request still gets the CPU when it needs it
WORKER_NICENESS = 5
WORKER_MODULES = ["ftplan.serve_pool", "ftplan.serve_work", "ftplan.answers", "planner.search"]


class PoolError(Exception):
    """A request the pool did not answer: `status` and a one-line `detail` for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class PoolSettings:
    workers: int = 2
    timeout_s: float = 60.0
    max_waiting: int = 256
    memory_limit_bytes: int | None = 4 * 2**30  # address space per worker (RLIMIT_AS); None: no limit
    work: WorkSettings = field(default_factory=WorkSettings)


def default_workers() -> int:
    """One worker per core this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


# ---------------------------------------------------------------- the worker process

def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _limit_memory(limit_bytes: int | None) -> None:
    if limit_bytes is None:
        return
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def worker_main(conn: Any, settings: PoolSettings, scratch: str) -> None:
    """A worker: answer jobs from `conn` until it closes."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(AttributeError, OSError):
        os.nice(WORKER_NICENESS)  # planning yields the CPU to the server's own process: pages answer at once
    from ftplan import serve_work

    cmds = serve_work.commands()
    os.chdir(scratch)  # relative names in a request resolve here, an empty folder of the server's
    _limit_memory(settings.memory_limit_bytes)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(serve_work.handle(job, cmds, settings.work, Path(scratch)))


# ---------------------------------------------------------------- the pool

@dataclass(eq=False)
class _Worker:
    process: Any
    conn: Any
    stopped: str | None = None  # why the pool killed it: "timeout", "gone", "closed"

    def stop(self, why: str) -> None:
        if self.stopped is None:
            self.stopped = why
        with contextlib.suppress(Exception):
            self.process.kill()


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class WorkerPool:
    """`await pool.run(job)` -> the worker's reply; PoolError when busy, timed out, abandoned or closed."""

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self._ctx = _context()
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[_Worker]]] = deque()
        self._threads = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="ftplan-pool")
        self._scratch: str | None = None
        self._started = False
        self._closed = False

    # -- life cycle
    def start(self) -> None:
        """Start the workers (blocking: the first start imports the planner in the forkserver)."""
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            self._scratch = tempfile.mkdtemp(prefix="ftplan-serve-")
        if self._ctx.get_start_method() == "forkserver":
            self._ctx.set_forkserver_preload(WORKER_MODULES)
        for _ in range(self.settings.workers):
            self._release(self._spawn())

    def close(self) -> None:
        """Kill every worker and remove the scratch folder; waiting requests are answered 503."""
        with self._lock:
            self._closed = True
            workers, waiters = list(self._all), list(self._waiters)
            self._waiters.clear()
            self._idle.clear()
        for w in workers:
            w.stop("closed")
        for w in workers:
            w.process.join(timeout=5)
            with contextlib.suppress(Exception):
                w.conn.close()
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._fail, fut)
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and the benchmark)."""
        with self._lock:
            return [w.process.pid for w in self._all]

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=worker_main, args=(child, self.settings, self._scratch),
                                    name="ftplan-serve-worker", daemon=True)
        process.start()
        child.close()
        worker = _Worker(process=process, conn=parent)
        with self._lock:
            self._all.add(worker)
        return worker

    # -- handing workers to requests (loop-agnostic: each waiter names its own event loop)
    @staticmethod
    def _fail(fut: asyncio.Future[_Worker]) -> None:
        if not fut.done():
            fut.set_exception(PoolError(503, "the server is shutting down"))

    def _deliver(self, fut: asyncio.Future[_Worker], worker: _Worker) -> None:
        if fut.done():  # its request left meanwhile: the next one gets the worker
            self._release(worker)
        else:
            fut.set_result(worker)

    def _release(self, worker: _Worker) -> None:
        with self._lock:
            if self._closed:
                worker.stop("closed")
                return
            while self._waiters:
                loop, fut = self._waiters.popleft()
                try:
                    loop.call_soon_threadsafe(self._deliver, fut, worker)
                    return
                except RuntimeError:  # that loop has closed
                    continue
            self._idle.append(worker)

    async def _acquire(self) -> _Worker:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise PoolError(503, "the server is shutting down")
            if self._idle:
                return self._idle.pop()
            if len(self._waiters) >= self.settings.max_waiting:
                raise PoolError(503, f"the server is busy: {self.settings.max_waiting} requests are waiting; "
                                     "try again shortly")
            fut: asyncio.Future[_Worker] = loop.create_future()
            self._waiters.append((loop, fut))
        try:
            return await fut
        except asyncio.CancelledError:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove((loop, fut))
            raise

    def _replace(self, worker: _Worker) -> None:
        worker.stop(worker.stopped or "dead")
        worker.process.join(timeout=5)
        with contextlib.suppress(Exception):
            worker.conn.close()
        with self._lock:
            self._all.discard(worker)
            closed = self._closed
        if not closed:
            self._release(self._spawn())

    # -- one request
    def _exchange(self, worker: _Worker, job: Job) -> tuple[str, Any]:
        """In a pool thread: send the job, wait for the reply within the timeout, hand the worker back."""
        healthy = False
        try:
            try:
                worker.conn.send(job)
                if not worker.conn.poll(self.settings.timeout_s):
                    worker.stop("timeout")
                reply = worker.conn.recv()
                healthy = worker.stopped is None
                return reply
            except (EOFError, OSError):
                why = worker.stopped
            if why == "timeout":
                raise PoolError(504, f"the request ran past the server's {self.settings.timeout_s:g} s limit and "
                                     "was stopped; ask for less (fewer GPUs, a shorter max_gpus)")
            if why == "gone":
                raise PoolError(499, "the client went away")
            if why == "closed":
                raise PoolError(503, "the server is shutting down")
            raise PoolError(500, "a worker process died while planning (a bug in ftplan); the server log has it")
        finally:
            if healthy:
                self._release(worker)
            else:
                self._replace(worker)

    async def run(self, job: Job, disconnected: Callable[[], Awaitable[bool]] | None = None) -> tuple[str, Any]:
        """The worker's reply to `job`. While it waits for a worker and while the worker plans, the client is
        polled every half second (`disconnected`): a request nobody waits for any more is stopped."""
        if not self._started:
            await asyncio.to_thread(self.start)
        acquiring = asyncio.ensure_future(self._acquire())
        try:
            await self._watch(acquiring, disconnected, lambda: acquiring.cancel())
        except asyncio.CancelledError:
            acquiring.cancel()
            raise
        worker = acquiring.result()
        loop = asyncio.get_running_loop()
        try:
            working = loop.run_in_executor(self._threads, self._exchange, worker, job)
        except RuntimeError:  # the pool closed between the two steps
            self._release(worker)
            raise PoolError(503, "the server is shutting down") from None
        try:
            await self._watch(working, disconnected, lambda: worker.stop("gone"))
        except asyncio.CancelledError:  # the server is stopping this request
            worker.stop("closed")
            raise
        return working.result()

    @staticmethod
    async def _watch(fut: asyncio.Future[Any], disconnected: Callable[[], Awaitable[bool]] | None,
                     on_gone: Callable[[], Any]) -> None:
        while not fut.done():
            await asyncio.wait({fut}, timeout=0.5)
            if not fut.done() and disconnected is not None and await disconnected():
                on_gone()
                await asyncio.wait({fut})  # the worker is killed or the wait cancelled: this returns at once
                if fut.done() and not fut.cancelled():
                    fut.exception()  # retrieved: nobody else will read it
                raise PoolError(499, "the client went away")
