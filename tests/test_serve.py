"""`radgpt serve` protocol tests with FastAPI's TestClient: shapes, SSE chunk order ending in [DONE],
errors as {"error": {...}}, API key, 429 on a full queue, timeouts, dynamic batching, the audit log."""

from __future__ import annotations

import json
import threading
import time

import pytest
from pydantic import ValidationError

from radgpt.cli import main
from radgpt.impress.baselines import load_baseline
from radgpt.serve import protocol as api
from radgpt.serve.app import create_app
from radgpt.serve.config import ServeConfig
from tests.serve_helpers import FINDINGS, EchoModel, client_for, wait_ready


def sse_events(text: str) -> list:
    assert text.endswith("data: [DONE]\n\n"), text[-200:]
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [json.loads(e[6:]) for e in events[:-1]]


@pytest.fixture
def echo_client(tmp_path):
    audit = tmp_path / "audit.jsonl"
    with client_for({"echo": EchoModel(), "baseline:normal": load_baseline("normal")},
                    audit_log=str(audit)) as c:
        wait_ready(c)
        c.audit = audit
        yield c


def test_health_is_503_while_loading_then_ok():
    gate = threading.Event()

    def slow_loader():
        gate.wait(10)
        return EchoModel()

    with client_for({"echo": slow_loader}) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = c.post("/v1/impressions", json={"findings": FINDINGS})
        assert r.status_code == 503 and r.json()["error"]["code"] == "loading"
        gate.set()
        wait_ready(c)
        assert c.get("/health").json()["models"] == ["echo"]


def test_models_and_completion_shapes(echo_client):
    c = echo_client
    models = c.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["echo", "baseline:normal"]
    assert all(m["object"] == "model" for m in models["data"])
    r = c.post("/v1/completions", json={"prompt": "one two three", "max_tokens": 3})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion" and body["model"] == "echo"
    ch = body["choices"][0]
    assert ch["text"] == "impression of 3" and ch["finish_reason"] == "length" and ch["index"] == 0
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    r = c.post("/v1/completions", json={"prompt": ["a b", "c"], "model": "echo"})
    assert [x["text"] for x in r.json()["choices"]] == ["impression of 2 words.", "impression of 1 words."]
    r = c.post("/v1/chat/completions", json={"messages": [{"role": "system", "content": "be brief"},
                                                          {"role": "user", "content": FINDINGS}]})
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"].startswith("impression of")
    assert body["choices"][0]["finish_reason"] == "stop"


def test_completion_stream_chunk_order(echo_client):
    r = echo_client.post("/v1/completions", json={"prompt": "x y", "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert all(e["object"] == "text_completion" for e in events)
    assert "".join(e["choices"][0]["text"] for e in events) == "impression of 2 words."
    assert [e["choices"][0]["finish_reason"] for e in events] == [None] * 4 + ["stop"]


def test_chat_stream_chunk_order(echo_client):
    r = echo_client.post("/v1/chat/completions", json={
        "stream": True, "messages": [{"role": "user", "content": [{"type": "text", "text": FINDINGS}]}]})
    events = sse_events(r.text)
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-1]["choices"][0]["delta"] == {} and events[-1]["choices"][0]["finish_reason"] == "stop"
    middle = events[1:-1]
    assert middle and all(set(e["choices"][0]["delta"]) == {"content"} for e in middle)
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-1])
    assert len({e["id"] for e in events}) == 1


