"""Readers for the report corpora radgpt understands. Each yields `Record`s, or a `Problem` for
anything it cannot read (named file, line/row and reason) — a reader never raises on bad data.

| source      | what                                                                        |
|-------------|-----------------------------------------------------------------------------|
| `mimic`     | MIMIC-CXR `files/pNN/pNNNNNNNN/sNNNNNNNN.txt` tree, or `mimic-cxr-reports.zip` |
| `openi-xml` | OpenI ecgen-radiology XML files: a folder, or the `.tgz`                     |
| `iu-csv`    | the IU chest X-ray Kaggle CSV (`uid, MeSH, Problems, ..., findings, impression`) |
| `table`     | JSONL / JSON / CSV / TSV / .xlsx, columns detected or mapped (clin-summ, MEDIQA, RIS exports) |
| `text`      | free-text reports, one per `.txt` file (in-house), parsed into sections      |
"""

from __future__ import annotations

import codecs
import collections
import csv
import io
import itertools
import json
import multiprocessing
import operator
import os
import re
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from defusedxml import ElementTree as SafeET

from radgpt.common.errors import FatalError
from radgpt.prepare.records import DEFAULT_PHI_TOKEN, Problem, Record, normalize_text
from radgpt.prepare.sections import canonical_header, parse_report

SOURCES = ("mimic", "openi-xml", "iu-csv", "table", "text")
IU_CSV_COLUMNS = {"uid", "findings", "impression"}

# Column names tried, in order, when a table's mapping is not given; compared with case, spaces, `_`
# and `#` removed, so `ReportText`, `Report Text` and `report_text` are one name.
COLUMN_CANDIDATES: dict[str, tuple[str, ...]] = {
    "id": ("id", "accessionnumber", "accession", "accessionno", "accnumber", "accno", "accnbr", "acc", "studyid",
           "examid", "reportid", "uid", "idx", "orderid", "ordernumber", "examnumber", "studyuid", "studyinstanceuid",
           "risid", "requestid", "requestnumber"),
    "patient_id": ("patientid", "mrn", "patientmrn", "medicalrecordnumber", "subjectid", "patient", "patientnumber",
                   "patid", "ptid", "ptmrn", "pid", "patientno", "patno", "empi", "hospitalnumber", "personid",
                   "unitnumber", "nhsnumber", "patientidentifier", "urn", "hospitalid"),
    "findings": ("findings", "inputs", "input", "finding", "findingstext", "reportfindings"),
    "impression": ("impression", "target", "output", "impressions", "summary", "conclusion", "impressiontext",
                   "reportimpression"),
    "indication": ("indication", "background", "history", "clinicalhistory", "clinicalindication", "reasonforexam"),
    "comparison": ("comparison",),
    "text": ("report", "text", "reporttext", "narrative", "reportnarrative", "fullreport", "reportbody", "finalreport",
             "reportcontent", "reportcontents", "reporttxt", "rpttext", "fulltext", "narrativetext", "result",
             "resulttext", "results", "body", "notetext", "note", "content", "observation", "observationvalue"),
}
# Second try, by part of the name ("Patient MRN (hospital)", "Accession No."), for the three an export must have.
COLUMN_CONTAINS = {
    "id": lambda n: "accession" in n,
    "patient_id": lambda n: "mrn" in n or (n.startswith(("patient", "pt")) and n.endswith(("id", "number", "no"))),
    "text": lambda n: ("report" in n or "rpt" in n) and any(w in n for w in ("text", "txt", "narrative", "body",
                                                                               "content")),
}


@dataclass
class ColumnMap:
    """Column names for `table` sources; empty = detected (COLUMN_CANDIDATES). The comments are `--help`."""

    id: str = ""  # the report's id, kept in every output (e.g. AccessionNumber, StudyID)
    patient_id: str = ""  # the patient (e.g. PatientMRN, MRN, PatientID): a patient's reports stay in one split
    findings: str = ""  # the findings section, when the export has sections in their own columns
    impression: str = ""  # the impression section (its own column)
    indication: str = ""  # the indication / clinical history (its own column)
    comparison: str = ""  # the comparison (its own column)
    text: str = ""  # the whole free-text report in one cell, split into sections (e.g. ReportText, Narrative)


