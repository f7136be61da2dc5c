"""Prompt templates are data (radgpt/runs/templates/*.json), saved into every run folder.

A run folder keeps the exact template it was trained with (`prompt_template.json`), so `impress` and
`serve` rebuild the same prompt byte for byte — the classic failure of instruction-tuned checkpoints
is a prompt at inference that differs from the one in training.

Retrieved prior cases (few-shot) go inside the input, in the template's own `example` format, so the
same template serves zero-shot and retrieval-augmented prompts.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from radgpt.common.errors import FatalError

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
from radgpt.runs.folders import TEMPLATE_FILE

# Report text is data, never prompt structure: chat-format markers (<|im_end|>, [INST], </s>) and the
# <findings> delimiters inside it would let a report close its own turn and speak as the template.
_MARKERS = re.compile(r"<\|[^|<>]{0,40}\|>|</?s>|\[/?INST\]|</?findings>", re.IGNORECASE)


# OpenI masks PHI, and many ordinary words with it, as "XXXX" ("chest x-XXXX", "XXXX opacities"): a model
# trained on it writes the placeholder. Impressions shown to users never carry it.
_PLACEHOLDER = re.compile(r"\s*\bX{4,}\b(?:\s+X{4,}\b)*")


def clean_placeholders(text: str) -> str:
    """Drop de-identification placeholders from an impression: "x-XXXX" is an x-ray; any other masked word
    is removed with its space ("1. XXXX opacities" → "1. opacities")."""
    if "XXXX" in text:
        text = re.sub(r"\bx-XXXX\b", "x-ray", text, flags=re.IGNORECASE)
        text = _PLACEHOLDER.sub("", text).lstrip()
    return re.sub(r"\s+(?=[.,;:](?:\s|$))", "", text)  # no space before punctuation ("Negative chest .")


def _as_data(text: str) -> str:
    return _MARKERS.sub(" ", text) if ("<" in text or "[" in text) else text


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    prompt_input: str
    prompt_no_input: str
    response_split: str
    description: str = ""
    examples_header: str = "Similar prior reports:\n"
    example: str = "Findings: {input}\nImpression: {output}\n\n"
    query: str = "Findings: {input}"
    # train on, and prompt with, impressions without de-identification placeholders (clean_placeholders)
    clean_placeholders: bool = False

    @classmethod
    def load(cls, name_or_path: str | Path) -> PromptTemplate:
        """A built-in name (alpaca, chatml, plain), a template JSON file, or a run folder."""
        p = Path(name_or_path)
        if p.is_dir():
            p = p / TEMPLATE_FILE
        elif not p.suffix and (TEMPLATE_DIR / f"{name_or_path}.json").exists():
            p = TEMPLATE_DIR / f"{name_or_path}.json"
        if not p.is_file():
            names = sorted(f.stem for f in TEMPLATE_DIR.glob("*.json"))
            raise FatalError(f"prompt template '{name_or_path}' not found (built-in: {', '.join(names)}, "
                             "or a .json file, or a run folder)")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as e:
            raise FatalError(f"{p}: not a valid prompt template ({e})") from None

    def render(self, instruction: str, input: str = "", examples: list[tuple[str, str]] | tuple = ()) -> str:
        """The prompt up to where the response starts. `examples` are (findings, impression) pairs."""
        input, examples = _as_data(input), [(_as_data(f), _as_data(i)) for f, i in examples]
        if self.clean_placeholders:
            examples = [(f, clean_placeholders(i)) for f, i in examples]
        if examples or "{positives}" in self.query:
            shots = "".join(self.example.format(input=f, output=i) for f, i in examples)
            header = self.examples_header if examples else ""
            input = header + shots + self.query.format(input=input, positives=self.positives(input))
        if input:
            return self.prompt_input.format(instruction=instruction, input=input)
        return self.prompt_no_input.format(instruction=instruction)

    @staticmethod
    def positives(findings: str) -> str:
        """The findings' stated findings as one line (the labeler's), for templates whose query has a
        `{positives}` slot: a small model that sees "nodule, emphysema" spelled out leaves them out less."""
        from radgpt.findings.labeler import positive_findings

        return ", ".join(positive_findings(findings)) or "none"

    def response(self, generated: str) -> str:
        """The response part of a decoded generation that may still contain the prompt."""
        return generated.split(self.response_split)[-1].strip()

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / TEMPLATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False), encoding="utf-8")
        return path


class ChatTemplate:
    """A base model's own chat template (its tokenizer's `apply_chat_template`), with PromptTemplate's
    `render(instruction, input, examples)`: for a general instruction model compared zero- or few-shot.

    Each turn is the paper's instruction and the findings; retrieved examples go before the query as earlier
    user/assistant turns (findings → impression), so the model answers the last turn as it answered those.
    Example impressions carry no de-identification placeholders ("XXXX"), as shown to users."""

    name = "chat-template"
    clean_placeholders = True

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise FatalError("the model's tokenizer has no chat template")
        self.tokenizer = tokenizer

    @property
    def sha256(self) -> str:
        import hashlib

        return hashlib.sha256(str(self.tokenizer.chat_template).encode()).hexdigest()

    @staticmethod
    def turn(instruction: str, findings: str) -> str:
        return f"{instruction}\n\nFindings: {_as_data(findings)}" if findings else instruction

    def messages(self, instruction: str, input: str = "", examples: list[tuple[str, str]] | tuple = ()) -> list:
        msgs = []
        for f, i in examples:
            msgs += [{"role": "user", "content": self.turn(instruction, f)},
                     {"role": "assistant", "content": clean_placeholders(_as_data(i))}]
        return msgs + [{"role": "user", "content": self.turn(instruction, input)}]

    def render(self, instruction: str, input: str = "", examples: list[tuple[str, str]] | tuple = ()) -> str:
        return self.tokenizer.apply_chat_template(self.messages(instruction, input, examples), tokenize=False,
                                                  add_generation_prompt=True)
