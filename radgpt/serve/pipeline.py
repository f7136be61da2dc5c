"""One request pipeline behind every generating endpoint: (auth → parse → model, as FastAPI dependencies in
app.py) → limits → submit → stream or collect → audit.

An endpoint says what it wants generated (`Work`: prompts, stop strings, decoding, the text to audit) and how
its answers look (a `Render`: the whole response, or the stream's opening events, deltas, done and error
events); `Pipeline.respond` does the rest the same way for all of them. Every way a request can fail ends as
an `ApiError` with one status (the table in docs/serve.md), raised before the response starts, or, once a
stream has started (its 200 sent), as the endpoint's error event followed by [DONE].
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from radgpt.common.hashing import sha256_text
from radgpt.runs.decoding import PRESETS, Decoding
from radgpt.serve.audit import note
from radgpt.serve.batcher import Batcher, Job, QueueFull, RequestRefused, WorkerError, WorkerUnavailable
from radgpt.serve.config import ServeConfig
from radgpt.serve.protocol import (
    BatchCounts,
    ErrorDetail,
    ErrorResponse,
    GenerationRequest,
    HealthResponse,
    ModelCard,
    ModelList,
    WorkerHealth,
)


class ApiError(Exception):
    """A request that ends with an error response: status, a message for the user (no internal or report
    text), a stable code; `outcome` goes into the audit line (default: refused for 4xx)."""

    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error",
                 headers: dict | None = None, outcome: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.type = status, message, code, type_
        self.headers, self.outcome = headers, outcome

    @property
    def detail(self) -> ErrorDetail:
        return ErrorDetail(message=self.message, type=self.type, code=self.code)

    def response(self) -> JSONResponse:
        return json_response(ErrorResponse(error=self.detail), self.status, self.headers)


def json_response(body: BaseModel, status: int = 200, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def engine_error(e: BaseException) -> ApiError:
    """What a job's failure means to the client; the one place a failure is given its status."""
    if isinstance(e, TimeoutError):
        return ApiError(504, "generation took longer than the request's timeout", "timeout", "server_error",
                        outcome="timeout")
    if isinstance(e, QueueFull):
        return ApiError(429, "the server is busy (request queue full); retry shortly", "queue_full",
                        "rate_limit_error", {"Retry-After": "1"}, outcome="refused")
    if isinstance(e, RequestRefused):  # the engine's own words (a FatalError: no request text)
        return ApiError(400, f"the engine refused the request: {e}", "invalid_request", outcome="refused")
    if isinstance(e, WorkerUnavailable):
        return ApiError(503, f"{e}; retry shortly", "worker_unavailable", "server_error",
                        {"Retry-After": "2"}, outcome="engine_error")
    # GenerationFailed, or anything else a job's future holds: the engine failed, not the request
    return ApiError(502, "generation failed in the engine; retry", "generation_error", "server_error",
                    {"Retry-After": "1"}, outcome="engine_error")


# ---------------------------------------------------------------------------------------- the served models
@dataclass
class Served:
    """A model ready to serve: its API name, the model, the worker batching its requests, and the engine's
    context window in tokens where it has a fixed one (llama.cpp's n_ctx)."""

    name: str
    model: object
    batcher: Batcher
    context: int | None = None


class Registry:
    """The models by API name (the first is the default), loaded in a background thread at startup so /health
    can answer 503 "loading" meanwhile."""

    def __init__(self, models: dict, cfg: ServeConfig):
        if not models:
            raise ValueError("no models to serve")
        self.specs, self.cfg = models, cfg
        self.names = list(models)
        self.served: dict[str, Served] = {}
        self.error: str | None = None
        self.ready = threading.Event()

    @property
    def batchers(self) -> dict[str, Batcher]:
        return {n: s.batcher for n, s in self.served.items()}

    def load_all(self) -> None:
        """`models`: name → an ImpressionModel, or a zero-argument callable that loads one."""
        try:
            for name, m in self.specs.items():
                model = m() if callable(m) and not hasattr(m, "impress") else m
                c = self.cfg
                batcher = Batcher(model, c.max_batch, c.max_queue, c.batch_wait_ms)
                context = getattr(getattr(model, "backend", None), "n_ctx", None)
                self.served[name] = Served(name, model, batcher, context)
        except Exception as e:  # noqa: BLE001 — reported by /health and 503s, the process keeps answering
            self.error = f"{type(e).__name__}: {e}"
        self.ready.set()

    def lookup(self, name: str | None) -> Served:
        if not self.ready.is_set():
            raise ApiError(503, "the model is still loading; retry shortly", "loading", "server_error",
                           {"Retry-After": "2"})
        if self.error:
            raise ApiError(503, f"the model failed to load: {self.error}", "load_failed", "server_error")
        name = name or self.names[0]
        if name not in self.served:
            raise ApiError(404, f"model '{name}' not found (available: {', '.join(self.names)})",
                           "model_not_found")
        return self.served[name]

    def health(self) -> tuple[HealthResponse, int]:
        """200 only when every model can serve now: loaded, its worker alive, its queue moving."""
        if not self.ready.is_set():
            return HealthResponse(status="loading"), 503
        if self.error:
            return HealthResponse(status="error", error=self.error), 503
        workers = {n: WorkerHealth(**b.health()) for n, b in self.batchers.items()}
        stuck = [n for n, w in workers.items() if not w.alive or w.oldest_wait_s > self.cfg.timeout_s]
        body = HealthResponse(status="unavailable" if stuck else "ok", models=self.names, workers=workers,
                              queue={n: w.queued for n, w in workers.items()},
                              batches={n: BatchCounts(batches=w.batches, rows=w.rows)
                                       for n, w in workers.items()})
        return body, 503 if stuck else 200

    def model_list(self) -> ModelList:
        cards = []
        for n in self.names:
            s = self.served.get(n)
            prov = s.model.provenance() if s is not None else {"status": "loading"}
            # the instruction is long and the same for every request: /v1/models stays a list
            cards.append(ModelCard(id=n, radgpt={k: v for k, v in prov.items() if k != "instruction"}))
        return ModelList(data=cards)

    def close(self) -> None:
        for s in self.served.values():
            s.batcher.close()