@dataclass
class ReadOptions:
    phi_token: str = DEFAULT_PHI_TOKEN
    columns: ColumnMap = field(default_factory=ColumnMap)
    encoding: str = "auto"  # auto = UTF-8 (BOM-named UTF-16), rows that are not UTF-8 read as cp1252 and noted
    workers: int = 0  # processes that parse report text for large inputs; 0 = one per core (at most 8)


# ------------------------------------------------------------------ detection

def detect_source(path: Path) -> str:
    """Guess the source type of a path; FatalError if it cannot be told."""
    if not path.exists():
        raise FatalError(f"{path}: no such file or folder")
    name = path.name.lower()
    if path.is_dir():
        if (path / "files").is_dir() or re.fullmatch(r"p\d\d", name) or path.name == "files":
            return "mimic"
        for _, _, files in os.walk(path):
            for f in files:
                fl = f.lower()
                if fl.endswith(".xml"):
                    return "openi-xml"
                if re.fullmatch(r"s\d+\.txt", fl):
                    return "mimic"
                if fl.endswith(".txt"):
                    return "text"
        raise FatalError(f"{path}: no reports found (.txt, .xml) in this folder")
    if name.endswith(".zip"):
        return "mimic"
    if name.endswith((".tgz", ".tar.gz", ".tar")):
        return "openi-xml"
    if name.endswith(".xml"):
        return "openi-xml"
    if name.endswith(".csv"):
        try:
            with open(path, newline="", encoding="utf-8") as f:
                header = {h.strip() for h in next(csv.reader(f), [])}
        except UnicodeDecodeError:
            return "table"  # the reader reports the encoding problem with its position
        return "iu-csv" if IU_CSV_COLUMNS <= header and "MeSH" in header else "table"
    if name.endswith((".jsonl", ".json", ".ndjson", ".tsv", ".tab", ".xlsx", ".xlsm")):
        return "table"
    if name.endswith(".xls"):
        raise FatalError(f"{path}: the old binary Excel format (.xls) is not read; save it as .xlsx or CSV")
    if name.endswith(".txt"):
        return "text"
    raise FatalError(
        f"{path}: cannot tell the source type from the name; pass --source one of {', '.join(SOURCES)}"
    )


# ------------------------------------------------------------------ helpers

def _decode(data: bytes, origin: str) -> str | Problem:
    if not data.strip():
        return Problem(origin, "empty file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return Problem(origin, f"not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start}",
                       {"raw_latin1": data.decode("latin-1")})


def _read_file_text(f: str | Path) -> str | Problem:
    try:
        with open(f, "rb") as fh:
            data = fh.read()
    except OSError as e:
        return Problem(str(f), f"unreadable file ({e.strerror or e})")
    return _decode(data, str(f))


@dataclass
class _Unparsed:
    """A record whose report text is still to be split into sections — and, when `path` is set, still to be
    read: read_source does both, in worker processes when the input is large (reading and parsing are most
    of prepare's time at MIMIC-CXR scale)."""

    record: Record
    text: str = ""
    path: str = ""
    fill: dict = field(default_factory=dict)  # sections from their own columns, used where the text has none


def _record_from_text(text: str, rid: str, source: str, origin: str, patient_id: str = "", study_id: str = "",
                      path: str = "") -> _Unparsed:
    return _Unparsed(Record(id=rid, source=source, patient_id=patient_id, study_id=study_id, origin=origin), text, path)


def _parse_into(item, phi_token: str) -> Record | Problem:
    if not isinstance(item, _Unparsed):
        return item
    text = _read_file_text(item.path) if item.path else item.text
    if isinstance(text, Problem):
        return text
    parsed = parse_report(text, phi_token)
    r = item.record
    r.findings, r.impression, r.indication, r.comparison = (parsed.findings, parsed.impression, parsed.indication,
                                                            parsed.comparison)
    r.sections, r.notes = parsed.sections, parsed.notes + r.notes
    for name, value in item.fill.items():
        if value and not getattr(r, name):
            setattr(r, name, value)
            r.sections[name] = value
            r.notes.append(f"{name} from its own column (the report text has none)")
    return r


def _parse_chunk(chunk: list, phi_token: str) -> list[Record | Problem]:
    return [_parse_into(item, phi_token) for item in chunk]


PARSE_BATCH = 2048  # inputs smaller than this are parsed in this process; larger ones by a pool of workers
_CHUNK = 256


