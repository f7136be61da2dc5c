"""Impression latency and batch throughput: llama.cpp (GGUF q8_0) and CTranslate2 int8 vs transformers,
same model, same prompts (retrieved shots included), on OpenI validate — side by side, with ROUGE so a
speed-up that costs quality would show.

    .venv/bin/python bench/bench_impress.py                                   # the default model
    .venv/bin/python bench/bench_impress.py --backends llama.cpp,ct2          # the two fast backends
    .venv/bin/python bench/bench_impress.py --model runs/my-run --threads 2 --latency-n 40

Latency = one findings text end to end (retrieval, prompt, generation), one at a time, after warm-up.
Throughput = all validate findings through `impress` in batches. The CT2 / GGUF export is made (once, into
the radgpt cache) if missing; llama.cpp needs llama-cpp-python installed. Reported in docs/serve.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def bench(model, batch_model, findings, refs, latency_n, batch_size, decoding, rows_out):
    """`model` as `impress`/`serve` load it for single impressions, `batch_model` as for a batch file."""
    from radgpt.finetune.train import rouge_summary

    for f in findings[:2]:  # warm-up
        model.impress([f], decoding)
    lat = []
    for f in findings[:latency_n]:
        t0 = time.perf_counter()
        model.impress([f], decoding)
        lat.append((time.perf_counter() - t0) * 1000)
    model = batch_model
    model.impress(findings[:2], decoding)
    t0 = time.perf_counter()
    results = []
    for s in range(0, len(findings), batch_size):
        results += model.impress(findings[s:s + batch_size], decoding)
    secs = time.perf_counter() - t0
    preds = [r.impression for r in results]
    rouge = rouge_summary(refs, preds)
    rows_out.append({"model": model.name, "backend": model.provenance().get("backend"),
                     "p50_ms": round(pct(lat, 50)), "p95_ms": round(pct(lat, 95)), "n_latency": len(lat),
                     "throughput": round(len(findings) / secs, 1), "n": len(findings), "batch": batch_size,
                     "rougeL": rouge["rougeL"], "rougeL_abnormal": rouge["rougeL_abnormal"],
                     "mean_new_tokens": round(statistics.mean(r.completion_tokens for r in results), 1),
                     "load_avg": round(os.getloadavg()[0], 1)})
    print("row:", json.dumps(rows_out[-1]), flush=True)  # partial results survive an interrupted run
    return preds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "models/radgpt-smollm2-135m"))
    ap.add_argument("--data", default=str(REPO / "data/openi/clin-summ/validate.jsonl"))
    ap.add_argument("--backends", default="ct2,transformers")
    ap.add_argument("--latency-n", type=int, default=30)
    ap.add_argument("--limit", type=int, default=0, help="only the first N validate findings (0 = all)")
    ap.add_argument("--batch-size", type=int, default=341, help="findings per impress call (the CLI's --batch-size)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="0 = all cores")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from radgpt.impress.load import load_model
    from radgpt.runs.decoding import Decoding

    rows = [json.loads(x) for x in Path(args.data).read_text().splitlines() if x.strip()]
    if args.limit:
        rows = rows[: args.limit]
    findings, refs = [r["inputs"] for r in rows], [r["target"] for r in rows]
    decoding = Decoding(max_new_tokens=args.max_new_tokens)
    out: list[dict] = []
    for b in args.backends.split(","):
        model = load_model(args.model, backend=b.strip(), threads=args.threads, log=print)
        batch_model = load_model(args.model, backend=b.strip(), threads=args.threads, batch=True) \
            if model.provenance().get("backend") in ("ctranslate2", "llama.cpp") else model
        bench(model, batch_model, findings, refs, args.latency_n, args.batch_size, decoding, out)
        del model, batch_model
    nearest = load_model("baseline:nearest")
    bench(nearest, nearest, findings, refs, args.latency_n, args.batch_size, decoding, out)
    load = os.getloadavg()
    print(f"\n{args.model}  ({len(findings)} validate findings, greedy, max {args.max_new_tokens} new tokens, "
          f"threads {args.threads or os.cpu_count()}, {os.cpu_count()} cores, load avg {load[0]:.1f})\n")
    print("| model | backend | p50 ms | p95 ms | impressions/s (batch) | new tokens | R-L | R-L abnormal |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in out:
        print(f"| {r['model']} | {r['backend']} | {r['p50_ms']} | {r['p95_ms']} | {r['throughput']} ({r['batch']}) "
              f"| {r['mean_new_tokens']} | {r['rougeL']} | {r['rougeL_abnormal']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
