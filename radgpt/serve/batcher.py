"""Dynamic batching across concurrent clients: one supervised worker thread per model, a bounded queue in front.

A request becomes a `Job` (prompt, decoding, token limit, stop strings). The worker takes the first
waiting job, then everything else already queued, then waits up to `wait_ms` for more, up to
`max_batch` jobs; jobs that decode alike (same decoding apart from the token limit) run as one batch,
each row with its own limit and stop strings. A full queue is refused at once (`QueueFull` → HTTP 429),
so waiting time stays bounded under overload instead of every client timing out. A job whose client
left or whose deadline passed is dropped before it runs, or stopped mid-batch (the other rows go on).

Nothing a request does may take the worker down. Futures are settled through `_settle`, which tolerates a
future the client side already cancelled (a timed-out `asyncio.wrap_future` cancels the concurrent future
it wraps; settling that future again raised InvalidStateError and killed the thread, and with it the
model, while /health said ok). The loop runs under a supervisor that fails the batch in hand, logs, and
starts again; `health()` reports liveness, restarts and the age of the oldest waiting job, and `close()`
never blocks.

How a job fails says whose fault it was (the server maps each to its HTTP status): `RequestRefused` — the
engine refused this request (a FatalError: a prompt over its context, a decoding it cannot do); 400.
`GenerationFailed` — the engine raised while generating; 502. `WorkerUnavailable` — no worker will run it
(shutting down, or the worker thread is gone); 503.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, replace

from radgpt.common.errors import FatalError
from radgpt.runs.decoding import Decoding


class QueueFull(Exception):
    pass


class WorkerError(Exception):
    """A job that did not produce a generation; the message is safe to show (no request text)."""


class RequestRefused(WorkerError):
    """The engine refused the request itself (its FatalError: e.g. prompt + max_tokens over its context)."""


class GenerationFailed(WorkerError):
    """The engine raised while generating a batch (out of memory, a backend bug): not the request's fault."""


class WorkerUnavailable(WorkerError):
    """No worker will run the job: the server is shutting down or the worker thread is gone."""


@dataclass(eq=False)
class Job:
    prompt: str
    decoding: Decoding
    max_tokens: int
    stops: tuple[str, ...] = ()
    on_delta: Callable[[str], None] | None = None
    deadline: float = float("inf")
    future: Future = field(default_factory=Future)
    cancelled: bool = False
    timed_out: bool = False
    queued_at: float = field(default_factory=time.monotonic)

    def expired(self) -> bool:
        if not self.timed_out and time.monotonic() > self.deadline:
            self.timed_out = True
        return self.cancelled or self.timed_out or self.future.cancelled()


def _settle(future: Future, result=None, exc: BaseException | None = None) -> None:
    """Complete a future unless it is already done or cancelled (by a client that stopped waiting)."""
    if future.done():
        return
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled between the check and the set: nobody is waiting
        pass


