"""`radgpt label`: label chest X-ray findings in reports with the built-in rule-based labeler.

    radgpt label reports.jsonl --out labels.csv            # CheXpert-style CSV: 1 / 0 / -1 / blank
    radgpt label hospital_export.csv --out labels.csv      # AccessionNumber + ReportText columns
    radgpt label indiana_reports.csv --scheme chestxray14 --out labels.jsonl
    printf 'No pleural effusion.\nMay represent atelectasis.\n' | radgpt label -    # two reports

Input: JSONL or CSV, a .txt file (one report per line) or - for standard input (also one report per
line; blank lines are skipped). Column names are matched ignoring case, spaces, `_` and `#`: the text
is a whole-report column (`text`, `report`, `ReportText`/`Report Text`/`report_text`, `narrative`),
else the findings + impression columns (or --fields); the id is `id`, `idx`, `uid`, `study_id`,
`accession` or `AccessionNumber`/`Accession Number` (or --id-field), else the row number.

A whole report (a text column, a line, or a single --fields field) is split with the report parser and
only its findings + impression are labelled, so an indication's "rule out pneumonia" is not counted;
--with-indication labels the indication too. Other sections (comparison, technique, ...) are never
labelled. A report in which the parser finds no findings or impression section is labelled whole, and
stderr says how many were. Findings/impression columns never include an indication (with
--with-indication an `indication` column is added when there is one).

Files are read as UTF-8; a file that is not UTF-8 is read as Windows cp1252, with a warning on stderr
naming the file and the first line that is not UTF-8.

Output: JSONL {"id", "labels": {label: status}} or, for a .csv path, one column per label with
CheXpert's convention (1 positive, 0 negative, -1 uncertain, blank not mentioned).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import re
import sys
from pathlib import Path

from radgpt.common.errors import FatalError
from radgpt.evaluate.io import text_field

_CSV_VALUE = {"positive": "1", "negative": "0", "uncertain": "-1", "not_mentioned": ""}

# Column names after _norm: lower case, no spaces, underscores or '#'.
WHOLE_REPORT_FIELDS = ("text", "report", "reporttext", "narrative")
SECTION_FIELDS = (("findings", "impression"), ("inputs", "target"), ("findings",), ("impression",))
ID_FIELDS = ("id", "idx", "uid", "studyid", "accession", "accessionnumber")
_SECTION_NAMES = {"findings", "impression", "inputs", "target"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="reports: .jsonl, .csv, .txt (one report per line) or - for stdin "
                                      "(one report per line, blank lines skipped)")
    parser.add_argument("--out", help="output .jsonl or .csv (default: JSONL on stdout)")
    parser.add_argument("--scheme", choices=("chexpert", "chestxray14"), default="chexpert",
                        help="label set: the 14 CheXpert observations (default) or the 14 ChestX-ray14 labels")
    parser.add_argument("--fields", help="comma list of text fields to join (default: a whole-report column "
                                         "text, report, ReportText or narrative, else findings,impression, "
                                         "else inputs,target); names match ignoring case, spaces, _ and #")
    parser.add_argument("--id-field", help="id field (default: id, idx, uid, study_id, accession or "
                                           "AccessionNumber; else the row number)")
    parser.add_argument("--with-indication", action="store_true",
                        help="also label the indication: a whole report's INDICATION section (or an "
                             "`indication` column next to findings/impression). By default only findings "
                             "and impression are labelled; other sections never are")


def _norm(name: object) -> str:
    return re.sub(r"[\s_#]+", "", str(name).lower())


def _find(keys: list[str], wanted: str) -> str | None:
    """The key named `wanted`: exactly, else ignoring case, spaces, underscores and '#'."""
    if wanted in keys:
        return wanted
    return next((k for k in keys if _norm(k) == _norm(wanted)), None)


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line, byte = data[:e.start].count(b"\n") + 1, data[e.start]
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError as e:
        bad_line = data[:e.start].count(b"\n") + 1
        raise FatalError(f"{name}:{bad_line}: neither UTF-8 nor Windows cp1252 text (byte 0x{data[e.start]:02X}); "
                         "re-save the file as UTF-8") from None
    print(f"radgpt label: warning: {name} is not UTF-8 (line {line}: byte 0x{byte:02X}); "
          "assumed Windows cp1252 for the whole file", file=sys.stderr)
    return text


def _lines(text: str, name: str) -> list[tuple[str, dict]]:
    return [(f"{name}:{n}", {"text": line.strip()}) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _csv_rows(text: str, name: str) -> list[tuple[str, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        for row in reader:
            where = f"{name}:{reader.line_num}"
            extra = row.pop(None, None)  # values beyond the header's columns
            if extra and any(str(v).strip() for v in extra):
                raise FatalError(f"{where}: {len(reader.fieldnames or []) + len(extra)} values but the header has "
                                 f"{len(reader.fieldnames or [])} columns; quote fields that contain commas")
            rows.append((where, row))
    except csv.Error as e:
        raise FatalError(f"{name}:{reader.line_num}: not readable as CSV ({e})") from None
    return rows


def _records(path: str) -> tuple[str, list[tuple[str, dict]], bool]:
    """(name for messages, [(file:line, record)], whether each record is one line of text)."""
    if path == "-":
        if sys.stdin is None:
            raise FatalError("no standard input to read")
        buffer = getattr(sys.stdin, "buffer", None)
        text = _decode(buffer.read(), "<stdin>") if buffer is not None else sys.stdin.read()
        return "<stdin>", _lines(text, "<stdin>"), True
    p = Path(path)
    if not p.is_file():
        raise FatalError(f"{p}: file not found")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        from radgpt.evaluate.io import read_jsonl

        return str(p), [(f"{p}:{lineno}", rec) for lineno, rec in read_jsonl(p)], False
    text = _decode(p.read_bytes(), str(p))
    if suffix == ".csv":
        return str(p), _csv_rows(text, str(p)), False
    return str(p), _lines(text, str(p)), True


def _fields(name: str, keys: list[str], wanted: str | None) -> tuple[list[str], bool]:
    """(fields to join, whether they hold a whole report to split into sections)."""
    if wanted:
        asked = [f.strip() for f in wanted.split(",") if f.strip()]
        found = [_find(keys, f) for f in asked]
        missing = [f for f, k in zip(asked, found) if k is None]
        if missing:
            raise FatalError(f"{name}: no field {', '.join(missing)} in the input (fields: {', '.join(keys)})")
        fields = [k for k in found if k is not None]
        return fields, len(fields) == 1 and _norm(fields[0]) not in _SECTION_NAMES
    for option in WHOLE_REPORT_FIELDS:
        key = _find(keys, option)
        if key is not None:
            return [key], True
    for option in SECTION_FIELDS:
        found = [_find(keys, f) for f in option]
        if all(k is not None for k in found):
            return [k for k in found if k is not None], False
    raise FatalError(f"{name}: no report text field (looked for text, report, ReportText, narrative, or findings "
                     f"and impression; fields: {', '.join(keys) or 'none'}); name them with --fields")


def _id_field(name: str, keys: list[str], wanted: str | None) -> str | None:
    if wanted:
        key = _find(keys, wanted)
        if key is None:
            raise FatalError(f"{name}: no id field {wanted} in the input (fields: {', '.join(keys)})")
        return key
    return next((k for k in (_find(keys, f) for f in ID_FIELDS) if k is not None), None)


def _join(parts: list[str]) -> str:
    return ". ".join(p.strip().rstrip(".") for p in parts if p and p.strip())


def run(args: argparse.Namespace) -> int:
    from radgpt.findings.labeler import SCHEMES, label
    from radgpt.prepare.sections import parse_report

    name, records, one_per_line = _records(args.input)
    if not records:
        raise FatalError(f"{name}: no reports")
    keys = [k for k in records[0][1] if isinstance(k, str)]
    fields, whole = _fields(name, keys, args.fields)
    if one_per_line and args.id_field:
        raise FatalError(f"{name}: one report per line, so there is no id field (ids are the report numbers 0, 1, ...)")
    id_field = None if one_per_line else _id_field(name, keys, args.id_field)
    with_indication = getattr(args, "with_indication", False)
    if with_indication and not whole:
        indication = _find(keys, "indication")
        if indication is None:
            print(f"radgpt label: warning: --with-indication: {name} has no indication field; labelling "
                  f"{', '.join(fields)} only", file=sys.stderr)
        elif indication not in fields:
            fields = [indication, *fields]

    rows, unsplit, left_out = [], [], 0
    for k, (where, rec) in enumerate(records):
        text = _join([text_field(where, rec, f) for f in fields])
        if whole and text:
            parsed = parse_report(text)
            body = [parsed.findings, parsed.impression]
            if any(s.strip() for s in body):
                if with_indication:
                    text = _join([parsed.indication, *body])
                else:
                    text = _join(body)
                    left_out += bool(parsed.indication.strip())
            else:
                unsplit.append(where)  # headers, but none for findings or impression: label it all
        rid = rec.get(id_field) if id_field else None
        rows.append((k if rid is None or rid == "" else rid, label(text, args.scheme)))

    names = SCHEMES[args.scheme]
    if args.out and args.out.lower().endswith(".csv"):
        with open(args.out, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", *names])
            for rid, labels in rows:
                writer.writerow([rid, *(_CSV_VALUE[labels[n]] for n in names)])
    else:
        with open(args.out, "w", encoding="utf-8") if args.out else contextlib.nullcontext(sys.stdout) as fh:
            for rid, labels in rows:
                fh.write(json.dumps({"id": rid, "labels": labels}) + "\n")
    if unsplit:
        print(f"radgpt label: warning: {len(unsplit)} reports have no findings or impression section the parser "
              f"could find, so their whole text was labelled, indication included (first: {unsplit[0]})",
              file=sys.stderr)
    positives = {n: sum(1 for _, lab in rows if lab[n] == "positive") for n in names}
    summary = ", ".join(f"{n} {c}" for n, c in positives.items() if c)
    note = f"; indication left out of {left_out} (--with-indication labels it)" if left_out else ""
    print(f"labelled {len(rows)} reports ({args.scheme}); positives: {summary or 'none'}{note}", file=sys.stderr)
    return 0
