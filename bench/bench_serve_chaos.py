"""Chaos load on `radgpt serve`: what careless clients and an attacker send, all at once.

    .venv/bin/python bench/bench_serve_chaos.py                          # the default model, 500 × 16 clients
    .venv/bin/python bench/bench_serve_chaos.py --requests 200 --clients 8 --model runs/my-run

N requests from C concurrent clients to a real server on a loopback port, each drawn (seeded) from:
  ok         well-formed /v1/impressions or /v1/chat/completions, half of them streamed   (~67%)
  timeout    a request whose own timeout_s (0.05–0.5 s) ends it before it is done         (~10%)
  cancel     the client gives up after 0.05–0.6 s (non-streamed)                          (~8%)
  disconnect a stream read for one event, then the connection dropped                      (~5%)
  malformed  bad JSON, 5,000-deep nesting, a lone surrogate, wrong types, text/plain body  (~5%)
  too_long   findings of ~4,000 words: refused by the prompt-token limit                   (~5%)
Meanwhile a watcher polls /health every 0.25 s. Pass: no 5xx but the 504s of `timeout` and 503 of
overload; /health 200 whenever the worker is alive; the worker alive and serving at the end; exactly one
audit line per request sent; p95 latency of the well-formed requests reported (target < 3 s on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from bench_serve import run_clients, start  # noqa: E402 — bench/ is not a package

MALFORMED = [
    (b"{", "application/json"),
    (b"[" * 5000, "application/json"),
    (b'{"findings": "Heart normal \\ud800 lungs clear."}', "application/json"),
    (b'{"findings": 5}', "application/json"),
    (b'{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}', "application/json"),
    (b'{"findings": "x y"}', "text/plain"),
]
KINDS = [("ok", 0.67), ("timeout", 0.10), ("cancel", 0.08), ("disconnect", 0.05), ("malformed", 0.05),
         ("too_long", 0.05)]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))] if xs else 0.0


def one(client: httpx.Client, url: str, kind: str, findings: str, rng: random.Random) -> tuple[str, float]:
    """Send one request of `kind`; (status or what happened, seconds)."""
    t0 = time.perf_counter()
    try:
        if kind == "malformed":
            body, ctype = rng.choice(MALFORMED)
            path = "/v1/chat/completions" if b"messages" in body else "/v1/impressions"
            r = client.post(url + path, content=body, headers={"Content-Type": ctype})
            return str(r.status_code), time.perf_counter() - t0
        body: dict = {"findings": findings}
        if kind == "too_long":
            body["findings"] = " ".join(findings.split() * 200)[:19_000]
        if kind == "timeout":
            body["timeout_s"] = rng.uniform(0.05, 0.5)
        stream = kind == "disconnect" or (kind in ("ok", "timeout") and rng.random() < 0.5)
        body["stream"] = stream
        path = "/v1/impressions"
        if kind == "ok" and rng.random() < 0.25:
            path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": findings}],
                                                  "stream": stream}
        if kind == "cancel":
            try:
                r = client.post(url + path, json=body, timeout=rng.uniform(0.05, 0.6))
                return str(r.status_code), time.perf_counter() - t0
            except httpx.TimeoutException:
                return "cancelled", time.perf_counter() - t0
        if stream:
            with client.stream("POST", url + path, json=body) as r:
                if kind == "disconnect":
                    for _ in r.iter_lines():
                        break
                    return "disconnected", time.perf_counter() - t0
                text = "".join(r.iter_text())
                status = str(r.status_code)
                if r.status_code == 200 and '"code": "timeout"' in text:
                    status = "200+timeout-event"
                elif r.status_code == 200 and '"error"' in text:
                    status = "200+error-event"
                return status, time.perf_counter() - t0
        r = client.post(url + path, json=body)
        return str(r.status_code), time.perf_counter() - t0
    except httpx.HTTPError as e:
        return f"client-error:{type(e).__name__}", time.perf_counter() - t0


def _audit_lines(folder: Path) -> int:
    return sum(1 for f in folder.glob("audit*.jsonl") for line in f.read_text().splitlines() if '"/v1/' in line)


def run_chaos(url: str, findings: list[str], requests: int, clients: int, seed: int, audit_dir: Path) -> dict:
    """The load above against a running server whose audit log is in `audit_dir` (audit*.jsonl)."""
    rng_master = random.Random(seed)
    plan = [(rng_master.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0], rng_master.choice(findings),
             rng_master.random()) for _ in range(requests)]
    lock = threading.Lock()
    nxt = [0]
    results: list[tuple[str, str, float]] = []
    health: list[tuple[int, bool]] = []
    stop = threading.Event()

    def watch():
        with httpx.Client(timeout=5) as c:
            while not stop.is_set():
                try:
                    r = c.get(url + "/health")
                    alive = all(w["alive"] for w in r.json().get("workers", {}).values())
                    health.append((r.status_code, alive))
                except httpx.HTTPError:
                    health.append((0, False))
                time.sleep(0.25)

    def worker():
        with httpx.Client(timeout=120) as c:
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                if i >= requests:
                    return
                kind, text, r = plan[i]
                status, secs = one(c, url, kind, text, random.Random(seed * 100_003 + i))
                with lock:
                    results.append((kind, status, secs))

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    wall = run_clients(worker, clients)
    # the audit line of a request whose client left is written when the server is done with it
    n_audit = 0
    for _ in range(120):
        n_audit = _audit_lines(audit_dir)
        if n_audit >= requests:
            break
        time.sleep(0.25)
    stop.set()
    w.join(2)
    with httpx.Client(timeout=30) as c:
        final = c.post(url + "/v1/impressions", json={"findings": findings[0]})
        h = c.get(url + "/health").json()
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for kind, status, _ in results:
        by_kind[kind][status] += 1
    ok_lat = [s for k, st, s in results if k == "ok" and st == "200"]
    five = sum(1 for k, st, _ in results if st.startswith("5") and not (k == "timeout" and st == "504")
               and st != "503")
    return {"sent": requests, "clients": clients, "wall_s": round(wall, 1),
            "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
            "5xx": five, "503_overload": sum(1 for _, st, _ in results if st == "503"),
            "ok_p50_s": round(pct(ok_lat, 50), 2), "ok_p95_s": round(pct(ok_lat, 95), 2), "ok_n": len(ok_lat),
            "health_polls": len(health), "health_false": sum(1 for st, alive in health if alive and st != 200),
            "health_dead": sum(1 for _, alive in health if not alive),
            "alive_at_end": final.status_code == 200 and all(w["alive"] for w in h["workers"].values()),
            "restarts": sum(w["restarts"] for w in h["workers"].values()),
            "audit_lines": n_audit}


def run_chaos_in_process(model, tmp: Path, requests: int, clients: int, seed: int, **settings) -> dict:
    """The chaos load against `model` behind create_app in a uvicorn thread (what the test suite runs)."""
    import uvicorn

    from radgpt.common.net import free_port, slow_client_guard, wait_until_healthy
    from radgpt.serve.app import create_app
    from radgpt.serve.config import ServeConfig

    app = create_app({"m": model}, ServeConfig(audit_log=str(tmp / "audit.jsonl"), timeout_s=10, **settings))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           http=slow_client_guard(10.0)))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, timeout=30, interval=0.05)
    findings = [json.loads(x)["inputs"] for x in (REPO / "data/openi/clin-summ/validate.jsonl").read_text().splitlines()[:60]]
    try:
        return run_chaos(url, findings, requests, clients, seed, tmp)
    finally:
        server.should_exit = True
        t.join(10)


def main() -> None:

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/radgpt-smollm2-135m")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--server-args", default="", help="extra `radgpt serve` flags")
    args = ap.parse_args()
    findings = [json.loads(x)["inputs"] for x in (REPO / "data/openi/clin-summ/validate.jsonl").read_text().splitlines()]
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start(args.model, args.server_args.split(), Path(tmp))
        try:
            stats = run_chaos(url, findings, args.requests, args.clients, args.seed, Path(tmp))
        finally:
            proc.terminate()
            proc.wait(15)
    print(json.dumps(stats, indent=1))
    print("\n| requests × clients | 5xx | /health wrong | worker alive at end | audit lines / sent | "
          "well-formed p50 / p95 | wall |")
    print("|---|---:|---:|---|---:|---:|---:|")
    print(f"| {stats['sent']} × {stats['clients']} | {stats['5xx']} | {stats['health_false']} | "
          f"{stats['alive_at_end']} | {stats['audit_lines']} / {stats['sent']} | {stats['ok_p50_s']} s / "
          f"{stats['ok_p95_s']} s | {stats['wall_s']} s |")
    print("\nby kind: " + "; ".join(f"{k}: {v}" for k, v in stats["by_kind"].items()))


if __name__ == "__main__":
    main()
