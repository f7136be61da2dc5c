"""What a fine-tuning run is trained on, checked on the real `radgpt finetune` data path (the tiny model's
tokenizer, the OpenI pairs bundled in data/openi/): the loss sees only the response and its end-of-sequence
token, and no training case is shown itself as a retrieved example (it would learn to copy the answer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radgpt.common.config import load_config
from radgpt.finetune import data
from radgpt.finetune.data import IGNORE
from radgpt.finetune.train import finetune
from radgpt.runs.config import FinetuneConfig
from radgpt.runs.retrieval import CaseIndex, PriorCase

TRAIN = Path(__file__).resolve().parents[1] / "data/openi/clin-summ/train.jsonl"


class _Captured(Exception):
    """Stops the run once the training set is tokenised: nothing after that is under test here."""


def _distinct_pairs(n: int) -> list[dict]:
    rows, seen = [], set()
    for line in TRAIN.read_text().splitlines():
        r = json.loads(line)
        if r["inputs"] not in seen:  # distinct findings: a case's only exact match in the index is itself
            seen.add(r["inputs"])
            rows.append(r)
        if len(rows) == n:
            return rows
    raise AssertionError("not enough distinct pairs")


@pytest.fixture(scope="module")
def training_data(tiny_base, tmp_path_factory):
    """(examples, tokenized items, tokenizer, template) exactly as finetune builds them for training."""
    root = tmp_path_factory.mktemp("invariants")
    rows = _distinct_pairs(40)
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(FinetuneConfig, None, [
        f"model.base={tiny_base}", f"out={root / 'run'}", f"data.train={train}", "data.validate=",
        "data.retrieval_k=3", "data.cutoff_len=2048", "train.batch_size=8", "train.micro_batch_size=4",
        "train.max_steps=1", "eval.generate=false", "lora.r=4"])
    captured = {}
    real = data.tokenize

    def capture(examples, tokenizer, template, cutoff_len):
        items, truncated = real(examples, tokenizer, template, cutoff_len)
        captured.update(examples=examples, items=items, tokenizer=tokenizer, template=template)
        raise _Captured

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "tokenize", capture)  # finetune imports it from radgpt.finetune.data when it runs
        with pytest.raises(_Captured):
            finetune(cfg, log=lambda *a: None)
    assert len(captured["examples"]) == len(rows) == len(captured["items"])
    return captured, rows


def _check_masked(item, prompt: str, response: str, tok) -> None:
    """The labels are IGNORE over exactly the prompt, then the response's own ids ending in EOS."""
    n_masked = next((i for i, label in enumerate(item.labels) if label != IGNORE), len(item.labels))
    assert len(item.labels) == len(item.input_ids)
    assert tok.decode(item.input_ids[:n_masked]) == prompt  # every prompt token, and only those, is masked
    kept = item.labels[n_masked:]
    assert kept == item.input_ids[n_masked:] and IGNORE not in kept
    assert kept[-1] == tok.eos_token_id and len(kept) == item.n_response
    assert tok.decode(kept[:-1]) == response


def test_loss_sees_the_response_and_eos_only(training_data):
    captured, _ = training_data
    tok, template = captured["tokenizer"], captured["template"]
    for e, item in zip(captured["examples"], captured["items"]):
        _check_masked(item, template.render(e.instruction, e.input, e.shots), e.output, tok)


def test_truncated_examples_keep_the_mask(training_data):
    """An example over cutoff_len loses prompt tokens from its middle; the mask still covers the whole
    (shortened) prompt and the response still ends in EOS."""
    captured, _ = training_data
    tok, template = captured["tokenizer"], captured["template"]
    items, truncated = data.tokenize(captured["examples"], tok, template, 96)
    assert truncated == len(items)  # with 3 retrieved cases every prompt is longer than 96 tokens
    for e, item in zip(captured["examples"], items):
        assert len(item.input_ids) <= 96
        n_masked = item.labels.count(IGNORE)
        assert item.labels[:n_masked] == [IGNORE] * n_masked and n_masked > 0
        assert item.labels[n_masked:] == item.input_ids[n_masked:] and item.labels[-1] == tok.eos_token_id
    ids, labels, mask = data.collate(items[:4], pad_id=tok.pad_token_id)
    assert bool((labels[mask == 0] == IGNORE).all())  # padding is never a target


def test_no_training_case_is_retrieved_as_its_own_example(training_data):
    captured, rows = training_data
    for e in captured["examples"]:
        assert len(e.shots) == 3
        assert e.input not in [findings for findings, _ in e.shots], f"case {e.id} retrieved itself"
    # the exclusion is doing work: without it, each case's nearest neighbour in the index is itself
    index = CaseIndex([PriorCase(str(r["idx"]), r["inputs"], r["target"]) for r in rows])
    nearest = index.search_many([r["inputs"] for r in rows], 1)
    assert [hits[0][0].id for hits in nearest] == [str(r["idx"]) for r in rows]
