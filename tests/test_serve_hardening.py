"""`radgpt serve` under what an attacker or a careless client sends (issue: one timed-out request took the
model down): the worker survives cancels, timeouts and engine failures; /health tells the truth; limits are
in tokens; malformed input is a 4xx without internal text; cross-origin calls are refused; every request
leaves exactly one audit line."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from radgpt.common.errors import FatalError
from radgpt.runs.decoding import Decoding
from radgpt.serve.batcher import Batcher, Job, RequestRefused
from radgpt.serve.protocol import ErrorResponse, HealthResponse
from tests.serve_helpers import FINDINGS, EchoModel, client_for, wait_ready

REPO = Path(__file__).resolve().parents[1]


def _audit_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_a_timed_out_request_does_not_take_the_worker_down(tmp_path):
    """The reported defect: the client's timeout cancels the job's future, the worker later settles it."""
    gate = threading.Event()
    model = EchoModel(gate=gate)
    with client_for({"echo": model}, timeout_s=0.3, audit_log=str(tmp_path / "a.jsonl")) as c:
        wait_ready(c)
        r = c.post("/v1/impressions", json={"findings": FINDINGS})  # held at the gate → 504
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        gate.set()  # the worker now finishes the cancelled job and settles its future
        time.sleep(0.2)
        for _ in range(3):
            r = c.post("/v1/impressions", json={"findings": FINDINGS})
            assert r.status_code == 200, r.text
        h = c.get("/health")
        assert h.status_code == 200 and h.json()["workers"]["echo"]["alive"]
        assert h.json()["workers"]["echo"]["restarts"] == 0


class Boom(BaseException):
    """Escapes `except Exception`: stands for anything that would end a thread."""


class FlakyModel(EchoModel):
    def __init__(self, fail_with):
        super().__init__()
        self.fail_with, self.calls = fail_with, 0

    def generate(self, prompts, *a, **k):
        self.calls += 1
        if self.calls == 1:
            raise self.fail_with
        return super().generate(prompts, *a, **k)


@pytest.mark.parametrize("error, restarts", [(RuntimeError("mkl_malloc: failed to allocate memory"), 0), (Boom(), 1)])
@pytest.mark.parametrize("path, body", [
    ("/v1/impressions", {"findings": FINDINGS}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": FINDINGS}]}),
    ("/v1/completions", {"prompt": "a b c"}),
])
def test_an_engine_that_raises_is_502_and_the_server_keeps_serving(error, restarts, path, body):
    with client_for({"echo": FlakyModel(error)}) as c:
        wait_ready(c)
        r = c.post(path, json=body)
        assert r.status_code == 502, r.text
        err = ErrorResponse.model_validate(r.json()).error
        assert err.code == "generation_error" and "generation failed in the engine" in err.message
        assert err.type == "server_error" and r.headers["Retry-After"]
        assert "mkl" not in r.text and "Boom" not in r.text  # no internal text
        h = c.get("/health")
        assert h.status_code == 200 and h.json()["status"] == "ok"
        w = h.json()["workers"]["echo"]
        assert w["alive"] and w["restarts"] == restarts
        assert c.post(path, json=body).status_code == 200


class ContextLimitedModel(EchoModel):
    """Like llama.cpp: the engine itself refuses a prompt over its context with a FatalError (the server's own
    token limit is set high, so only the engine's check stands between the request and the worker)."""

    context = 40

    def __init__(self):
        super().__init__()
        self.calls = []  # rows per call, refused ones included

    def generate(self, prompts, *a, **k):
        self.calls.append(len(prompts))
        for p in prompts:
            if len(p.split()) > self.context:
                n = len(p.split())
                raise FatalError(f"prompt of {n} tokens exceeds the engine's context ({self.context})")
        return super().generate(prompts, *a, **k)


LONG = " ".join(["nodule"] * 60)


@pytest.mark.parametrize("path, body", [
    ("/v1/impressions", {"findings": LONG}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}]}),
    ("/v1/completions", {"prompt": LONG}),
    ("/v1/completions", {"prompt": ["short one", LONG]}),
])
def test_an_over_long_prompt_the_engine_refuses_is_400_not_500(path, body):
    with client_for({"echo": ContextLimitedModel()}, max_prompt_tokens=10_000) as c:
        wait_ready(c)
        r = c.post(path, json=body)
        assert r.status_code == 400, r.text
        err = ErrorResponse.model_validate(r.json()).error
        assert err.code == "invalid_request" and "exceeds the engine's context (40)" in err.message
        # streamed, the 200 is sent before the engine runs: the same error comes as the stream's error event
        r = c.post(path, json={**body, "stream": True})
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        assert '"code": "invalid_request"' in r.text and "exceeds the engine's context" in r.text
        assert c.get("/health").status_code == 200
        assert c.post("/v1/impressions", json={"findings": FINDINGS}).status_code == 200