def _parse_all(items: Iterator, opts: ReadOptions) -> Iterator[Record | Problem]:
    """Items in order, each _Unparsed one read and parsed. Above PARSE_BATCH items, chunks go to worker
    processes with a bounded number in flight, so memory stays flat and the order is the input's."""
    workers = opts.workers or min(os.cpu_count() or 1, 8)
    first = list(itertools.islice(items, PARSE_BATCH))
    if workers <= 1 or len(first) < PARSE_BATCH:
        for item in itertools.chain(first, items):
            yield _parse_into(item, opts.phi_token)
        return
    methods = multiprocessing.get_all_start_methods()
    pool = multiprocessing.get_context("fork" if "fork" in methods else None).Pool(workers)
    try:
        inflight: collections.deque = collections.deque()
        rest = iter(lambda: list(itertools.islice(items, _CHUNK)), [])
        head = (first[i:i + _CHUNK] for i in range(0, len(first), _CHUNK))
        for chunk in itertools.chain(head, rest):
            inflight.append(pool.apply_async(_parse_chunk, (chunk, opts.phi_token)))
            while len(inflight) > 3 * workers:
                yield from inflight.popleft().get()
        while inflight:
            yield from inflight.popleft().get()
    finally:
        pool.terminate()


# ------------------------------------------------------------------ MIMIC-CXR

_MIMIC_FILE = re.compile(r"s(\d+)\.txt$")


def _mimic_ids(relpath: str) -> tuple[str, str, str]:
    parts = relpath.replace("\\", "/").split("/")
    stem = parts[-1][:-4] if parts[-1].lower().endswith(".txt") else parts[-1]
    m = _MIMIC_FILE.search(parts[-1])
    study = m.group(1) if m else stem
    patient = ""
    if len(parts) >= 2 and re.fullmatch(r"p\d+", parts[-2]):
        patient = parts[-2][1:]
    return (f"s{study}" if m else stem), patient, study


def _walk_sorted(root: Path) -> Iterator[str]:
    """Deterministic, streaming walk (os.scandir; sorted per folder so runs are reproducible). Yields path
    strings: Path objects for 227k files were a tenth of prepare's time."""
    stack = [str(root)]
    by_name = operator.attrgetter("name")
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=by_name, reverse=True)
        except OSError:
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
        for e in reversed(entries):
            if e.is_file():
                yield e.path


def read_mimic(path: Path, opts: ReadOptions) -> Iterator[Record | Problem]:
    if path.is_file() and path.suffix.lower() == ".zip":
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            yield Problem(str(path), f"not a readable zip file ({e})")
            return
        with zf:
            for info in zf.infolist():
                if info.is_dir() or not info.filename.lower().endswith(".txt"):
                    continue
                origin = f"{path}:{info.filename}"
                try:
                    data = zf.read(info)
                except (zipfile.BadZipFile, OSError, RuntimeError) as e:
                    yield Problem(origin, f"unreadable zip member ({e})")
                    continue
                text = _decode(data, origin)
                if isinstance(text, Problem):
                    yield text
                    continue
                rid, patient, study = _mimic_ids(info.filename)
                yield _record_from_text(text, rid, "mimic", origin, patient, study)
        return
    root = len(str(path)) + 1
    for f in _walk_sorted(path):
        if not f.lower().endswith(".txt"):
            continue
        rid, patient, study = _mimic_ids(f[root:])
        yield _record_from_text("", rid, "mimic", f, patient, study, path=f)  # read by a worker


# ------------------------------------------------------------------ free text (in-house)

def read_text(path: Path, opts: ReadOptions) -> Iterator[Record | Problem]:
    files = [path] if path.is_file() else (Path(f) for f in _walk_sorted(path) if f.lower().endswith(".txt"))
    for f in files:
        yield _record_from_text("", f.stem, "text", str(f), study_id=f.stem, path=str(f))  # read by a worker


# ------------------------------------------------------------------ OpenI XML