def test_impressions_endpoint(echo_client):
    r = echo_client.post("/v1/impressions", json={"findings": FINDINGS, "similar": 2})
    body = r.json()
    assert r.status_code == 200 and body["impression"].startswith("impression of")
    assert len(body["similar_cases"]) == 2 and {"id", "score", "findings", "impression"} <= set(body["similar_cases"][0])
    assert isinstance(body["consistency_flags"], list)
    assert body["provenance"]["model"] == "echo" and body["provenance"]["decoding"]["num_beams"] == 1
    r = echo_client.post("/v1/impressions", json={"findings": FINDINGS, "stream": True})
    events = sse_events(r.text)
    assert events[0]["type"] == "similar_cases" and len(events[0]["similar_cases"]) == 3
    assert {e["type"] for e in events[1:-1]} == {"delta"} and events[-1]["type"] == "done"
    assert "".join(e["text"] for e in events[1:-1]) == events[-1]["impression"]
    # a finding the impression does not mention shows up as a flag from the evaluate labeler
    flags = echo_client.post("/v1/impressions", json={"findings": "Large right pleural effusion."}).json()
    assert any(f["observation"] == "Pleural Effusion" for f in flags["consistency_flags"] or [])
    r = echo_client.post("/v1/impressions", json={"findings": FINDINGS, "model": "baseline:normal"})
    assert r.json()["impression"] == "No acute cardiopulmonary abnormality."


def _round_trip(model_cls, data: dict) -> None:
    """`data` is exactly a `model_cls` (the response models forbid extra fields), field for field."""
    assert model_cls.model_validate(data).model_dump(mode="json") == data


def test_every_response_body_is_its_protocol_model(echo_client):
    c = echo_client
    _round_trip(api.HealthResponse, c.get("/health").json())
    _round_trip(api.ModelList, c.get("/v1/models").json())
    _round_trip(api.CompletionResponse, c.post("/v1/completions", json={"prompt": ["a b", "c"]}).json())
    chat = {"messages": [{"role": "user", "content": FINDINGS}]}
    _round_trip(api.ChatCompletionResponse, c.post("/v1/chat/completions", json=chat).json())
    _round_trip(api.ImpressionResponse, c.post("/v1/impressions", json={"findings": FINDINGS}).json())
    _round_trip(api.ErrorResponse, c.post("/v1/impressions", json={"findings": ""}).json())
    for e in sse_events(c.post("/v1/completions", json={"prompt": "x y", "stream": True}).text):
        _round_trip(api.CompletionStreamResponse, e)
    for e in sse_events(c.post("/v1/chat/completions", json={**chat, "stream": True}).text):
        _round_trip(api.ChatCompletionStreamResponse, e)
    events = sse_events(c.post("/v1/impressions", json={"findings": FINDINGS, "stream": True}).text)
    kinds = {"similar_cases": api.SimilarCasesEvent, "delta": api.DeltaEvent, "done": api.DoneEvent}
    for e in events:
        _round_trip(kinds[e["type"]], e)
    # and a body with a field the protocol does not have is refused: the check above can fail
    with pytest.raises(ValidationError):
        api.ImpressionResponse.model_validate({**events[-1], "type": None, "report_text": "x"})


def test_stream_error_events_are_protocol_models():
    with client_for({"echo": EchoModel(delay=0.2)}, timeout_s=0.3) as c:
        wait_ready(c)
        chat = {"messages": [{"role": "user", "content": FINDINGS}], "stream": True}
        for path, body, cls in [("/v1/completions", {"prompt": "a b", "stream": True}, api.StreamError),
                                ("/v1/chat/completions", chat, api.StreamError),
                                ("/v1/impressions", {"findings": FINDINGS, "stream": True}, api.ErrorEvent)]:
            last = sse_events(c.post(path, json=body).text)[-1]
            _round_trip(cls, last)
            assert last["error"]["code"] == "timeout"