class CountRefusingModel(EchoModel):
    """A model whose own token count refuses an over-long text (a FatalError raised in the request's own
    handling, before anything is queued: it was answered 500)."""

    def count_tokens(self, text):
        if len(text.split()) > 40:
            raise FatalError("the findings are longer than this model's context")
        return super().count_tokens(text)


@pytest.mark.parametrize("path, body", [
    ("/v1/impressions", {"findings": LONG}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}], "stream": True}),
    ("/v1/completions", {"prompt": LONG}),
])
def test_a_fatal_error_while_handling_a_request_is_400(path, body):
    model = CountRefusingModel()
    with client_for({"echo": model}) as c:
        wait_ready(c)
        r = c.post(path, json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == {"message": "the findings are longer than this model's context",
                                     "type": "invalid_request_error", "code": "invalid_request"}
        assert model.batches == []


@pytest.mark.parametrize("path, body", [
    ("/v1/impressions", {"findings": LONG}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}]}),
    ("/v1/completions", {"prompt": LONG}),
])
@pytest.mark.parametrize("stream", [False, True])
def test_the_prompt_token_limit_is_400_on_every_endpoint_streamed_or_not(path, body, stream):
    model = EchoModel()
    with client_for({"echo": model}, max_prompt_tokens=30) as c:
        wait_ready(c)
        r = c.post(path, json={**body, "stream": stream})
        assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_long", r.text
        assert model.batches == []


def test_only_the_row_the_engine_refuses_fails_in_a_shared_batch():
    """Rows from different clients share a batch; the engine's FatalError is about one prompt, so the batch is
    run again row by row and only that row is refused."""
    model = ContextLimitedModel()
    b = Batcher(model, max_batch=4, max_queue=4, wait_ms=300)
    try:
        ok, bad = Job("short prompt", Decoding(), 4), Job(LONG, Decoding(), 4)
        b.submit(ok)
        b.submit(bad)  # within the 300 ms the batch waits to fill: one batch of two
        assert ok.future.result(5).text == "impression of 2 words."
        with pytest.raises(RequestRefused, match="exceeds the engine's context"):
            bad.future.result(5)
        assert model.calls == [2, 1, 1]  # the batch of two, refused; then each row alone
        assert b.health()["alive"] and b.health()["restarts"] == 0
    finally:
        b.close()


