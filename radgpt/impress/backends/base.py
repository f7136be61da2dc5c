"""The interface every engine implements (`Backend.generate` → one `Generation` per prompt; the contract is in
the package docstring), incremental detokenisation for streaming, and per-row token limits."""

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


def length_batches(rows: list[int], lengths: list[int], cap: int, exact: bool = True) -> list[list[int]]:
    """`rows` in batches of at most `cap`, shortest prompts first. exact: only prompts of the same token count
    share a batch — no row is padded or fed in pieces, so its arithmetic (and greedy text) is the one it gets
    alone, whatever else is being decoded (#13); else neighbours in length order share one (throughput)."""
    batches: list[list[int]] = []
    for i in sorted(rows, key=lambda i: lengths[i]):
        last = batches[-1] if batches else None
        if last is not None and len(last) < cap and (not exact or lengths[last[0]] == lengths[i]):
            last.append(i)
        else:
            batches.append([i])
    return batches
