"""The FastAPI app: OpenAI-compatible endpoints, /v1/impressions, the clinician page, audit log.

    GET  /health                 503 {"status": "loading"} until every model is loaded, then 200
    GET  /v1/models              the served models (first = default), with provenance
    POST /v1/completions         raw prompt → text (OpenAI text_completion; SSE with "stream": true)
    POST /v1/chat/completions    the last user message is the findings → impression (chat.completion[.chunk])
    POST /v1/impressions         {"findings"} → impression + similar prior cases + consistency flags
    GET  /                       the clinician page (all assets local)

Bodies are the pydantic models of radgpt/serve/protocol.py. Each generating route is the same pipeline
(radgpt/serve/pipeline.py): the FastAPI dependencies `authorized` → `parsed(BodyModel)` →
`model_for(BodyModel)`, then the route's own checks and prompts, then `Pipeline.respond` (limits → submit →
stream or collect → audit) with the route's `Render` (how its answers look).

Decoding: greedy unless the request sets temperature > 0 (sampling with top_p) or a radgpt `preset`
(greedy | paper-demo); unlike OpenAI's API, an absent temperature means greedy — the reproducible choice
for clinical text. Errors are always {"error": {"message", "type", "code"}}: 4xx for what the request got
wrong (a FatalError raised for a request, such as an engine's over-long prompt, is a 400, never a 500), 502
when the engine failed while generating, 503 when no model or worker can take it, 504 past the timeout; 5xx
messages hold no internal text. The report text is never logged: the audit log (radgpt/serve/audit.py)
keeps one line per /v1 request whatever its fate — status, outcome, sizes, latency, sha256 hashes.

Limits are checked before a request is queued: body bytes, findings characters, and prompt tokens (the
template, retrieved cases and findings together, against `max_prompt_tokens` and the engine's context),
so no request can hold the worker for long or allocate without bound. Browsers may only call from the
server's own page (`SameOrigin`), and POST bodies must be `application/json`, which a cross-site page
cannot send without a preflight that is refused.
"""

from __future__ import annotations

import functools
import json
import secrets
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from radgpt.common.errors import FatalError
from radgpt.common.net import NO_FASTAPI_TELEMETRY, SameOrigin, SecurityHeaders, declares_json
from radgpt.impress.model import STOP_STRINGS, finish
from radgpt.serve import protocol as api
from radgpt.serve.audit import AuditLog, AuditRequests, note
from radgpt.serve.config import ServeConfig
from radgpt.serve.pipeline import ApiError, Pipeline, Registry, Render, Served, Work, json_response

HERE = Path(__file__).parent
router = APIRouter()


def create_app(models: dict, config: ServeConfig | None = None) -> FastAPI:
    """`models`: name → an ImpressionModel, or a zero-argument callable that loads one (in a background
    thread at startup; /health answers 503 until all are loaded). The first name is the default. `config`:
    the CLI's own (its audit_log default is a file in the working folder; "" for none)."""
    cfg = (config or ServeConfig()).check()
    registry = Registry(models, cfg)

    @asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=registry.load_all, name="model-loader", daemon=True).start()
        yield
        registry.close()

    app = FastAPI(title="radgpt serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan,
                  telemetry=NO_FASTAPI_TELEMETRY)
    app.state.radgpt, app.state.config, app.state.pipeline = registry, cfg, Pipeline(cfg)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    # outermost last: every /v1 request is audited, including those the host and origin checks refuse
    app.add_middleware(SameOrigin)
    if cfg.allowed_hosts:
        # only these Host headers (the CLI gives the loopback names on loopback): stops DNS-rebinding pages
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=cfg.allowed_hosts)
    app.add_middleware(AuditRequests, audit=AuditLog(cfg.audit_log or None))
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(FatalError, _fatal_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _any_error)
    app.include_router(router)
    return app


# ---------------------------------------------------------------------------------------- error handlers
async def _api_error(request: Request, e: ApiError):
    note(request, code=e.code, **({"outcome": e.outcome} if e.outcome else {}))
    return e.response()


async def _fatal_error(request: Request, e: FatalError):
    """A FatalError raised while serving a request (a model's own check: an over-long prompt, a decoding it
    cannot do) is the request's fault, said in words meant for the user: 400, never 500."""
    return await _api_error(request, ApiError(400, str(e), "invalid_request"))


async def _http_error(request: Request, e: StarletteHTTPException):
    code = "not_found" if e.status_code == 404 else "http_error"
    return ApiError(e.status_code, str(e.detail), code).response()


