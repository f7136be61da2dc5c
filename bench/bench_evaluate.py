"""`radgpt evaluate` speed: 1,000 predictions, every offline metric, CIs, tests, subgroups and the HTML report.

    .venv/bin/python bench/bench_evaluate.py            # needs ../shared/data/openi

References: the first 1,000 pairs of clin-summ train.jsonl. Two prediction sets, so the paired tests run
too: "self" (every other prediction is the reference, the rest another report's impression) and "normal"
(the constant normal sentence). Times the whole CLI as a user runs it (a fresh process: imports, MiniLM
load, metrics, 1,000 bootstrap resamples, 1,000 permutations per test, plots) for "self" alone and for
both models, 3 runs each, then prints the per-stage breakdown of one model in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO.parent / "shared" / "data" / "openi" / "clin-summ" / "train.jsonl"
N = 1000


def main() -> int:
    if not TRAIN.is_file():
        print(f"{TRAIN} not found", file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in TRAIN.read_text(encoding="utf-8").splitlines()[:N]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        refs, self_p, normal_p = tmp / "refs.jsonl", tmp / "self.jsonl", tmp / "normal.jsonl"
        refs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        self_p.write_text("".join(json.dumps({"idx": r["idx"], "prediction": r["target"] if k % 2 else
                                              rows[(k + 7) % N]["target"]}) + "\n" for k, r in enumerate(rows)),
                          encoding="utf-8")
        normal_p.write_text("".join(json.dumps({"idx": r["idx"], "prediction": "No acute cardiopulmonary abnormality."})
                                    + "\n" for r in rows), encoding="utf-8")
        cli = [sys.executable, "-m", "radgpt", "evaluate", "--refs", str(refs), "--metrics", "offline"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        timings = {}
        for label, preds in (("1 model", [f"self={self_p}"]), ("2 models + paired tests", [f"self={self_p}", f"normal={normal_p}"])):
            args = cli + [a for p in preds for a in ("--pred", p)] + ["--out", str(tmp / label.replace(" ", "_"))]
            runs = []
            for _ in range(3):  # the machine is shared: report the median and the spread of 3 runs
                t0 = time.perf_counter()
                subprocess.run(args, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                runs.append(time.perf_counter() - t0)
            timings[label] = sorted(runs)

        # the stages, in-process, for one model
        sys.path.insert(0, str(REPO))
        from radgpt.evaluate import metrics, stats
        ref_texts = [r["target"] for r in rows]
        hyps = [json.loads(line)["prediction"] for line in self_p.read_text().splitlines()]
        stages = {}
        results = {}
        for group in metrics.OFFLINE:
            t0 = time.perf_counter()
            res, _ = metrics.compute_results(ref_texts, hyps, [group])
            results.update(res)
            stages[f"metric group {group}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        counts = stats.bootstrap_counts(N, 1000, 0)
        for r in results.values():
            stats.bootstrap_ci(r, counts)
        stages["bootstrap CIs, all metrics"] = time.perf_counter() - t0

    threads = os.cpu_count()
    print(f"radgpt evaluate, {N} predictions, all offline metrics, 1,000 bootstrap resamples "
          f"(machine: {threads} cores)\n")
    print(f"load average after the runs (other users included): {os.getloadavg()[0]:.1f}\n")
    print("| run (fresh CLI process, wall clock) | median s | min–max of 3 |\n|---|---|---|")
    for k, v in timings.items():
        print(f"| {k} | {v[1]:.1f} | {v[0]:.1f}–{v[2]:.1f} |")
    print("\n| stage (one model, in-process) | seconds |\n|---|---|")
    for k, v in stages.items():
        print(f"| {k} | {v:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
