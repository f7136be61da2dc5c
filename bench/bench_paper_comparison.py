"""The Radiology-GPT paper's comparison, offline: radgpt (the shipped adapter) against its own base model
(SmolLM2-135M-Instruct) zero-shot and few-shot, the nearest prior case and the constant normal sentence.

    .venv/bin/python bench/bench_paper_comparison.py                      # OpenI validate (341), ~30-60 min here
    .venv/bin/python bench/bench_paper_comparison.py --n 20               # the first 20 cases, a smoke run
    .venv/bin/python bench/bench_paper_comparison.py --raw --save out/paper --evaluate out/paper/eval

Each model's impressions come from the command a user runs (`radgpt impress FILE --field inputs --id-field idx
--model ...`, in a subprocess; docs/paper_comparison.md lists them); the table has ROUGE-L and the faithfulness
measures of bench/bench_faithfulness.py (R-L on abnormal references, missed-abnormal, finding F1, unsupported).
Language models go through impress's faithfulness repair, as any LM does by default. `--raw` adds each LM's
text as generated: then each LM is run once with `--no-repair` and its repaired text is derived with
radgpt.impress.model.finish, the function impress itself applies (one generation per model instead of two).
`--evaluate OUT` also runs `radgpt evaluate` on all prediction files (CIs, paired tests, report.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
VALIDATE = REPO.parent / "shared/data/openi/clin-summ/validate.jsonl"
BASE = "packaged:smollm2-135m-instruct"


def models(base: str, shots: int, backend: str) -> list[tuple[str, list[str], bool]]:
    """(name, impress flags, is a language model)."""
    short = base.split(":", 1)[-1].split("/")[-1].removesuffix(".gguf")
    return [("radgpt", [], True),  # the shipped adapter through the default path (--model omitted)
            (f"{short} 0-shot", ["--model", base, "--backend", backend], True),
            (f"{short} {shots}-shot", ["--model", base, "--backend", backend, "--shots", str(shots)], True),
            ("nearest prior case", ["--model", "baseline:nearest"], False),
            ("normal sentence", ["--model", "baseline:normal"], False)]


def impress(data: Path, out: Path, flags: list[str]) -> float:
    cmd = [sys.executable, "-m", "radgpt", "impress", str(data), "--field", "inputs", "--id-field", "idx",
           "--out", str(out), *flags]
    print("$ radgpt " + " ".join(cmd[3:]), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def repaired(data: Path, raw: Path, out: Path) -> None:
    """`raw` (impress --no-repair) as impress writes it with repair: the same radgpt.impress.model.finish."""
    from radgpt.impress.model import finish

    findings = {str(r["idx"]): r["inputs"] for r in map(json.loads, data.read_text().splitlines())}
    with open(out, "w", encoding="utf-8") as f:
        for line in raw.read_text().splitlines():
            rec = json.loads(line)
            text, repairs, flags = finish(findings[rec["id"]], rec["impression"], [], True)
            f.write(json.dumps({**rec, "impression": text, "repairs": repairs, "consistency_flags": flags,
                                "provenance": {**rec["provenance"], "repair": "derived from --no-repair"}},
                               ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(VALIDATE), help="clin-summ JSONL {idx, inputs, target}")
    ap.add_argument("--n", type=int, default=0, help="only the first N cases (0 = all)")
    ap.add_argument("--base", default=BASE, help="the base model (default: radgpt's own, packaged)")
    ap.add_argument("--shots", type=int, default=3, help="retrieved examples for the few-shot row (default 3)")
    ap.add_argument("--backend", default="ct2", help="impress --backend for the base model (default ct2: the "
                    "engine radgpt's default path uses for the shipped adapter)")
    ap.add_argument("--raw", action="store_true", help="also each LM's text before the faithfulness repair")
    ap.add_argument("--save", help="keep the prediction files in this folder")
    ap.add_argument("--evaluate", metavar="OUT", help="also run `radgpt evaluate` on the prediction files into OUT")
    args = ap.parse_args()
    from bench_faithfulness import score

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.save or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        data = Path(args.data)
        if args.n:
            data = folder / f"{Path(args.data).stem}-first{args.n}.jsonl"
            data.write_text("".join(Path(args.data).read_text().splitlines(keepends=True)[: args.n]))
        rows, files = [], {}
        for name, flags, lm in models(args.base, args.shots, args.backend):
            path = folder / (name.replace(" ", "_") + ".jsonl")
            if lm and args.raw:
                raw = folder / (name.replace(" ", "_") + "_raw.jsonl")
                secs = impress(data, raw, [*flags, "--no-repair"])
                repaired(data, raw, path)
                todo = [(name, path, "repaired"), (f"{name}, raw", raw, "--no-repair")]
            else:
                secs = impress(data, path, flags)
                todo = [(name, path, "repaired" if lm else "")]
            for label, p, how in todo:
                files[label] = p
                row = {"model": label, "how": how, **score(data, p), "seconds": round(secs, 1)}
                rows.append(row)
                print("row:", json.dumps(row), file=sys.stderr, flush=True)
        keys = [("rougeL", "ROUGE-L"), ("rougeL_abnormal", "R-L abnormal"), ("missed_abnormal", "missed-abnormal %"),
                ("finding_f1", "finding F1"), ("unsupported_rate", "unsupported %"), ("seconds", "impress s")]
        first = rows[0]
        print(f"\nOpenI {Path(args.data).name}{f' (first {args.n})' if args.n else ''}: {first['n']} pairs, "
              f"{first['n_abnormal']} whose reference states a finding; references' own unsupported rate "
              f"{first.get('unsupported_rate_references')}%\n")
        print("| model | " + " | ".join(h for _, h in keys) + " |")
        print("|---|" + "---:|" * len(keys))
        for r in rows:
            print(f"| {r['model']} | " + " | ".join(str(r.get(k, "")) for k, _ in keys) + " |")
        if args.evaluate:
            cmd = [sys.executable, "-m", "radgpt", "evaluate", "--refs", str(data), "--out", args.evaluate,
                   "--no-html", "--reference", "radgpt"]
            for label, p in files.items():
                cmd += ["--pred", f"{label.replace(' ', '-').replace(',', '')}={p}"]
            print("\n$ radgpt " + " ".join(cmd[3:]), flush=True)
            subprocess.run(cmd, cwd=REPO, check=True)


if __name__ == "__main__":
    main()
