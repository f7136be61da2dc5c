"""`radgpt label`: label chest X-ray findings in reports with the built-in rule-based labeler.

    radgpt label reports.jsonl --out labels.csv            # CheXpert-style CSV: 1 / 0 / -1 / blank
    radgpt label indiana_reports.csv --scheme chestxray14 --out labels.jsonl
    echo "No pleural effusion. May represent atelectasis." | radgpt label -

Input: JSONL or CSV (the text is the --fields joined, default findings + impression, or `text`/`report`
when the file has them), a .txt file (one report per line) or - for standard input (the whole text is
one report). Output: JSONL {"id", "labels": {label: status}} or, for a .csv path, one column per label
with CheXpert's convention (1 positive, 0 negative, -1 uncertain, blank not mentioned).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from radgpt.errors import FatalError

_CSV_VALUE = {"positive": "1", "negative": "0", "uncertain": "-1", "not_mentioned": ""}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="reports: .jsonl, .csv, .txt (one per line) or - for stdin")
    parser.add_argument("--out", help="output .jsonl or .csv (default: JSONL on stdout)")
    parser.add_argument("--scheme", choices=("chexpert", "chestxray14"), default="chexpert",
                        help="label set: the 14 CheXpert observations (default) or the 14 ChestX-ray14 labels")
    parser.add_argument("--fields", help="comma list of text fields to join (default: text or report, else "
                                         "findings,impression, else inputs,target)")
    parser.add_argument("--id-field", help="id field (default: id, idx, uid or study_id; else the row number)")


def _records(path: str) -> list[dict]:
    if path == "-":
        return [{"text": sys.stdin.read()}]
    p = Path(path)
    if not p.is_file():
        raise FatalError(f"{p}: file not found")
    try:
        if p.suffix == ".jsonl":
            from radgpt.evaluate.io import read_jsonl

            return [rec for _, rec in read_jsonl(p)]
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FatalError(f"{p}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8") from None
    if p.suffix == ".csv":
        return list(csv.DictReader(io.StringIO(text, newline="")))
    return [{"text": line} for line in text.splitlines() if line.strip()]


def _fields(first: dict, wanted: str | None) -> list[str]:
    if wanted:
        fields = [f.strip() for f in wanted.split(",") if f.strip()]
        missing = [f for f in fields if f not in first]
        if missing:
            raise FatalError(f"no field {', '.join(missing)} in the input (fields: {', '.join(first)})")
        return fields
    for option in (["text"], ["report"], ["findings", "impression"], ["inputs", "target"], ["findings"], ["impression"]):
        if all(f in first for f in option):
            return option
    raise FatalError(f"no report text field found (fields: {', '.join(first)}); name them with --fields")


def run(args: argparse.Namespace) -> int:
    from radgpt.evaluate.labeler import SCHEMES, label

    records = _records(args.input)
    if not records:
        raise FatalError(f"{args.input}: no reports")
    fields = _fields(records[0], args.fields)
    id_field = args.id_field or next((f for f in ("id", "idx", "uid", "study_id") if f in records[0]), None)
    rows = []
    for k, rec in enumerate(records):
        text = ". ".join(str(rec.get(f) or "").strip().rstrip(".") for f in fields if str(rec.get(f) or "").strip())
        rid = rec.get(id_field, k) if id_field else k
        rows.append((rid, label(text, args.scheme)))

    names = SCHEMES[args.scheme]
    if args.out and args.out.endswith(".csv"):
        with open(args.out, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", *names])
            for rid, labels in rows:
                writer.writerow([rid, *(_CSV_VALUE[labels[n]] for n in names)])
    else:
        fh = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
        try:
            for rid, labels in rows:
                fh.write(json.dumps({"id": rid, "labels": labels}) + "\n")
        finally:
            if args.out:
                fh.close()
    positives = {n: sum(1 for _, lab in rows if lab[n] == "positive") for n in names}
    summary = ", ".join(f"{n} {c}" for n, c in positives.items() if c)
    print(f"labelled {len(rows)} reports ({args.scheme}); positives: {summary or 'none'}", file=sys.stderr)
    return 0