@pytest.mark.parametrize("path,body,status,code", [
    ("/v1/impressions", b'{"findings": ""}', 400, "empty_findings"),
    ("/v1/impressions", b'{"findings": " \\n\\t "}', 400, "empty_findings"),
    ("/v1/impressions", b'{"findings": "x"', 400, "invalid_json"),
    ("/v1/impressions", b'{"findings": "caf\xe9"}', 400, "invalid_encoding"),
    ("/v1/impressions", b'{"findings": 12}', 400, "invalid_request"),
    ("/v1/impressions", b'{"findings": ["a"]}', 400, "invalid_request"),
    ("/v1/impressions", b'{"text": "a"}', 400, "invalid_request"),
    ("/v1/impressions", b'"a string"', 400, "invalid_request"),
    ("/v1/impressions", b'{"findings": "a", "model": "gpt-4"}', 404, "model_not_found"),
    ("/v1/impressions", b'{"findings": "a", "preset": "fast"}', 400, "invalid_preset"),
    ("/v1/impressions", b'{"findings": "a", "similar": 1000}', 400, "invalid_request"),
    ("/v1/completions", b'{"prompt": "a", "max_tokens": 100000}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "a", "max_tokens": "5"}', 400, "invalid_request"),
    ("/v1/completions", b'{"prompt": "a", "max_tokens": 0}', 400, "invalid_request"),
    ("/v1/completions", b'{"prompt": "a", "n": 2}', 400, "invalid_request"),
    ("/v1/completions", b'{"prompt": "a", "stream": "yes"}', 400, "invalid_request"),
    ("/v1/completions", b'{"prompt": ""}', 400, "empty_prompt"),
    ("/v1/chat/completions", b'{"messages": []}', 400, "invalid_request"),
    ("/v1/chat/completions", b'{"messages": [{"role": "system", "content": "hi"}]}', 400, "no_user_message"),
])
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(echo_client, path, body, status, code):
    r = echo_client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["type"]
    assert echo_client.post("/v1/impressions", json={"findings": FINDINGS}).status_code == 200


