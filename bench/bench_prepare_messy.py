"""`radgpt prepare` on messy hospital exports: does it find the columns and the right sections, unaided?

    .venv/bin/python bench/bench_prepare_messy.py                        # 3 exports × 200 reports
    .venv/bin/python bench/bench_prepare_messy.py --all-variants --show 5  # every variant, seed 0
    .venv/bin/python bench/bench_prepare_messy.py --exports default:0 random:7 --n 500
    .venv/bin/python bench/bench_prepare_messy.py --csv export.csv --gold export.gold.json
    .venv/bin/python bench/bench_prepare_messy.py --write bench/out/messy  # only write CSV + gold JSON

Each export comes from tests/messy_exports.py: a RIS/PACS-style CSV (one row per exam, the whole report
in one column, Windows bytes: CRLF, quoted multi-line fields, a few cp1252 rows, one or two undecodable
rows, repeat patients) with a gold answer per row. `radgpt prepare EXPORT --out DIR` runs in a fresh
process with NO column flags (`--force` only if its --help offers it), then its records/*.jsonl and
skipped.jsonl (records skipped for a reason keep their parse in `data`) are matched to the gold by
accession (= record `id`; by origin line when the id is not an accession) and scored:

    both          rows that hold findings and impression
    both exact    % of those with findings AND impression exactly right (after whitespace normalisation)
    findings / impression / indication exact
                  % of all readable, non-empty rows whose field is exactly right ("" where the gold is "")
    patient=MRN   % of matched records whose patient_id is the row's MRN
    leaked pts    patients (gold MRN) with records in more than one split
    unreadable    undecodable rows that skipped.jsonl names at their line / rows made undecodable
    origin≠line   matched records whose origin line is not the row's first line

A measurement: it exits 0 whatever the figures, and a prepare that fails is reported with figures 0.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.messy_exports import export_info, load_gold, norm, variant_names, write_export

DEFAULT_EXPORTS = ["default:0", "spaced:1", "random:2"]
_RUN = "import sys; from radgpt.cli import main; sys.exit(main())"


def prepare_flags() -> tuple[list[str], str]:
    """Flags worth passing that this prepare offers (per its --help), and the help text's problem if any."""
    try:
        p = subprocess.run([sys.executable, "-c", _RUN, "prepare", "--help"], check=False, cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return [], f"prepare --help failed: {e}"
    flags = [f for f in ("--force", "--quiet") if re.search(rf"(?<![\w-]){f}\b", p.stdout)]
    return flags, "" if p.returncode == 0 else f"prepare --help exited {p.returncode}: {p.stderr.strip()[-300:]}"


def run_prepare(csv_path: Path, out: Path, flags: list[str]) -> tuple[int, str]:
    cmd = [sys.executable, "-c", _RUN, "prepare", str(csv_path), "--out", str(out), *flags]
    try:
        p = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return 124, "timed out after 600 s"
    except OSError as e:
        return 127, str(e)
    return p.returncode, (p.stderr or "").strip()


def _line(origin: str) -> int | None:
    m = re.search(r":(\d+)$", origin or "")
    return int(m.group(1)) if m else None


def read_output(out: Path) -> tuple[list[dict], list[dict]]:
    """(parsed records: from records/*.jsonl with `_split`, and from skipped.jsonl with `_skipped`; skip entries)"""
    parsed, skips = [], []
    for f in sorted((out / "records").glob("*.jsonl")) if (out / "records").is_dir() else []:
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                rec["_split"] = rec.get("split") or f.stem
                parsed.append(rec)
    sk = out / "skipped.jsonl"
    if sk.exists():
        for line in sk.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            skips.append(entry)
            data = entry.get("data")
            if isinstance(data, dict) and "id" in data and ("findings" in data or "impression" in data):
                rec = dict(data)
                rec["_skipped"] = entry.get("reason", "")
                rec.setdefault("origin", entry.get("origin", ""))
                parsed.append(rec)
    return parsed, skips


def score(gold: list[dict], out: Path) -> tuple[dict, list[dict]]:
    parsed, skips = read_output(out)
    by_acc = {g["accession"]: g for g in gold if g["accession"]}
    by_line = {g["row_line"]: g for g in gold}
    match: dict[int, dict] = {}  # gold row_line -> record (a kept record wins over a skipped one)
    id_ok: set[int] = set()
    extra = 0
    for rec in parsed:
        g = by_acc.get(str(rec.get("id", "")))
        if g is not None:
            id_ok.add(g["row_line"])
        else:
            g = by_line.get(_line(rec.get("origin", "")))
        if g is None:
            extra += 1
            continue
        prev = match.get(g["row_line"])
        if prev is None or ("_skipped" in prev and "_skipped" not in rec):
            match[g["row_line"]] = rec

    rows = [g for g in gold if g["readable"] and not g["empty"]]
    both_rows = [g for g in rows if g["both"]]
    ok = {k: 0 for k in ("both", "findings", "impression", "indication")}
    misses = []
    for g in rows:
        rec = match.get(g["row_line"], {})
        got = {k: norm(rec.get(k, "")) if rec else None for k in ("findings", "impression", "indication")}
        right = {k: got[k] == g[k] for k in got}
        for k, good in right.items():
            ok[k] += good
        if g["both"]:
            ok["both"] += right["findings"] and right["impression"]
        if not (right["findings"] and right["impression"]):
            misses.append({"gold": g, "got": got, "where": ("not found" if not rec else
                                                            f"skipped: {rec['_skipped']}" if "_skipped" in rec
                                                            else f"records/{rec['_split']}"),
                           "origin": rec.get("origin", "")})
    matched = [(match[g["row_line"]], g) for g in rows if g["row_line"] in match]
    splits: dict[str, set[str]] = defaultdict(set)
    for rec, g in matched:
        if "_skipped" not in rec and g["mrn"]:
            splits[g["mrn"]].add(rec["_split"])
    skip_lines = {_line(e.get("origin", "")) for e in skips}
    unreadable = [g for g in gold if not g["readable"]]
    figures = {
        "rows": len(gold), "scored": len(rows), "both": len(both_rows), "found": len(matched),
        "id=accession": sum(g["row_line"] in id_ok for g in rows), "extra records": extra,
        "both exact": ok["both"] / len(both_rows) if both_rows else 0.0,
        "findings exact": ok["findings"] / len(rows) if rows else 0.0,
        "impression exact": ok["impression"] / len(rows) if rows else 0.0,
        "indication exact": ok["indication"] / len(rows) if rows else 0.0,
        "patient=MRN": (sum(str(r.get("patient_id", "")) == g["mrn"] for r, g in matched) / len(matched)
                        if matched else 0.0),
        "leaked patients": sum(len(s) > 1 for s in splits.values()),
        "unreadable named": sum(g["row_line"] in skip_lines for g in unreadable),
        "unreadable": len(unreadable),
        "origin wrong": sum(_line(r.get("origin", "")) != g["row_line"] for r, g in matched),
    }
    return figures, misses


def zero_figures(gold: list[dict]) -> dict:
    rows = [g for g in gold if g["readable"] and not g["empty"]]
    return {"rows": len(gold), "scored": len(rows), "both": sum(g["both"] for g in rows), "found": 0,
            "id=accession": 0, "extra records": 0, "both exact": 0.0, "findings exact": 0.0,
            "impression exact": 0.0, "indication exact": 0.0, "patient=MRN": 0.0, "leaked patients": 0,
            "unreadable named": 0, "unreadable": sum(not g["readable"] for g in gold), "origin wrong": 0}


def bench_one(name: str, csv_path: Path, gold: list[dict], out: Path, flags: list[str]) -> tuple[dict, list, str]:
    rc, err = run_prepare(csv_path, out, flags)
    status = "ok" if rc == 0 else f"exit {rc}: " + (err.splitlines()[-1] if err else "(no message)")
    if rc != 0:
        print(f"[{name}] radgpt prepare exited {rc}:\n    " + "\n    ".join(err.splitlines()[-8:] or ["(no output)"]))
    try:
        figures, misses = score(gold, out)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # odd output is a result too
        print(f"[{name}] could not read prepare's output: {type(e).__name__}: {e}")
        figures, misses = zero_figures(gold), []
        status += f"; output unreadable ({type(e).__name__})"
    return figures, misses, status


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def print_table(results: list[tuple[str, dict, str]]) -> None:
    print("| export | rows | both | found | id=acc | both exact | findings exact | impression exact | "
          "indication exact | patient=MRN | leaked pts | unreadable named | origin≠line | prepare |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, f, status in results:
        print(f"| {name} | {f['rows']} | {f['both']} | {f['found']}/{f['scored']} | {f['id=accession']} | "
              f"{pct(f['both exact'])} | {pct(f['findings exact'])} | {pct(f['impression exact'])} | "
              f"{pct(f['indication exact'])} | {pct(f['patient=MRN'])} | {f['leaked patients']} | "
              f"{f['unreadable named']}/{f['unreadable']} | {f['origin wrong']} | {status.replace('|', '/')} |")
    if len(results) > 1:
        fs = [f for _, f, _ in results]
        tot = {k: sum(f[k] for f in fs) for k in ("rows", "both", "found", "scored", "id=accession",
                                                  "leaked patients", "unreadable named", "unreadable",
                                                  "origin wrong")}

        def wavg(key: str, weight: str) -> float:
            w = sum(f[weight] for f in fs)
            return sum(f[key] * f[weight] for f in fs) / w if w else 0.0

        found_w = sum(f["found"] for f in fs)
        mrn = sum(f["patient=MRN"] * f["found"] for f in fs) / found_w if found_w else 0.0
        ok = sum(s == "ok" for _, _, s in results)
        print(f"| **all** | {tot['rows']} | {tot['both']} | {tot['found']}/{tot['scored']} | {tot['id=accession']} | "
              f"{pct(wavg('both exact', 'both'))} | {pct(wavg('findings exact', 'scored'))} | "
              f"{pct(wavg('impression exact', 'scored'))} | {pct(wavg('indication exact', 'scored'))} | "
              f"{pct(mrn)} | {tot['leaked patients']} | {tot['unreadable named']}/{tot['unreadable']} | "
              f"{tot['origin wrong']} | {ok}/{len(results)} ok |")


def print_misses(misses: list[tuple[str, dict]], n: int) -> None:
    if not misses or n <= 0:
        return
    print(f"\n{len(misses)} rows with findings or impression not exactly right; the first {min(n, len(misses))}:")
    for name, m in misses[:n]:
        g, got = m["gold"], m["got"]
        print(f"\n[{name}] accession {g['accession']!r}, row line {g['row_line']} ({m['where']}, "
              f"origin {m['origin'] or '-'})")
        for k in ("findings", "impression"):
            mark = "ok" if got[k] == g[k] else "MISS"
            print(f"  {k} {mark}\n    expected: {g[k]!r}")
            if got[k] != g[k]:
                print(f"    got:      {got[k]!r}")


def parse_export(spec: str) -> tuple[str, int]:
    variant, _, seed = spec.partition(":")
    if variant not in variant_names():
        raise SystemExit(f"unknown variant {variant!r} (choose from {', '.join(variant_names())})")
    return variant, int(seed or 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exports", nargs="+", default=DEFAULT_EXPORTS, metavar="VARIANT:SEED",
                    help=f"exports to generate (default {' '.join(DEFAULT_EXPORTS)}; variants: "
                         f"{', '.join(variant_names())})")
    ap.add_argument("--all-variants", action="store_true", help="every variant once (seed 0)")
    ap.add_argument("--n", type=int, default=200, help="rows per export")
    ap.add_argument("--show", type=int, default=10, help="misses to print")
    ap.add_argument("--csv", type=Path, help="score this export instead (needs --gold)")
    ap.add_argument("--gold", type=Path, help="gold JSON for --csv (as written by --write / write_export)")
    ap.add_argument("--write", type=Path, metavar="DIR", help="only write the exports' CSV + gold JSON here")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="write exports and prepare outputs here (kept)")
    args = ap.parse_args()
    specs = [(v, 0) for v in variant_names()] if args.all_variants else [parse_export(s) for s in args.exports]

    if args.write:
        for variant, seed in specs:
            path = args.write / f"messy_{variant}_{seed}.csv"
            gold = write_export(path, args.n, seed, variant, gold_path=path.with_suffix(".gold.json"))
            info = export_info(variant, seed)
            print(f"{path}  ({len(gold)} rows; columns {info['id_column']!r}, {info['mrn_column']!r}, "
                  f"{info['text_column']!r}; {info['encoding']}, delimiter {info['delimiter']!r})")
            print(f"{path.with_suffix('.gold.json')}")
        return 0

    flags, help_problem = prepare_flags()
    if help_problem:
        print(help_problem)
    print(f"radgpt prepare EXPORT --out DIR {' '.join(flags)}".rstrip()
          + ("" if "--force" in flags else "   (prepare offers no --force: each run gets a fresh folder)"))
    print()
    results, misses = [], []
    with tempfile.TemporaryDirectory(prefix="bench_messy_") as tmp:
        base = args.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        jobs = []
        if args.csv:
            if not args.gold:
                raise SystemExit("--csv needs --gold (the gold JSON)")
            jobs.append((args.csv.name, args.csv, load_gold(args.gold)))
        else:
            for variant, seed in specs:
                path = base / f"messy_{variant}_{seed}.csv"
                gold = write_export(path, args.n, seed, variant, gold_path=path.with_suffix(".gold.json"))
                jobs.append((f"{variant}:{seed}", path, gold))
        for name, path, gold in jobs:
            out = base / f"out_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"
            if out.is_dir():
                shutil.rmtree(out)  # this bench's own output from an earlier --keep run
            figures, ms, status = bench_one(name, path, gold, out, flags)
            results.append((name, figures, status))
            misses.extend((name, m) for m in ms)
    print_table(results)
    print_misses(misses, args.show)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
