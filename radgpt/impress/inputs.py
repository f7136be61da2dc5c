"""Findings to impress, from arguments, stdin, text/JSONL/CSV files: `Record`s, or `Bad` lines named by file:line."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from radgpt.common.errors import FatalError


@dataclass
class Record:
    id: str
    findings: str
    where: str  # file:line, for messages


@dataclass
class Bad:
    where: str
    message: str


FINDINGS_FIELDS = ("findings", "inputs", "input", "text")
ID_FIELDS = ("id", "idx", "uid", "study_id")


def _decode(raw: bytes, where: str) -> str | Bad:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Bad(where, f"not UTF-8 text (byte {e.start})")


def read_lines(stream, label: str) -> Iterator[Record | Bad]:
    for n, raw in enumerate(stream, 1):
        text = _decode(raw.rstrip(b"\r\n"), f"{label}:{n}")
        if isinstance(text, Bad):
            yield text
        elif text.strip():
            yield Record(f"{Path(label).name}:{n}", text.strip(), f"{label}:{n}")


def read_jsonl(stream, label: str, field: str | None, id_field: str | None) -> Iterator[Record | Bad]:
    for n, raw in enumerate(stream, 1):
        where = f"{label}:{n}"
        text = _decode(raw, where)
        if isinstance(text, Bad):
            yield text
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield Bad(where, f"invalid JSON ({e.msg})")
            continue
        if not isinstance(obj, dict):
            yield Bad(where, "expected a JSON object")
            continue
        f = field or next((k for k in FINDINGS_FIELDS if k in obj), None)
        if f is None or f not in obj:
            yield Bad(where, f"no findings field ({field or ', '.join(FINDINGS_FIELDS)}); name it with --field")
            continue
        value = obj[f]
        if not isinstance(value, str):
            yield Bad(where, f"field '{f}' must be text, got {type(value).__name__}")
            continue
        if not value.strip():
            yield Bad(where, "empty findings")
            continue
        idf = id_field or next((k for k in ID_FIELDS if k in obj), None)
        rid = str(obj[idf]) if idf and obj.get(idf) is not None else f"{Path(label).name}:{n}"
        yield Record(rid, value.strip(), where)


def read_csv(path: Path, column: str | None, id_field: str | None) -> Iterator[Record | Bad]:
    raw = path.read_bytes()
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    cols = reader.fieldnames or []
    col = column or next((c for c in ("findings", "inputs", "input", "text") if c in cols), None)
    if col is None or col not in cols:
        raise FatalError(f"{path}: no column '{column or 'findings'}' (columns: {', '.join(cols) or 'none'}); "
                         "name it with --column")
    idc = id_field or next((c for c in ("id", "uid", "idx", "study_id") if c in cols), None)
    for row in reader:
        where = f"{path}:{reader.line_num}"
        value = row.get(col)
        if value is None:
            yield Bad(where, f"row has no '{col}' value")
            continue
        if any("\udc80" <= ch <= "\udcff" for ch in value):
            yield Bad(where, "not UTF-8 text")
            continue
        if not value.strip():
            yield Bad(where, "empty findings")
            continue
        rid = row.get(idc) if idc else None
        yield Record(str(rid) if rid else f"{path.name}:{reader.line_num}", value.strip(), where)


def read_inputs(inputs: list[str], fmt: str, field: str | None, column: str | None, id_field: str | None
                ) -> Iterator[Record | Bad]:
    """Records from the positional inputs: files (txt/jsonl/csv by extension or --input-format), '-' for
    stdin (one findings per line, or JSONL with --input-format jsonl), or the findings text itself."""
    if not inputs:
        if sys.stdin is None or sys.stdin.isatty():
            raise FatalError("no findings: give them as an argument, a file (txt, jsonl, csv), or '-' for stdin")
        inputs = ["-"]
    for n, item in enumerate(inputs, 1):
        p = Path(item)
        if item == "-":
            kind = fmt if fmt != "auto" else "txt"
            stream = sys.stdin.buffer
            yield from (read_jsonl(stream, "<stdin>", field, id_field) if kind == "jsonl"
                        else read_lines(stream, "<stdin>"))
        elif p.is_file():
            kind = fmt if fmt != "auto" else {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
                                              ".csv": "csv"}.get(p.suffix.lower(), "txt")
            if kind == "csv":
                yield from read_csv(p, column, id_field)
            else:
                with open(p, "rb") as f:
                    yield from (read_jsonl(f, str(p), field, id_field) if kind == "jsonl" else read_lines(f, str(p)))
        elif p.suffix.lower() in (".txt", ".jsonl", ".csv", ".json", ".ndjson") and " " not in item:
            raise FatalError(f"{item}: file not found")
        elif not item.strip():
            yield Bad(f"argument {n}", "empty findings")
        else:
            yield Record(f"arg{n}", item.strip(), f"argument {n}")


