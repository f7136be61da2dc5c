"""Instruction tasks: how a record becomes (instruction, input, output) examples.

findings → impression is the paper's task. The other two answer its first open question (do more
instruction tasks help?) and are selected in the prepare/finetune config: a record yields an example
for a task only when it has the fields that task needs.
"""

from __future__ import annotations

from collections.abc import Callable

from radgpt.prepare.records import Record

# The Radiology-GPT paper's instruction, verbatim.
PAPER_INSTRUCTION = "Derive the impression from findings in the radiology report"


def _findings_impression(r: Record) -> tuple[str, str] | None:
    return (r.findings, r.impression) if r.findings and r.impression else None


def _indication_findings_impression(r: Record) -> tuple[str, str] | None:
    if not (r.indication and r.findings and r.impression):
        return None
    return f"INDICATION: {r.indication}\nFINDINGS: {r.findings}", r.impression


def _findings_problems(r: Record) -> tuple[str, str] | None:
    problems = [p for p in r.problems if p.lower() != "normal"] or (["normal"] if r.problems else [])
    return (r.findings, "; ".join(problems)) if r.findings and problems else None


# task name -> (default instruction, builder)
TASKS: dict[str, tuple[str, Callable[[Record], tuple[str, str] | None]]] = {
    "findings_impression": (PAPER_INSTRUCTION, _findings_impression),
    "indication_findings_impression": (
        "Derive the impression from the indication and findings in the radiology report",
        _indication_findings_impression,
    ),
    "findings_problems": ("List the problems shown by the findings in the radiology report", _findings_problems),
}


def alpaca_example(task: str, instruction: str, inp: str, out: str, rid: str) -> dict:
    return {"id": rid, "task": task, "instruction": instruction, "input": inp, "output": out}


def chat_example(task: str, instruction: str, inp: str, out: str, rid: str) -> dict:
    return {
        "id": rid,
        "task": task,
        "messages": [
            {"role": "user", "content": f"{instruction}\n\n{inp}"},
            {"role": "assistant", "content": out},
        ],
    }