def test_a_model_that_failed_to_load_is_503_everywhere():
    def broken_loader():
        raise FatalError("models/nope: model folder not found")

    with client_for({"broken": broken_loader}) as c:
        for _ in range(100):
            if c.get("/health").json()["status"] != "loading":
                break
            time.sleep(0.02)
        h = c.get("/health")
        assert h.status_code == 503
        health = HealthResponse.model_validate(h.json())
        assert health.status == "error" and health.error == "FatalError: models/nope: model folder not found"
        for path, body in [("/v1/impressions", {"findings": FINDINGS}), ("/v1/completions", {"prompt": "a"}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": FINDINGS}]})]:
            r = c.post(path, json=body)
            assert r.status_code == 503, r.text
            err = ErrorResponse.model_validate(r.json()).error
            assert err.code == "load_failed" and "model folder not found" in err.message


def test_a_worker_that_is_gone_is_503_not_429():
    with client_for({"echo": EchoModel()}) as c:
        wait_ready(c)
        c.app.state.radgpt.batchers["echo"].close()  # what shutdown does
        r = c.post("/v1/impressions", json={"findings": FINDINGS})
        assert r.status_code == 503 and r.json()["error"]["code"] == "worker_unavailable", r.text
        assert r.headers["Retry-After"]
        h = c.get("/health")
        assert h.status_code == 503 and h.json()["status"] == "unavailable"
        assert h.json()["workers"]["echo"]["alive"] is False


def test_stream_error_event_has_no_internal_text():
    with client_for({"echo": FlakyModel(RuntimeError("secret internal detail"))}) as c:
        wait_ready(c)
        r = c.post("/v1/impressions", json={"findings": FINDINGS, "stream": True})
        assert "secret" not in r.text and '"generation_error"' in r.text and r.text.endswith("data: [DONE]\n\n")


def test_health_is_503_when_the_queue_stops_moving():
    gate = threading.Event()
    with client_for({"echo": EchoModel(gate=gate)}, timeout_s=0.5, max_queue=8) as c:
        wait_ready(c)
        batcher = c.app.state.radgpt.batchers["echo"]
        batcher.submit(Job("held", Decoding(), 4))  # the worker takes it and blocks at the gate
        time.sleep(0.1)
        batcher.submit(Job("waiting", Decoding(), 4))
        time.sleep(0.7)  # the waiting job is now older than the request timeout
        h = c.get("/health")
        assert h.status_code == 503 and h.json()["status"] == "unavailable"
        gate.set()
        time.sleep(0.3)
        assert c.get("/health").status_code == 200


def test_close_never_blocks_even_with_a_full_queue():
    gate = threading.Event()
    b = Batcher(EchoModel(gate=gate), max_batch=1, max_queue=2, wait_ms=1)
    jobs = [Job(f"p{i}", Decoding(), 4) for i in range(3)]
    b.submit(jobs[0])
    time.sleep(0.1)  # taken by the worker, held at the gate
    b.submit(jobs[1])
    b.submit(jobs[2])  # the queue is full now
    t0 = time.monotonic()
    b.close(timeout=0.5)
    assert time.monotonic() - t0 < 1.5
    assert all(j.future.done() for j in jobs[1:])  # the waiting jobs are failed, not left hanging
    gate.set()


def test_prompt_limit_is_in_tokens_and_checked_before_queueing():
    model = EchoModel()
    with client_for({"echo": model}, max_prompt_tokens=200) as c:
        wait_ready(c)
        r = c.post("/v1/impressions", json={"findings": "nodule " * 400})
        assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_long"
        assert "tokens" in r.json()["error"]["message"] and "200" in r.json()["error"]["message"]
        r = c.post("/v1/completions", json={"prompt": "word " * 300})
        assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_long"
        assert model.batches == []  # nothing reached the engine
        assert c.post("/v1/impressions", json={"findings": FINDINGS}).status_code == 200


@pytest.mark.parametrize("path, body, code", [
    ("/v1/impressions", b"[" * 100_000, "invalid_json"),
    ("/v1/impressions", b'{"findings": "' + b"[" * 50 + b'"}', None),  # fine: brackets inside a string
    ("/v1/impressions", b'{"findings": "Heart normal \\ud800 lungs clear."}', "invalid_text"),
    ("/v1/completions", b'{"prompt": "a \\udfff b"}', "invalid_text"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}',
     "invalid_request"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [5]}]}', "invalid_request"),
    ("/v1/completions", b'{"prompt": "a", "stop": ["\\ud800"]}', "invalid_text"),
])
def test_malformed_input_is_4xx_with_a_clear_message(path, body, code):
    with client_for({"echo": EchoModel()}) as c:
        wait_ready(c)
        r = c.post(path, content=body, headers={"Content-Type": "application/json"})
        if code is None:
            assert r.status_code == 200, r.text
            return
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == code and err["message"]
        assert "Traceback" not in r.text and "Error(" not in r.text


