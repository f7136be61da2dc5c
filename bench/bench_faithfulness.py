"""Faithful impressions: ROUGE-L and the faithfulness measures of `radgpt evaluate`, for the shipped model
through the default path and for the nearest-prior-case baseline, side by side (OpenI validate).

    .venv/bin/python bench/bench_faithfulness.py                        # default model vs baseline:nearest
    .venv/bin/python bench/bench_faithfulness.py --backends transformers,ct2 --latency-n 30
    .venv/bin/python bench/bench_faithfulness.py --impress-args=--no-repair   # the model's text as generated

Each model's impressions come from the command a user runs — `radgpt impress FILE --field inputs` with its
default backend and batch size — in a subprocess, so the figures are what a user gets. Missed-abnormal: the
reference states a finding, the impression states none (labeler). Finding P/R/F1: stated findings against the
reference's. Unsupported: findings an impression states that its findings text never states; the references'
own rate is the floor. Reported in the README and the model card.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def impress_file(model: str | None, data: Path, out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "radgpt", "impress", str(data), "--field", "inputs", "--id-field", "idx",
           "--out", str(out)] + (["--model", model] if model else []) + extra
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def latency(model: str | None, backend: str, findings: list[str], n: int) -> float:
    from radgpt.impress.load import load_model

    m = load_model(model, backend=backend)  # as `impress "text"` and `serve` load it for single impressions
    for f in findings[:2]:
        m.impress([f])
    lat = []
    for f in findings[:n]:
        t0 = time.perf_counter()
        m.impress([f])
        lat.append((time.perf_counter() - t0) * 1000)
    return statistics.median(lat)


def score(data: Path, preds_path: Path) -> dict:
    from radgpt.findings.faithfulness import faithfulness
    from radgpt.finetune.train import rouge_summary

    rows = [json.loads(x) for x in data.read_text().splitlines() if x.strip()]
    preds = {str(p["id"]): p["impression"] for p in map(json.loads, preds_path.read_text().splitlines())}
    refs = [r["target"] for r in rows]
    hyps = [preds[str(r["idx"])] for r in rows]
    out = rouge_summary(refs, hyps)
    out.update(faithfulness(refs, hyps, [r["inputs"] for r in rows])["summary"])
    out["with_placeholder"] = sum("XXXX" in h for h in hyps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="run folder (default: the shipped model)")
    ap.add_argument("--data", default=str(REPO / "data/openi/clin-summ/validate.jsonl"))
    ap.add_argument("--impress-args", default="", help="extra `radgpt impress` flags for --model (not the baseline)")
    ap.add_argument("--backends", default="auto",
                    help="comma-separated `impress --backend` values, one row each (auto = what a user gets: "
                         "the CTranslate2 export if `radgpt export` made one, else transformers)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--latency-n", type=int, default=0, help="single impressions timed (0 = skip)")
    ap.add_argument("--save", help="keep each model's impressions JSONL in this folder")
    args = ap.parse_args()
    data = Path(args.data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        name = args.model or "radgpt-smollm2-135m"
        runs = [(f"{name} ({b})", args.model, shlex.split(args.impress_args) + ["--backend", b])
                for b in args.backends.split(",")]
        if not args.no_baseline:
            runs.append(("baseline:nearest", "baseline:nearest", []))
        for label, model, extra in runs:
            out = Path(args.save or tmp) / f"{label.replace('/', '_').replace(' ', '_')}.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            secs = impress_file(model, data, out, extra)
            row = {"model": label, "flags": " ".join(extra), **score(data, out), "seconds": round(secs, 1)}
            if args.latency_n and model != "baseline:nearest":
                findings = [json.loads(x)["inputs"] for x in data.read_text().splitlines() if x.strip()]
                row["p50_ms"] = round(latency(model, extra[-1], findings, args.latency_n))
            rows.append(row)
            print("row:", json.dumps(row), flush=True)
    keys = [("rougeL", "R-L"), ("rougeL_abnormal", "R-L abn"), ("missed_abnormal", "missed-abnormal %"),
            ("finding_precision", "finding P"), ("finding_recall", "finding R"), ("finding_f1", "finding F1"),
            ("unsupported_rate", "unsupported %"), ("unsupported_rate_references", "refs' unsupported %"),
            ("with_placeholder", "XXXX"), ("p50_ms", "p50 ms")]
    print(f"\nOpenI {data.name}: {rows[0]['n']} pairs, {rows[0]['n_abnormal']} whose reference states a finding\n")
    print("| model | " + " | ".join(h for _, h in keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for r in rows:
        name = r["model"] + (f" `{r['flags']}`" if r["flags"] else "")
        print(f"| {name} | " + " | ".join(str(r.get(k, "")) for k, _ in keys) + " |")


if __name__ == "__main__":
    main()
