"""Readers for the report corpora radgpt understands. Each yields `Record`s, or a `Problem` for
anything it cannot read (named file, line/row and reason) — a reader never raises on bad data.

| source      | what                                                                        |
|-------------|-----------------------------------------------------------------------------|
| `mimic`     | MIMIC-CXR `files/pNN/pNNNNNNNN/sNNNNNNNN.txt` tree, or `mimic-cxr-reports.zip` |
| `openi-xml` | OpenI ecgen-radiology XML files: a folder, or the `.tgz`                     |
| `iu-csv`    | the IU chest X-ray Kaggle CSV (`uid, MeSH, Problems, ..., findings, impression`) |
| `table`     | JSONL / JSON / CSV with a column mapping (clin-summ, MEDIQA, in-house exports) |
| `text`      | free-text reports, one per `.txt` file (in-house), parsed into sections      |
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from defusedxml import ElementTree as SafeET

from radgpt.errors import FatalError
from radgpt.reports.records import DEFAULT_PHI_TOKEN, Problem, Record, normalize_text
from radgpt.reports.sections import canonical_header, parse_report

SOURCES = ("mimic", "openi-xml", "iu-csv", "table", "text")
IU_CSV_COLUMNS = {"uid", "findings", "impression"}

# Column names tried, in order, when a table's mapping is not given.
COLUMN_CANDIDATES: dict[str, tuple[str, ...]] = {
    "id": ("id", "study_id", "idx", "uid", "report_id", "accession"),
    "patient_id": ("patient_id", "subject_id", "patient", "mrn"),
    "findings": ("findings", "inputs", "input", "finding"),
    "impression": ("impression", "target", "output", "impressions", "summary"),
    "indication": ("indication", "background", "history", "clinical_history"),
    "comparison": ("comparison",),
    "text": ("report", "text", "report_text"),
}


@dataclass
class ColumnMap:
    """Column names for `table` sources; empty = detect from COLUMN_CANDIDATES."""

    id: str = ""
    patient_id: str = ""
    findings: str = ""
    impression: str = ""
    indication: str = ""
    comparison: str = ""
    text: str = ""  # a column holding the whole free-text report, parsed into sections


@dataclass
class ReadOptions:
    phi_token: str = DEFAULT_PHI_TOKEN
    columns: ColumnMap = field(default_factory=ColumnMap)


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
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "table"
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


def _read_file_text(f: Path) -> str | Problem:
    try:
        data = f.read_bytes()
    except OSError as e:
        return Problem(str(f), f"unreadable file ({e.strerror or e})")
    return _decode(data, str(f))


def _record_from_text(text: str, rid: str, source: str, origin: str, opts: ReadOptions,
                      patient_id: str = "", study_id: str = "") -> Record:
    parsed = parse_report(text, opts.phi_token)
    return Record(
        id=rid, source=source, patient_id=patient_id, study_id=study_id,
        findings=parsed.findings, impression=parsed.impression,
        indication=parsed.indication, comparison=parsed.comparison,
        sections=parsed.sections, origin=origin, notes=parsed.notes,
    )


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


def _walk_sorted(root: Path) -> Iterator[Path]:
    """Deterministic, streaming walk (os.scandir; sorted per folder so runs are reproducible)."""
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name, reverse=True)
        except OSError:
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
        for e in reversed(entries):
            if e.is_file():
                yield Path(e.path)


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
                yield _record_from_text(text, rid, "mimic", origin, opts, patient, study)
        return
    for f in _walk_sorted(path):
        if not f.name.lower().endswith(".txt"):
            continue
        text = _read_file_text(f)
        if isinstance(text, Problem):
            yield text
            continue
        rid, patient, study = _mimic_ids(str(f.relative_to(path)))
        yield _record_from_text(text, rid, "mimic", str(f), opts, patient, study)


# ------------------------------------------------------------------ free text (in-house)

def read_text(path: Path, opts: ReadOptions) -> Iterator[Record | Problem]:
    files = [path] if path.is_file() else (f for f in _walk_sorted(path) if f.suffix.lower() == ".txt")
    for f in files:
        text = _read_file_text(f)
        if isinstance(text, Problem):
            yield text
            continue
        yield _record_from_text(text, f.stem, "text", str(f), opts, patient_id=f.stem, study_id=f.stem)


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
    files = [path] if path.is_file() else (f for f in _walk_sorted(path) if f.suffix.lower() == ".xml")
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as e:
            yield Problem(str(f), f"unreadable file ({e.strerror or e})")
            continue
        yield _openi_record(data, str(f), opts)


# ------------------------------------------------------------------ tables (CSV / JSONL / JSON)

def _open_text(path: Path) -> io.TextIOBase | Problem:
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        return Problem(str(path), f"unreadable file ({e.strerror or e})")
    if not head.strip():
        return Problem(str(path), "empty file")
    return open(path, encoding="utf-8-sig", newline="")


def _iter_rows(path: Path) -> Iterator[tuple[str, dict | Problem]]:
    """Yield (origin, row-dict or Problem) for CSV/JSONL/JSON, each row named by its line/row number."""
    fh = _open_text(path)
    if isinstance(fh, Problem):
        yield str(path), fh
        return
    name = path.name.lower()
    with fh:
        try:
            if name.endswith(".csv"):
                # csv.DictReader silently keeps short/long rows; we check them ourselves
                reader = csv.reader(fh)
                header = next(reader, None)
                if not header:
                    yield str(path), Problem(str(path), "no header row")
                    return
                header = [h.strip() for h in header]
                for i, row in enumerate(reader, start=2):
                    origin = f"{path}:{reader.line_num}"
                    if not any(c.strip() for c in row):
                        continue
                    if len(row) != len(header):
                        yield origin, Problem(origin, f"row {i} has {len(row)} fields, header has {len(header)}",
                                              {"row": row})
                        continue
                    yield origin, dict(zip(header, row))
            elif name.endswith(".json"):
                try:
                    data = json.load(fh)
                except json.JSONDecodeError as e:
                    yield str(path), Problem(str(path), f"not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}")
                    return
                if isinstance(data, dict):
                    data = next((v for v in data.values() if isinstance(v, list)), [data])
                for i, row in enumerate(data):
                    origin = f"{path}[{i}]"
                    yield origin, row if isinstance(row, dict) else Problem(origin, "item is not an object")
            else:
                for i, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    origin = f"{path}:{i}"
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        yield origin, Problem(origin, f"line {i} is not valid JSON ({e.msg})", {"line": line.rstrip("\n")})
                        continue
                    yield origin, row if isinstance(row, dict) else Problem(origin, f"line {i} is not a JSON object")
        except UnicodeDecodeError as e:
            yield str(path), Problem(str(path), f"not UTF-8 (byte offset {e.start} of a block): rows after this point not read")


def _resolve_columns(keys: set[str], cm: ColumnMap, origin: str) -> dict[str, str] | Problem:
    resolved = {}
    for fld, candidates in COLUMN_CANDIDATES.items():
        given = getattr(cm, fld)
        if given:
            if given not in keys:
                return Problem(origin, f"column '{given}' (columns.{fld}) not found; columns are {sorted(keys)}")
            resolved[fld] = given
        else:
            found = next((c for c in candidates if c in keys), None)
            if found:
                resolved[fld] = found
    if "text" not in resolved and not ({"findings", "impression"} <= resolved.keys()):
        missing = [f for f in ("findings", "impression") if f not in resolved]
        return Problem(origin, f"missing column(s) for {', '.join(missing)}; columns are {sorted(keys)} "
                               f"(map them with columns.findings=NAME columns.impression=NAME)")
    return resolved


def _cell(row: dict, col: str | None) -> str:
    v = row.get(col) if col else None
    if v is None:
        return ""
    return v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def read_table(path: Path, opts: ReadOptions, source: str = "table") -> Iterator[Record | Problem]:
    cols: dict[str, str] | None = None
    for n, (origin, row) in enumerate(_iter_rows(path)):
        if isinstance(row, Problem):
            yield row
            continue
        if cols is None:
            resolved = _resolve_columns(set(row), opts.columns, str(path))
            if isinstance(resolved, Problem):
                yield resolved
                return  # every row of this file would fail the same way: one clear problem
            cols = resolved
        rid = _cell(row, cols.get("id")).strip() or f"{path.stem}-{n}"
        patient = _cell(row, cols.get("patient_id")).strip()
        if "text" in cols and _cell(row, cols["text"]).strip() and "findings" not in cols:
            rec = _record_from_text(_cell(row, cols["text"]), rid, source, origin, opts, patient, rid)
        else:
            norm = lambda f: normalize_text(_cell(row, cols.get(f)), opts.phi_token)  # noqa: E731
            rec = Record(id=rid, source=source, patient_id=patient, study_id=rid,
                         findings=norm("findings"), impression=norm("impression"),
                         indication=norm("indication"), comparison=norm("comparison"), origin=origin)
            rec.sections = {k: v for k, v in (("findings", rec.findings), ("impression", rec.impression),
                                              ("indication", rec.indication), ("comparison", rec.comparison)) if v}
        if source == "iu-csv":
            rec.mesh = [m.strip() for m in row.get("MeSH", "").split(";") if m.strip()]
            rec.problems = [p.strip() for p in row.get("Problems", "").split(";") if p.strip()]
            rec.patient_id = rec.patient_id or rid
            if row.get("image"):
                rec.sections["examination"] = normalize_text(row["image"], opts.phi_token)
        yield rec


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
    yield from READERS[source](path, opts)


if __name__ == "__main__":  # tiny manual check: python -m radgpt.reports.sources PATH
    p = Path(sys.argv[1])
    for item in read_source(p, detect_source(p), ReadOptions()):
        print(item)
