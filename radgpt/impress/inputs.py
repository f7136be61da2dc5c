"""Findings to impress, from arguments, stdin, text/JSONL/CSV files: `FindingsInput`s, or `Bad` lines named
by file:line. A batch goes on past a bad line (the caller counts and reports them); the reading itself and
the accepted field names are radgpt.common.inputs's, shared with evaluate, study and retrieval."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from radgpt.common.errors import FatalError
from radgpt.common.inputs import (
    FINDINGS_FIELDS,
    ID_FIELDS,
    BadLine,
    csv_rows,
    decode_line,
    first_field,
    json_lines,
)


@dataclass
class FindingsInput:
    """One findings text to impress (not a prepared report: that is radgpt.prepare.records.Record)."""

    id: str
    findings: str
    where: str  # file:line, for messages


@dataclass
class Bad:
    where: str
    message: str


def _bad(b: BadLine) -> Bad:
    return Bad(b.where, b.reason)


def read_lines(stream, label: str) -> Iterator[FindingsInput | Bad]:
    offset = 0
    for n, raw in enumerate(stream, 1):
        text = decode_line(raw.rstrip(b"\r\n"), f"{label}:{n}", offset)
        offset += len(raw)
        if isinstance(text, BadLine):
            yield _bad(text)
            continue
        if n == 1:
            text = text.removeprefix("\ufeff")  # the byte-order mark Windows editors put first
        if text.strip():
            yield FindingsInput(f"{Path(label).name}:{n}", text.strip(), f"{label}:{n}")


def read_jsonl(stream, label: str, field: str | None, id_field: str | None) -> Iterator[FindingsInput | Bad]:
    for item in json_lines(stream, label):
        if isinstance(item, BadLine):
            yield _bad(item)
            continue
        n, obj = item
        where = f"{label}:{n}"
        f = field or first_field(obj, FINDINGS_FIELDS)
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
        idf = id_field or first_field(obj, ID_FIELDS)
        rid = str(obj[idf]) if idf and obj.get(idf) is not None else f"{Path(label).name}:{n}"
        yield FindingsInput(rid, value.strip(), where)


def read_csv(path: Path, column: str | None, id_field: str | None) -> Iterator[FindingsInput | Bad]:
    cols, rows = csv_rows(path, "findings file")
    col = column or first_field(cols, FINDINGS_FIELDS)
    if col is None or col not in cols:
        raise FatalError(f"{path}: no column '{column or 'findings'}' (columns: {', '.join(cols) or 'none'}); "
                         "name it with --column")
    idc = id_field or first_field(cols, ID_FIELDS)
    for item in rows:
        if isinstance(item, BadLine):
            yield _bad(item)
            continue
        n, row = item
        where = f"{path}:{n}"
        value = row.get(col)
        if value is None:
            yield Bad(where, f"row has no '{col}' value")
            continue
        if not value.strip():
            yield Bad(where, "empty findings")
            continue
        rid = row.get(idc) if idc else None
        yield FindingsInput(str(rid) if rid else f"{path.name}:{n}", value.strip(), where)


def is_file(path: Path) -> bool:
    """Path.is_file() that is False, not an OSError, for text no file system takes as a name (findings typed
    as an argument are often longer than the 255-byte name limit)."""
    try:
        return path.is_file()
    except OSError:
        return False


def read_inputs(inputs: list[str], fmt: str, field: str | None, column: str | None, id_field: str | None
                ) -> Iterator[FindingsInput | Bad]:
    """Findings from the positional inputs: files (txt/jsonl/csv by extension or --input-format), '-' for
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
        elif is_file(p):
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
            yield FindingsInput(f"arg{n}", item.strip(), f"argument {n}")


