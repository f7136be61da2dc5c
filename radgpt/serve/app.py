"""The FastAPI app: OpenAI-compatible endpoints, /v1/impressions, the clinician page, audit log.

    GET  /health                 503 {"status": "loading"} until every model is loaded, then 200
    GET  /v1/models              the served models (first = default), with provenance
    POST /v1/completions         raw prompt → text (OpenAI text_completion; SSE with "stream": true)
    POST /v1/chat/completions    the last user message is the findings → impression (chat.completion[.chunk])
    POST /v1/impressions         {"findings"} → impression + similar prior cases + consistency flags
    GET  /                       the clinician page (all assets local)

Decoding: greedy unless the request sets temperature > 0 (sampling with top_p) or a radgpt `preset`
(greedy | paper-demo); unlike OpenAI's API, an absent temperature means greedy — the reproducible choice
for clinical text. Errors are always {"error": {"message", "type", "code"}} with a 4xx status; the
report text is never logged: the audit log keeps sizes, latency and sha256 hashes only.
"""

from __future__ import annotations

import asyncio
import json
import secrets
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

from radgpt.generate import PRESETS, Decoding
from radgpt.impress import STOP_STRINGS, sha256_text
from radgpt.net import SecurityHeaders
from radgpt.serve.batcher import Batcher, Job, QueueFull

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


class CompletionBody(_Body):
    prompt: str | list[str]
    n: int = Field(1, ge=1, le=1)
    stop: str | list[str] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[dict] | None = None