def test_one_megabyte_body_is_413(echo_client):
    big = json.dumps({"findings": "a" * (1 << 20)})
    r = echo_client.post("/v1/impressions", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks():  # no Content-Length: counted while reading
        for _ in range(40):
            yield b"a" * 32768

    r = echo_client.post("/v1/impressions", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert echo_client.get("/nope").json()["error"]["code"] == "not_found"


def test_audit_log_has_sizes_and_hashes_never_text(echo_client):
    import hashlib

    echo_client.post("/v1/impressions", json={"findings": FINDINGS})
    echo_client.post("/v1/chat/completions", json={"stream": True, "messages": [{"role": "user", "content": FINDINGS}]})
    echo_client.post("/v1/impressions", json={"findings": ""})
    text = echo_client.audit.read_text()
    assert "pleural" not in text and "impression of" not in text
    recs = [json.loads(x) for x in text.splitlines()]
    assert recs[0]["input_sha256"] == hashlib.sha256(FINDINGS.encode()).hexdigest()
    assert {"time", "client", "endpoint", "model", "status", "latency_ms", "input_chars", "output_chars"} <= set(recs[0])
    assert recs[1]["endpoint"] == "/v1/chat/completions" and recs[1]["stream"] is True
    assert recs[2]["status"] == 400 and recs[2]["code"] == "empty_findings"


def test_api_key_required_when_set():
    with client_for({"echo": EchoModel()}, api_key="s3cret") as c:
        wait_ready(c)
        assert c.get("/health").status_code == 200  # liveness carries no data
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic s3cret"}):
            r = c.post("/v1/impressions", json={"findings": FINDINGS}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/v1/models").status_code == 401
        ok = c.post("/v1/impressions", json={"findings": FINDINGS}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_refuses_non_loopback_bind_without_key(capsys, monkeypatch):
    monkeypatch.delenv("RADGPT_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--model", "baseline:normal"]) == 2
    assert "refusing to bind 0.0.0.0 without an API key" in capsys.readouterr().err


def _serve_config(*argv: str):
    import argparse

    from radgpt.serve import cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return cli.config_from_args(p.parse_args(list(argv)))


def test_serve_config_layers_and_the_documented_flags(tmp_path, monkeypatch):
    from radgpt.common.net import LOOPBACK_NAMES

    monkeypatch.delenv("RADGPT_API_KEY", raising=False)
    yml = tmp_path / "serve.yaml"
    yml.write_text("models: [runs/a, baseline:nearest]\ntimeout_s: 30\nmax_batch: 8\nport: 9000\n")
    # defaults ← YAML ← flags ← key=value
    cfg = _serve_config("--config", str(yml), "--timeout", "12", "--max-body-kb", "64", "--max-batch", "2",
                        "max_batch=4")
    assert cfg.models == ["runs/a", "baseline:nearest"] and cfg.port == 9000
    assert cfg.timeout_s == 12.0 and cfg.max_batch == 4 and cfg.max_body_bytes == 64 * 1024
    assert cfg.allowed_hosts == LOOPBACK_NAMES and cfg.api_key == ""
    # every flag the docs, benches and tests use still sets its key
    cfg = _serve_config("--model", "m1", "--model", "m2", "--name", "a", "--name", "b", "--port", "8080",
                        "--audit-log", "", "--max-queue", "4", "--batch-wait-ms", "2", "--max-tokens", "64",
                        "--max-prompt-tokens", "512", "--threads", "1", "--backend", "ct2",
                        "--cases", "c.jsonl", "--device", "cpu", "--host", "::1", "--api-key", "k")
    assert (cfg.models, cfg.names, cfg.port, cfg.audit_log) == (["m1", "m2"], ["a", "b"], 8080, "")
    assert (cfg.max_queue, cfg.batch_wait_ms, cfg.max_tokens, cfg.max_prompt_tokens) == (4, 2.0, 64, 512)
    assert (cfg.threads, cfg.backend, cfg.cases, cfg.api_key) == (1, "ct2", "c.jsonl", "k")
    monkeypatch.setenv("RADGPT_API_KEY", "from-env")
    cfg = _serve_config("--host", "10.0.0.5")
    assert cfg.api_key == "from-env" and cfg.allowed_hosts == []  # off loopback: no Host restriction


@pytest.mark.parametrize("argv, message", [
    (["max_bach=3"], "unknown config key 'max_bach'; did you mean max_batch"),
    (["max_batch=0"], "'max_batch' must be at least 1, got 0"),
    (["timeout_s=0"], "'timeout_s' must be more than 0"),
    (["backend=ct3"], "'backend' must be one of ['auto', 'transformers', 'ct2', 'llama.cpp']"),
    (["--model", "a", "--name", "x", "--name", "y"], "2 names for 1 model(s)"),
    (["port"], "expected key=value overrides, got ['port']"),
])
def test_bad_serve_config_is_refused_naming_the_key(argv, message, capsys):
    assert main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err


def test_serve_help_shows_every_config_fields_comment(capsys):
    from radgpt.common.config import field_comments
    from radgpt.serve.config import ServeConfig

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    shown = "".join(capsys.readouterr().out.split())
    comments = field_comments(ServeConfig)
    assert len([c for c in comments.values() if c]) >= 15
    for key, comment in comments.items():
        assert "".join(comment.split()) in shown, key
    for flag in ("--model", "--name", "--timeout", "--audit-log", "--max-body-kb", "--api-key", "--config"):
        assert flag in shown


def test_wait_until_healthy_says_why_a_server_did_not_start():
    import subprocess
    import sys

    from radgpt.common.net import ServerDidNotStart, free_port, wait_until_healthy

    script = "import sys; sys.stderr.write('no model here'); sys.exit(3)"
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    with pytest.raises(ServerDidNotStart, match=r"exited with code 3 before it was healthy; .*\nno model here$"):
        wait_until_healthy(f"http://127.0.0.1:{free_port()}", timeout=30, proc=proc, interval=0.05)
    with pytest.raises(ServerDidNotStart, match=r"not healthy within 0.3 s \(ConnectError\)"):
        wait_until_healthy(f"http://127.0.0.1:{free_port()}", timeout=0.3, interval=0.05)


def test_no_egress_env_turns_hubs_and_telemetry_off(monkeypatch):
    import os

    from radgpt.common.net import no_egress_env

    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
             "DO_NOT_TRACK")
    for var in names:
        monkeypatch.setenv(var, "0")
    no_egress_env()
    assert [os.environ[v] for v in names] == ["1"] * len(names)


def test_a_lower_max_tokens_lowers_the_default_instead_of_refusing_every_request():
    with client_for({"echo": EchoModel()}, max_tokens=3) as c:
        wait_ready(c)
        body = c.post("/v1/impressions", json={"findings": FINDINGS}).json()
        assert body["usage"]["completion_tokens"] == 3 and body["finish_reason"] == "length"
        assert c.post("/v1/impressions", json={"findings": FINDINGS, "max_tokens": 4}).status_code == 400


def test_loopback_server_rejects_foreign_host_header():
    with client_for({"echo": EchoModel()}, allowed_hosts=["127.0.0.1", "localhost"]) as c:
        assert c.get("/health", headers={"Host": "evil.example"}).status_code == 400
        assert c.get("/health", headers={"Host": "127.0.0.1:8000"}).status_code in (200, 503)


def _post_in_thread(c, results, body):
    def go():
        results.append(c.post("/v1/impressions", json=body))
    t = threading.Thread(target=go)
    t.start()
    return t


def test_queue_full_is_429_and_batches_form_across_clients():
    gate = threading.Event()
    model = EchoModel(gate=gate)
    with client_for({"echo": model}, max_queue=4, max_batch=8, batch_wait_ms=1) as c:
        wait_ready(c)
        batcher = c.app.state.radgpt.batchers["echo"]
        results: list = []
        threads = [_post_in_thread(c, results, {"findings": FINDINGS})]
        while not model.batches:  # the worker holds the first request at the gate
            time.sleep(0.01)
        threads += [_post_in_thread(c, results, {"findings": f"{FINDINGS} {i}"}) for i in range(4)]
        while batcher.q.qsize() < 4:
            time.sleep(0.01)
        r = c.post("/v1/impressions", json={"findings": FINDINGS})
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full" and r.headers["Retry-After"]
        gate.set()
        for t in threads:
            t.join(10)
        assert sorted(r.status_code for r in results) == [200] * 5
        assert model.batches == [1, 4]  # the four that waited ran as one batch
        assert c.post("/v1/impressions", json={"findings": FINDINGS}).status_code == 200


def test_timeout_is_504_and_the_row_is_stopped():
    model = EchoModel(delay=0.2)
    with client_for({"echo": model}, timeout_s=0.3) as c:
        wait_ready(c)
        r = c.post("/v1/impressions", json={"findings": FINDINGS})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        r = c.post("/v1/impressions", json={"findings": FINDINGS, "stream": True})
        assert r.text.endswith("data: [DONE]\n\n") and '"timeout"' in r.text


def test_clinician_page_and_assets_are_local(echo_client):
    page = echo_client.get("/")
    assert page.status_code == 200 and 'id="findings"' in page.text
    assert "http://" not in page.text and "https://" not in page.text
    for asset in ("/static/app.js", "/static/app.css"):
        r = echo_client.get(asset)
        assert r.status_code == 200 and "https://" not in r.text and "http://" not in r.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_tiny_model_end_to_end_and_impress_through_the_endpoint(tiny_export, tmp_path, capsys):
    """The real stack: the tiny CTranslate2 export behind uvicorn on loopback; `radgpt impress
    --endpoint` (the OpenAI-compatible backend) against it gives what the model gives directly."""
    import httpx
    import uvicorn

    from radgpt.common.net import free_port, wait_until_healthy
    from radgpt.impress.load import load_model

    direct = load_model(str(tiny_export))
    app = create_app({"tiny": direct}, ServeConfig(audit_log=""))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", timeout=30, interval=0.05)
        out = tmp_path / "o.jsonl"
        rc = main(["impress", FINDINGS, "--endpoint", f"http://127.0.0.1:{port}/v1", "--model", "tiny",
                   "--shots", "2", "--cases", str(tiny_export / "retrieval_cases.jsonl"),
                   "--max-new-tokens", "6", "--out", str(out)])
        assert rc == 0, capsys.readouterr().err
        via_endpoint = json.loads(out.read_text())
        from radgpt.runs.decoding import Decoding

        mine = direct.impress([FINDINGS], Decoding(max_new_tokens=6))[0]
        # the endpoint got the same prompt (same template, same shots) and completed it raw
        assert via_endpoint["provenance"]["backend"] == "openai"
        assert via_endpoint["shot_case_ids"] == mine.shot_ids
        raw = httpx.post(f"http://127.0.0.1:{port}/v1/impressions", json={"findings": FINDINGS, "max_tokens": 6})
        assert raw.json()["impression"] == mine.impression
    finally:
        server.should_exit = True
        thread.join(10)
