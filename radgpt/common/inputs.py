"""The one input convention for the JSON-lines and CSV files users hand to radgpt: findings to impress,
reference and prediction files to evaluate, a study's cases and candidates, prior cases to retrieve from,
datasets to fine-tune on.

Field names. Every reader looks for the same names, in the same order (the first one present wins), so a
file one command accepts, the others accept too. A command-line option (--field, --id-field, ...) names
any other field.

  role        names, in order of preference              why each alias is there
  id          id, idx, uid, study_id                     id: radgpt prepare's records and `radgpt impress`
                                                          output; idx: clin-summ's {idx, inputs, target}
                                                          (Van Veen et al., the repo's OpenI data); uid:
                                                          OpenI's indiana_reports.csv; study_id: MIMIC-CXR
  findings    findings, inputs, input, text              findings: radgpt; inputs: clin-summ; input: the
                                                          instruction format {instruction, input, output}
                                                          that prepare writes; text: a bare {"text": ...} line
                                                          (last, so a file with a findings field uses that)
  impression  impression, target, output, reference      impression: radgpt; target: clin-summ; output: the
              (the reference / prior-case impression)     instruction format; reference: the validation
                                                          predictions finetune writes {id, impression,
                                                          reference}
  prediction  impression, prediction, output,            impression: `radgpt impress` output; the others are
              generated, text                             what common generation scripts name it
  indication  indication, history, clinical_history      shown to a study's readers when present

Bad lines. The lenient readers (`json_lines`, `csv_rows`) yield a `BadLine` — `file:line` and the reason —
for a line that is not UTF-8 (named with its byte and offset in the file, which a hex editor or
`head -c` finds), not JSON, or not a JSON object, and go on with the rest: `radgpt impress` skips such
lines in a long batch and counts them. The strict readers (`json_objects`, `read_json_objects`) read the
whole file too, then stop with the first bad line and the count of the others, since a dataset, a
reference file or a prediction file with a line dropped would silently change what is trained or scored.
Blank lines are skipped everywhere.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from radgpt.common.errors import FatalError

ID_FIELDS = ("id", "idx", "uid", "study_id")
FINDINGS_FIELDS = ("findings", "inputs", "input", "text")
IMPRESSION_FIELDS = ("impression", "target", "output", "reference")
PREDICTION_FIELDS = ("impression", "prediction", "output", "generated", "text")
INDICATION_FIELDS = ("indication", "history", "clinical_history")


@dataclass(frozen=True)
class BadLine:
    """A line that cannot be read: where (`file:line`), why, and — when the line stops the job — what to do."""

    where: str
    reason: str
    stop_reason: str = ""  # the wording of a FatalError for this line; `reason` when empty

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"

    def fatal(self) -> str:
        return f"{self.where}: {self.stop_reason or self.reason}"


def decode_line(raw: bytes, where: str, offset: int | None = None) -> str | BadLine:
    """`raw` as UTF-8 text, or a BadLine naming the first bad byte — by its offset in the file when the
    line's own `offset` is known, else by its place in the line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        at = (f"byte 0x{raw[e.start]:02x} at offset {offset + e.start} of the file" if offset is not None
              else f"byte 0x{raw[e.start]:02x}, byte {e.start} of the line")
        return BadLine(where, f"not UTF-8 text ({at})", f"not UTF-8 text ({at}); re-save the file as UTF-8")


def first_field(keys: Iterable[str], candidates: tuple[str, ...]) -> str | None:
    """The first of `candidates` among `keys` (a record or a CSV header), or None."""
    keys = set(keys)
    return next((c for c in candidates if c in keys), None)


def pick_field(where: str, record: Mapping, given: str | None, candidates: tuple[str, ...], what: str,
               required: bool = True) -> str | None:
    """The field that holds `what` in a file whose first record is `record` (at `where`, file:line): `given`
    (from a --*-field option), which must be there, else the first of `candidates` present. None when none is
    and not `required`; a FatalError listing what was looked for and what the record has otherwise."""
    if given:
        if given not in record:
            raise FatalError(f"{where}: field '{given}' ({what}) not in the first record "
                             f"(fields: {', '.join(record) or 'none'})")
        return given
    found = first_field(record, candidates)
    if found is None and required:
        raise FatalError(f"{where}: no {what} field (looked for {', '.join(candidates)}; "
                         f"fields: {', '.join(record) or 'none'}); name it with the matching --*-field option")
    return found


# ---------------------------------------------------------------------------------------------- JSON lines
def json_lines(lines: Iterable[bytes | str], name: str) -> Iterator[tuple[int, dict] | BadLine]:
    """(line number, object) for each non-blank line, or a BadLine for one that is not a JSON object.
    `lines` as bytes (a file opened "rb", sys.stdin.buffer) let a bad byte be named by its file offset."""
    offset = 0
    for lineno, raw in enumerate(lines, 1):
        where = f"{name}:{lineno}"
        if isinstance(raw, bytes):
            text = decode_line(raw, where, offset)
            offset += len(raw)
            if isinstance(text, BadLine):
                yield text
                continue
        else:
            text = raw
        if lineno == 1:
            text = text.removeprefix("\ufeff")  # the byte-order mark Windows editors put before the first line
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            # Two wordings, both relied on: a batch names the line and goes on, a dataset says what a line must be.
            yield BadLine(where, f"invalid JSON ({e.msg})", f"not valid JSON ({e.msg}); expected one JSON object "
                                                             "per line")
            continue
        if not isinstance(obj, dict):
            yield BadLine(where, f"expected a JSON object, got {type(obj).__name__}")
            continue
        yield lineno, obj