class Batcher:
    def __init__(self, model, max_batch: int = 16, max_queue: int = 64, wait_ms: float = 5.0,
                 log: Callable[[str], None] | None = None):
        self.model = model
        self.max_batch, self.wait = max(1, max_batch), wait_ms / 1000
        self.q: queue.Queue = queue.Queue(maxsize=max(1, max_queue))
        self.batches = self.rows = 0  # counters for /health and the load bench
        self.restarts = 0
        self.busy_since: float | None = None  # when the batch in hand started
        self.last_error: str | None = None
        self._in_hand: list[Job] = []
        self._closing = threading.Event()
        self.log = log or (lambda m: print(f"radgpt serve: {m}", file=sys.stderr, flush=True))
        self.thread = threading.Thread(target=self._supervise, name=f"batcher-{getattr(model, 'name', '')}",
                                       daemon=True)
        self.thread.start()

    # ---- client side ------------------------------------------------------------------------------------
    def submit(self, job: Job) -> Future:
        if self._closing.is_set():
            raise WorkerUnavailable("the server is shutting down")
        if not self.thread.is_alive():
            raise WorkerUnavailable("the model's worker is not running")
        try:
            self.q.put_nowait(job)
        except queue.Full:
            raise QueueFull() from None
        return job.future

    def submit_many(self, jobs: list[Job]) -> list[Future]:
        """All or nothing: a multi-prompt request is refused whole when the queue cannot take it."""
        if self.q.maxsize - self.q.qsize() < len(jobs):
            raise QueueFull()
        return [self.submit(j) for j in jobs]

    def health(self) -> dict:
        """Liveness for /health: alive, queue length, age of the oldest waiting job, time on this batch."""
        now = time.monotonic()
        with self.q.mutex:
            oldest = next((j.queued_at for j in self.q.queue if j is not None), None)
        return {"alive": self.thread.is_alive() and not self._closing.is_set(), "queued": self.q.qsize(),
                "oldest_wait_s": round(now - oldest, 2) if oldest is not None else 0.0,
                "busy_s": round(now - self.busy_since, 2) if self.busy_since is not None else 0.0,
                "batches": self.batches, "rows": self.rows, "restarts": self.restarts,
                "last_error": self.last_error}

    def close(self, timeout: float = 2.0) -> None:
        """Stop taking jobs, fail the waiting ones, and let the worker end; never blocks past `timeout`."""
        self._closing.set()
        while True:
            try:
                job = self.q.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _settle(job.future, exc=WorkerUnavailable("the server is shutting down"))
        for j in self._in_hand:
            j.cancelled = True  # the engine's should_stop ends the batch at the next token
        self.thread.join(timeout)

    # ---- worker side ------------------------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._closing.is_set():
            try:
                self._loop()
            except BaseException as e:  # noqa: BLE001 — the worker must outlive any batch
                self.restarts += 1
                self.last_error = type(e).__name__
                self.log(f"batch worker failed ({type(e).__name__}); restarted (restart #{self.restarts})")
                for j in self._in_hand:
                    _settle(j.future, exc=GenerationFailed("generation failed in the engine"))
            finally:
                self._in_hand, self.busy_since = [], None

    def _next(self) -> Job | None:
        """The next job, waking every 0.2 s to notice close()."""
        while not self._closing.is_set():
            try:
                return self.q.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def _collect(self, first: Job) -> list[Job]:
        batch = [first]
        end = time.monotonic() + self.wait
        while len(batch) < self.max_batch:
            try:
                job = self.q.get_nowait()
            except queue.Empty:
                left = end - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = self.q.get(timeout=left)
                except queue.Empty:
                    break
            if job is not None:
                batch.append(job)
        return batch

    def _loop(self) -> None:
        while True:
            first = self._next()
            if first is None:
                return
            batch = self._in_hand = self._collect(first)
            self.busy_since = time.monotonic()
            live = []
            for j in batch:
                if j.expired():
                    _settle(j.future, exc=TimeoutError("dropped before it ran: cancelled or past its deadline"))
                else:
                    live.append(j)
            groups: dict[Decoding, list[Job]] = {}
            for j in live:
                groups.setdefault(replace(j.decoding, max_new_tokens=1), []).append(j)
            for jobs in groups.values():
                self._run(jobs)
            self._in_hand, self.busy_since = [], None

    def _run(self, jobs: list[Job]) -> None:
        decoding = replace(jobs[0].decoding, max_new_tokens=max(j.max_tokens for j in jobs))

        streamed = [False]

        def on_delta(i: int, text: str) -> None:
            streamed[0] = True
            cb = jobs[i].on_delta
            if cb is not None and not jobs[i].expired():
                try:
                    cb(text)
                except Exception:  # noqa: BLE001 — a client's callback (its loop closed) must not end the batch
                    jobs[i].cancelled = True

        try:
            gens = self.model.generate([j.prompt for j in jobs], decoding, max_tokens=[j.max_tokens for j in jobs],
                                       on_delta=on_delta, should_stop=lambda i: jobs[i].expired(),
                                       stops=[j.stops for j in jobs])
        except FatalError as e:  # the engine refuses a request (its words are for the user: no request text)
            if len(jobs) > 1 and not streamed[0]:
                for j in jobs:  # refuse only the row it was about: each alone (nothing was streamed yet)
                    self._run([j])
                return
            for j in jobs:
                _settle(j.future, exc=RequestRefused(str(e)))
            return
        except Exception as e:  # noqa: BLE001 — a failed batch fails its requests, not the worker
            self.last_error = type(e).__name__
            self.log(f"generation failed for a batch of {len(jobs)} ({type(e).__name__})")
            for j in jobs:
                _settle(j.future, exc=GenerationFailed("generation failed in the engine"))
            return
        self.batches += 1
        self.rows += len(jobs)
        for j, g in zip(jobs, gens):
            _settle(j.future, g)
