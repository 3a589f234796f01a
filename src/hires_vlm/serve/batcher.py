"""Gathering concurrent requests into batched decodes, in the one thread that owns the model.

* **Admission** — a request holds a :class:`Ticket` from arrival until the worker takes it into a
  batch (preprocessing and waiting included); with ``max_queue`` tickets out, a new request is
  refused at once with 429 instead of growing the queue.
* **Gathering** — the worker takes the waiting jobs, up to ``max_batch_size``. While fewer are
  waiting, it waits — at most ``batch_wait_ms`` after the oldest waiting job arrived or the last
  batch ended, whichever is later — for requests received and still being prepared, and for as many
  requests as were in the server at once during the last second (clients just answered are likely
  sending their next request: without this, a steady load of 16 users settles into two alternating
  half batches). A lone request therefore starts at once. Every job goes into the same batch whatever
  its sampling parameters: :mod:`.decoding` makes temperature, top-p, seed, ``max_tokens`` and
  ``stop`` per row. ``max_batch_size = 1`` (``--no-batching``) decodes one request at a time.
* **Isolation** — each request was preprocessed on its own (:meth:`Engine.prepare`), so a broken
  image never reaches a batch. If a batched decode still fails, its rows that had not finished are
  decoded again one by one (a streamed row resumes without resending what it already sent), and
  only a row that fails alone gets an error (500).
* **Deadlines** — every job has one (``request_timeout`` after arrival): a job past it is refused
  when it would start, or stopped at its next token, with 504; a cancelled job (its client left)
  likewise stops at its next token.

Jobs report to the asyncio side through their own ``asyncio.Queue`` of events ``("delta", text)``,
``("done", result)`` and ``("error", APIError)``, put from the worker with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque

from .errors import RATE_LIMIT, SERVER, TIMEOUT, APIError

logger = logging.getLogger(__name__)
RECENT_S = 1.0  # how far back "requests recently in the server at once" looks


class Ticket:
    """A request's place in the bounded queue; :meth:`release` (idempotent) gives it back."""

    def __init__(self, batcher: Batcher):
        self._batcher = batcher
        self._held = True

    def release(self) -> None:
        with self._batcher._cond:
            if self._held:
                self._held = False
                self._batcher._admitted -= 1
                self._batcher._cond.notify_all()  # a gathering worker may stop waiting for this request


