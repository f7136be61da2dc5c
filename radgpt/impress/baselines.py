"""Baselines as models: the same `ImpressionModel` interface as a fine-tuned LLM, so `impress`, `serve`
and `evaluate` treat them like any model.

    baseline:normal          the constant normal sentence (~40% of OpenI impressions are this boilerplate)
    baseline:nearest         the impression of the most similar prior case (TF-IDF over findings) — on
                             OpenI validate R-L 62.6, the bar a fine-tuned model has to clear
    baseline:last-sentence   the last sentence of the findings

A baseline's "prompt" is the findings text itself, so /v1/completions on a baseline treats the prompt
as findings.
"""

from __future__ import annotations

import re

from radgpt.common.errors import FatalError
from radgpt.impress.backends.base import Generation
from radgpt.impress.model import ImpressionModel
from radgpt.runs.retrieval import load_cases

NORMAL_SENTENCE = "No acute cardiopulmonary abnormality."
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def last_sentence(findings: str) -> str:
    parts = [s.strip() for s in _SENTENCE_END.split(findings.strip()) if s.strip()]
    return parts[-1] if parts else ""


class Baseline(ImpressionModel):
    kind = "baseline"

    def __init__(self, name: str, index=None):
        self.name = f"baseline:{name}"
        self.index = index

    def answer(self, findings: list[str]) -> list[str]:
        raise NotImplementedError

    def generate(self, prompts, decoding, max_tokens=None, on_delta=None, should_stop=None, stops=None):
        out = []
        for i, text in enumerate(self.answer(prompts)):
            limit = min(decoding.max_new_tokens, (max_tokens or [0] * len(prompts))[i] or decoding.max_new_tokens)
            words = text.split(" ")
            reason = "length" if len(words) > limit else "stop"
            text = " ".join(words[:limit])
            if on_delta is not None and text:
                on_delta(i, text)
            out.append(Generation(text, reason, len(prompts[i].split()), len(text.split())))
        return out

    def provenance(self) -> dict:
        p = {"model": self.name, "kind": self.kind, "backend": "baseline"}
        if self.index is not None:
            p["cases"] = len(self.index.cases)
        return p


class NormalBaseline(Baseline):
    def answer(self, findings):
        return [NORMAL_SENTENCE for _ in findings]


class LastSentenceBaseline(Baseline):
    def answer(self, findings):
        return [last_sentence(f) for f in findings]


class NearestBaseline(Baseline):
    def answer(self, findings):
        if not findings:
            return []
        return [h[0][0].impression if h else "" for h in self.index.search_many(findings, 1)]


BASELINES = {"normal": NormalBaseline, "nearest": NearestBaseline, "last-sentence": LastSentenceBaseline}


def load_baseline(name: str, cases: str | None = None) -> Baseline:
    if name not in BASELINES:
        raise FatalError(f"unknown baseline '{name}' (choose from {', '.join(BASELINES)})")
    index = None
    if cases:
        from radgpt.runs.retrieval import CaseIndex

        index = CaseIndex(load_cases(cases))  # similar cases are shown for every baseline
    elif name == "nearest":
        raise FatalError("baseline:nearest needs prior cases (--cases FILE.jsonl)")
    return BASELINES[name](name, index)
