"""Does an impression depend on what else is in the batch? (#13)

    .venv/bin/python bench/bench_batch_invariance.py                                  # ct2 + llama.cpp, 341 findings
    .venv/bin/python bench/bench_batch_invariance.py --backends transformers --limit 60
    .venv/bin/python bench/bench_batch_invariance.py --serve --limit 64               # serve: 16 clients vs one at a time

For each backend the same OpenI validate findings are impressed (no repair: the model's own text) in calls of
each `--batch-sizes` size, in the file's order and also shuffled (a row meets other neighbours), and the texts
are compared with those of batch size 1. `--serve` starts `radgpt serve` on the default model and sends the
findings once one at a time and once from 16 concurrent clients (the server batches them), and compares.
Prints one table; a row with 0 differing is batch-invariant on this data.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VALIDATE = REPO / "data/openi/clin-summ/validate.jsonl"


def findings(limit: int) -> list[str]:
    rows = [json.loads(line) for line in VALIDATE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["inputs"] for r in rows][:limit or None]


def impress_all(model, texts: list[str], batch: int, order: list[int]) -> tuple[list[str], float]:
    from radgpt.runs.decoding import PRESETS

    out = [""] * len(texts)
    t0 = time.perf_counter()
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        for i, r in zip(idx, model.impress([texts[i] for i in idx], PRESETS["greedy"], similar=0, repair=False)):
            out[i] = r.impression
    return out, time.perf_counter() - t0


def bench_backend(backend: str, texts: list[str], sizes: list[int], model_path: str | None) -> list[dict]:
    from radgpt.impress.load import load_model

    model = load_model(model_path, backend=backend, batch=True)
    shuffled = list(range(len(texts)))
    random.Random(0).shuffle(shuffled)
    ref, secs = impress_all(model, texts, 1, list(range(len(texts))))
    rows = [{"backend": model.provenance().get("backend", backend), "run": "batch 1", "n": len(texts), "differ": 0,
             "per_s": len(texts) / secs}]
    for b in sizes:
        for name, order in (("in order", list(range(len(texts)))), ("shuffled", shuffled)):
            got, secs = impress_all(model, texts, b, order)
            diff = [i for i, (x, y) in enumerate(zip(ref, got)) if x != y]
            rows.append({"backend": rows[0]["backend"], "run": f"batch {b}, {name}", "n": len(texts),
                         "differ": len(diff), "per_s": len(texts) / secs,
                         "example": (ref[diff[0]], got[diff[0]]) if diff else None})
    model.close()
    return rows


def bench_serve(texts: list[str], clients: int, port: int) -> list[dict]:
    import httpx

    from radgpt.common.net import wait_until_healthy

    proc = subprocess.Popen([sys.executable, "-m", "radgpt", "serve", "--port", str(port), "--audit-log", ""],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, timeout=300, proc=proc)
        client = httpx.Client(timeout=300)

        def one(text: str) -> str:
            r = client.post(f"{url}/v1/impressions", json={"findings": text, "repair": False, "similar": 0})
            r.raise_for_status()
            return r.json()["impression"]

        t0 = time.perf_counter()
        alone = [one(t) for t in texts]
        t_alone = time.perf_counter() - t0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            together = list(pool.map(one, texts))
        t_together = time.perf_counter() - t0
        batches = httpx.get(f"{url}/health").json().get("batches", {})
    finally:
        proc.terminate()
        proc.wait(30)
    diff = [i for i, (x, y) in enumerate(zip(alone, together)) if x != y]
    return [{"backend": "serve (default)", "run": "one at a time", "n": len(texts), "differ": 0,
             "per_s": len(texts) / t_alone},
            {"backend": "serve (default)", "run": f"{clients} concurrent clients ({batches})", "n": len(texts),
             "differ": len(diff), "per_s": len(texts) / t_together,
             "example": (alone[diff[0]], together[diff[0]]) if diff else None}]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="ct2,llama.cpp", help="comma list: ct2, llama.cpp, transformers")
    ap.add_argument("--batch-sizes", default="16,512", help="compared with batch size 1")
    ap.add_argument("--limit", type=int, default=0, help="first N validate findings (0 = all 341)")
    ap.add_argument("--model", default=None, help="run or export folder (default: the shipped model)")
    ap.add_argument("--serve", action="store_true", help="also: serve, concurrent clients vs one at a time")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--port", type=int, default=8791)
    args = ap.parse_args()
    from radgpt.common.net import no_egress_env

    no_egress_env()  # inherited by the serve subprocess too
    texts = findings(args.limit)
    sizes = [int(x) for x in args.batch_sizes.split(",") if x]
    rows = []
    for b in [x for x in args.backends.split(",") if x]:
        rows += bench_backend(b, texts, sizes, args.model)
    if args.serve:
        rows += bench_serve(texts, args.clients, args.port)
    print("\n| backend | run | findings | differ from batch 1 / one at a time | impressions/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['run']} | {r['n']} | {r['differ']} | {r['per_s']:.1f} |")
    for r in rows:
        if r.get("example"):
            print(f"\n{r['backend']}, {r['run']}: e.g.\n  alone:    {r['example'][0]}\n  together: {r['example'][1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
