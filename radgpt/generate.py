"""Batched generation with transformers: left padding, stop at EOS, greedy by default.

Decoding presets are named so a run's provenance can say exactly how an impression was decoded.
`paper-demo` is the Radiology-GPT demo's setting (beams 4, temperature 0.1, top-p 0.75, top-k 40,
128 new tokens).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from radgpt.errors import FatalError


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 128
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "greedy": Decoding(),
    "paper-demo": Decoding(max_new_tokens=128, num_beams=4, do_sample=False, temperature=0.1, top_p=0.75, top_k=40),
}


def preset(name: str) -> Decoding:
    if name not in PRESETS:
        raise FatalError(f"unknown decoding preset '{name}' (choose from {', '.join(PRESETS)})")
    return PRESETS[name]


def generate_batch(model, tokenizer, prompts: list[str], decoding: Decoding = Decoding(), batch_size: int = 16,
                   autocast_dtype=None, progress=None) -> list[str]:
    """Responses (decoded, special tokens stripped) for each prompt, in input order."""
    import torch

    if not prompts:
        return []
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    enc = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: len(enc[i]))  # similar lengths batch together
    out: list[str] = [""] * len(prompts)
    kwargs = dict(max_new_tokens=decoding.max_new_tokens, num_beams=decoding.num_beams,
                  do_sample=decoding.do_sample, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id,
                  repetition_penalty=decoding.repetition_penalty)
    if decoding.do_sample:
        kwargs.update(temperature=decoding.temperature, top_p=decoding.top_p, top_k=decoding.top_k)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):  # left padding: every prompt ends where generation starts
            ids[row, width - len(enc[i]):] = torch.tensor(enc[i])
            mask[row, width - len(enc[i]):] = 1
        with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype,
                                                    enabled=autocast_dtype is not None):
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[row, width:], skip_special_tokens=True).strip()
        if progress is not None:
            progress(len(idx))
    return out
