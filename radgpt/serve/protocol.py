"""The wire format of `radgpt serve`: every request and response body as a pydantic model.

Requests are validated strictly (`"max_tokens": "5"` is a type error, as OpenAI's API has it) and ignore
fields they do not know (an OpenAI client sends `user`, `seed`, `logit_bias`, ...). Responses are built from
these models and nothing else, so what the server sends is what is written here; they forbid extra fields,
which lets a test validate a body against them and notice a field that is not in the protocol.

OpenAI-compatible: `CompletionRequest` → `CompletionResponse` / `CompletionStreamResponse` chunks;
`ChatCompletionRequest` → `ChatCompletionResponse` / `ChatCompletionStreamResponse` chunks; `ModelList`.
radgpt's own: `ImpressionRequest` → `ImpressionResponse`, streamed as `SimilarCasesEvent`, `DeltaEvent`s, then
`DoneEvent` (or `ErrorEvent`); `HealthResponse`. Errors everywhere: `ErrorResponse` (`{"error": {...}}`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

FinishReason = Literal["stop", "length"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _OmitNone(_Response):
    """A response whose absent (None) fields are left out of the JSON rather than sent as null."""

    @model_serializer(mode="wrap")
    def _omit_none(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


# ---------------------------------------------------------------------------------------- requests
class GenerationRequest(_Request):
    """What every generating endpoint takes."""

    model: str | None = None  # the served model's name; absent: the first (default) one
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)  # > 0: sampling; absent or 0: greedy (reproducible)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    preset: str | None = None  # radgpt extension: greedy | paper-demo
    # radgpt extension: seconds this request may take (504 after), at most the server's timeout; a RIS hook
    # that would rather have no impression than a late one says so here
    timeout_s: float | None = Field(None, gt=0)


class CompletionRequest(GenerationRequest):
    prompt: str | list[str]
    n: int = Field(1, ge=1, le=1)
    stop: str | list[str] | None = None

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else self.stop or []


class ContentPart(_Request):
    type: str
    text: str | None = None


class ChatMessage(_Request):
    role: str
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(1, ge=1, le=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def findings(self) -> str | None:
        """The last user message's text (its text parts joined): the findings; None without a user message.
        System messages are ignored: the model was trained with its own instruction."""
        users = [m for m in self.messages if m.role == "user"]
        if not users:
            return None
        content = users[-1].content
        if isinstance(content, list):  # OpenAI content parts
            content = "\n".join(p.text or "" for p in content if p.type == "text")
        return content or ""


class ImpressionRequest(GenerationRequest):
    findings: str
    similar: int = Field(3, ge=0, le=20)  # similar prior cases returned with the impression
    # radgpt: the faithfulness repair (radgpt.impress.model.finish); false = the model's text as generated
    repair: bool = True


# ---------------------------------------------------------------------------------------- errors
class ErrorDetail(_Response):
    message: str  # for the user: never internal text (exception messages, paths) nor report text
    type: str  # invalid_request_error | authentication_error | rate_limit_error | server_error
    code: str  # stable, machine-readable: empty_findings, prompt_too_long, timeout, generation_error, ...


class ErrorResponse(_Response):
    error: ErrorDetail


class StreamError(_Response):
    """An OpenAI-format stream (completions, chat) that fails after its 200: this chunk, then [DONE]."""

    error: ErrorDetail


# ---------------------------------------------------------------------------------------- shared parts
class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


# ---------------------------------------------------------------------------------------- /v1/completions
class CompletionChoice(_Response):
    text: str
    index: int
    logprobs: None = None
    finish_reason: FinishReason | None  # None in a stream chunk until that choice is done


class CompletionResponse(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionStreamResponse(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]


# ------------------------------------------------------------------------------------ /v1/chat/completions
class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Response):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason


class ChatCompletionResponse(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaMessage(_OmitNone):
    """First chunk {"role": "assistant", "content": ""}, then {"content": ...}, the last one {}."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatStreamChoice(_Response):
    index: int
    delta: DeltaMessage
    finish_reason: FinishReason | None


class ChatCompletionStreamResponse(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]


# ---------------------------------------------------------------------------------------- /v1/impressions
class SimilarCase(_Response):
    id: str
    score: float
    findings: str
    impression: str


class ImpressionResponse(_Response):
    id: str
    object: Literal["impression"] = "impression"
    created: int
    model: str
    impression: str  # after the faithfulness repair when `repair` (the default)
    finish_reason: FinishReason
    similar_cases: list[SimilarCase]
    shot_case_ids: list[str]  # the retrieved cases put into the prompt, in prompt order
    # radgpt.findings.faithfulness.consistency_flags, most severe first; null when the labeler failed
    consistency_flags: list[dict[str, Any]] | None
    repairs: list[dict[str, Any]]  # what the repair changed: {"action", "sentence"}
    provenance: dict[str, Any]  # the model's provenance and this request's decoding
    usage: Usage
    latency_ms: float


class SimilarCasesEvent(_Response):
    type: Literal["similar_cases"] = "similar_cases"
    id: str
    model: str
    similar_cases: list[SimilarCase]


class DeltaEvent(_Response):
    type: Literal["delta"] = "delta"
    text: str


class DoneEvent(ImpressionResponse):
    type: Literal["done"] = "done"


class ErrorEvent(_Response):
    type: Literal["error"] = "error"
    error: ErrorDetail


# ---------------------------------------------------------------------------------------- /v1/models, /health
class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "radgpt"
    # provenance (backend, run folder, adapter sha256, template, ...), or {"status": "loading"}
    radgpt: dict[str, Any]


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class WorkerHealth(_Response):
    """radgpt.serve.batcher.Batcher.health()"""

    alive: bool
    queued: int
    oldest_wait_s: float
    busy_s: float
    batches: int
    rows: int
    restarts: int
    last_error: str | None  # an exception class name, never its text


class BatchCounts(_Response):
    batches: int
    rows: int


class HealthResponse(_OmitNone):
    status: Literal["loading", "error", "ok", "unavailable"]
    error: str | None = None  # why loading failed (status "error")
    models: list[str] | None = None
    workers: dict[str, WorkerHealth] | None = None
    queue: dict[str, int] | None = None
    batches: dict[str, BatchCounts] | None = None
