"""The transformers backend: a run folder's base + PEFT adapter (merged) on CPU or GPU, and batched
generation for a model already in memory (finetune's validation)."""

from __future__ import annotations

from pathlib import Path

from radgpt.impress.backends.base import Backend, Detok, Generation, length_batches, row_limits
from radgpt.runs.decoding import Decoding


def _device(device: str, threads: int) -> str:
    """'auto' → cuda when there is one; `threads` (0 = torch's default) set for CPU work."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _autocast(dtype: str | None, device: str):
    """The autocast dtype, or None for plain fp32. dtype None: fp32 on CPU (the reference the CTranslate2 /
    llama.cpp exports are checked against), bf16 (fp16 where the GPU lacks it) on CUDA — fp32 there would
    halve the speed for no gain in the text."""
    import torch

    from radgpt.runs.base_models import pick_dtype

    dt = pick_dtype(dtype or ("auto" if device.startswith("cuda") else "fp32"), device)
    return None if dt == torch.float32 else dt


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, run_dir: str | Path, device: str = "cpu", dtype: str | None = None, threads: int = 0):
        import warnings

        from radgpt.runs.run import RunFolder

        device = _device(device, threads)
        with warnings.catch_warnings():  # peft/transformers deprecation chatter on every load
            warnings.simplefilter("ignore", FutureWarning)
            loaded = RunFolder(run_dir).load(device=device, merge=True)
        self._setup(loaded.model, loaded.tokenizer, _autocast(dtype, device))
        self.loaded = loaded

    @classmethod
    def from_base(cls, base: str, device: str = "cpu", dtype: str | None = None, threads: int = 0
                  ) -> TransformersBackend:
        """A base model with no adapter (`packaged:NAME`, an HF folder, a GGUF file; models.resolve_base)."""
        from radgpt.runs.base_models import load_base_model, load_tokenizer, quiet_transformers

        device = _device(device, threads)
        quiet_transformers()
        model = load_base_model(base, device=device)
        model.eval()
        be = cls.__new__(cls)
        be._setup(model, load_tokenizer(base), _autocast(dtype, device))
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

    # On CPU, rows are decoded in groups of exactly equal prompt length, at most cpu_max_batch per call: no row
    # is padded, so its arithmetic does not depend on how long its neighbours are, and a padded batch was slower
    # than one prompt at a time here (OpenI validate, default model, 2 cores: 40 prompts in one padded call
    # 0.1/s vs 0.6/s one by one, same texts; 2026-12-01). On a GPU, length-sorted padded batches of up to
    # gpu_max_batch (throughput first; not batch-invariant, see docs/serve.md).
    cpu_max_batch = 16
    gpu_max_batch = 128

    def generate(self, prompts, decoding, max_tokens=None, on_delta=None, should_stop=None):
        if not prompts:
            return []
        enc = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        limits = row_limits(len(prompts), decoding, max_tokens)
        cpu = not self.device.startswith("cuda")
        groups = length_batches(list(range(len(enc))), [len(e) for e in enc],
                                self.cpu_max_batch if cpu else self.gpu_max_batch, exact=cpu)
        out: list = [None] * len(enc)
        for idx in groups:
            sub_delta = None if on_delta is None else (lambda j, d, idx=idx: on_delta(idx[j], d))
            sub_stop = None if should_stop is None else (lambda j, idx=idx: should_stop(idx[j]))
            gens = self._generate([enc[i] for i in idx], decoding, [limits[i] for i in idx], sub_delta, sub_stop)
            for i, g in zip(idx, gens):
                out[i] = g
        return out

    def _generate(self, enc, decoding, limits, on_delta, should_stop):
        """One model.generate call over token-id rows (left-padded when their lengths differ)."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        tok = self.tokenizer
        eos = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        width = max(map(len, enc))
        ids = torch.full((len(enc), width), pad, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for row, e in enumerate(enc):  # left padding: every prompt ends where generation starts
            ids[row, width - len(e):] = torch.tensor(e, dtype=torch.long)
            mask[row, width - len(e):] = 1
        n = len(enc)
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
                if decoding.num_beams != 1:
                    return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                for i in range(n):
                    if not done[i] and should_stop is not None and should_stop(i):
                        done[i], reason[i] = True, "cancelled"
                # one host→device copy per step (writing row by row into a GPU tensor synchronised n times)
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

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


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an accelerator running out of memory (torch's OutOfMemoryError, or a RuntimeError whose
    message says so: accelerate's list of such messages), i.e. worth retrying with a smaller batch."""
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and (should_reduce_batch_size(exc) or "out of memory" in str(exc))


def free_device_memory() -> None:
    """Collect garbage and hand the GPU's cached blocks back, so a retry starts from what is really held."""
    from accelerate.utils.memory import clear_device_cache

    clear_device_cache(garbage_collection=True)


def generate_batch(model, tokenizer, prompts: list[str], decoding: Decoding = Decoding(), batch_size: int = 16,
                   autocast_dtype=None, progress=None, log=None) -> list[str]:
    """Responses for each prompt, in input order: a model in memory through the transformers backend
    (the same generation code `impress` uses: left-padded, KV-cached), prompts of similar length batched
    together. On a GPU a call that runs out of memory is retried at half the batch, and the rest continue
    at that size (prompts come shortest first, so later calls need more); on CPU an error is an error."""
    backend = TransformersBackend.from_model(model, tokenizer, autocast_dtype)
    cuda = backend.device.startswith("cuda")
    order = sorted(range(len(prompts)), key=lambda i: backend.count_tokens(prompts[i]))
    out: list[str] = [""] * len(prompts)
    s = 0
    while s < len(order):
        idx = order[s:s + batch_size]
        try:
            gens = backend.generate([prompts[i] for i in idx], decoding)
        except Exception as e:
            if not (cuda and batch_size > 1 and out_of_memory(e)):
                raise
            gens = None
        if gens is None:  # outside the except block, so the failed call's tensors are released
            free_device_memory()
            batch_size //= 2
            if log is not None:
                log(f"generation: out of GPU memory at {len(idx)} prompts per call; "
                    f"going on with {batch_size}")
            continue
        for i, g in zip(idx, gens):
            out[i] = g.text
        s += len(idx)
        if progress is not None:
            progress(len(idx))
    return out