async def _any_error(request: Request, e: Exception):  # a bug of ours: say so, without its text
    return ApiError(500, f"internal error ({type(e).__name__})", "internal_error", "server_error").response()


# ---------------------------------------------------------------------------------------- dependencies
async def authorized(request: Request) -> None:
    """With an api_key configured, every /v1 request must carry `Authorization: Bearer <key>`."""
    key = request.app.state.config.api_key
    if not key:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(401, "missing or wrong API key: send Authorization: Bearer <key>", "invalid_api_key",
                       "authentication_error", {"WWW-Authenticate": "Bearer"})


@functools.cache  # one dependency per body class: FastAPI then reads the body once per request
def parsed(model_cls):
    """The dependency that reads the body as `model_cls`: 415 unless JSON, 413 over the size limit, 400 for
    anything else wrong with it (naming the field)."""

    async def read(request: Request):
        return await _read_json(request, model_cls, request.app.state.config.max_body_bytes)

    return read


@functools.cache
def model_for(model_cls):
    """The dependency giving the served model the body names (503 while loading or failed, 404 unknown)."""

    async def lookup(request: Request, body=Depends(parsed(model_cls))) -> Served:
        return request.app.state.radgpt.lookup(body.model)

    return lookup


def _pipe(request: Request) -> Pipeline:
    return request.app.state.pipeline


# ---------------------------------------------------------------------------------------- routes
@router.get("/health")
async def health(request: Request):
    body, status = request.app.state.radgpt.health()
    return json_response(body, status, {"Retry-After": "2"} if body.status == "loading" else None)


@router.get("/v1/models", dependencies=[Depends(authorized)])
async def list_models(request: Request):
    return json_response(request.app.state.radgpt.model_list())


@router.post("/v1/completions", dependencies=[Depends(authorized)])
async def completions(request: Request, body: api.CompletionRequest = Depends(parsed(api.CompletionRequest)),
                      served: Served = Depends(model_for(api.CompletionRequest))):
    """A raw prompt, completed as it is: no template, no retrieval, the client's own stop strings."""
    pipe = _pipe(request)
    prompts = pipe.check_prompts(body.prompts())
    baseline = getattr(served.model, "kind", "") == "baseline"  # it ignores the prompt, stop strings too
    stops = () if baseline else body.stops()
    work = pipe.work(body, prompts, stops, audit_text="\n".join(prompts))
    return await pipe.respond(request, body, served, work, CompletionRender(served, work))


@router.post("/v1/chat/completions", dependencies=[Depends(authorized)])
async def chat_completions(request: Request,
                           body: api.ChatCompletionRequest = Depends(parsed(api.ChatCompletionRequest)),
                           served: Served = Depends(model_for(api.ChatCompletionRequest))):
    """The last user message is the findings; the model's template and retrieved shots make the prompt."""
    pipe = _pipe(request)
    content = body.findings()
    if content is None:
        raise ApiError(400, "no user message (its content is the findings)", "no_user_message")
    findings = pipe.check_findings(content)
    prompts, _, _ = served.model.prepare([findings], similar=0)
    work = pipe.work(body, prompts, STOP_STRINGS, findings, body.max_completion_tokens)
    return await pipe.respond(request, body, served, work, ChatRender(served, work))


@router.post("/v1/impressions", dependencies=[Depends(authorized)])
async def impressions(request: Request, body: api.ImpressionRequest = Depends(parsed(api.ImpressionRequest)),
                      served: Served = Depends(model_for(api.ImpressionRequest))):
    """Findings → impression (repaired), similar prior cases, consistency flags, provenance."""
    pipe = _pipe(request)
    findings = pipe.check_findings(body.findings)
    prompts, hits, shot_ids = served.model.prepare([findings], similar=body.similar)
    work = pipe.work(body, prompts, STOP_STRINGS, findings)
    render = ImpressionRender(served, work, findings, hits[0], shot_ids[0], body)
    note(request, similar_case_ids=[c.id for c in render.similar])
    return await pipe.respond(request, body, served, work, render)


@router.get("/")
async def page():
    return FileResponse(HERE / "static" / "index.html", media_type="text/html")


@router.get("/favicon.ico")
async def favicon():
    return Response(status_code=204)


# ---------------------------------------------------------------------------------------- how answers look
def _finish(g) -> str:
    return "length" if g.finish_reason == "length" else "stop"


