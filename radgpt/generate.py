"""Decoding settings, and batched generation for a model in memory (finetune's validation).

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
    """Responses for each prompt, in input order: a model in memory through the transformers backend
    (the same generation code `impress` uses), prompts of similar length batched together."""
    from radgpt.backends import TransformersBackend

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