def _openi_record(data: bytes, origin: str, opts: ReadOptions) -> Record | Problem:
    text = _decode(data, origin)
    if isinstance(text, Problem):
        return text
    try:
        root = SafeET.fromstring(text)
    except SafeET.ParseError as e:
        line, col = getattr(e, "position", (0, 0))
        return Problem(origin, f"XML does not parse (line {line}, column {col}): {e}")
    except Exception as e:  # defusedxml refuses entity bombs and external entities
        return Problem(origin, f"XML refused ({type(e).__name__}: {e})")
    uid_el = root.find(".//uId")
    rid = uid_el.get("id", "") if uid_el is not None else ""
    if not rid:
        rid = Path(origin.split(":")[-1]).stem
    sections: dict[str, str] = {}
    for el in root.iter("AbstractText"):
        label = (el.get("Label") or "").strip()
        body = normalize_text("".join(el.itertext()), opts.phi_token)
        canon = canonical_header(label) or re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "other"
        if body:
            sections[canon] = (sections[canon] + " " + body) if sections.get(canon) else body
    mesh = [m.text.strip() for m in root.findall(".//MeSH/major") if m.text and m.text.strip()]
    problems = sorted({m.split("/")[0] for m in mesh})
    return Record(
        id=rid, source="openi-xml", patient_id=rid, study_id=rid,
        findings=sections.get("findings", ""), impression=sections.get("impression", ""),
        indication=sections.get("indication", ""), comparison=sections.get("comparison", ""),
        mesh=mesh, problems=problems, sections=sections, origin=origin,
    )


def read_openi_xml(path: Path, opts: ReadOptions) -> Iterator[Record | Problem]:
    if path.is_file() and not path.name.lower().endswith(".xml"):
        try:
            tf = tarfile.open(path, "r:*")
        except (tarfile.TarError, OSError) as e:
            yield Problem(str(path), f"not a readable tar archive ({e})")
            return
        with tf:
            try:
                for member in tf:  # streaming: members are read in archive order
                    if not member.isfile() or not member.name.lower().endswith(".xml"):
                        continue
                    fh = tf.extractfile(member)
                    data = fh.read() if fh else b""
                    yield _openi_record(data, f"{path}:{member.name}", opts)
            except (tarfile.TarError, OSError, EOFError) as e:
                yield Problem(str(path), f"archive is truncated or corrupt ({e})")
        return
    files = [path] if path.is_file() else (Path(f) for f in _walk_sorted(path) if f.lower().endswith(".xml"))
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as e:
            yield Problem(str(f), f"unreadable file ({e.strerror or e})")
            continue
        yield _openi_record(data, str(f), opts)


# ------------------------------------------------------------------ tables (CSV / TSV / JSONL / JSON)

def _cp1252_fallback(err: UnicodeDecodeError) -> tuple[str, int]:
    # Windows exports mix UTF-8 with cp1252 bytes (a non-breaking space, curly quotes): the bytes that are
    # not UTF-8 are read as cp1252; a byte cp1252 does not define either raises, and the row is reported.
    bad = err.object[err.start:err.end]
    return bytes(bad).decode("cp1252"), err.end


codecs.register_error("radgpt_cp1252", _cp1252_fallback)
_UNDECODED = re.compile("[\udc80-\udcff]")


def _decode_cells(cells: list[str], encoding: str) -> tuple[list[str] | None, str]:
    """Cells read with surrogateescape: ([decoded cells], note) — note says cp1252 was used — or
    (None, reason) when the bytes do not fit. `encoding` "auto" is UTF-8 with the cp1252 fallback."""
    if not any(_UNDECODED.search(c) for c in cells):
        return cells, ""
    codec = "utf-8" if encoding == "auto" else encoding
    raw = [c.encode(codec, "surrogateescape") for c in cells]
    first = next(b for c, b in zip(cells, raw) if _UNDECODED.search(c))
    byte = next((x for x in first if x >= 0x80), 0)
    if encoding == "auto":
        try:
            return [b.decode("utf-8", "radgpt_cp1252") for b in raw], f"not UTF-8 (byte 0x{byte:02x}): read as cp1252"
        except UnicodeDecodeError as e:
            byte = e.object[e.start]
    return None, f"byte 0x{byte:02x} is not {'utf-8 or cp1252' if encoding == 'auto' else encoding}"


def _as_latin1(cell: str, encoding: str) -> str:
    """An undecodable cell's bytes as latin-1 text, so skipped.jsonl keeps every byte the user gave."""
    return cell.encode("utf-8" if encoding == "auto" else encoding, "surrogateescape").decode("latin-1")


