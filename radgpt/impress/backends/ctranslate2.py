"""CTranslate2 backend: an int8 `radgpt export` folder."""

from __future__ import annotations

import os
from pathlib import Path

from radgpt.common.errors import FatalError
from radgpt.impress.backends.base import Backend, Detok, Generation, length_batches, row_limits
from radgpt.impress.backends.tokenizer import folder_tokenizer
from radgpt.runs.folders import export_meta


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
        limits = row_limits(len(prompts), decoding, max_tokens)
        toks = [self._tokens(p) for p in prompts]
        # one static prefix per call: rows that do not share it go in their own call
        groups: dict[tuple, list[int]] = {}
        for i, (static, _) in enumerate(toks):
            groups.setdefault(tuple(static) if static else (), []).append(i)
        out: list[Generation | None] = [None] * len(prompts)
        pending = []
        lengths = [len(rest) for _, rest in toks]
        for static, rows in groups.items():
            # equal lengths together: the impression of a row is then the one it gets alone (see max_batch)
            for chunk in length_batches(rows, lengths, self.max_batch):
                pending.append(self._start(chunk, list(static) or None, [toks[j][1] for j in chunk], limits,
                                           decoding, on_delta, should_stop, out))
        for finish in pending:  # chunks run concurrently on the generator's inter_threads replicas
            finish()
        return out  # type: ignore[return-value]

    def _start(self, rows, static, starts, limits, decoding, on_delta, should_stop, out):
        n_static = len(static or [])
        detok = {i: Detok(self.tokenizer) for i in rows}
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
