"""The same findings give the same impression whatever else is decoded with them (#13), for the transformers
backend on CPU (CTranslate2 and llama.cpp: tests/test_default_model.py, tests/test_export.py)."""

from __future__ import annotations

import random

from radgpt.impress.backends.transformers import TransformersBackend
from radgpt.runs.decoding import Decoding

FINDINGS = ["Heart size normal.", "Lungs are clear. No effusion.", "Small left pleural effusion.",
            "Cardiomegaly with mild edema. No pneumothorax.", "Right lower lobe opacity.", "Lungs clear.",
            "Stable 1 cm nodule in the right upper lobe. No acute process.", "Heart size normal. Lungs clear."]


def test_transformers_rows_are_decoded_unpadded_in_equal_length_groups(tiny_run):
    be = TransformersBackend(tiny_run)
    calls = []
    inner = be._generate

    def spy(enc, *a, **k):
        calls.append([len(e) for e in enc])
        return inner(enc, *a, **k)

    be._generate = spy
    prompts = [f"Findings: {f}\nImpression:" for f in FINDINGS * 3]
    decoding = Decoding(max_new_tokens=8)
    together = [g.text for g in be.generate(prompts, decoding)]
    assert calls and all(len(set(c)) == 1 for c in calls), calls  # never a padded row on CPU
    assert max(map(len, calls)) > 1  # equal prompts do share a call
    alone = [be.generate([p], decoding)[0].text for p in prompts]
    shuffled = list(range(len(prompts)))
    random.Random(1).shuffle(shuffled)
    mixed = be.generate([prompts[i] for i in shuffled], decoding)
    assert together == alone
    assert [mixed[shuffled.index(i)].text for i in range(len(prompts))] == alone


def test_streamed_deltas_reach_the_caller_rows_in_their_own_order(tiny_run):
    be = TransformersBackend(tiny_run)
    prompts = [f"Findings: {f}\nImpression:" for f in FINDINGS]
    seen = {i: "" for i in range(len(prompts))}

    def on_delta(i, d):
        seen[i] += d

    gens = be.generate(prompts, Decoding(max_new_tokens=6), on_delta=on_delta)
    assert [seen[i].strip() for i in range(len(prompts))] == [g.text for g in gens]


def _serve_alone_and_together(model) -> tuple[list[str], list[str], int]:
    import threading

    from tests.serve_helpers import client_for, wait_ready

    with client_for({"m": model}, max_batch=len(FINDINGS), batch_wait_ms=200) as c:
        wait_ready(c)

        def ask(f):
            r = c.post("/v1/impressions", json={"findings": f, "max_tokens": 8, "repair": False, "similar": 0})
            assert r.status_code == 200, r.text
            return r.json()["impression"]

        alone = [ask(f) for f in FINDINGS]
        batcher = c.app.state.radgpt.batchers["m"]
        before = batcher.batches
        together = [""] * len(FINDINGS)
        threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, ask(FINDINGS[i])))
                   for i in range(len(FINDINGS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return alone, together, batcher.batches - before


def test_serve_answers_concurrent_clients_as_it_answers_one_at_a_time(tiny_run, tiny_export):
    """16 clinicians at once must get what each would get alone: the server batches concurrent requests, so
    this holds only if the engine's rows are independent of their batch (transformers: equal-length groups;
    CTranslate2: equal-length batches)."""
    from radgpt.impress.load import load_model

    for folder, backend in ((tiny_run, "transformers"), (tiny_export, "auto")):
        alone, together, batches = _serve_alone_and_together(load_model(str(folder), backend=backend))
        assert batches < len(FINDINGS), "the concurrent requests did not share a batch: nothing was tested"
        assert together == alone, backend