class Job:
    """One prepared request on its way through the worker; see the module for its events."""

    def __init__(self, prepared, loop: asyncio.AbstractEventLoop, deadline: float, ticket: Ticket | None = None):
        self.prepared = prepared
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.deadline = deadline  # time.monotonic()
        self.ticket = ticket
        self.streamed = ""  # text already sent as deltas
        self.cancelled = False
        self.done = False
        self.enqueued = time.monotonic()
        self.started: float | None = None

    # -- called from the asyncio side
    def cancel(self) -> None:
        self.cancelled = True

    # -- called from the worker
    def interrupt_reason(self) -> str | None:
        if self.cancelled:
            return "cancelled"
        if time.monotonic() > self.deadline:
            return "timeout"
        return None

    def on_delta(self, text: str) -> None:
        self.streamed += text
        self._put(("delta", text))

    def on_finish(self, result: dict) -> None:
        if self.done:
            return
        if result["finish_reason"] == "timeout":
            self.fail(timeout_error())
            return
        if result["finish_reason"] == "cancelled":  # its client left, or the server is stopping
            self.fail(APIError(503, "the request was cancelled: its client left or the server is shutting down",
                               type=SERVER, code="cancelled"))
            return
        self.done = True
        now = time.monotonic()
        start = self.started if self.started is not None else now
        result["hires_vlm"]["timing"] = {"queue_ms": round((start - self.enqueued) * 1e3, 1),
                                         "decode_ms": round((now - start) * 1e3, 1)}
        self._put(("done", result))

    def fail(self, error: APIError) -> None:
        if not self.done:
            self.done = True
            self._put(("error", error))

    def _put(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is waiting any more
            pass


def timeout_error() -> APIError:
    return APIError(504, "the request took longer than this server's timeout and was stopped", type=TIMEOUT,
                    code="timeout")


class Batcher:
    """The model's worker thread and its bounded queue (see the module)."""

    def __init__(self, engine, *, max_batch_size: int = 16, batch_wait_ms: float = 10.0, max_queue: int = 64,
                 threads: int | None = None):
        self.engine = engine
        self.max_batch_size = int(max_batch_size)
        self.batch_wait = float(batch_wait_ms) / 1e3
        self.max_queue = int(max_queue)
        self.threads = threads
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._admitted = 0
        self._current: list[Job] = []  # the batch decoding now
        self._free_since = 0.0  # when the worker last finished a batch
        self._load: deque[tuple[float, int]] = deque()  # (time, requests in the server), the last RECENT_S
        self._stopping = False
        self.alive = False
        self.stats = {"batches": 0, "rows": 0, "largest_batch": 0, "retried_batches": 0, "failed_rows": 0,
                      "refused_queue_full": 0, "busy_seconds": 0.0}
        self._thread = threading.Thread(target=self._loop, name="hires-vlm-model", daemon=True)

    # ------------------------------------------------------------------ the asyncio side
    def start(self) -> None:
        self.alive = True
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), deque()
            for job in self._current:  # stopped at their next token
                job.cancel()
            self._cond.notify_all()
        for job in waiting:
            job.fail(APIError(503, "the server is shutting down", type=SERVER, code="shutting_down"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def admit(self) -> Ticket:
        with self._cond:
            if self._stopping:
                raise APIError(503, "the server is shutting down", type=SERVER, code="shutting_down")
            if self._admitted >= self.max_queue:
                self.stats["refused_queue_full"] += 1
                raise APIError(429, f"the server's queue is full ({self.max_queue} requests waiting); retry later",
                               type=RATE_LIMIT, code="queue_full", headers={"Retry-After": "1"})
            self._admitted += 1
            self._note_load()
            return Ticket(self)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise APIError(503, "the server is shutting down", type=SERVER, code="shutting_down")
            job.enqueued = time.monotonic()
            self._waiting.append(job)
            self._cond.notify()

    def status(self) -> dict:
        with self._cond:
            return {"worker_alive": self.alive and self._thread.is_alive(), "admitted": self._admitted,
                    "waiting": len(self._waiting), "decoding": self._decoding(), "max_queue": self.max_queue,
                    "max_batch_size": self.max_batch_size, "batch_wait_ms": self.batch_wait * 1e3, **self.stats}

    # ------------------------------------------------------------------ the worker thread
    def _loop(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._run(batch)
        except BaseException:  # never silently: /health reports the worker dead
            logger.exception("the model worker stopped")
            raise
        finally:
            self.alive = False

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while True:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                # Wait (bounded) for requests being prepared, and for as many as were recently in the
                # server at once: their clients, just answered, are likely sending their next request.
                until = max(self._waiting[0].enqueued, self._free_since) + self.batch_wait
                while len(self._waiting) < self.max_batch_size and not self._stopping:
                    preparing = self._preparing()
                    if preparing <= 0 and len(self._waiting) >= self._recent_peak():
                        break
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch = []
                while self._waiting and len(batch) < self.max_batch_size:
                    job = self._waiting.popleft()
                    if job.ticket is not None:
                        job.ticket._held = False  # released here, under the lock already held
                        self._admitted -= 1
                    reason = job.interrupt_reason()
                    if reason == "timeout":
                        job.fail(timeout_error())
                    elif reason is None:
                        batch.append(job)
                if batch:
                    self._current = batch
                    self._note_load()
                    return batch

    def _note_load(self) -> None:
        """Record how many requests are in the server now (admitted or decoding); under the lock."""
        now = time.monotonic()
        self._load.append((now, self._admitted + self._decoding()))
        while self._load and self._load[0][0] < now - RECENT_S:
            self._load.popleft()

    def _decoding(self) -> int:
        """Rows of the running batch not answered yet (an answered request's client may already be back)."""
        return sum(1 for j in self._current if not j.done)

    def _recent_peak(self) -> int:
        """The most requests in the server at once during the last RECENT_S seconds; under the lock."""
        now = time.monotonic()
        return max((n for t, n in self._load if t >= now - RECENT_S), default=0)

    def _preparing(self) -> int:
        """Requests received and being prepared (tickets held by jobs not yet waiting); under the lock."""
        return self._admitted - sum(1 for j in self._waiting if j.ticket is not None)

    def _run(self, batch: list[Job]) -> None:
        now = time.monotonic()
        for job in batch:
            job.started = now
        self.stats["batches"] += 1
        self.stats["rows"] += len(batch)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        try:
            self.engine.run(batch)
        except Exception as exc:
            left = [j for j in batch if not j.done]
            if len(batch) == 1:
                self._fail(left, exc)
            else:
                self.stats["retried_batches"] += 1
                logger.warning("a batch of %d failed (%s: %s); decoding its %d unfinished rows one by one", len(batch),
                               type(exc).__name__, exc, len(left))
                for job in left:
                    try:
                        self.engine.run([job])
                    except Exception as row_exc:
                        self._fail([job], row_exc)
        finally:
            with self._cond:
                self._current = []
                self._free_since = time.monotonic()
            self.stats["busy_seconds"] += self._free_since - now

    def _fail(self, jobs: list[Job], exc: Exception) -> None:
        logger.error("decoding a request failed: %s: %s", type(exc).__name__, exc)
        for job in jobs:
            self.stats["failed_rows"] += 1
            job.fail(APIError(500, f"generation failed for this request ({type(exc).__name__}: {exc})", type=SERVER,
                              code="generation_failed"))
