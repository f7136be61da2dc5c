"""Parser accuracy on real text: IU reports rendered back into the MIMIC-CXR layout.

    .venv/bin/python bench/bench_parser_iu.py [--csv ../shared/data/openi/indiana_reports.csv]

Each of the 2,982 IU reports (../shared/data/openi/indiana_reports.csv) is written as free text the
way MIMIC-CXR lays reports out (centred FINAL REPORT title, one leading space, upper-case headers,
text wrapped at 79 columns, empty sections left out), parsed back with radgpt's section parser, and
the recovered findings and impression compared with the CSV's fields (after whitespace
normalisation, which is what the parser's output promises). Prints the accuracy and the misses.
"""

from __future__ import annotations

import argparse
import csv
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from radgpt.prepare.records import normalize_text  # noqa: E402
from radgpt.prepare.sections import parse_report  # noqa: E402

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared/data/openi/indiana_reports.csv"


def render_mimic_layout(row: dict) -> str:
    lines = [" " * 33 + "FINAL REPORT"]
    for header, key in (("EXAMINATION", "image"), ("INDICATION", "indication"),
                        ("COMPARISON", "comparison"), ("FINDINGS", "findings"), ("IMPRESSION", "impression")):
        body = (row.get(key) or "").strip()
        if not body:
            continue
        lines.append(f" {header}:")
        lines.append(" ")
        lines.extend(" " + w for w in textwrap.wrap(body, 78, break_on_hyphens=False, break_long_words=False))
        lines.append(" ")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--show", type=int, default=10, help="misses to print")
    args = ap.parse_args()
    with open(args.csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ok_f = ok_i = ok_both = 0
    misses = []
    for row in rows:
        parsed = parse_report(render_mimic_layout(row))
        f_ok = parsed.findings == normalize_text(row["findings"])
        i_ok = parsed.impression == normalize_text(row["impression"])
        ok_f += f_ok
        ok_i += i_ok
        ok_both += f_ok and i_ok
        if not (f_ok and i_ok):
            misses.append((row["uid"], row["findings"], parsed.findings, row["impression"], parsed.impression))
    n = len(rows)
    print("| reports | findings exact | impression exact | both exact |")
    print("|---:|---:|---:|---:|")
    print(f"| {n} | {100*ok_f/n:.2f}% | {100*ok_i/n:.2f}% | {100*ok_both/n:.2f}% |")
    for uid, f_ref, f_got, i_ref, i_got in misses[: args.show]:
        print(f"\nuid {uid}\n  findings ref: {f_ref!r}\n  findings got: {f_got!r}\n"
              f"  impression ref: {i_ref!r}\n  impression got: {i_got!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