class CompletionRender(Render):
    prefix = "cmpl"

    def _chunk(self, i: int, text: str, finish_reason=None) -> api.CompletionStreamResponse:
        return api.CompletionStreamResponse(
            id=self.id, created=self.created, model=self.served.name,
            choices=[api.CompletionChoice(text=text, index=i, finish_reason=finish_reason)])

    def response(self, gens):
        return api.CompletionResponse(
            id=self.id, created=self.created, model=self.served.name,
            choices=[api.CompletionChoice(text=g.text, index=i, finish_reason=_finish(g))
                     for i, g in enumerate(gens)],
            usage=api.Usage.of(sum(g.prompt_tokens for g in gens), sum(g.completion_tokens for g in gens)))

    def delta(self, index, text):
        return self._chunk(index, text)

    def done(self, index, gen):
        return self._chunk(index, "", _finish(gen))

    def error(self, detail):
        return api.StreamError(error=detail)


class ChatRender(Render):
    prefix = "chatcmpl"

    def _chunk(self, delta: api.DeltaMessage, finish_reason=None) -> api.ChatCompletionStreamResponse:
        return api.ChatCompletionStreamResponse(
            id=self.id, created=self.created, model=self.served.name,
            choices=[api.ChatStreamChoice(index=0, delta=delta, finish_reason=finish_reason)])

    def response(self, gens):
        (g,) = gens
        return api.ChatCompletionResponse(
            id=self.id, created=self.created, model=self.served.name,
            choices=[api.ChatChoice(index=0, message=api.AssistantMessage(content=g.text),
                                    finish_reason=_finish(g))],
            usage=api.Usage.of(g.prompt_tokens, g.completion_tokens))

    def opening(self):
        return [self._chunk(api.DeltaMessage(role="assistant", content=""))]

    def delta(self, index, text):
        return self._chunk(api.DeltaMessage(content=text))

    def done(self, index, gen):
        return self._chunk(api.DeltaMessage(), _finish(gen))

    def error(self, detail):
        return api.StreamError(error=detail)


class ImpressionRender(Render):
    prefix = "imp"

    def __init__(self, served: Served, work: Work, findings: str, hits: list, shot_ids: list[str],
                 body: api.ImpressionRequest):
        super().__init__(served, work)
        self.t0 = time.perf_counter()  # latency_ms: from the parsed request to the answer
        self.findings, self.hits, self.shot_ids = findings, hits, shot_ids
        self.repair = body.repair and served.model.repair
        cases = served.model.similar_cases(hits, body.similar)
        self.similar = [api.SimilarCase(**c.to_dict()) for c in cases]

    def _fields(self, g) -> dict:
        try:
            text, repairs, flags = finish(self.findings, g.text, self.hits, self.repair)
        except Exception:  # noqa: BLE001 — a labeler bug must not fail the impression: raw text, no flags
            text, repairs, flags = g.text, [], None
        model = self.served.model
        return dict(id=self.id, created=self.created, model=self.served.name, impression=text,
                    finish_reason=_finish(g), similar_cases=self.similar, shot_case_ids=self.shot_ids,
                    consistency_flags=flags, repairs=repairs,
                    provenance={**model.provenance(), "decoding": self.work.decoding.to_dict()},
                    usage=api.Usage.of(g.prompt_tokens, g.completion_tokens),
                    latency_ms=round((time.perf_counter() - self.t0) * 1000, 1))

    def response(self, gens):
        return api.ImpressionResponse(**self._fields(gens[0]))

    def opening(self):
        return [api.SimilarCasesEvent(id=self.id, model=self.served.name, similar_cases=self.similar)]

    def delta(self, index, text):
        return api.DeltaEvent(text=text)

    def done(self, index, gen):
        return api.DoneEvent(**self._fields(gen))

    def error(self, detail):
        return api.ErrorEvent(error=detail)


# ---------------------------------------------------------------------------------------- reading a body
async def _read_json(request: Request, model_cls, max_bytes: int):
    if not declares_json(request.headers.get("content-type", "")):
        raise ApiError(415, "the body must be sent as Content-Type: application/json",
                       "unsupported_media_type")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise ApiError(413, f"request body over {max_bytes} bytes", "body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():  # counted while read: a body without Content-Length is held too
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"request body over {max_bytes} bytes", "body_too_large")
        chunks.append(chunk)
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"request body is not UTF-8 (byte {e.start})", "invalid_encoding") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(400, f"invalid JSON: {e.msg} (line {e.lineno} column {e.colno})",
                       "invalid_json") from None
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


def _validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_input=False, include_url=False)[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


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
