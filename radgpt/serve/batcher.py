"""Dynamic batching across concurrent clients: one worker thread per model, a bounded queue in front.

A request becomes a `Job` (prompt, decoding, token limit, stop strings). The worker takes the first
waiting job, then everything else already queued, then waits up to `wait_ms` for more, up to
`max_batch` jobs; jobs that decode alike (same decoding apart from the token limit) run as one batch,
each row with its own limit and stop strings. A full queue is refused at once (`QueueFull` → HTTP 429),
so waiting time stays bounded under overload instead of every client timing out. A job whose client
left or whose deadline passed is dropped before it runs, or stopped mid-batch (the other rows go on).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from radgpt.generate import Decoding


class QueueFull(Exception):
    pass


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

    def expired(self) -> bool:
        if not self.timed_out and time.monotonic() > self.deadline:
            self.timed_out = True
        return self.cancelled or self.timed_out


class Batcher:
    def __init__(self, model, max_batch: int = 16, max_queue: int = 64, wait_ms: float = 5.0):
        self.model = model
        self.max_batch, self.wait = max(1, max_batch), wait_ms / 1000
        self.q: queue.Queue = queue.Queue(maxsize=max(1, max_queue))
        self.batches = self.rows = 0  # counters for /health and the load bench
        self.thread = threading.Thread(target=self._loop, name=f"batcher-{getattr(model, 'name', '')}", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> Future:
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

    def close(self) -> None:
        self.q.put(None)

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
            if job is None:
                self.q.put(None)
                break
            batch.append(job)
        return batch

    def _loop(self) -> None:
        while True:
            first = self.q.get()
            if first is None:
                return
            batch = self._collect(first)
            live = []
            for j in batch:
                if j.expired():
                    j.future.set_exception(TimeoutError("dropped before it ran: cancelled or past its deadline"))
                else:
                    live.append(j)
            groups: dict[Decoding, list[Job]] = {}
            for j in live:
                groups.setdefault(replace(j.decoding, max_new_tokens=1), []).append(j)
            for jobs in groups.values():
                self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        decoding = replace(jobs[0].decoding, max_new_tokens=max(j.max_tokens for j in jobs))

        def on_delta(i: int, text: str) -> None:
            cb = jobs[i].on_delta
            if cb is not None:
                cb(text)

        try:
            gens = self.model.generate([j.prompt for j in jobs], decoding, max_tokens=[j.max_tokens for j in jobs],
                                       on_delta=on_delta, should_stop=lambda i: jobs[i].expired(),
                                       stops=[j.stops for j in jobs])
        except Exception as e:  # noqa: BLE001 — a failed batch fails its requests, not the worker
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        self.batches += 1
        self.rows += len(jobs)
        for j, g in zip(jobs, gens):
            if not j.future.done():
                j.future.set_result(g)
