"""`radgpt prepare` at MIMIC-CXR scale: wall time and peak RSS on synthetic MIMIC-style report trees.

    .venv/bin/python bench/bench_prepare.py                 # 10,000 and 227,000 reports
    .venv/bin/python bench/bench_prepare.py --sizes 10000   # one size

Writes `files/pNN/pNNNNNNNN/sNNNNNNNN.txt` trees under bench/out/ (cached between runs) from varied
templates — MIMIC layout with wrapped lines and `___` PHI, addenda behind a line of underscores,
header variants and misspellings, view-name headers, no-header reports, a combined
FINDINGS AND IMPRESSION block, and a few malformed files (empty, non-UTF-8) — then runs
`radgpt prepare` on each tree in a fresh process and reports seconds, reports/s and peak RSS.
The alternative it is measured against: the same pass with an in-memory approach would grow with
the corpus; here peak RSS at 10k vs 227k shows whether memory stays flat.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"

FINDINGS = [
    "The lungs are clear without focal consolidation.", "There is no pleural effusion or pneumothorax.",
    "Heart size is normal.", "The cardiomediastinal silhouette is within normal limits.",
    "Mild cardiomegaly is stable.", "There is a small left pleural effusion.",
    "Right lower lobe opacity may reflect atelectasis or pneumonia.", "Moderate pulmonary edema is new since ___.",
    "Endotracheal tube terminates 4 cm above the carina.", "A right internal jugular catheter ends in the SVC.",
    "There are mild degenerative changes in the thoracic spine.", "No free air under the diaphragm.",
    "Hilar contours are unremarkable.", "Left basilar atelectasis has improved.",
    "Large right pneumothorax with mediastinal shift.", "Calcified granuloma in the left upper lobe.",
    "Sternotomy wires are intact.", "The aorta is tortuous and calcified.",
]
IMPRESSIONS = [
    "No acute cardiopulmonary process.", "Small left pleural effusion.", "Moderate pulmonary edema.",
    "Right lower lobe pneumonia in the appropriate clinical setting.", "Lines and tubes in standard position.",
    "Large right pneumothorax. Findings discussed with Dr. ___ at 10:15 on ___.", "Stable mild cardiomegaly.",
    "1. Left basilar atelectasis. 2. No pneumothorax.",
]
IMPRESSION_HEADERS = ["IMPRESSION", "IMPRESSION", "IMPRESSION", "CONCLUSION", "IMPRESSON", "IMPRESSIONS"]
FINDINGS_HEADERS = ["FINDINGS", "FINDINGS", "FINDINGS", "PA AND LATERAL VIEWS OF THE CHEST",
                    "PORTABLE AP VIEW OF THE CHEST", "FINDING"]
INDICATION_HEADERS = ["INDICATION", "INDICATION", "CLINICAL HISTORY", "HISTORY", "REASON FOR EXAM"]


def _wrap(text: str) -> list[str]:
    return [" " + line for line in textwrap.wrap(text, 78, break_on_hyphens=False)]


def make_report(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.002:
        return b""  # empty file
    if kind < 0.004:
        return "FINDINGS: caf\xe9 lungs clear.\nIMPRESSION: none".encode("latin-1")  # not UTF-8
    findings = " ".join(rng.sample(FINDINGS, rng.randint(2, 7)))
    impression = rng.choice(IMPRESSIONS)
    lines = [" " * 33 + "FINAL REPORT"]
    if kind < 0.05:  # no headers at all: the fallback takes the last paragraph
        return ("\n".join(lines + _wrap(findings) + [" "] + _wrap(impression)) + "\n").encode()
    if kind < 0.10:
        lines = [" " * 33 + "ADDENDUM", *_wrap("Findings were communicated to Dr. ___ by telephone at ___."),
                 " " + "_" * 78, *lines]
    lines += [" EXAMINATION:  CHEST (PA AND LAT)", " ",
              f" {rng.choice(INDICATION_HEADERS)}:  ___ year old with cough  // ?pna", " ",
              " TECHNIQUE:  Chest PA and lateral", " ", " COMPARISON:  ___", " "]
    if kind < 0.13:
        lines += [" FINDINGS AND IMPRESSION:", " ", *_wrap(findings), " ", *_wrap(impression)]
    else:
        lines += [f" {rng.choice(FINDINGS_HEADERS)}:", " ", *_wrap(findings), " ",
                  f" {rng.choice(IMPRESSION_HEADERS)}:", " ", *_wrap(impression)]
    return ("\n".join(lines) + "\n").encode()


def build_tree(n: int, seed: int = 0) -> Path:
    root = OUT / f"mimic-{n}"
    done = root / ".complete"
    if done.exists():
        return root
    rng = random.Random(seed)
    files = root / "files"
    subject = 10_000_000
    written = 0
    while written < n:
        subject += rng.randint(1, 50)
        pdir = files / f"p{str(subject)[:2]}" / f"p{subject}"
        pdir.mkdir(parents=True, exist_ok=True)
        for _ in range(min(rng.randint(1, 6), n - written)):  # ~3.5 studies per patient, as in MIMIC
            study = 50_000_000 + rng.randint(0, 9_999_999)
            (pdir / f"s{study}.txt").write_bytes(make_report(rng))
            written += 1
    done.write_text(str(n))
    return root


def run_prepare(tree: Path) -> dict:
    out = OUT / f"prepared-{tree.name}"
    cmd = [sys.executable, "-m", "radgpt", "prepare", str(tree), "--out", str(out), "--quiet", "--force"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    secs = time.perf_counter() - t0  # includes interpreter start-up and imports
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"secs": secs, "peak_mb": summary["peak_rss_mb"], "worker_mb": summary.get("peak_rss_worker_mb", 0),
            "summary": summary}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,227000")
    args = ap.parse_args()
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        t0 = time.perf_counter()
        tree = build_tree(n)
        print(f"corpus of {n:,} reports ready in {time.perf_counter() - t0:.0f} s: {tree}", file=sys.stderr)
        r = run_prepare(tree)
        s = r["summary"]
        recs = sum(d["records"] for d in s["splits"].values())
        rows.append((n, r["secs"], n / r["secs"], r["peak_mb"], r["worker_mb"], recs, s["skipped_total"],
                     s["unreadable"]))
    print(f"\nradgpt prepare on synthetic MIMIC-CXR trees ({os.cpu_count()} cores)\n")
    print("| reports | seconds | reports/s | peak RSS main (MB) | peak RSS per worker (MB) | records out | skipped "
          "| unreadable |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, secs, rate, mb, wmb, recs, skipped, bad in rows:
        print(f"| {n:,} | {secs:.1f} | {rate:,.0f} | {mb:.0f} | {wmb:.0f} | {recs:,} | {skipped:,} | {bad:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
