"""Decoding settings: what every backend is asked to do, recorded in each output line's provenance.

Decoding presets are named so a run's provenance can say exactly how an impression was decoded.
`paper-demo` is the Radiology-GPT demo's setting (beams 4, temperature 0.1, top-p 0.75, top-k 40,
128 new tokens).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from radgpt.common.errors import FatalError


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
