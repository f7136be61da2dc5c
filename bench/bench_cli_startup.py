"""One `radgpt impress "…"` call, whole process: what a radiologist's script or a RIS hook pays per report.

    .venv/bin/python bench/bench_cli_startup.py                      # this tree, 5 runs
    .venv/bin/python bench/bench_cli_startup.py --compare 0e03154    # side by side with an earlier commit

Each run is a fresh `python -m radgpt impress FINDINGS` process (the default model, default backend); the
table gives the median, min and max wall time and the peak RSS. The first run of a tree also shows the cost
of what is cached after it (the retrieval index, the CTranslate2 export). `--compare REV` checks REV out into a
temporary git worktree and times it with the same interpreter and cache, so both columns ran on the same
machine minutes apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = "Heart size normal. Lungs are clear. Small left pleural effusion."


def one_run(tree: Path) -> tuple[float, float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "radgpt", "impress", FINDINGS], cwd=tree, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"radgpt impress failed in {tree} (status {status})")
    impression = out.split('"impression": "', 1)[-1].split('"', 1)[0]
    return wall, usage.ru_maxrss / 1024, impression


def measure(tree: Path, runs: int) -> dict:
    first = one_run(tree)
    rest = [one_run(tree) for _ in range(runs)]
    walls = [r[0] for r in rest]
    return {"first": first[0], "median": statistics.median(walls), "min": min(walls), "max": max(walls),
            "rss": max(r[1] for r in rest), "impression": rest[-1][2]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--compare", metavar="REV", help="also time this git revision (a temporary worktree)")
    args = ap.parse_args()
    rows = [("this tree", measure(ROOT, args.runs))]
    if args.compare:
        with tempfile.TemporaryDirectory() as tmp:
            wt = Path(tmp) / "rev"
            subprocess.run(["git", "worktree", "add", "-q", "--detach", str(wt), args.compare], cwd=ROOT, check=True)
            try:
                rows.append((args.compare, measure(wt, args.runs)))
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, check=False)
    print(f"\nradgpt impress \"{FINDINGS}\" — whole process, {args.runs} runs after a first one "
          f"({os.cpu_count()} cores)\n")
    print("| tree | first run (s) | median (s) | min (s) | max (s) | peak RSS (MB) | impression |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, r in rows:
        print(f"| {name} | {r['first']:.2f} | {r['median']:.2f} | {r['min']:.2f} | {r['max']:.2f} | {r['rss']:.0f} "
              f"| {r['impression']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