# ---------------------------------------------------------------------------------------- one request
@dataclass
class Work:
    """What an endpoint asks the engine for: one job per prompt, decoded alike."""

    prompts: list[str]
    stops: tuple[str, ...]
    decoding: Decoding
    limit: int  # max_tokens of each row
    audit_text: str  # the request's text as the audit line hashes it (findings, or the prompts)


class Render:
    """How an endpoint's answers look. Subclasses set `prefix` (of the response id) and the methods."""

    prefix = "resp"

    def __init__(self, served: Served, work: Work):
        self.served, self.work = served, work
        self.id, self.created = f"{self.prefix}-{uuid.uuid4().hex[:24]}", int(time.time())

    def response(self, gens: list) -> BaseModel:
        raise NotImplementedError

    def opening(self) -> list[BaseModel]:
        return []

    def delta(self, index: int, text: str) -> BaseModel:
        raise NotImplementedError

    def done(self, index: int, gen) -> BaseModel:
        raise NotImplementedError

    def error(self, detail: ErrorDetail) -> BaseModel:
        raise NotImplementedError


class Run:
    """A request's jobs on the worker: collected whole, or streamed as ("delta" | "done" | "error", row,
    payload) events; a client that leaves or a passed deadline stops its rows."""

    def __init__(self, batcher: Batcher, work: Work, stream: bool, timeout_s: float):
        self.loop = asyncio.get_running_loop()
        self.events_q: asyncio.Queue | None = asyncio.Queue() if stream else None
        self.deadline = time.monotonic() + timeout_s
        self.jobs = [Job(p, work.decoding, work.limit, work.stops, self._on_delta(i), self.deadline)
                     for i, p in enumerate(work.prompts)]
        self.futures = batcher.submit_many(self.jobs)  # all or nothing: QueueFull, WorkerUnavailable

    def _on_delta(self, i: int) -> Callable[[str], None] | None:
        if self.events_q is None:
            return None
        q, loop = self.events_q, self.loop
        return lambda text: loop.call_soon_threadsafe(q.put_nowait, ("delta", i, text))

    def stop(self) -> None:
        for j in self.jobs:
            j.cancelled = True  # the worker drops the row before it runs, or stops it at the next token

    async def collect(self) -> list:
        """Every row's Generation; raises ApiError (504, 502, 503, 400) when a row failed."""
        try:
            gens = await asyncio.wait_for(asyncio.gather(*[asyncio.wrap_future(f) for f in self.futures]),
                                          max(0.0, self.deadline - time.monotonic()))
            if any(j.timed_out for j in self.jobs):  # stopped by the worker at the deadline: partial text
                raise TimeoutError()
            return gens
        except (TimeoutError, WorkerError) as e:
            self.stop()
            raise engine_error(e) from None
        except asyncio.CancelledError:
            self.stop()
            raise

    async def events(self) -> AsyncIterator[tuple[str, int, object]]:
        """Deltas as they come, then ("done", row, Generation) or ("error", row, exception) for each row."""
        q, loop = self.events_q, self.loop
        for i, f in enumerate(self.futures):
            f.add_done_callback(lambda fut, i=i: loop.call_soon_threadsafe(q.put_nowait, ("done", i, fut)))
        pending = len(self.jobs)
        try:
            while pending:
                try:
                    left = max(self.deadline - time.monotonic(), 0.001)
                    kind, i, payload = await asyncio.wait_for(q.get(), left)
                except TimeoutError:
                    yield "error", -1, TimeoutError()
                    return
                if kind != "done":
                    yield kind, i, payload
                    continue
                pending -= 1
                exc = None if payload.cancelled() else payload.exception()
                if self.jobs[i].timed_out or isinstance(exc, TimeoutError) or payload.cancelled():
                    yield "error", i, TimeoutError()
                else:
                    yield ("error", i, exc) if exc else ("done", i, payload.result())
        finally:  # the client went away, or we are done: stop any rows still generating
            self.stop()


