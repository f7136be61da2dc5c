"""The transformers backend: a run folder's base + PEFT adapter (merged) on CPU or GPU, and batched
generation for a model already in memory (finetune's validation)."""

from __future__ import annotations

from pathlib import Path

from radgpt.impress.backends.base import Backend, Detok, Generation, row_limits
from radgpt.runs.decoding import Decoding


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, run_dir: str | Path, device: str = "cpu", dtype: str = "fp32", threads: int = 0):
        import torch

        from radgpt.runs.base_models import pick_dtype
        from radgpt.runs.run import RunFolder

        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        import warnings

        with warnings.catch_warnings():  # peft/transformers deprecation chatter on every load
            warnings.simplefilter("ignore", FutureWarning)
            loaded = RunFolder(run_dir).load(device=device, merge=True)
        dt = pick_dtype(dtype, device)
        self._setup(loaded.model, loaded.tokenizer, None if dt == torch.float32 else dt)
        self.loaded = loaded

    @classmethod
    def from_base(cls, base: str, device: str = "cpu", dtype: str = "fp32", threads: int = 0
                  ) -> TransformersBackend:
        """A base model with no adapter (`packaged:NAME`, an HF folder, a GGUF file; models.resolve_base)."""
        import torch

        from radgpt.runs.base_models import load_base_model, load_tokenizer, pick_dtype, quiet_transformers

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
        limits = row_limits(len(prompts), decoding, max_tokens)
        enc = tok(prompts, add_special_tokens=False)["input_ids"]
        width = max(map(len, enc))
        ids = torch.full((len(enc), width), pad, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for row, e in enumerate(enc):  # left padding: every prompt ends where generation starts
            ids[row, width - len(e):] = torch.tensor(e, dtype=torch.long)
            mask[row, width - len(e):] = 1
        n = len(prompts)
        detok = [Detok(tok) for _ in range(n)]
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


def generate_batch(model, tokenizer, prompts: list[str], decoding: Decoding = Decoding(), batch_size: int = 16,
                   autocast_dtype=None, progress=None) -> list[str]:
    """Responses for each prompt, in input order: a model in memory through the transformers backend
    (the same generation code `impress` uses), prompts of similar length batched together."""
    backend = TransformersBackend.from_model(model, tokenizer, autocast_dtype)
    order = sorted(range(len(prompts)), key=lambda i: backend.count_tokens(prompts[i]))
    out: list[str] = [""] * len(prompts)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        for i, g in zip(idx, backend.generate([prompts[i] for i in idx], decoding)):
            out[i] = g.text
        if progress is not None:
            progress(len(idx))
    return out
