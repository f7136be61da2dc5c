"""llama.cpp backend: a `radgpt export --quantization q8_0` folder (model.gguf)."""

from __future__ import annotations

import os
from pathlib import Path

from radgpt.common.errors import FatalError
from radgpt.impress.backends.base import Backend, Detok, Generation, row_limits
from radgpt.impress.backends.tokenizer import folder_tokenizer
from radgpt.runs.folders import GGUF_FILE, export_meta


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
        detok, reason = Detok(self.tokenizer), "length"
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
        limits = row_limits(len(prompts), decoding, max_tokens)
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
