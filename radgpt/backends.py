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

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from radgpt.errors import FatalError
from radgpt.generate import Decoding

OnDelta = Callable[[int, str], None] | None
ShouldStop = Callable[[int], bool] | None


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" (end token) | "length" (hit max tokens) | "cancelled"
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Detok:
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


def _limits(n: int, decoding: Decoding, max_tokens: list[int] | None) -> list[int]:
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


# ---------------------------------------------------------------------------------------- transformers
class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, run_dir: str | Path, device: str = "cpu", dtype: str = "fp32", threads: int = 0):
        import torch

        from radgpt.models import load_run, pick_dtype

        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        import warnings

        with warnings.catch_warnings():  # peft/transformers deprecation chatter on every load
            warnings.simplefilter("ignore", FutureWarning)
            loaded = load_run(run_dir, device=device, merge=True)
        dt = pick_dtype(dtype, device)
        self._setup(loaded.model, loaded.tokenizer, None if dt == torch.float32 else dt)
        self.loaded = loaded

    @classmethod
    def from_base(cls, base: str, device: str = "cpu", dtype: str = "fp32", threads: int = 0
                  ) -> TransformersBackend:
        """A base model with no adapter (`packaged:NAME`, an HF folder, a GGUF file; models.resolve_base)."""
        import torch

        from radgpt.models import load_base_model, load_tokenizer, pick_dtype, quiet_transformers

        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        quiet_transformers()
        model = load_base_model(base, device=device)
        model.eval()
        dt = pick_dtype(dtype, device)
        be = cls.__new__(cls)
        be._setup(model, load_tokenizer(base), None if dt == torch.float32 else dt)
        return be

    @classmethod
    def from_model(cls, model, tokenizer, autocast=None) -> TransformersBackend:
        """Wrap a model already in memory (finetune's validation decodes the model it just trained)."""
        be = cls.__new__(cls)
        be._setup(model, tokenizer, autocast)
        return be

    def _setup(self, model, tokenizer, autocast) -> None:
        self.model, self.tokenizer, self.autocast = model, tokenizer, autocast
        self.model.config.use_cache = True
        self.device = str(next(model.parameters()).device)

    def generate(self, prompts, decoding, max_tokens=None, on_delta=None, should_stop=None):
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        if not prompts:
            return []
        tok = self.tokenizer
        eos = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        limits = _limits(len(prompts), decoding, max_tokens)
        enc = tok(prompts, add_special_tokens=False)["input_ids"]
        width = max(map(len, enc))
        ids = torch.full((len(enc), width), pad, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for row, e in enumerate(enc):  # left padding: every prompt ends where generation starts
            ids[row, width - len(e):] = torch.tensor(e, dtype=torch.long)
            mask[row, width - len(e):] = 1
        n = len(prompts)
        detok = [_Detok(tok) for _ in range(n)]
        done = [False] * n
        reason = ["length"] * n
        stream = on_delta is not None and decoding.num_beams == 1

        class Streamer(BaseStreamer):  # transformers' own streamers handle batch size 1 only
            first = True

            def put(self, value):
                if self.first:  # the prompt
                    self.first = False
                    return
                for i, t in enumerate(value.view(-1).tolist()):
                    if done[i]:
                        continue
                    if t == eos:
                        done[i], reason[i] = True, "stop"
                        continue
                    delta = detok[i].push(t)
                    if len(detok[i].ids) >= limits[i]:
                        done[i] = True
                    if delta and on_delta is not None:
                        on_delta(i, delta)

            def end(self):
                pass

        class Stop(StoppingCriteria):  # per-row: its own token limit, or cancelled by the caller
            def __call__(self, input_ids, scores, **kw):
                out = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                if decoding.num_beams != 1:
                    return out
                for i in range(n):
                    if not done[i] and should_stop is not None and should_stop(i):
                        done[i], reason[i] = True, "cancelled"
                    out[i] = done[i]
                return out

        kwargs = dict(max_new_tokens=max(limits), num_beams=decoding.num_beams, do_sample=decoding.do_sample,
                      eos_token_id=eos, pad_token_id=pad, repetition_penalty=decoding.repetition_penalty)
        if decoding.do_sample:
            kwargs.update(temperature=decoding.temperature, top_p=decoding.top_p, top_k=decoding.top_k)
        if decoding.num_beams == 1:
            kwargs.update(streamer=Streamer(), stopping_criteria=StoppingCriteriaList([Stop()]))
        with torch.inference_mode(), torch.autocast(self.model.device.type, dtype=self.autocast,
                                                    enabled=self.autocast is not None):
            gen = self.model.generate(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                                      **kwargs)
        out = []
        for i in range(n):
            new = gen[i, width:].tolist()
            if eos in new:
                new, reason[i] = new[: new.index(eos)], ("stop" if reason[i] != "cancelled" else "cancelled")
            new = [t for t in new if t != pad][: limits[i]]
            text = tok.decode(new, skip_special_tokens=True)
            if on_delta is not None and not stream:
                on_delta(i, text)
            elif on_delta is not None and text.startswith(detok[i].text) and len(text) > len(detok[i].text):
                on_delta(i, text[len(detok[i].text):])  # a tail held back as incomplete UTF-8
            out.append(Generation(text.strip(), reason[i], len(enc[i]), len(new)))
        return out

    def info(self):
        return {"backend": self.name, "device": self.device, "autocast": str(self.autocast or "fp32")}


# ---------------------------------------------------------------------------------------- CTranslate2
EXPORT_INFO = "radgpt_export.json"


def export_meta(folder: Path) -> dict:
    """What `radgpt export` recorded about an export folder (source run, base, adapter hash, quantization)."""
    path = Path(folder) / EXPORT_INFO
    return json.loads(path.read_text()) if path.exists() else {}


class FolderTokenizer:
    """The few tokenizer calls the engines need, straight from a folder's tokenizer.json with the `tokenizers`
    library: loading transformers' AutoTokenizer imports torch and transformers (≈5 s of a one-off
    `radgpt impress` call on 2 cores) for the same token ids. A chat template (base models) is applied by
    transformers' tokenizer, loaded only when one is asked for."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self._tok = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        cfg_path = self.folder / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
        if cfg.get("clean_up_tokenization_spaces"):
            raise ValueError("clean_up_tokenization_spaces is set: use transformers' tokenizer")
        self.eos_token = cfg.get("eos_token")
        if isinstance(self.eos_token, dict):
            self.eos_token = self.eos_token.get("content")
        self.eos_token_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        jinja = self.folder / "chat_template.jinja"
        self.chat_template = jinja.read_text(encoding="utf-8") if jinja.exists() else cfg.get("chat_template")
        self._hf = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": self._tok.encode(text, add_special_tokens=add_special_tokens).ids}

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self._tok.id_to_token(i) for i in ids]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, *args, **kwargs):
        if self._hf is None:
            from transformers import AutoTokenizer

            from radgpt.models import quiet_transformers

            quiet_transformers()
            self._hf = AutoTokenizer.from_pretrained(str(self.folder))
        return self._hf.apply_chat_template(*args, **kwargs)


def folder_tokenizer(folder: str | Path):
    """FolderTokenizer when the folder's tokenizer.json is enough, else transformers' AutoTokenizer."""
    if (Path(folder) / "tokenizer.json").exists():
        try:
            return FolderTokenizer(folder)
        except ValueError:  # a decoding step tokenizers does not do (clean_up_tokenization_spaces)
            pass
    from transformers import AutoTokenizer

    from radgpt.models import quiet_transformers

    quiet_transformers()
    return AutoTokenizer.from_pretrained(str(folder))


class CT2Backend(Backend):
    """A CTranslate2 model folder written by `radgpt export` (model.bin + tokenizer + template)."""

    name = "ctranslate2"
    # Batches of prompts of EXACTLY the same token count. CTranslate2 feeds only the shortest prompt's length
    # at once and the rest of a longer prompt token by token, so with mixed lengths a row's arithmetic depends
    # on the other rows in its batch — and greedy text with it: on OpenI validate, batches of lengths within 4
    # tokens gave 31 of 341 impressions different from one at a time ("… compatible with pneumonia" vs
    # "… atelectasis"); exact-length batches give 0 of 341, at 4.9 vs 5.2 impressions/s (2026-12-01).
    max_batch = 64

    def __init__(self, folder: str | Path, device: str = "cpu", compute_type: str = "auto", threads: int = 0,
                 inter_threads: int = 1):
        """inter_threads 2 (batch jobs): two batches decode at once, one core each — ~15% more throughput
        on 2 cores than one batch on 2 threads; 1 (single impressions, serve): lowest latency."""
        import ctranslate2

        folder = Path(folder)
        if not (folder / "model.bin").exists():
            raise FatalError(f"{folder}: not a CTranslate2 model folder (no model.bin); make one with radgpt export")
        self.folder = folder
        self.tokenizer = folder_tokenizer(folder)
        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() else "cpu"
        self.device = device
        threads = threads or (os.cpu_count() or 1)
        inter = self.inter = max(1, min(inter_threads, threads))
        self.generator = ctranslate2.Generator(str(folder), device=device, compute_type=compute_type,
                                               inter_threads=inter, intra_threads=max(1, threads // inter))
        self.compute_type = self.generator.compute_type
        self.eos = self.tokenizer.eos_token
        self.eos_id = self.tokenizer.eos_token_id
        self._static: list[str] | None = None
        self._static_ids: list[int] = []

    def set_static_prefix(self, prefix: str) -> None:
        """The text every prompt starts with (the template up to the findings, plus the examples header):
        its KV state is computed once and cached by CTranslate2 (`static_prompt`). Its last token is left
        out (it may merge with what follows), and each prompt is checked token by token, so a prompt whose
        tokens do not start with the cached ones simply runs without the cache."""
        ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"][:-1] if prefix else []
        self._static = self.tokenizer.convert_ids_to_tokens(ids) if len(ids) >= 4 else None
        self._static_ids = ids

    def _tokens(self, prompt: str) -> tuple[list[str] | None, list[str]]:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        n = len(self._static_ids) if self._static else 0
        if n and len(ids) > n and ids[:n] == self._static_ids:
            return self._static, self.tokenizer.convert_ids_to_tokens(ids[n:])
        return None, self.tokenizer.convert_ids_to_tokens(ids)

    def generate(self, prompts, decoding, max_tokens=None, on_delta=None, should_stop=None):
        if not prompts:
            return []
        limits = _limits(len(prompts), decoding, max_tokens)
        toks = [self._tokens(p) for p in prompts]
        # one static prefix per call: rows that do not share it go in their own call
        groups: dict[tuple, list[int]] = {}
        for i, (static, _) in enumerate(toks):
            groups.setdefault(tuple(static) if static else (), []).append(i)
        out: list[Generation | None] = [None] * len(prompts)
        pending = []
        for static, rows in groups.items():
            # equal lengths together: the impression of a row is then the one it gets alone (see max_batch)
            rows = sorted(rows, key=lambda i: len(toks[i][1]))
            chunk: list[int] = []
            for i in rows + [-1]:
                if chunk and (i < 0 or len(chunk) >= self.max_batch or len(toks[i][1]) != len(toks[chunk[0]][1])):
                    pending.append(self._start(chunk, list(static) or None, [toks[j][1] for j in chunk], limits,
                                               decoding, on_delta, should_stop, out))
                    chunk = []
                if i >= 0:
                    chunk.append(i)
        for finish in pending:  # chunks run concurrently on the generator's inter_threads replicas
            finish()
        return out  # type: ignore[return-value]

    def _start(self, rows, static, starts, limits, decoding, on_delta, should_stop, out):
        n_static = len(static or [])
        detok = {i: _Detok(self.tokenizer) for i in rows}
        cancelled = set()
        stream = decoding.num_beams == 1 and (on_delta is not None or should_stop is not None or
                                              len({limits[i] for i in rows}) > 1)

        eos_id = self.eos_id
        # the callback must not reference self: CTranslate2 may drop it on its own worker thread, and the
        # last reference to the Generator going away there aborts the process ("Resource deadlock avoided")

        def callback(step) -> bool:
            i = rows[step.batch_id]
            if step.token_id == eos_id:
                return False
            if should_stop is not None and should_stop(i):
                cancelled.add(i)
                return True
            d = detok[i].push(step.token_id)
            if d and on_delta is not None:
                on_delta(i, d)
            return len(detok[i].ids) >= limits[i]

        kwargs = dict(max_length=max(limits[i] for i in rows), include_prompt_in_result=False, end_token=self.eos,
                      beam_size=decoding.num_beams, repetition_penalty=decoding.repetition_penalty,
                      static_prompt=static)
        if decoding.do_sample:
            kwargs.update(sampling_topk=decoding.top_k, sampling_topp=decoding.top_p,
                          sampling_temperature=decoding.temperature)
        if stream:
            kwargs["callback"] = callback
        # asynchronous only with two replicas: waiting on an async result keeps the GIL from the token
        # callback (measured: 16 rows with a callback 42 s async vs ~7 s), so one replica runs synchronously
        sync = self.inter == 1
        results = self.generator.generate_batch(starts, asynchronous=not sync, **kwargs)

        def finish():
            for k, (i, r) in enumerate(zip(rows, results)):
                r = r if sync else r.result()
                ids = [t for t in r.sequences_ids[0] if t != eos_id][: limits[i]]
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                if on_delta is not None:
                    if not stream:
                        on_delta(i, text)
                    elif text.startswith(detok[i].text) and len(text) > len(detok[i].text):
                        on_delta(i, text[len(detok[i].text):])
                reason = "cancelled" if i in cancelled else ("length" if len(ids) >= limits[i] else "stop")
                out[i] = Generation(text.strip(), reason, n_static + len(starts[k]), len(ids))

        return finish

    def info(self):
        meta = export_meta(self.folder)
        return {"backend": self.name, "device": self.device, "compute_type": self.compute_type,
                "export": str(self.folder), "quantization": meta.get("quantization")}


# ---------------------------------------------------------------------------------------- llama.cpp
class LlamaCppBackend(Backend):
    """A `radgpt export --quantization q8_0` folder (model.gguf) run by llama.cpp through llama-cpp-python.

    Prompts are tokenised with the run's own tokenizer and fed as ids, so llama.cpp sees exactly the
    tokens the model was trained on. llama.cpp keeps the KV state of the previous prompt and re-evaluates
    only from the first differing token, so the template text all prompts share is computed once.
    `parallel` engines (one per core) take prompts from a shared queue for batch jobs."""

    name = "llama.cpp"

    def __init__(self, folder: str | Path, threads: int = 0, parallel: int = 1, n_ctx: int = 2048):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise FatalError("the llama.cpp backend needs llama-cpp-python: pip install llama-cpp-python "
                             "(it compiles llama.cpp, ~4 min on 2 cores)") from None
        from radgpt.export_gguf import GGUF_FILE

        folder = Path(folder)
        if not (folder / GGUF_FILE).exists():
            raise FatalError(f"{folder}: no {GGUF_FILE}; make one with radgpt export RUN --quantization q8_0")
        self.folder = folder
        self.tokenizer = folder_tokenizer(folder)
        self.eos_id = self.tokenizer.eos_token_id
        threads = threads or (os.cpu_count() or 1)
        parallel = max(1, min(parallel, threads))
        per = max(1, threads // parallel)
        self.engines = [Llama(model_path=str(folder / GGUF_FILE), n_ctx=n_ctx, n_threads=per, n_threads_batch=per,
                              n_batch=512, verbose=False, seed=0) for _ in range(parallel)]
        self.n_ctx = n_ctx

    def _one(self, llm, i, prompt, decoding, limit, on_delta, should_stop) -> Generation:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if len(ids) + limit > self.n_ctx:
            raise FatalError(f"prompt of {len(ids)} tokens + {limit} new exceeds the llama.cpp context ({self.n_ctx})")
        detok, reason = _Detok(self.tokenizer), "length"
        sample = dict(temp=decoding.temperature, top_k=decoding.top_k, top_p=decoding.top_p) if decoding.do_sample \
            else dict(temp=0.0, top_k=1, top_p=1.0)
        for tok in llm.generate(ids, repeat_penalty=decoding.repetition_penalty, **sample):
            if tok == self.eos_id:
                reason = "stop"
                break
            if should_stop is not None and should_stop(i):
                reason = "cancelled"
                break
            d = detok.push(tok)
            if d and on_delta is not None:
                on_delta(i, d)
            if len(detok.ids) >= limit:
                break
        text = self.tokenizer.decode(detok.ids, skip_special_tokens=True)
        if on_delta is not None and len(text) > len(detok.text):
            on_delta(i, text[len(detok.text):])
        return Generation(text.strip(), reason, len(ids), len(detok.ids))

    def generate(self, prompts, decoding, max_tokens=None, on_delta=None, should_stop=None):
        if decoding.num_beams > 1:
            raise FatalError("the llama.cpp backend has no beam search: use greedy or sampling, or --backend ct2")
        limits = _limits(len(prompts), decoding, max_tokens)
        out: list[Generation | None] = [None] * len(prompts)
        if len(self.engines) == 1 or len(prompts) == 1:
            for i, p in enumerate(prompts):
                out[i] = self._one(self.engines[0], i, p, decoding, limits[i], on_delta, should_stop)
            return out  # type: ignore[return-value]
        import threading
        from concurrent.futures import ThreadPoolExecutor

        # similar prompts back to back on one engine share more of their KV prefix
        order = iter(sorted(range(len(prompts)), key=lambda i: prompts[i]))
        lock = threading.Lock()

        def work(llm):  # llama-cpp-python releases the GIL inside llama.cpp, so engines run in parallel
            while True:
                with lock:
                    i = next(order, None)
                if i is None:
                    return
                out[i] = self._one(llm, i, prompts[i], decoding, limits[i], on_delta, should_stop)

        with ThreadPoolExecutor(len(self.engines)) as pool:
            for f in [pool.submit(work, e) for e in self.engines]:
                f.result()
        return out  # type: ignore[return-value]

    def info(self):
        meta = export_meta(self.folder)
        return {"backend": self.name, "device": "cpu", "export": str(self.folder),
                "quantization": meta.get("quantization"), "engines": len(self.engines)}


# ---------------------------------------------------------------------------------------- OpenAI-compatible
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

        limits = _limits(len(prompts), decoding, max_tokens)
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(prompts)))) as pool:
            futs = [pool.submit(self._one, i, p, decoding, limits[i], on_delta, should_stop)
                    for i, p in enumerate(prompts)]
            return [f.result() for f in futs]

    def info(self):
        return {"backend": self.name, "endpoint": self.base_url, "endpoint_model": self.model,
                "api": "chat" if self.chat else "completions"}
