"""`radgpt serve`'s one configuration: what to serve, where, and the limits every request is held to.

Read like every verb's config (radgpt.common.config): the defaults below ← a YAML file (`--config`) ←
`key=value` overrides ← the flags (`--port 8080` is `port=8080`). Each field's comment is its `--help` text.
`create_app` takes the same object, so a test or an embedding program configures the server exactly as
the command line does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from radgpt.common.config import ConfigError


@dataclass
class ServeConfig:
    # run folder, export folder or baseline:NAME; several are served side by side, the first is the default
    # (none: the shipped default model)
    models: list[str] = field(default_factory=list)
    # each model's name in the API, in the order of `models` (default: the folder name, or baseline:NAME)
    names: list[str] = field(default_factory=list)
    # the engine (docs/serve.md): auto = the model's CTranslate2 or GGUF export if it has one (made once on
    # first use for a run on a packaged base, like the default model), else transformers
    backend: Literal["auto", "transformers", "ct2", "llama.cpp"] = "auto"
    device: str = "cpu"  # cpu, or cuda for the transformers backend
    threads: int = 0  # CPU threads per model (0 = all cores)
    cases: str = ""  # JSONL of prior cases for similar-case retrieval ("" = the model's own)
    host: str = "127.0.0.1"  # any other address than loopback needs an api_key
    port: int = 8000
    # require `Authorization: Bearer KEY` on every /v1 request ("" = env RADGPT_API_KEY, or no key on
    # loopback)
    api_key: str = ""
    # Host headers accepted (DNS-rebinding guard); empty: the loopback names when bound to loopback, any
    # otherwise
    allowed_hosts: list[str] = field(default_factory=list)
    # one JSON line per /v1 request: sizes and sha256 hashes, never the text; "" = off
    audit_log: str = "radgpt-serve-audit.jsonl"
    max_batch: int = 16  # requests decoded together as one batch
    max_queue: int = 64  # requests waiting for the worker before new ones are answered 429
    batch_wait_ms: float = 5.0  # how long a batch waits to fill once the first request is in
    timeout_s: float = 60.0  # seconds a request may take before it is answered 504 and its row stopped
    max_tokens: int = 256  # the largest max_tokens a request may ask (400 above)
    default_max_tokens: int = 128  # max_tokens of a request that does not say (at most max_tokens)
    max_body_kb: int = 256  # the largest request body in KiB (413 above)
    max_findings_chars: int = 20_000  # the longest findings text (400 above); a raw prompt may be 4× this
    # the largest prompt in tokens, template and retrieved cases included (400 above; less when the engine's
    # context is smaller): an OpenI prompt is ~110, a long MIMIC-CXR report ~600; a 9k-token prompt held the
    # CPU worker 86 s and 53k ran it out of memory
    max_prompt_tokens: int = 2048

    def check(self) -> ServeConfig:
        """Refuse values no server can run with, naming the key; returns self."""
        at_least = {"max_batch": 1, "max_queue": 1, "max_tokens": 1, "default_max_tokens": 1,
                    "max_body_kb": 1, "max_findings_chars": 1, "max_prompt_tokens": 1, "threads": 0,
                    "batch_wait_ms": 0, "port": 0}
        for key, low in at_least.items():
            if getattr(self, key) < low:
                raise ConfigError(f"serve config: '{key}' must be at least {low}, got {getattr(self, key)}")
        if not self.timeout_s > 0:
            raise ConfigError(f"serve config: 'timeout_s' must be more than 0, got {self.timeout_s}")
        if self.port > 65535:
            raise ConfigError(f"serve config: 'port' must be at most 65535, got {self.port}")
        if len(self.names) > len(self.models or [None]):
            n = len(self.models or [None])
            raise ConfigError(f"serve config: {len(self.names)} names for {n} model(s)")
        return self

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_kb * 1024

