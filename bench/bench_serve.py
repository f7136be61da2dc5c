"""Load on `radgpt serve`: N requests from C concurrent clients to /v1/impressions — status counts (no
5xx allowed, only 200 or 429), p50/p95 latency, throughput; then the same load one-at-a-time
(--max-batch 1) for the batching gain, and once with a tiny queue to show 429s instead of errors.

    .venv/bin/python bench/bench_serve.py                          # the default model, 200 × 16 clients
    .venv/bin/python bench/bench_serve.py --model runs/my-run --requests 200 --clients 16

Each configuration starts its own server (a subprocess on a free loopback port, audit log in a temp
folder). Reported in docs/serve.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: radgpt from this checkout
from radgpt.common.net import ServerDidNotStart, free_port, wait_until_healthy  # noqa: E402


def start(model: str, extra: list[str], tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "radgpt", "serve", "--model", model, "--port", str(port),
           "--audit-log", str(tmp / f"audit-{port}.jsonl"), *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, timeout=300, proc=proc, interval=0.3)
    except ServerDidNotStart as e:
        raise SystemExit(str(e)) from None
    return proc, url


def run_clients(target, clients: int) -> float:
    """Run `target` in `clients` threads at once; the wall time until all are done."""
    t0 = time.perf_counter()
    threads = [threading.Thread(target=target) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def load(url: str, findings: list[str], n: int, clients: int, max_tokens: int) -> dict:
    lock = threading.Lock()
    next_i = [0]
    results: list[tuple[int, float]] = []

    def client():
        with httpx.Client(timeout=300) as c:
            while True:
                with lock:
                    i = next_i[0]
                    if i >= n:
                        return
                    next_i[0] += 1
                t0 = time.perf_counter()
                try:
                    r = c.post(f"{url}/v1/impressions", json={"findings": findings[i % len(findings)],
                                                              "max_tokens": max_tokens, "similar": 3})
                    code = r.status_code
                except httpx.HTTPError:
                    code = 599  # connection-level failure counts as a server error
                with lock:
                    results.append((code, (time.perf_counter() - t0) * 1000))

    wall = run_clients(client, clients)
    ok = sorted(ms for code, ms in results if code == 200)
    codes: dict[int, int] = {}
    for code, _ in results:
        codes[code] = codes.get(code, 0) + 1
    batches = httpx.get(f"{url}/health").json().get("batches", {})
    b = next(iter(batches.values()), {"batches": 0, "rows": 0})

    def pct(q):
        return round(ok[min(len(ok) - 1, round(q / 100 * (len(ok) - 1)))]) if ok else None

    return {"requests": n, "clients": clients, "codes": codes, "p50_ms": pct(50), "p95_ms": pct(95),
            "mean_ms": round(statistics.mean(ok)) if ok else None, "wall_s": round(wall, 1),
            "ok_per_s": round(len(ok) / wall, 1), "server_5xx": sum(v for k, v in codes.items() if k >= 500),
            "mean_batch": round(b["rows"] / max(b["batches"], 1), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "models/radgpt-smollm2-135m"))
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--data", default=str(REPO / "data/openi/clin-summ/validate.jsonl"))
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--small-queue", type=int, default=4, help="max queue of the 429 run (0 = skip it)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    findings = [json.loads(x)["inputs"] for x in Path(args.data).read_text().splitlines() if x.strip()]
    configs = [("dynamic batching (max batch 16, queue 64)", ["--max-batch", "16"]),
               ("one at a time (max batch 1)", ["--max-batch", "1"])]
    if args.small_queue:
        configs.append((f"batching, queue {args.small_queue} (overload → 429)",
                        ["--max-batch", "16", "--max-queue", str(args.small_queue)]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in configs:
            proc, url = start(args.model, ["--backend", args.backend, "--threads", str(args.threads), *extra],
                              Path(tmp))
            try:
                load(url, findings, 8, 2, args.max_tokens)  # warm-up
                rows.append({"config": label, **load(url, findings, args.requests, args.clients, args.max_tokens)})
            finally:
                proc.terminate()
                proc.wait(30)
    la = os.getloadavg()
    print(f"\n{args.model}: {args.requests} requests from {args.clients} concurrent clients to /v1/impressions "
          f"(max_tokens {args.max_tokens}; {os.cpu_count()} cores, load avg {la[0]:.1f})\n")
    print("| server | status codes | 5xx | p50 ms | p95 ms | ok/s | mean batch |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        codes = ", ".join(f"{k}×{v}" for k, v in sorted(r["codes"].items()))
        print(f"| {r['config']} | {codes} | {r['server_5xx']} | {r['p50_ms']} | {r['p95_ms']} | {r['ok_per_s']} "
              f"| {r['mean_batch']} |")
    if len(rows) >= 2 and rows[1]["ok_per_s"]:
        print(f"\nbatching gain: {rows[0]['ok_per_s'] / rows[1]['ok_per_s']:.2f}× throughput "
              f"({rows[0]['ok_per_s']} vs {rows[1]['ok_per_s']} impressions/s)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 1 if any(r["server_5xx"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