def sse(event: BaseModel) -> bytes:
    """One Server-Sent Event; json.dumps' spacing (`"code": "timeout"`), as the server has always sent."""
    return f"data: {json.dumps(event.model_dump(mode='json'), ensure_ascii=False)}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


class Pipeline:
    """The request limits and the submit → stream-or-collect → audit path every generating endpoint shares."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg

    # ---- checks before anything is queued -------------------------------------------------------------
    def decoding_for(self, body: GenerationRequest, limit_field: int | None) -> tuple[Decoding, int]:
        if body.preset is not None and body.preset not in PRESETS:
            raise ApiError(400, f"unknown preset '{body.preset}' (choose from {', '.join(PRESETS)})",
                           "invalid_preset")
        d = PRESETS[body.preset or "greedy"]
        if body.temperature and body.temperature > 0:
            d = replace(d, do_sample=True, temperature=body.temperature, top_p=body.top_p or 1.0, num_beams=1)
        # unsaid: the server's default, which a lower max_tokens (--max-tokens 64) lowers too
        limit = limit_field or min(d.max_new_tokens, self.cfg.default_max_tokens, self.cfg.max_tokens)
        if limit > self.cfg.max_tokens:
            raise ApiError(400, f"max_tokens {limit} is over this server's limit of {self.cfg.max_tokens}",
                           "max_tokens")
        return replace(d, max_new_tokens=limit), limit

    def work(self, body: GenerationRequest, prompts: list[str], stops, audit_text: str,
             limit_field: int | None = None) -> Work:
        decoding, limit = self.decoding_for(body, limit_field or body.max_tokens)
        return Work(prompts, tuple(stops), decoding, limit, audit_text)

    def check_findings(self, text: str) -> str:
        if not text.strip():
            raise ApiError(400, "findings are empty", "empty_findings")
        if len(text) > self.cfg.max_findings_chars:
            raise ApiError(400, f"findings over {self.cfg.max_findings_chars} characters",
                           "findings_too_long")
        return text

    def check_prompts(self, prompts: list[str]) -> list[str]:
        """A raw completion prompt: as findings, with room for a template around it."""
        cap = self.cfg.max_findings_chars * 4
        if not prompts or any(not p.strip() for p in prompts):
            raise ApiError(400, "prompt is empty", "empty_prompt")
        if any(len(p) > cap for p in prompts):
            raise ApiError(400, f"prompt over {cap} characters", "prompt_too_long")
        return prompts

    def check_prompt_tokens(self, served: Served, prompts: list[str], limit: int) -> int:
        """Prompt tokens, refused (400) over the server's limit or the engine's context, before queueing."""
        cap = self.cfg.max_prompt_tokens
        if served.context:
            cap = min(cap, served.context - limit)
        total = 0
        for p in prompts:
            n = served.model.count_tokens(p)
            if n > cap:
                raise ApiError(400, f"the prompt is {n} tokens (template and similar cases included); this "
                               f"server takes at most {cap} prompt tokens with max_tokens {limit}",
                               "prompt_too_long")
            total += n
        return total

    # ---- submit, then collect or stream ---------------------------------------------------------------
    async def respond(self, request: Request, body: GenerationRequest, served: Served, work: Work,
                      render: Render):
        prompt_tokens = self.check_prompt_tokens(served, work.prompts, work.limit)
        note(request, model=served.name, stream=body.stream, prompt_tokens=prompt_tokens,
             input_chars=len(work.audit_text), input_sha256=sha256_text(work.audit_text))
        timeout = min(body.timeout_s or self.cfg.timeout_s, self.cfg.timeout_s)
        try:
            run = Run(served.batcher, work, body.stream, timeout)
        except (QueueFull, WorkerError) as e:
            raise engine_error(e) from None
        if not body.stream:
            gens = await run.collect()
            _note_output(request, gens)
            return json_response(render.response(gens))
        return StreamingResponse(self._stream(request, run, render), media_type="text/event-stream",
                                 headers={"X-Accel-Buffering": "no"})

    async def _stream(self, request: Request, run: Run, render: Render) -> AsyncIterator[bytes]:
        for event in render.opening():
            yield sse(event)
        done = []
        async for kind, i, payload in run.events():
            if kind == "delta":
                yield sse(render.delta(i, payload))
            elif kind == "done":
                done.append(payload)
                yield sse(render.done(i, payload))
            else:  # the 200 is sent: the failure goes into the stream, the error a 4xx/5xx would carry
                err = engine_error(payload)
                note(request, outcome=err.outcome, code=err.code)
                yield sse(render.error(err.detail))
        _note_output(request, done)
        yield SSE_DONE


def _note_output(request: Request, gens: list) -> None:
    out = "\n".join(g.text for g in gens)
    note(request, output_chars=len(out), output_sha256=sha256_text(out),
         completion_tokens=sum(g.completion_tokens for g in gens))

