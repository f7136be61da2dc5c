"""What an impression model is: findings in → `Impression` out (text, similar prior cases, flags, repairs).

`ImpressionModel` is the interface every kind answers through (language models, base models, baselines);
`LMModel` puts a backend behind the run's prompt template; `finish` applies the faithfulness repair and flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from radgpt.impress.backends.base import Generation
from radgpt.runs.decoding import PRESETS, Decoding
from radgpt.runs.prompts import clean_placeholders

# A generation is cut at these (a model that runs on into another example); never part of an impression.
STOP_STRINGS = ("\n###", "\nFindings:", "\nImpression:", "\n\n\n")


@dataclass
class SimilarCase:
    id: str
    findings: str
    impression: str
    score: float

    def to_dict(self) -> dict:
        return {"id": self.id, "score": round(self.score, 4), "findings": self.findings,
                "impression": self.impression}


@dataclass
class Impression:
    impression: str
    similar_cases: list[SimilarCase] = field(default_factory=list)
    shot_ids: list[str] = field(default_factory=list)  # the cases put into the prompt, in prompt order
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # disagreements with the findings (radgpt.findings.faithfulness.consistency_flags), most severe first
    flags: list[dict] = field(default_factory=list)
    # what the faithfulness repair changed: {"action": "removed" | "added_from_findings", "sentence"}
    repairs: list[dict] = field(default_factory=list)


def finish(findings: str, text: str, hits: list, repair: bool) -> tuple[str, list[dict], list[dict]]:
    """A generated impression as shown to a reader: (text, repairs, flags). With `repair`, sentences stating a
    finding the findings do not state are dropped and a stated critical or major finding the model left out
    is added in the findings' own words (radgpt.findings.faithfulness.repair); the flags are those of the
    final text, checked against the findings and the prior cases retrieved for it. On OpenI validate it took missed-abnormal from 35% to 11% (transformers; README)."""
    from radgpt.findings.faithfulness import consistency_flags
    from radgpt.findings.faithfulness import repair as repair_text

    repairs: list[dict] = []
    if repair:
        text, repairs = repair_text(findings, text)
        if repairs:  # added sentences are the findings' words, de-identification placeholders included
            text = clean_placeholders(text)
            repairs = [{**a, "sentence": clean_placeholders(a["sentence"])} for a in repairs]
    return text, repairs, consistency_flags(findings, text, [(c.id, c.impression) for c, _ in hits])


class ImpressionModel:
    """Findings → impression. Subclasses: LMModel (a backend + prompt template) and the baselines."""

    name = "model"
    kind = "model"
    shots = 0  # retrieved cases put into each prompt
    repair = False  # faithfulness repair of the generated text (see `finish`)
    index = None  # radgpt.runs.retrieval.CaseIndex, or None when there are no prior cases to show
    tokenizer = None

    def prompt(self, findings: str, shots: list) -> str:
        return findings

    def generate(self, prompts: list[str], decoding: Decoding, max_tokens=None, on_delta=None, should_stop=None):
        raise NotImplementedError

    def provenance(self) -> dict:
        return {"model": self.name, "kind": self.kind}

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def retrieve(self, findings: list[str], k: int) -> list[list]:
        if self.index is None or k <= 0 or not findings:
            return [[] for _ in findings]
        return self.index.search_many(findings, k)

    def prepare(self, findings: list[str], similar: int = 3) -> tuple[list[str], list[list], list[list[str]]]:
        """Prompts, retrieved (case, score) hits and shot ids for each findings text."""
        hits = self.retrieve(findings, max(self.shots, similar))
        prompts, shot_ids = [], []
        for f, h in zip(findings, hits):
            shots = list(reversed(h[: self.shots]))  # most similar last, as in training (finetune.data)
            prompts.append(self.prompt(f, shots))
            shot_ids.append([c.id for c, _ in shots])
        return prompts, hits, shot_ids

    @staticmethod
    def similar_cases(hits: list, similar: int) -> list[SimilarCase]:
        return [SimilarCase(c.id, c.findings, c.impression, s) for c, s in hits[:similar]]

    def impress(self, findings: list[str], decoding: Decoding = PRESETS["greedy"], similar: int = 3,
                max_tokens: list[int] | None = None, on_delta=None, repair: bool | None = None) -> list[Impression]:
        """repair: make each impression state what its findings state and nothing else (`finish`); default:
        the model's own setting (on for language models, off for baselines)."""
        prompts, hits, shot_ids = self.prepare(findings, similar)
        gens = self.generate(prompts, decoding, max_tokens=max_tokens, on_delta=on_delta)
        out = []
        for f, g, h, s in zip(findings, gens, hits, shot_ids):
            text, repairs, flags = finish(f, g.text, h, self.repair if repair is None else repair)
            out.append(Impression(text, self.similar_cases(h, similar), s, g.finish_reason, g.prompt_tokens,
                                  g.completion_tokens, flags, repairs))
        return out

    def close(self) -> None:
        pass