def _open_table(path: Path, encoding: str) -> tuple[io.TextIOBase, str] | Problem:
    try:
        f = open(path, "rb")
        head = f.read(1 << 16)
        f.seek(0)
    except OSError as e:
        return Problem(str(path), f"unreadable file ({e.strerror or e})")
    if not head.strip():
        f.close()
        return Problem(str(path), "empty file")
    if encoding == "auto":
        # a byte-order mark names the encoding (Excel's "Unicode text" is UTF-16); otherwise UTF-8 per row,
        # with cp1252 for the rows that are not
        encoding = "utf-16" if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "auto"
    codec = "utf-8-sig" if encoding in ("auto", "utf-8") else encoding
    try:
        return io.TextIOWrapper(f, encoding=codec, errors="surrogateescape", newline=""), encoding
    except LookupError:
        f.close()
        raise FatalError(f"unknown encoding '{encoding}' (encoding=...; e.g. utf-8, cp1252, latin-1, utf-16)") from None


def _delimiter(header_line: str, path: Path) -> str:
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    counts = {d: header_line.count(d) for d in (",", ";", "\t", "|")}
    return max(counts, key=lambda d: (counts[d], d == ","))


def _csv_header(path: Path, encoding: str = "auto") -> list[str] | Problem:
    opened = _open_table(path, encoding)
    if isinstance(opened, Problem):
        return opened
    fh, enc = opened
    with fh:
        started = _csv_start(path, fh, enc)
    return started if isinstance(started, Problem) else started[1]


def _csv_start(path: Path, fh: io.TextIOBase, enc: str) -> tuple[Iterator[list[str]], list[str]] | Problem:
    """(a csv reader positioned after the header, the header's column names); the delimiter is the header's."""
    first = fh.readline()
    reader = csv.reader(itertools.chain([first], fh), delimiter=_delimiter(first, path))
    try:
        header = next(reader, None)
    except csv.Error as e:
        return Problem(str(path), f"header row is not valid CSV ({e})")
    header, _ = _decode_cells(header or [], enc)
    if not header or not any(h.strip() for h in header):
        return Problem(str(path), "no header row")
    return reader, [h.strip().lstrip("\ufeff") for h in header]


def _iter_rows(path: Path, encoding: str = "auto") -> Iterator[tuple[str, dict | Problem, str]]:
    """Yield (origin, row-dict or Problem, decoding note) for CSV/TSV/JSONL/JSON/.xlsx. Origins name the file and
    the row's first line; a row that cannot be decoded or split is a Problem and the rows after it are still
    read; the note says when a row was read as cp1252."""
    name = path.name.lower()
    if name.endswith((".xlsx", ".xlsm")):
        yield from _xlsx_rows(path)
        return
    opened = _open_table(path, encoding)
    if isinstance(opened, Problem):
        yield str(path), opened, ""
        return
    fh, enc = opened
    with fh:
        if name.endswith((".csv", ".tsv", ".tab")):
            yield from _csv_rows(path, fh, enc)
            return
        if name.endswith(".json"):
            text, why = _decode_cells([fh.read()], enc)
            if text is None:
                yield str(path), Problem(str(path), why), ""
                return
            try:
                data = json.loads(text[0])
            except json.JSONDecodeError as e:
                yield str(path), Problem(str(path), f"not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}"), ""
                return
            if isinstance(data, dict):
                data = next((v for v in data.values() if isinstance(v, list)), [data])
            for i, row in enumerate(data):
                origin = f"{path}[{i}]"
                yield origin, row if isinstance(row, dict) else Problem(origin, "item is not an object"), why
            return
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            origin = f"{path}:{i}"
            decoded, why = _decode_cells([line], enc)
            if decoded is None:
                yield origin, Problem(origin, f"line {i}: {why}", {"line_latin1": _as_latin1(line, enc).rstrip("\r\n")}), ""
                continue
            try:
                row = json.loads(decoded[0])
            except json.JSONDecodeError as e:
                yield origin, Problem(origin, f"line {i} is not valid JSON ({e.msg})", {"line": decoded[0].rstrip("\r\n")}), ""
                continue
            if not isinstance(row, dict):
                yield origin, Problem(origin, f"line {i} is not a JSON object"), ""
                continue
            yield origin, row, f"line {i}: {why}" if why else ""


