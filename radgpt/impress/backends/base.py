"""Text-generation engines behind one interface: prompts in, generations out, optional token streaming.

    TransformersBackend   the run folder's base + PEFT adapter (merged), CPU or GPU
    CT2Backend            a `radgpt export` folder: CTranslate2, int8 on CPU (the fast backend, measured
                          in bench/bench_impress.py against transformers on the same prompts)
    LlamaCppBackend       a `radgpt export --quantization q8_0` folder: llama.cpp on a GGUF
    OpenAIBackend         any OpenAI-compatible endpoint (vLLM --lora-modules, llama.cpp server, Ollama,
                          `radgpt serve` itself, a cloud API the user is allowed to send reports to)

`generate(prompts, decoding, max_tokens=None, on_delta=None, should_stop=None)` returns one `Generation`
per prompt, in order. `on_delta(i, text)` receives the new text of prompt i as it is decoded (with beam
search, the whole text once at the end); `should_stop(i)` lets a caller cancel one row of a batch
(a client that went away, a request past its deadline). `max_tokens[i]` caps row i below
`decoding.max_new_tokens`, so requests with different limits still share one batch.
Backends are not thread-safe: the server gives each its own worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from radgpt.runs.decoding import Decoding

OnDelta = Callable[[int, str], None] | None
ShouldStop = Callable[[int], bool] | None


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" (end token) | "length" (hit max tokens) | "cancelled"
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Detok:
    """Incremental detokenisation: decode the ids so far, emit what was added (byte-level BPE safe)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        delta, self.text = text[len(self.text):], text
        return delta


def row_limits(n: int, decoding: Decoding, max_tokens: list[int] | None) -> list[int]:
    return [min(decoding.max_new_tokens, m) if m else decoding.max_new_tokens for m in (max_tokens or [0] * n)]


class Backend:
    name = "backend"
    tokenizer = None

    def generate(self, prompts: list[str], decoding: Decoding, max_tokens: list[int] | None = None,
                 on_delta: OnDelta = None, should_stop: ShouldStop = None) -> list[Generation]:
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is None:
            return len(text.split())
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def info(self) -> dict:
        return {"backend": self.name}