class LMModel(ImpressionModel):
    """A language model behind a Backend, prompted with the run's own template (and retrieved shots)."""

    repair = True

    def __init__(self, backend, template, instruction: str, name: str, index=None, shots: int = 0,
                 source: dict | None = None):
        self.backend, self.template, self.instruction = backend, template, instruction
        self.name, self.index, self.shots = name, index, shots
        self.tokenizer = getattr(backend, "tokenizer", None)
        self.source = source or {}
        # the text all prompts share: rendered for two different inputs (and shots), their common start
        a = template.render(instruction, "Alpha.", [("a", "b")] * shots)
        b = template.render(instruction, "Zulu.", [("y", "z")] * shots)
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        self.static_prefix = a[:n]
        if hasattr(backend, "set_static_prefix"):
            backend.set_static_prefix(self.static_prefix)

    def prompt(self, findings: str, shots: list) -> str:
        return self.template.render(self.instruction, findings.strip(),
                                    [(c.findings, c.impression) for c, _ in shots])

    def count_tokens(self, text: str) -> int:
        return self.backend.count_tokens(text)

    def generate(self, prompts, decoding, max_tokens=None, on_delta=None, should_stop=None, stops=None):
        """stops[i]: strings that end row i (default STOP_STRINGS; () for a client's raw prompt). Streamed
        text never includes a stop string: a tail that could start one is held back until it cannot."""
        n = len(prompts)
        stops = [STOP_STRINGS] * n if stops is None else [tuple(s) for s in stops]
        limits = list(max_tokens) if max_tokens else [0] * n
        if not decoding.do_sample and n > 1:  # identical prompts decode identically: run each once
            first: dict = {}
            src = [first.setdefault((prompts[i], limits[i], stops[i]), len(first)) for i in range(n)]
            if len(first) < n:
                uniq = [0] * len(first)
                members: list[list[int]] = [[] for _ in first]
                for i in reversed(range(n)):
                    uniq[src[i]] = i
                    members[src[i]].insert(0, i)
                sub_delta = None if on_delta is None else (lambda u, d: [on_delta(i, d) for i in members[u]])
                sub_stop = None if should_stop is None else (lambda u: all(should_stop(i) for i in members[u]))
                gens = self.generate([prompts[j] for j in uniq], decoding, [limits[j] for j in uniq], sub_delta,
                                     sub_stop, [stops[j] for j in uniq])
                return [gens[src[i]] for i in range(n)]
        texts, sent, cut = [""] * n, [0] * n, [False] * n

        def first_stop(i: int, text: str) -> int:
            return min((text.find(s) for s in stops[i] if s in text), default=-1)

        def delta(i, d):
            if cut[i]:
                return
            texts[i] += d
            base = texts[i].lstrip() if stops[i] else texts[i]  # the final text is stripped too
            stop = first_stop(i, base)
            keep = base if stop < 0 else base[:stop]
            cut[i] = stop >= 0
            hold = 0 if cut[i] else max((k for s in stops[i] for k in range(1, len(s)) if keep.endswith(s[:k])),
                                        default=0)
            upto = len(keep) - hold
            if stops[i] and upto > 0:
                upto = len(keep[:upto].rstrip()) if not cut[i] else len(keep.rstrip())
                if not cut[i]:  # a trailing "XX" may be the start of a placeholder: hold it
                    upto = len(keep[:upto].rstrip("X"))
                keep = clean_placeholders(keep[:upto])
                upto = len(keep)
            if upto > sent[i] and on_delta is not None:
                on_delta(i, keep[sent[i]:upto])
                sent[i] = upto

        def stop(i):
            return cut[i] or (should_stop is not None and should_stop(i))

        # token callbacks cost (the backend calls into Python per token): only when someone streams or cancels
        live = on_delta is not None or should_stop is not None
        gens = self.backend.generate(prompts, decoding, max_tokens=max_tokens, on_delta=delta if live else None,
                                     should_stop=stop if live else None)
        out = []
        for i, g in enumerate(gens):
            text, reason = g.text, g.finish_reason
            at = first_stop(i, text)
            if at >= 0:
                text, reason = text[:at], "stop"
            if stops[i]:  # an impression (not a client's raw completion): as shown to a clinician
                text = clean_placeholders(text.strip())
            if on_delta is not None and len(text) > sent[i]:
                on_delta(i, text[sent[i]:])
            out.append(Generation(text, reason, g.prompt_tokens, g.completion_tokens))
        return out

    def provenance(self) -> dict:
        return {"model": self.name, "kind": self.kind, **self.backend.info(), **self.source,
                "prompt_template": self.template.name, "instruction": self.instruction, "shots": self.shots}


class BaseLMModel(LMModel):
    """A general instruction model with no radgpt adapter (the paper's comparison): the paper's instruction in
    the model's own chat template, zero-shot or with `shots` retrieved examples as earlier turns."""

    kind = "base"

    def provenance(self) -> dict:
        return {**super().provenance(), "prompting": f"{self.shots}-shot" if self.shots else "zero-shot"}