def _csv_rows(path: Path, fh: io.TextIOBase, enc: str) -> Iterator[tuple[str, dict | Problem, str]]:
    started = _csv_start(path, fh, enc)
    if isinstance(started, Problem):
        yield str(path), started, ""
        return
    reader, header = started
    last_line = reader.line_num
    while True:
        start = last_line + 1  # the row's first line (a quoted field can span several)
        origin = f"{path}:{start}"
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield origin, Problem(origin, f"line {start}: not valid CSV ({e}); rows after it not read")
            return
        last_line = reader.line_num
        cells, why = _decode_cells(row, enc)
        if cells is None:
            yield origin, Problem(origin, f"line {start}: {why}; pass encoding=NAME if the whole file has one",
                                  {"row_latin1": [_as_latin1(c, enc) for c in row]}), ""
            continue
        if not any(c.strip() for c in cells):
            yield origin, Problem(origin, f"line {start}: empty row", {"row": cells}), ""
            continue
        if len(cells) != len(header):
            yield origin, Problem(origin, f"line {start}: row has {len(cells)} fields, header has {len(header)}",
                                  {"row": cells}), ""
            continue
        yield origin, dict(zip(header, cells)), f"line {start}: {why}" if why else ""


def _xlsx_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))  # an MRN or accession typed as a number: 1234567.0 → "1234567"
    if hasattr(v, "isoformat"):
        return v.isoformat()
    # Excel writes a carriage return inside a cell as _x000D_
    return str(v).replace("_x000D_", "")


def _xlsx_rows(path: Path) -> Iterator[tuple[str, dict | Problem, str]]:
    """The first sheet of an Excel workbook, streamed (openpyxl read-only); origins are `file:sheet!row N`."""
    try:
        import openpyxl
    except ImportError:
        yield str(path), Problem(str(path), "reading .xlsx needs the openpyxl package (pip install openpyxl)"), ""
        return
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # noqa: BLE001 — zip, XML and openpyxl's own errors all mean "not a workbook we can read"
        yield str(path), Problem(str(path), f"not a readable .xlsx workbook ({type(e).__name__}: {e})"), ""
        return
    try:
        ws = wb.worksheets[0]
        header: list[str] | None = None
        for n, row in enumerate(ws.iter_rows(values_only=True), start=1):
            cells = [_xlsx_value(v) for v in row]
            origin = f"{path}:{ws.title}!row {n}"
            if header is None:
                if any(c.strip() for c in cells):
                    header = [c.strip() for c in cells]
                    while header and not header[-1]:
                        header.pop()
                continue
            if not any(c.strip() for c in cells):
                yield origin, Problem(origin, f"row {n}: empty row", {"row": cells}), ""
                continue
            cells = (cells + [""] * len(header))[:max(len(header), len(cells))]
            if any(c.strip() for c in cells[len(header):]):
                yield origin, Problem(origin, f"row {n}: values beyond the header's {len(header)} columns",
                                      {"row": cells}), ""
                continue
            yield origin, dict(zip(header, cells)), ""
        if header is None:
            yield str(path), Problem(str(path), "no header row (the first sheet is empty)"), ""
    finally:
        wb.close()


def _norm_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def resolve_columns(keys: list[str], cm: ColumnMap, origin: str) -> dict[str, str] | Problem:
    """{field: column} for a table's columns: the mapping given in `cm`, else detected from
    COLUMN_CANDIDATES (case, spaces, `_` and `#` ignored); each column is used for one field at most."""
    by_norm: dict[str, str] = {}
    for k in keys:
        by_norm.setdefault(_norm_name(k), k)
    resolved: dict[str, str] = {}
    for fld in COLUMN_CANDIDATES:
        given = getattr(cm, fld)
        if given:
            col = given if given in keys else by_norm.get(_norm_name(given))
            if col is None:
                return Problem(origin, f"column '{given}' (columns.{fld}) not found; columns are {list(keys)}")
            resolved[fld] = col
    used = set(resolved.values())
    for fld, candidates in COLUMN_CANDIDATES.items():
        if fld in resolved:
            continue
        found = next((by_norm[c] for c in candidates if c in by_norm and by_norm[c] not in used), None)
        if found is None and fld in COLUMN_CONTAINS:
            found = next((k for k in keys if k not in used and COLUMN_CONTAINS[fld](_norm_name(k))), None)
        if found:
            resolved[fld] = found
            used.add(found)
    if "text" not in resolved and not ({"findings", "impression"} & resolved.keys()):
        return Problem(origin, f"no report column found; columns are {list(keys)} (map one with "
                               "columns.text=NAME for whole reports, or columns.findings=NAME and "
                               "columns.impression=NAME for separate sections)")
    return resolved