class ChatBody(_Body):
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(1, ge=1, le=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class ImpressionBody(_Body):
    findings: str
    similar: int = Field(3, ge=0, le=20)


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


# ---------------------------------------------------------------------------------------- the app
class Settings(BaseModel):
    max_body_bytes: int = 256 * 1024
    max_tokens: int = 256  # cap on a request's max_tokens
    default_max_tokens: int = 128
    max_findings_chars: int = 20_000
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
    state = {"loaded": {}, "batchers": {}, "error": None, "ready": threading.Event()}
    audit = AuditLog(s.audit_log)

    def load_all():
        try:
            for name, m in models.items():
                model = m() if callable(m) and not hasattr(m, "impress") else m
                state["loaded"][name] = model
                state["batchers"][name] = Batcher(model, s.max_batch, s.max_queue, s.batch_wait_ms)
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
    app.add_middleware(SecurityHeaders)
    if s.allowed_hosts:
        # Bound to loopback, only loopback names are valid Host headers: stops DNS-rebinding pages.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=s.allowed_hosts)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        if request.url.path.startswith("/v1/"):  # refusals are audited too (no body content)
            audit.write(client=client_of(request), endpoint=request.url.path, status=e.status, code=e.code,
                        request_bytes=int(request.headers.get("content-length") or 0))
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
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object", "invalid_request")
        try:
            return model_cls.model_validate(data), len(raw)
        except ValidationError as e:
            raise ApiError(400, _validation_message(e), "invalid_request") from None

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

    async def wait_all(futures, jobs):
        try:
            gens = await asyncio.wait_for(asyncio.gather(*[asyncio.wrap_future(f) for f in futures]), s.timeout_s)
            if any(j.timed_out for j in jobs):  # stopped by the worker at the deadline: partial text
                raise TimeoutError()
            return gens
        except TimeoutError:
            for j in jobs:
                j.cancelled = True
            raise ApiError(504, f"generation took longer than {s.timeout_s:g} s", "timeout", "server_error") from None
        except asyncio.CancelledError:
            for j in jobs:
                j.cancelled = True
            raise

    def client_of(request: Request) -> str:
        return request.client.host if request.client else "?"

    def make_jobs(prompts, decoding, limit, stops, loop, queue_: asyncio.Queue | None) -> list[Job]:
        deadline = time.monotonic() + s.timeout_s
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
        deadline = time.monotonic() + s.timeout_s
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
                    exc = payload.exception()
                    if jobs[i].timed_out or isinstance(exc, TimeoutError):
                        yield "error", i, "timeout"
                    else:
                        yield ("error", i, str(exc)) if exc else ("done", i, payload.result())
                else:
                    yield kind, i, payload
        finally:  # the client went away (or we are done): stop any rows still generating
            for j in jobs:
                j.cancelled = True

    # ---- routes ----------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        if not state["ready"].is_set():
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
        if state["error"]:
            return JSONResponse({"status": "error", "error": state["error"]}, status_code=503)
        return {"status": "ok", "models": names,
                "queue": {n: b.q.qsize() for n, b in state["batchers"].items()},
                "batches": {n: {"batches": b.batches, "rows": b.rows} for n, b in state["batchers"].items()}}

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

    @app.post("/v1/completions")
    async def completions(request: Request):
        t0 = time.perf_counter()
        check_auth(request)
        body, nbytes = await read_json(request, CompletionBody)
        name, model, batcher = pick_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or any(not p.strip() for p in prompts):
            raise ApiError(400, "prompt is empty", "empty_prompt")
        if any(len(p) > s.max_findings_chars * 4 for p in prompts):
            raise ApiError(400, "prompt too long", "prompt_too_long")
        decoding, limit = decoding_for(body, body.max_tokens)
        stops = tuple([body.stop] if isinstance(body.stop, str) else body.stop or [])
        if getattr(model, "kind", "") == "baseline":
            stops = ()
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        loop = asyncio.get_running_loop()
        q = asyncio.Queue() if body.stream else None
        jobs = make_jobs(prompts, decoding, limit, stops, loop, q)
        futures = submit(batcher, jobs)
        in_text = "\n".join(prompts)

        def log(status, out_text="", usage=(0, 0)):
            audit.write(client=client_of(request), endpoint="/v1/completions", model=name, status=status,
                        stream=body.stream, request_bytes=nbytes, input_chars=len(in_text),
                        input_sha256=sha256_text(in_text), output_chars=len(out_text),
                        output_sha256=sha256_text(out_text), prompt_tokens=usage[0], completion_tokens=usage[1],
                        latency_ms=round((time.perf_counter() - t0) * 1000, 1))

        def chunk(i, text, finish=None):
            return {"id": rid, "object": "text_completion", "created": created, "model": name,
                    "choices": [{"text": text, "index": i, "logprobs": None, "finish_reason": finish}]}

        if not body.stream:
            gens = await wait_all(futures, jobs)
            usage = (sum(g.prompt_tokens for g in gens), sum(g.completion_tokens for g in gens))
            log(200, "\n".join(g.text for g in gens), usage)
            return {"id": rid, "object": "text_completion", "created": created, "model": name,
                    "choices": [{"text": g.text, "index": i, "logprobs": None, "finish_reason": _finish(g)}
                                for i, g in enumerate(gens)],
                    "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                              "total_tokens": usage[0] + usage[1]}}

        async def gen():
            out, usage = [], [0, 0]
            async for kind, i, payload in stream_events(jobs, futures, q, loop):
                if kind == "delta":
                    yield sse(chunk(i, payload))
                elif kind == "done":
                    out.append(payload.text)
                    usage[0] += payload.prompt_tokens
                    usage[1] += payload.completion_tokens
                    yield sse(chunk(i, "", _finish(payload)))
                else:
                    yield sse({"error": {"message": f"generation failed: {payload}", "type": "server_error",
                                         "code": "timeout" if payload == "timeout" else "generation_error"}})
            log(200, "\n".join(out), tuple(usage))
            yield b"data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        t0 = time.perf_counter()
        check_auth(request)
        body, nbytes = await read_json(request, ChatBody)
        name, model, batcher = pick_model(body.model)
        users = [m for m in body.messages if m.role == "user"]
        if not users:
            raise ApiError(400, "no user message (its content is the findings)", "no_user_message")
        content = users[-1].content
        if isinstance(content, list):  # OpenAI content parts
            content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        findings = check_findings(content or "")
        decoding, limit = decoding_for(body, body.max_completion_tokens or body.max_tokens)
        prompts, _, _ = model.prepare([findings], similar=0)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        loop = asyncio.get_running_loop()
        q = asyncio.Queue() if body.stream else None
        jobs = make_jobs(prompts, decoding, limit, STOP_STRINGS, loop, q)
        futures = submit(batcher, jobs)

        def log(status, out_text="", g=None):
            audit.write(client=client_of(request), endpoint="/v1/chat/completions", model=name, status=status,
                        stream=body.stream, request_bytes=nbytes, input_chars=len(findings),
                        input_sha256=sha256_text(findings), output_chars=len(out_text),
                        output_sha256=sha256_text(out_text), prompt_tokens=g.prompt_tokens if g else 0,
                        completion_tokens=g.completion_tokens if g else 0,
                        latency_ms=round((time.perf_counter() - t0) * 1000, 1))

        if not body.stream:
            (g,) = await wait_all(futures, jobs)
            log(200, g.text, g)
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
                    log(200, payload.text, payload)
                    yield sse(chunk({}, _finish(payload)))
                else:
                    yield sse({"error": {"message": f"generation failed: {payload}", "type": "server_error",
                                         "code": "timeout" if payload == "timeout" else "generation_error"}})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})

    @app.post("/v1/impressions")
    async def impressions(request: Request):
        t0 = time.perf_counter()
        check_auth(request)
        body, nbytes = await read_json(request, ImpressionBody)
        name, model, batcher = pick_model(body.model)
        findings = check_findings(body.findings)
        decoding, limit = decoding_for(body, body.max_tokens)
        prompts, hits, shot_ids = model.prepare([findings], similar=body.similar)
        similar = [c.to_dict() for c in model.similar_cases(hits[0], body.similar)]
        rid, created = f"imp-{uuid.uuid4().hex[:24]}", int(time.time())
        loop = asyncio.get_running_loop()
        q = asyncio.Queue() if body.stream else None
        jobs = make_jobs(prompts, decoding, limit, STOP_STRINGS, loop, q)
        futures = submit(batcher, jobs)

        def result(g) -> dict:
            audit.write(client=client_of(request), endpoint="/v1/impressions", model=name, status=200,
                        stream=body.stream, request_bytes=nbytes, input_chars=len(findings),
                        input_sha256=sha256_text(findings), output_chars=len(g.text),
                        output_sha256=sha256_text(g.text), prompt_tokens=g.prompt_tokens,
                        completion_tokens=g.completion_tokens, similar_case_ids=[c["id"] for c in similar],
                        latency_ms=round((time.perf_counter() - t0) * 1000, 1))
            return {"id": rid, "object": "impression", "created": created, "model": name, "impression": g.text,
                    "finish_reason": _finish(g), "similar_cases": similar, "shot_case_ids": shot_ids[0],
                    "consistency_flags": _flags(findings, g.text),
                    "provenance": {**model.provenance(), "decoding": decoding.to_dict()},
                    "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                              "total_tokens": g.prompt_tokens + g.completion_tokens},
                    "latency_ms": round((time.perf_counter() - t0) * 1000, 1)}

        if not body.stream:
            (g,) = await wait_all(futures, jobs)
            return result(g)

        async def gen():
            yield sse({"type": "similar_cases", "id": rid, "model": name, "similar_cases": similar})
            async for kind, i, payload in stream_events(jobs, futures, q, loop):
                if kind == "delta":
                    yield sse({"type": "delta", "text": payload})
                elif kind == "done":
                    yield sse({"type": "done", **result(payload)})
                else:
                    yield sse({"type": "error", "error": {"message": f"generation failed: {payload}",
                                                          "type": "server_error", "code": "timeout"
                                                          if payload == "timeout" else "generation_error"}})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})

    @app.get("/")
    async def page():
        return FileResponse(HERE / "static" / "index.html", media_type="text/html")

    @app.get("/favicon.ico")
    async def favicon():
        return Response(status_code=204)

    return app


def _finish(g) -> str:
    return "length" if g.finish_reason == "length" else "stop"


def _flags(findings: str, impression: str) -> list | None:
    """Consistency flags from radgpt.evaluate's labeler (None when that module is unavailable)."""
    try:
        from radgpt.evaluate.labeler import consistency_flags
    except ImportError:
        return None
    try:
        return consistency_flags(findings, impression)
    except Exception:  # noqa: BLE001 — a labeler bug must not fail the impression
        return None