def test_cross_origin_requests_are_refused_and_json_is_required(tmp_path):
    audit = tmp_path / "audit.jsonl"
    with client_for({"echo": EchoModel()}, audit_log=str(audit)) as c:
        wait_ready(c)
        body = json.dumps({"findings": "x y"})
        # the probe: a simple (no-preflight) request from another site's page
        r = c.post("/v1/impressions", content=body, headers={"Origin": "http://evil.example",
                                                             "Content-Type": "text/plain"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin"
        r = c.post("/v1/impressions", content=body, headers={"Sec-Fetch-Site": "cross-site",
                                                             "Content-Type": "application/json"})
        assert r.status_code == 403
        r = c.options("/v1/impressions", headers={"Origin": "http://evil.example",
                                                  "Access-Control-Request-Method": "POST"})
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
        # without a browser's Origin, a non-JSON body is still refused: a form post cannot be a request
        r = c.post("/v1/impressions", content=body, headers={"Content-Type": "text/plain"})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        # the server's own page (same origin) works
        r = c.post("/v1/impressions", content=body, headers={"Origin": "http://testserver",
                                                             "Sec-Fetch-Site": "same-origin",
                                                             "Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        statuses = [x["status"] for x in _audit_lines(audit)]
        assert statuses == [403, 403, 403, 415, 200]


def test_one_audit_line_per_request_whatever_its_fate(tmp_path):
    audit = tmp_path / "audit.jsonl"
    model = EchoModel(delay=0.05)
    with client_for({"echo": model}, timeout_s=2, audit_log=str(audit)) as c:
        wait_ready(c)
        c.post("/v1/impressions", json={"findings": FINDINGS})  # 200
        c.post("/v1/impressions", json={"findings": FINDINGS, "timeout_s": 0.01})  # 504
        c.post("/v1/impressions", json={"findings": FINDINGS, "stream": True, "timeout_s": 0.01})  # 200, error event
        c.post("/v1/impressions", content=b"{", headers={"Content-Type": "application/json"})  # 400
        with c.stream("POST", "/v1/impressions", json={"findings": FINDINGS, "stream": True}) as r:
            next(r.iter_lines())  # read the first event, then leave
        c.post("/v1/completions", json={"prompt": "a b", "stream": True})
        time.sleep(0.5)  # the dropped stream's line is written when the server is done with it
    recs = _audit_lines(audit)
    assert len(recs) == 6, recs
    assert [r["status"] for r in recs[:4]] == [200, 504, 200, 400]
    assert recs[1]["outcome"] == "timeout" and recs[2]["outcome"] == "timeout"
    assert all("latency_ms" in r and "endpoint" in r for r in recs)
    assert "pleural" not in audit.read_text()


def test_chaos_load_keeps_the_server_up(tmp_path):
    """A small run of the bench's chaos load against a real uvicorn server with the echo model."""
    sys.path.insert(0, str(REPO / "bench"))
    from bench_serve_chaos import run_chaos_in_process

    stats = run_chaos_in_process(EchoModel(delay=0.05), tmp_path, requests=120, clients=8, seed=3)
    assert stats["5xx"] == 0, stats
    assert stats["health_false"] == 0 and stats["alive_at_end"], stats
    assert stats["audit_lines"] == stats["sent"], stats
    assert stats["by_kind"]["ok"]["200"] > 0 and stats["by_kind"]["timeout"].get("504", 0) > 0, stats