def table_header(path: Path, encoding: str = "auto") -> list[str] | Problem:
    """A table's column names: the CSV header, or the keys of the first JSON/JSONL record or .xlsx row."""
    if path.name.lower().endswith((".csv", ".tsv", ".tab")):
        return _csv_header(path, encoding)
    for _, row, _ in _iter_rows(path, encoding):
        if isinstance(row, dict):
            return list(row)
    return Problem(str(path), "no readable rows")


def table_columns(path: Path, opts: ReadOptions) -> dict[str, str] | Problem:
    """The column mapping a table file will be read with (reads the header or first record only)."""
    header = table_header(path, opts.encoding)
    return header if isinstance(header, Problem) else resolve_columns(header, opts.columns, str(path))


def _cell(row: dict, col: str | None) -> str:
    v = row.get(col) if col else None
    if v is None:
        return ""
    return v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def read_table(path: Path, opts: ReadOptions, source: str = "table") -> Iterator[Record | Problem]:
    cols: dict[str, str] | None = None
    for n, (origin, row, note) in enumerate(_iter_rows(path, opts.encoding)):
        if isinstance(row, Problem):
            yield row
            continue
        if cols is None:
            resolved = resolve_columns(list(row), opts.columns, str(path))
            if isinstance(resolved, Problem):
                yield resolved
                return  # every row of this file would fail the same way: one clear problem
            cols = resolved
        rid = _cell(row, cols.get("id")).strip() or f"{path.stem}-{n}"
        patient = _cell(row, cols.get("patient_id")).strip()
        # the whole report is parsed unless the export gives the findings in their own column; a section column
        # next to the report text (an "Impression" column beside "ReportText") fills what the text lacks
        if "text" in cols and _cell(row, cols["text"]).strip() and not _cell(row, cols.get("findings")).strip():
            unparsed = _record_from_text(_cell(row, cols["text"]), rid, source, origin, patient, rid)
            unparsed.fill = {f: normalize_text(_cell(row, cols[f]), opts.phi_token)
                             for f in ("impression", "indication", "comparison") if f in cols}
            rec = unparsed.record
        else:
            unparsed = None
            norm = {f: normalize_text(_cell(row, cols.get(f)), opts.phi_token)
                    for f in ("findings", "impression", "indication", "comparison")}
            rec = Record(id=rid, source=source, patient_id=patient, study_id=rid, origin=origin, **norm)
            rec.sections = {k: v for k, v in (("findings", rec.findings), ("impression", rec.impression),
                                              ("indication", rec.indication), ("comparison", rec.comparison)) if v}
        if note:
            rec.notes.append(note)
        if source == "iu-csv":
            rec.mesh = [m.strip() for m in row.get("MeSH", "").split(";") if m.strip()]
            rec.problems = [p.strip() for p in row.get("Problems", "").split(";") if p.strip()]
            rec.patient_id = rec.patient_id or rid
            if row.get("image"):
                rec.sections["examination"] = normalize_text(row["image"], opts.phi_token)
        yield unparsed or rec


def read_iu_csv(path: Path, opts: ReadOptions) -> Iterator[Record | Problem]:
    # The IU CSV is a table with known columns; uid is the study and (one study each) the patient.
    iu_opts = ReadOptions(phi_token=opts.phi_token, columns=ColumnMap(id="uid", patient_id="uid",
                                                                       findings="findings", impression="impression",
                                                                       indication="indication", comparison="comparison"))
    yield from read_table(path, iu_opts, source="iu-csv")


READERS = {"mimic": read_mimic, "openi-xml": read_openi_xml, "iu-csv": read_iu_csv,
           "table": read_table, "text": read_text}


def read_source(path: Path, source: str, opts: ReadOptions) -> Iterator[Record | Problem]:
    if source not in READERS:
        raise FatalError(f"unknown source type '{source}' (choose from {', '.join(SOURCES)})")
    if not path.exists():
        yield Problem(str(path), "no such file or folder")
        return
    yield from _parse_all(READERS[source](path, opts), opts)


if __name__ == "__main__":  # tiny manual check: python -m radgpt.prepare.sources PATH
    p = Path(sys.argv[1])
    for item in read_source(p, detect_source(p), ReadOptions()):
        print(item)
