"""Any OpenAI-compatible endpoint as a backend."""

from __future__ import annotations

import json

from radgpt.common.errors import FatalError
from radgpt.impress.backends.base import Backend, Generation, row_limits


class OpenAIBackend(Backend):
    """POST /v1/completions (default: the prompt exactly as the run's template renders it — right for
    vLLM/llama.cpp serving the radgpt adapter) or /v1/chat/completions (`chat=True`, for general chat LLMs).
    Rows of a batch go out as concurrent requests; the endpoint batches them itself."""

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, chat: bool = False,
                 timeout: float = 120.0, concurrency: int = 8):
        import httpx

        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model, self.chat, self.concurrency = model, chat, concurrency
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers, trust_env=False)

    def _one(self, i, prompt, decoding, limit, on_delta, should_stop) -> Generation:
        body = {"model": self.model, "max_tokens": limit, "stream": True,
                "temperature": decoding.temperature if decoding.do_sample else 0.0,
                "top_p": decoding.top_p if decoding.do_sample else 1.0}
        if self.chat:
            url, body["messages"] = f"{self.base_url}/chat/completions", [{"role": "user", "content": prompt}]
        else:
            url, body["prompt"] = f"{self.base_url}/completions", prompt
        text, reason, usage = "", "stop", {}
        import httpx

        try:
            with self.client.stream("POST", url, json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise FatalError(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    usage = chunk.get("usage") or usage
                    for ch in chunk.get("choices", []):
                        d = ch.get("text") if not self.chat else (ch.get("delta") or {}).get("content")
                        if d:
                            text += d
                            if on_delta is not None:
                                on_delta(i, d)
                        reason = ch.get("finish_reason") or reason
                    if should_stop is not None and should_stop(i):
                        reason = "cancelled"
                        break
        except httpx.HTTPError as e:
            raise FatalError(f"{url}: {type(e).__name__}: {e}") from None
        return Generation(text.strip(), reason, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))

    def generate(self, prompts, decoding, max_tokens=None, on_delta=None, should_stop=None):
        from concurrent.futures import ThreadPoolExecutor

        limits = row_limits(len(prompts), decoding, max_tokens)
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(prompts)))) as pool:
            futs = [pool.submit(self._one, i, p, decoding, limits[i], on_delta, should_stop)
                    for i, p in enumerate(prompts)]
            return [f.result() for f in futs]

    def info(self):
        return {"backend": self.name, "endpoint": self.base_url, "endpoint_model": self.model,
                "api": "chat" if self.chat else "completions"}
