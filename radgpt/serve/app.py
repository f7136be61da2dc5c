"""The FastAPI app: OpenAI-compatible endpoints, /v1/impressions, the clinician page, audit log.

    GET  /health                 503 {"status": "loading"} until every model is loaded, then 200
    GET  /v1/models              the served models (first = default), with provenance
    POST /v1/completions         raw prompt → text (OpenAI text_completion; SSE with "stream": true)
    POST /v1/chat/completions    the last user message is the findings → impression (chat.completion[.chunk])
    POST /v1/impressions         {"findings"} → impression + similar prior cases + consistency flags
    GET  /                       the clinician page (all assets local)

Decoding: greedy unless the request sets temperature > 0 (sampling with top_p) or a radgpt `preset`
(greedy | paper-demo); unlike OpenAI's API, an absent temperature means greedy — the reproducible choice
for clinical text. Errors are always {"error": {"message", "type", "code"}} with a 4xx status (5xx only
for the server's own failures, with no internal text); the report text is never logged: the audit log
keeps one line per /v1 request whatever its fate — status, outcome, sizes, latency, sha256 hashes.

Limits are checked before a request is queued: body bytes, findings characters, and prompt tokens (the
template, retrieved cases and findings together, against `max_prompt_tokens` and the engine's context),
so no request can hold the worker for long or allocate without bound. Browsers may only call from the
server's own page (`SameOrigin`), and POST bodies must be `application/json`, which a cross-site page
cannot send without a preflight that is refused.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from radgpt.common.errors import FatalError
from radgpt.common.hashing import sha256_text
from radgpt.common.net import SameOrigin, SecurityHeaders, declares_json
from radgpt.impress.model import STOP_STRINGS, finish
from radgpt.runs.decoding import PRESETS, Decoding
from radgpt.serve.batcher import Batcher, Job, QueueFull, WorkerError

HERE = Path(__file__).parent


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error",
                 headers: dict | None = None):
        self.status, self.message, self.code, self.type, self.headers = status, message, code, type_, headers


def error_response(status: int, message: str, code: str, type_: str = "invalid_request_error",
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "code": code}}, status_code=status,
                        headers=headers)


# ---------------------------------------------------------------------------------------- request bodies
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # strict: "max_tokens": "5" is a type error
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    preset: str | None = None  # radgpt extension: greedy | paper-demo
    # radgpt extension: seconds this request may take (504 after), at most the server's --timeout; a RIS hook
    # that would rather have no impression than a late one says so here
    timeout_s: float | None = Field(None, gt=0)


class CompletionBody(_Body):
    prompt: str | list[str]
    n: int = Field(1, ge=1, le=1)
    stop: str | list[str] | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: str
    content: str | list[ContentPart] | None = None


class ChatBody(_Body):
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(1, ge=1, le=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class ImpressionBody(_Body):
    findings: str
    similar: int = Field(3, ge=0, le=20)
    # radgpt: the faithfulness repair (radgpt.impress.model.finish); false = the model's text as generated
    repair: bool = True


def _validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_input=False, include_url=False)[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------- middleware
class AuditLog:
    """JSON lines: time, client, endpoint, model, status, sizes, latency, sha256 of input/output text."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.lock = threading.Lock()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **rec) -> None:
        if not self.path:
            return
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **rec}
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)


