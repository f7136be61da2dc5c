"""Instruction examples for training: read, render with the prompt template, tokenise, batch.

Reads what `radgpt prepare` writes (alpaca / chat JSONL) and the common pair formats
(clin-summ `{inputs, target}`, records `{findings, impression}`). Labels are built by hand: prompt
tokens are -100 (masked out of the loss), response tokens plus the end-of-sequence token are kept —
so the model learns to stop (the alpaca-lora failure: EOS never trained, generation never ends).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from radgpt.common.errors import FatalError
from radgpt.common.inputs import ID_FIELDS, first_field, read_json_objects
from radgpt.prepare.tasks import PAPER_INSTRUCTION
from radgpt.runs.prompts import PromptTemplate

IGNORE = -100


@dataclass
class Example:
    id: str
    instruction: str
    input: str
    output: str
    task: str = "findings_impression"
    shots: list[tuple[str, str]] = field(default_factory=list)  # retrieved (findings, impression) pairs


def read_examples(path: str | Path, tasks: list[str] | None = None, instruction: str = PAPER_INSTRUCTION
                  ) -> list[Example]:
    """Read a JSONL dataset; a malformed line is a FatalError naming file:line."""
    examples = []
    for n, row in read_json_objects(path, "dataset file"):
        ex = _example(row, n, instruction)
        if ex is None:
            raise FatalError(f"{path}:{n}: no instruction fields; expected instruction/input/output, "
                             f"inputs/target, findings/impression or messages (keys: {sorted(row)})")
        if not ex.output.strip():
            raise FatalError(f"{path}:{n}: empty output/impression")
        if tasks and ex.task not in tasks:
            continue
        examples.append(ex)
    if not examples:
        raise FatalError(f"{path}: no examples (empty file, or no rows of task(s) {tasks})")
    return examples


def _example(row: dict, n: int, instruction: str) -> Example | None:
    idf = first_field(row, ID_FIELDS)  # the id names every reader accepts (uid, study_id, ...); else the line
    rid = str(row[idf] if idf is not None else n)
    task = row.get("task", "findings_impression")
    if "output" in row and "instruction" in row:
        return Example(rid, row["instruction"], row.get("input", ""), row["output"], task)
    if "target" in row and "inputs" in row:
        return Example(rid, instruction, row["inputs"], row["target"])
    if "impression" in row and "findings" in row:
        return Example(rid, instruction, row["findings"], row["impression"])
    if "messages" in row:
        msgs = row["messages"]
        user = next((m["content"] for m in msgs if m.get("role") == "user"), None)
        bot = next((m["content"] for m in msgs if m.get("role") == "assistant"), None)
        if user is not None and bot is not None:
            head, _, rest = user.partition("\n\n")
            return Example(rid, head, rest, bot, task)
    return None


def attach_retrieval(examples: list[Example], index, k: int, exclude_self: bool) -> None:
    """Put the k most similar training cases into each example (never the example itself)."""
    if k <= 0:
        return
    excl = [{e.id} if exclude_self else set() for e in examples]
    hits = index.search_many([e.input for e in examples], k, excl)
    for e, h in zip(examples, hits):
        # most similar last: closest to the query, where a small model attends best
        e.shots = [(c.findings, c.impression) for c, _ in reversed(h)]


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    n_response: int


def tokenize(examples: list[Example], tokenizer, template: PromptTemplate, cutoff_len: int
             ) -> tuple[list[Tokenized], int]:
    """Prompt → -100, response + EOS → kept. Returns (items, number truncated to cutoff_len)."""
    eos = tokenizer.eos_token_id
    prompts = [template.render(e.instruction, e.input, e.shots) for e in examples]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer([e.output for e in examples], add_special_tokens=False)["input_ids"]
    out, truncated = [], 0
    for p, r in zip(p_ids, r_ids):
        r = r + [eos]
        if len(p) + len(r) > cutoff_len:
            truncated += 1
            r = r[: max(cutoff_len // 2, 1) - 1] + [eos] if len(r) > cutoff_len // 2 else r
            budget = cutoff_len - len(r)
            # keep the instruction's start and the prompt's end (the findings' end and the response cue)
            head = min(32, budget // 2)
            p = p[:head] + p[len(p) - (budget - head):] if budget > head else p[:budget]
        out.append(Tokenized(p + r, [IGNORE] * len(p) + r, len(r)))
    return out, truncated


def length_grouped_batches(lengths: list[int], micro_batch: int, seed: int, epoch: int,
                           group: bool = True) -> list[list[int]]:
    """Micro-batches of similar length (little padding), in an order reproducible from (seed, epoch)."""
    rng = random.Random(seed * 1000 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if group:
        mega = micro_batch * 32  # sort within mega-batches: similar lengths, still random across them
        idx = [i for s in range(0, len(idx), mega) for i in sorted(idx[s:s + mega], key=lambda j: -lengths[j])]
    batches = [idx[s:s + micro_batch] for s in range(0, len(idx), micro_batch)]
    if group:
        rng.shuffle(batches)
    return batches


def collate(items: list[Tokenized], pad_id: int, pad_multiple: int = 16):
    """Right-pad to a multiple of `pad_multiple` (fewer distinct shapes keeps the CPU allocator's heap
    from growing without bound)."""
    import torch

    longest = max(len(t.input_ids) for t in items)
    width = -(-longest // pad_multiple) * pad_multiple if pad_multiple > 1 else longest
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, t in enumerate(items):
        n = len(t.input_ids)
        ids[i, :n] = torch.tensor(t.input_ids)
        labels[i, :n] = torch.tensor(t.labels)
        mask[i, :n] = 1
    return ids, labels, mask
