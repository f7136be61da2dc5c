"""Reading reference and prediction JSONL files and joining them by id.

The field names are radgpt.common.inputs's, the same `impress`, `study create` and retrieval accept (each
overridable on the command line):

  references   id: `id`, `idx`, `uid` or `study_id` (--id-field)       radgpt: {"id", "findings", "impression"}
               text: `impression`, `target`, `output`, `reference`     clin-summ: {"idx", "inputs", "target"}
                     (--ref-field)
               findings (optional, for subgroups and consistency flags): `findings`, `inputs`, `input`, `text`
                     (--findings-field)
  predictions  id: as above (--id-field)
               text: `impression`, `prediction`, `output`, `generated`, `text` (--pred-field)

The first listed field present in a file's first record is used for the whole file. When both files
have an id field, records are joined by id; otherwise by line order, and the files must have the same length. An empty or
null prediction text is kept (it scores 0 and is counted); a missing field is an error. A line that is not
UTF-8, not JSON or not an object stops the run, naming it by file:line and counting the others: scoring the
rest would silently drop a case.

Provenance (`read_references`, `read_predictions`): each file's path, sha256, size, line count and the
fields used; for predictions also what produced them, from the `provenance` object `radgpt impress` writes
on every line (model, kind, backend, adapter sha256, base, prompt template, shots, preset, decoding, ...),
or from those keys at the top level of a line. A key whose value differs between lines is "mixed" (its
distinct values are listed under "mixed").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from radgpt.common.errors import FatalError
from radgpt.common.inputs import (
    FINDINGS_FIELDS,
    ID_FIELDS,
    IMPRESSION_FIELDS,
    PREDICTION_FIELDS,
    pick_field,
    read_json_objects,
)

# Read from the top level of a prediction line when it has no "provenance" object.
PROVENANCE_KEYS = ("model", "kind", "backend", "adapter_sha256", "base", "model_path", "endpoint", "endpoint_model",
                   "device", "quantization", "prompt_template", "prompting", "shots", "preset", "decoding")
MIXED = "mixed"


@dataclass
class Reference:
    id: str
    impression: str
    findings: str = ""


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    records = list(read_json_objects(path))
    if not records:
        raise FatalError(f"{path}: no records")
    return records


def _pick(path, records, wanted: str | None, candidates: tuple[str, ...], what: str, required: bool = True):
    return pick_field(f"{path}:{records[0][0]}", records[0][1], wanted, candidates, what, required)


def text_field(where: str, record: dict, field: str, what: str = "") -> str:
    """record[field] as text ("" for null); a FatalError naming `where` (file:line) if missing or not text."""
    if field not in record:
        raise FatalError(f"{where}: missing field '{field}'" + (f" ({what})" if what else ""))
    value = record[field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FatalError(f"{where}: field '{field}' must be text, got {type(value).__name__}")
    return value


def _ids(path, records, id_field) -> list[str | None]:
    if id_field is None:
        return [None] * len(records)
    ids, seen = [], {}
    for lineno, rec in records:
        if id_field not in rec or rec[id_field] is None:
            raise FatalError(f"{path}:{lineno}: missing id field '{id_field}'")
        key = str(rec[id_field])
        if key in seen:
            raise FatalError(f"{path}:{lineno}: duplicate id {key!r} (first on line {seen[key]})")
        seen[key] = lineno
        ids.append(key)
    return ids


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_provenance(path: str | Path, records: list, **fields) -> dict:
    """{"path", "sha256", "bytes", "lines", <the fields used>} of one input file."""
    path = Path(path)
    return {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size, "lines": len(records),
            **{f"{k}_field": v for k, v in fields.items()}}


def generator_provenance(records: list[tuple[int, dict]]) -> dict:
    """What produced a prediction file, collected over its lines: {"generator": {key: value or "mixed"},
    "mixed": {key: [up to 5 distinct values]}, "lines_with_provenance": k, "generated": [first, last] time}."""
    objs = []
    for _, rec in records:
        prov = rec.get("provenance")
        if isinstance(prov, dict):
            objs.append(prov)
        else:
            objs.append({k: rec[k] for k in PROVENANCE_KEYS if k in rec})
    with_prov = sum(1 for o in objs if o)
    keys = list(dict.fromkeys(k for o in objs for k in o))
    generator, mixed = {}, {}
    for key in keys:
        distinct: dict[str, object] = {}
        for o in objs:
            value = o.get(key)
            distinct.setdefault(json.dumps(value, sort_keys=True, ensure_ascii=False), value)
        if len(distinct) == 1:
            generator[key] = next(iter(distinct.values()))
        else:
            generator[key] = MIXED
            mixed[key] = {"distinct": len(distinct), "values": list(distinct.values())[:5]}
    out = {"generator": generator, "mixed": mixed, "lines_with_provenance": with_prov}
    times = sorted(str(rec["time"]) for _, rec in records if rec.get("time"))
    if times:
        out["generated"] = [times[0], times[-1]]
    return out


def read_references(path, ref_field=None, id_field=None, findings_field=None) -> tuple[list[Reference], bool, dict]:
    """(references, has_ids, provenance). Findings are optional: "" when the file has none."""
    records = read_jsonl(path)
    idf = _pick(path, records, id_field, ID_FIELDS, "id", required=False)
    tf = _pick(path, records, ref_field, IMPRESSION_FIELDS, "reference text")
    ff = _pick(path, records, findings_field, FINDINGS_FIELDS, "findings", required=bool(findings_field))
    ids = _ids(path, records, idf)
    refs = []
    for k, ((lineno, rec), rid) in enumerate(zip(records, ids)):
        findings = text_field(f"{path}:{lineno}", rec, ff, "findings") if ff else ""
        refs.append(Reference(rid if rid is not None else str(k), text_field(f"{path}:{lineno}", rec, tf, "reference text"), findings))
    return refs, idf is not None, file_provenance(path, records, id=idf, text=tf, findings=ff)


def load_references(path, ref_field=None, id_field=None, findings_field=None) -> tuple[list[Reference], bool]:
    """(references, has_ids). Findings are optional: "" when the file has none."""
    refs, has_ids, _ = read_references(path, ref_field, id_field, findings_field)
    return refs, has_ids


def read_predictions(path, pred_field=None, id_field=None) -> tuple[list[tuple[str | None, str]], bool, dict]:
    """(predictions as (id or None, text), has_ids, provenance: the file's and what produced it)."""
    records = read_jsonl(path)
    idf = _pick(path, records, id_field, ID_FIELDS, "id", required=False)
    tf = _pick(path, records, pred_field, PREDICTION_FIELDS, "prediction text")
    ids = _ids(path, records, idf)
    preds = [(pid, text_field(f"{path}:{lineno}", rec, tf, "prediction text")) for (lineno, rec), pid in zip(records, ids)]
    return preds, idf is not None, {**file_provenance(path, records, id=idf, text=tf), **generator_provenance(records)}


def load_predictions(path, pred_field=None, id_field=None) -> tuple[list[tuple[str | None, str]], bool]:
    preds, has_ids, _ = read_predictions(path, pred_field, id_field)
    return preds, has_ids


def align(refs: list[Reference], refs_have_ids: bool, preds, preds_have_ids: bool, name: str, path) -> list[str]:
    """Prediction texts in reference order; a clear error listing the first mismatches otherwise."""
    if refs_have_ids and preds_have_ids:
        by_id = {pid: text for pid, text in preds}
        ref_ids = [r.id for r in refs]
        missing = [i for i in ref_ids if i not in by_id]
        extra = [pid for pid, _ in preds if pid not in set(ref_ids)]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{len(missing)} reference ids have no prediction (first: {', '.join(missing[:5])})")
            if extra:
                parts.append(f"{len(extra)} prediction ids are not in the references (first: {', '.join(extra[:5])})")
            raise FatalError(f"{path} ({name}): ids do not match the references: " + "; ".join(parts))
        return [by_id[i] for i in ref_ids]
    if refs_have_ids != preds_have_ids and len(refs) != len(preds):
        raise FatalError(f"{path} ({name}): only one of the files has ids, and the lengths differ "
                         f"({len(refs)} references, {len(preds)} predictions); give both files an id field")
    if len(refs) != len(preds):
        raise FatalError(f"{path} ({name}): {len(preds)} predictions but {len(refs)} references "
                         f"(no id field to join on, so records are matched by line order)")
    return [text for _, text in preds]