class AuditRequests:
    """Pure ASGI middleware: exactly one audit line per /v1 request, written when the response is over —
    answered, refused, failed, timed out or left by its client mid-stream. Routes add what they know (model,
    hashes, token counts, outcome) to `request.state.audit`; this layer adds status, timing and bytes."""

    def __init__(self, app, audit: AuditLog):
        self.app, self.audit = app, audit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/") or not self.audit.path:
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        rec: dict = {}
        scope.setdefault("state", {})["audit"] = rec
        seen = {"status": None, "ended": False, "bytes": 0}

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
                seen["ended"] = not message.get("more_body", False)
            await send(message)

        outcome = None
        try:
            await self.app(scope, receive, send_and_note)
        except BaseException as e:  # noqa: BLE001 — noted, then re-raised as it was
            outcome = "disconnected" if isinstance(e, asyncio.CancelledError) else "server_error"
            raise
        finally:
            length = dict(scope.get("headers") or []).get(b"content-length", b"")
            status = seen["status"] or (500 if outcome == "server_error" else 499)
            if outcome is None and not seen["ended"]:
                outcome = "disconnected"  # the client left before the response was over
            client = scope.get("client")
            try:
                self.audit.write(client=client[0] if client else "?", endpoint=scope["path"], status=status,
                                 outcome=rec.pop("outcome", None) or outcome or ("ok" if status < 400 else "refused"),
                                 request_bytes=int(length) if length.isdigit() else 0,
                                 response_bytes=seen["bytes"], **rec,
                                 latency_ms=round((time.perf_counter() - t0) * 1000, 1))
            except OSError as e:  # a full disk must not turn answered requests into errors; say it, without text
                print(f"radgpt serve: audit log not written ({type(e).__name__})", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- the app
class Settings(BaseModel):
    max_body_bytes: int = 256 * 1024
    max_tokens: int = 256  # cap on a request's max_tokens
    default_max_tokens: int = 128
    max_findings_chars: int = 20_000
    # prompt tokens (template + retrieved cases + findings): an OpenI prompt is ~110, a long MIMIC-CXR
    # report ~600; a 9k-token prompt held the CPU worker 86 s and 53k ran it out of memory
    max_prompt_tokens: int = 2048
    timeout_s: float = 60.0
    max_batch: int = 16
    max_queue: int = 64
    batch_wait_ms: float = 5.0
    api_key: str | None = None
    audit_log: str | None = None
    allowed_hosts: list[str] | None = None


def create_app(models: dict, settings: Settings | None = None) -> FastAPI:
    """`models`: name → an ImpressionModel, or a zero-argument callable that loads one (in a background
    thread at startup; /health answers 503 until all are loaded). The first name is the default."""
    s = settings or Settings()
    if not models:
        raise ValueError("no models to serve")
    names = list(models)
    state = {"loaded": {}, "batchers": {}, "context": {}, "error": None, "ready": threading.Event()}
    audit = AuditLog(s.audit_log)

    def load_all():
        try:
            for name, m in models.items():
                model = m() if callable(m) and not hasattr(m, "impress") else m
                state["loaded"][name] = model
                state["batchers"][name] = Batcher(model, s.max_batch, s.max_queue, s.batch_wait_ms)
                state["context"][name] = _context_tokens(model)
        except Exception as e:  # noqa: BLE001 — reported by /health, the process keeps answering
            state["error"] = f"{type(e).__name__}: {e}"
        state["ready"].set()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=load_all, name="model-loader", daemon=True).start()
        yield
        for b in state["batchers"].values():
            b.close()

    # FastAPI's built-in OpenTelemetry would record request data if a global provider or OTEL_* exporters
    # were set: report text never leaves this process (same settings as radgpt/study).
    no_telemetry = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False,
                    "auto_configure": False}
    app = FastAPI(title="radgpt serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan,
                  telemetry=no_telemetry)
    app.state.radgpt = state
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    # outermost last: every /v1 request is audited, including those the host and origin checks refuse
    app.add_middleware(SameOrigin)
    if s.allowed_hosts:
        # Bound to loopback, only loopback names are valid Host headers: stops DNS-rebinding pages.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=s.allowed_hosts)
    app.add_middleware(AuditRequests, audit=audit)
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        note(request, code=e.code)
        return error_response(e.status, e.message, e.code, e.type, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail), "not_found" if e.status_code == 404 else "http_error")

    @app.exception_handler(Exception)
    async def _any_error(request: Request, e: Exception):
        return error_response(500, f"internal error ({type(e).__name__})", "internal_error", "server_error")

    # ---- helpers ---------------------------------------------------------------------------------------
    def check_auth(request: Request) -> None:
        if s.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), s.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send Authorization: Bearer <key>", "invalid_api_key",
                           "authentication_error", {"WWW-Authenticate": "Bearer"})

    async def read_json(request: Request, model_cls):
        if not declares_json(request.headers.get("content-type", "")):
            raise ApiError(415, "the body must be sent as Content-Type: application/json", "unsupported_media_type")
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > s.max_body_bytes:
            raise ApiError(413, f"request body over {s.max_body_bytes} bytes", "body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > s.max_body_bytes:
                raise ApiError(413, f"request body over {s.max_body_bytes} bytes", "body_too_large")
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ApiError(400, f"request body is not UTF-8 (byte {e.start})", "invalid_encoding") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ApiError(400, f"invalid JSON: {e.msg} (line {e.lineno} column {e.colno})", "invalid_json") from None
        except RecursionError:
            raise ApiError(400, "invalid JSON: nested too deeply", "invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object", "invalid_request")
        try:
            body = model_cls.model_validate(data)
        except ValidationError as e:
            raise ApiError(400, _validation_message(e), "invalid_request") from None
        except RecursionError:
            raise ApiError(400, "invalid request: nested too deeply", "invalid_request") from None
        where = _unpaired_surrogate(body.model_dump())
        if where:
            raise ApiError(400, f"{where}: text holds an unpaired UTF-16 surrogate (e.g. \\ud800), which is "
                           "not a character", "invalid_text")
        return body

    def note(request: Request, **fields) -> None:
        """Add to this request's audit line (never text: sizes, hashes, counts, codes)."""
        rec = getattr(request.state, "audit", None)
        if rec is not None:
            rec.update(fields)

    def check_prompt_tokens(name: str, model, prompts: list[str], limit: int) -> int:
        """Prompt tokens, refused (400) over the server's limit or the engine's context, before queueing."""
        cap = s.max_prompt_tokens
        ctx = state["context"].get(name)
        if ctx:
            cap = min(cap, ctx - limit)
        total = 0
        for p in prompts:
            n = model.count_tokens(p)
            if n > cap:
                raise ApiError(400, f"the prompt is {n} tokens (template and similar cases included); this server "
                               f"takes at most {cap} prompt tokens with max_tokens {limit}", "prompt_too_long")
            total += n
        return total

    def prepare(model, findings: list[str], similar: int):
        try:
            return model.prepare(findings, similar=similar)
        except FatalError as e:  # e.g. an engine's own context check
            raise ApiError(400, str(e), "invalid_request") from None

    def pick_model(name: str | None):
        if not state["ready"].is_set():
            raise ApiError(503, "the model is still loading; retry shortly", "loading", "server_error",
                           {"Retry-After": "2"})
        if state["error"]:
            raise ApiError(503, f"the model failed to load: {state['error']}", "load_failed", "server_error")
        name = name or names[0]
        if name not in state["loaded"]:
            raise ApiError(404, f"model '{name}' not found (available: {', '.join(names)})", "model_not_found")
        return name, state["loaded"][name], state["batchers"][name]

    def decoding_for(body: _Body, limit_field: int | None) -> tuple[Decoding, int]:
        if body.preset is not None and body.preset not in PRESETS:
            raise ApiError(400, f"unknown preset '{body.preset}' (choose from {', '.join(PRESETS)})", "invalid_preset")
        d = PRESETS[body.preset or "greedy"]
        if body.temperature and body.temperature > 0:
            d = replace(d, do_sample=True, temperature=body.temperature, top_p=body.top_p or 1.0, num_beams=1)
        limit = limit_field or min(d.max_new_tokens, s.default_max_tokens)
        if limit > s.max_tokens:
            raise ApiError(400, f"max_tokens {limit} is over this server's limit of {s.max_tokens}", "max_tokens")
        return replace(d, max_new_tokens=limit), limit

    def check_findings(text: str) -> str:
        if not text.strip():
            raise ApiError(400, "findings are empty", "empty_findings")
        if len(text) > s.max_findings_chars:
            raise ApiError(400, f"findings over {s.max_findings_chars} characters", "findings_too_long")
        return text

    def submit(batcher: Batcher, jobs: list[Job]) -> list:
        try:
            return batcher.submit_many(jobs)
        except QueueFull:
            raise ApiError(429, "the server is busy (request queue full); retry shortly", "queue_full",
                           "rate_limit_error", {"Retry-After": "1"}) from None

    async def wait_all(futures, jobs, request: Request):
        timeout = max(0.0, jobs[0].deadline - time.monotonic())
        try:
            gens = await asyncio.wait_for(asyncio.gather(*[asyncio.wrap_future(f) for f in futures]), timeout)
            if any(j.timed_out for j in jobs):  # stopped by the worker at the deadline: partial text
                raise TimeoutError()
            return gens
        except TimeoutError:
            for j in jobs:
                j.cancelled = True
            note(request, outcome="timeout")
            raise ApiError(504, "generation took longer than the request's timeout", "timeout", "server_error") from None
        except WorkerError:
            note(request, outcome="engine_error")
            raise ApiError(503, "generation failed in the engine; retry", "generation_error", "server_error",
                           {"Retry-After": "1"}) from None
        except asyncio.CancelledError:
            for j in jobs:
                j.cancelled = True
            raise

    def make_jobs(prompts, decoding, limit, stops, loop, queue_: asyncio.Queue | None, timeout: float) -> list[Job]:
        deadline = time.monotonic() + timeout
        jobs = []
        for i, p in enumerate(prompts):
            cb = None
            if queue_ is not None:
                def cb(text, i=i):
                    loop.call_soon_threadsafe(queue_.put_nowait, ("delta", i, text))
            jobs.append(Job(p, decoding, limit, stops, cb, deadline))
        return jobs

    def sse(obj) -> bytes:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()

    async def stream_events(jobs, futures, queue_: asyncio.Queue, loop):
        """(kind, index, payload) events: deltas as they come, then ("done", i, Generation) per job."""
        for i, f in enumerate(futures):
            def done(fut, i=i):
                loop.call_soon_threadsafe(queue_.put_nowait, ("done", i, fut))
            f.add_done_callback(done)
        pending = len(jobs)
        deadline = jobs[0].deadline
        try:
            while pending:
                left = deadline - time.monotonic()
                try:
                    kind, i, payload = await asyncio.wait_for(queue_.get(), max(left, 0.001))
                except TimeoutError:
                    for j in jobs:
                        j.cancelled = True
                    yield "error", -1, "timeout"
                    return
                if kind == "done":
                    pending -= 1
                    exc = None if payload.cancelled() else payload.exception()
                    if jobs[i].timed_out or isinstance(exc, TimeoutError) or payload.cancelled():
                        yield "error", i, "timeout"
                    else:
                        yield ("error", i, "generation_error") if exc else ("done", i, payload.result())
                else:
                    yield kind, i, payload
        finally:  # the client went away (or we are done): stop any rows still generating
            for j in jobs:
                j.cancelled = True

    # ---- routes ----------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        """200 only when every model can serve now: loaded, its worker alive, its queue moving."""
        if not state["ready"].is_set():
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
        if state["error"]:
            return JSONResponse({"status": "error", "error": state["error"]}, status_code=503)
        workers = {n: b.health() for n, b in state["batchers"].items()}
        stuck = [n for n, w in workers.items() if not w["alive"] or w["oldest_wait_s"] > s.timeout_s]
        body = {"status": "unavailable" if stuck else "ok", "models": names, "workers": workers,
                "queue": {n: w["queued"] for n, w in workers.items()},
                "batches": {n: {"batches": w["batches"], "rows": w["rows"]} for n, w in workers.items()}}
        return JSONResponse(body, status_code=503 if stuck else 200)

    @app.get("/v1/models")
    async def list_models(request: Request):
        check_auth(request)
        data = []
        for n in names:
            m = state["loaded"].get(n)
            prov = m.provenance() if m is not None else {"status": "loading"}
            data.append({"id": n, "object": "model", "created": 0, "owned_by": "radgpt",
                         "radgpt": {k: v for k, v in prov.items() if k not in ("instruction",)}})
        return {"object": "list", "data": data}

    def start(request: Request, body: _Body, name, model, batcher, prompts, decoding, limit, stops):
        """Check the prompts' tokens, queue the jobs; (jobs, futures, event queue or None, loop)."""
        prompt_tokens = check_prompt_tokens(name, model, prompts, limit)
        note(request, model=name, stream=body.stream, prompt_tokens=prompt_tokens)
        loop = asyncio.get_running_loop()
        q = asyncio.Queue() if body.stream else None
        jobs = make_jobs(prompts, decoding, limit, stops, loop, q, min(body.timeout_s or s.timeout_s, s.timeout_s))
        return jobs, submit(batcher, jobs), q, loop

    def finished(request: Request, in_text: str, gens) -> None:
        out = "\n".join(g.text for g in gens)
        note(request, input_chars=len(in_text), input_sha256=sha256_text(in_text), output_chars=len(out),
             output_sha256=sha256_text(out), completion_tokens=sum(g.completion_tokens for g in gens))

    def error_event(request: Request, payload: str) -> dict:
        note(request, outcome="timeout" if payload == "timeout" else "engine_error")
        return {"message": "generation took longer than the server's timeout" if payload == "timeout"
                else "generation failed", "type": "server_error", "code": payload}

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_auth(request)
        body = await read_json(request, CompletionBody)
        name, model, batcher = pick_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or any(not p.strip() for p in prompts):
            raise ApiError(400, "prompt is empty", "empty_prompt")
        if any(len(p) > s.max_findings_chars * 4 for p in prompts):
            raise ApiError(400, f"prompt over {s.max_findings_chars * 4} characters", "prompt_too_long")
        decoding, limit = decoding_for(body, body.max_tokens)
        stops = tuple([body.stop] if isinstance(body.stop, str) else body.stop or [])
        if getattr(model, "kind", "") == "baseline":
            stops = ()
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        jobs, futures, q, loop = start(request, body, name, model, batcher, prompts, decoding, limit, stops)
        in_text = "\n".join(prompts)

        def chunk(i, text, finish=None):
            return {"id": rid, "object": "text_completion", "created": created, "model": name,
                    "choices": [{"text": text, "index": i, "logprobs": None, "finish_reason": finish}]}

        if not body.stream:
            gens = await wait_all(futures, jobs, request)
            finished(request, in_text, gens)
            usage = (sum(g.prompt_tokens for g in gens), sum(g.completion_tokens for g in gens))
            return {"id": rid, "object": "text_completion", "created": created, "model": name,
                    "choices": [{"text": g.text, "index": i, "logprobs": None, "finish_reason": _finish(g)}
                                for i, g in enumerate(gens)],
                    "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                              "total_tokens": usage[0] + usage[1]}}

        async def gen():
            done = []
            async for kind, i, payload in stream_events(jobs, futures, q, loop):
                if kind == "delta":
                    yield sse(chunk(i, payload))
                elif kind == "done":
                    done.append(payload)
                    yield sse(chunk(i, "", _finish(payload)))
                else:
                    yield sse({"error": error_event(request, payload)})
            finished(request, in_text, done)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        check_auth(request)
        body = await read_json(request, ChatBody)
        name, model, batcher = pick_model(body.model)
        users = [m for m in body.messages if m.role == "user"]
        if not users:
            raise ApiError(400, "no user message (its content is the findings)", "no_user_message")
        content = users[-1].content
        if isinstance(content, list):  # OpenAI content parts
            content = "\n".join(p.text or "" for p in content if p.type == "text")
        findings = check_findings(content or "")
        decoding, limit = decoding_for(body, body.max_completion_tokens or body.max_tokens)
        prompts, _, _ = prepare(model, [findings], similar=0)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        jobs, futures, q, loop = start(request, body, name, model, batcher, prompts, decoding, limit,
                                       STOP_STRINGS)

        if not body.stream:
            (g,) = await wait_all(futures, jobs, request)
            finished(request, findings, [g])
            return {"id": rid, "object": "chat.completion", "created": created, "model": name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text},
                                 "finish_reason": _finish(g)}],
                    "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                              "total_tokens": g.prompt_tokens + g.completion_tokens}}

        def chunk(delta, finish=None):
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        async def gen():
            yield sse(chunk({"role": "assistant", "content": ""}))
            async for kind, i, payload in stream_events(jobs, futures, q, loop):
                if kind == "delta":
                    yield sse(chunk({"content": payload}))
                elif kind == "done":
                    finished(request, findings, [payload])
                    yield sse(chunk({}, _finish(payload)))
                else:
                    yield sse({"error": error_event(request, payload)})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})

    @app.post("/v1/impressions")
    async def impressions(request: Request):
        t0 = time.perf_counter()
        check_auth(request)
        body = await read_json(request, ImpressionBody)
        name, model, batcher = pick_model(body.model)
        findings = check_findings(body.findings)
        decoding, limit = decoding_for(body, body.max_tokens)
        prompts, hits, shot_ids = prepare(model, [findings], similar=body.similar)
        similar = [c.to_dict() for c in model.similar_cases(hits[0], body.similar)]
        note(request, similar_case_ids=[c["id"] for c in similar])
        rid, created = f"imp-{uuid.uuid4().hex[:24]}", int(time.time())
        jobs, futures, q, loop = start(request, body, name, model, batcher, prompts, decoding, limit,
                                       STOP_STRINGS)

        def result(g) -> dict:
            finished(request, findings, [g])
            try:
                text, repairs, flags = finish(findings, g.text, hits[0], body.repair and model.repair)
            except Exception:  # noqa: BLE001 — a labeler bug must not fail the impression: raw text, no flags
                text, repairs, flags = g.text, [], None
            return {"id": rid, "object": "impression", "created": created, "model": name, "impression": text,
                    "finish_reason": _finish(g), "similar_cases": similar, "shot_case_ids": shot_ids[0],
                    "consistency_flags": flags, "repairs": repairs,
                    "provenance": {**model.provenance(), "decoding": decoding.to_dict()},
                    "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                              "total_tokens": g.prompt_tokens + g.completion_tokens},
                    "latency_ms": round((time.perf_counter() - t0) * 1000, 1)}

        if not body.stream:
            (g,) = await wait_all(futures, jobs, request)
            return result(g)

        async def gen():
            yield sse({"type": "similar_cases", "id": rid, "model": name, "similar_cases": similar})
            async for kind, i, payload in stream_events(jobs, futures, q, loop):
                if kind == "delta":
                    yield sse({"type": "delta", "text": payload})
                elif kind == "done":
                    yield sse({"type": "done", **result(payload)})
                else:
                    yield sse({"type": "error", "error": error_event(request, payload)})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})

    @app.get("/")
    async def page():
        return FileResponse(HERE / "static" / "index.html", media_type="text/html")

    @app.get("/favicon.ico")
    async def favicon():
        return Response(status_code=204)

    return app


def _context_tokens(model) -> int | None:
    """The engine's context window in tokens, where it has a fixed one (llama.cpp's n_ctx)."""
    backend = getattr(model, "backend", None)
    return getattr(backend, "n_ctx", None)


def _unpaired_surrogate(value, where: str = "body") -> str | None:
    """The field path of the first string holding a lone surrogate (JSON allows "\\ud800"; tokenizers and
    UTF-8 do not), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = _unpaired_surrogate(v, f"{where}.{k}" if where != "body" else str(k))
        if found:
            return found
    return None


def _finish(g) -> str:
    return "length" if g.finish_reason == "length" else "stop"