def split_lines(text: str) -> list[str]:
    """`text` cut at "\\n" only: str.splitlines() also cuts at U+2028, U+0085 and other characters that JSON
    leaves unescaped inside a string (json.dumps(..., ensure_ascii=False) writes them as they are), which
    would break such a line in two."""
    return text.split("\n")


def all_or_fail(items: Iterable[tuple[int, dict] | BadLine], name: str) -> list[tuple[int, dict]]:
    """Every (line, object) of `items`, or a FatalError naming the first bad line and counting the others
    (all of the file is read first, so one run shows how much of it needs fixing)."""
    good: list[tuple[int, dict]] = []
    bad: list[BadLine] = []
    n_bad = 0
    for item in items:
        if isinstance(item, BadLine):
            n_bad += 1
            if len(bad) < 4:
                bad.append(item)
        else:
            good.append(item)
    if n_bad:
        more = ""
        if n_bad > 1:
            shown = "; ".join(str(b) for b in bad[1:]) + ("; ..." if n_bad > len(bad) else "")
            more = f" — and {n_bad - 1} more bad line{'s' if n_bad > 2 else ''} in {name} ({shown})"
        raise FatalError(bad[0].fatal() + more)
    return good


def json_objects(lines: Iterable[bytes | str], name: str) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a FatalError if any line is bad. `lines` as text is cut
    with `split_lines`."""
    return all_or_fail(json_lines(split_lines(lines) if isinstance(lines, str) else lines, name), name)


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FatalError(f"{path}: {what} not found")
    return path


def read_json_objects(path: str | Path, what: str = "file") -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; a FatalError naming the file if it is
    missing, or the first bad line (with the count of the others)."""
    path = _existing(path, what)
    with open(path, "rb") as fh:
        return json_objects(fh, str(path))


# ---------------------------------------------------------------------------------------------- CSV
_ESCAPED = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, kept by errors="surrogateescape"


def csv_rows(path: str | Path, what: str = "file") -> tuple[list[str], Iterator[tuple[int, dict] | BadLine]]:
    """(column names, rows): each row as (first line of the row, {column: value}) — a value spans lines when
    quoted — or a BadLine for a row with bytes that are not UTF-8 or with more values than columns. A missing
    trailing value is None. A UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped; blank lines are skipped.
    The header is read before this returns, so a missing or empty file is a FatalError here."""
    path = _existing(path, what)
    raw = path.read_bytes()
    bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    # surrogateescape keeps each bad byte as one character, so the other rows read and the bad one is found
    text = raw[bom:].decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    escaped = _ESCAPED.finditer(text)  # the bad bytes in file order, consumed row by row
    done = [0, bom]  # (characters, bytes) of `text` already measured, so each offset costs only the gap

    def bad_byte_offset(n_escaped: int) -> tuple[int, int]:
        """(byte, offset in the file) of the row's first bad byte; skips the row's other n-1."""
        m = next(escaped)
        for _ in range(n_escaped - 1):
            next(escaped)
        done[1] += len(text[done[0]:m.start()].encode("utf-8", errors="surrogateescape"))
        done[0] = m.start()
        return ord(m.group()) - 0xDC00, done[1]

    def numbered() -> Iterator[tuple[int, list[str]]]:
        line = 0
        try:
            for row in reader:
                start, line = line + 1, reader.line_num
                if row:
                    yield start, row
        except csv.Error as e:
            raise FatalError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None

    rows = numbered()
    first = next(rows, None)
    if first is None:
        raise FatalError(f"{path}: empty {what} (no header row)")
    header_line, header = first
    if any(_ESCAPED.search(h) for h in header):
        byte, at = bad_byte_offset(sum(len(_ESCAPED.findall(h)) for h in header))
        raise FatalError(f"{path}:{header_line}: not UTF-8 text (byte 0x{byte:02x} at offset {at} of the file); "
                         "re-save the file as UTF-8")
    columns = [h.strip() for h in header]

    def gen() -> Iterator[tuple[int, dict] | BadLine]:
        for start, row in rows:
            where = f"{path}:{start}"
            n_escaped = sum(len(_ESCAPED.findall(v)) for v in row)
            if n_escaped:
                byte, at = bad_byte_offset(n_escaped)
                yield BadLine(where, f"not UTF-8 text (byte 0x{byte:02x} at offset {at} of the file)",
                              f"not UTF-8 text (byte 0x{byte:02x} at offset {at} of the file); re-save the file "
                              "as UTF-8")
            elif len(row) > len(columns):
                yield BadLine(where, f"{len(row)} values for {len(columns)} columns; quote values that contain "
                                     "commas")
            else:
                yield start, {c: (row[i] if i < len(row) else None) for i, c in enumerate(columns)}

    return columns, gen()
