"""Build a study: read references and N prediction files, pick cases, blind models, plan each reader's order.

Input formats (JSON Lines, one record per line; field names can be overridden): the names every radgpt
reader accepts (radgpt.common.inputs), detected from the first record, so a file `evaluate` reads, this reads:
  references   id: id, idx, uid, study_id; findings: findings, inputs, input, text; impression: impression,
               target, output, reference; indication (shown to readers if present): indication, history,
               clinical_history. radgpt records {"id", "findings", "impression"}, clin-summ {"idx", "inputs", "target"}
  predictions  id as above; impression: impression, prediction, output, generated, text
A bad line (not UTF-8, not JSON, not an object) stops `create`, named by file:line, with the others counted.

Randomness has two sources, on purpose: *which* cases, the blinding codes, the order candidates are
stored in and every reader's case and candidate order follow the study seed (reproducible, auditable once
it is revealed); the tokens in URLs come from `secrets` (unguessable, so a reader cannot reach another
reader's items by editing a URL). The seed itself is secret: drawn with `secrets` unless the admin gives
one, since anyone who knows it can recompute which model wrote each candidate on a reader's page.
"""

from __future__ import annotations

import io
import random
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from radgpt.common.errors import FatalError
from radgpt.common.inputs import (
    FINDINGS_FIELDS,
    ID_FIELDS,
    IMPRESSION_FIELDS,
    INDICATION_FIELDS,
    PREDICTION_FIELDS,
    json_objects,
    pick_field,
)
from radgpt.study.db import Assignment, Candidate, Case, Slot, Study, System, User

REFERENCE_NAME = "reference"


def same_text(text: str) -> str:
    """The key under which two candidates count as identical: the text with its whitespace runs collapsed."""
    return " ".join(text.split())


@dataclass
class Fields:
    """Field names in the input files; None = detect from the first record."""

    ref_id: str | None = None
    ref_findings: str | None = None
    ref_impression: str | None = None
    pred_id: str | None = None
    pred_impression: str | None = None
    stratum: str | None = None  # a reference field holding "normal"/"abnormal" (or 0/1 abnormal); else guessed
    ref_indication: str | None = None  # None = "indication" (or "history") when the records have it, else none


def read_jsonl(name: str, text: str | bytes) -> list[tuple[int, dict]]:
    """(line number, record) of each non-blank line. Given as bytes, a line that is not UTF-8 is named by its
    byte offset; given as text, the caller has decoded the file."""
    rows = json_objects(io.BytesIO(text) if isinstance(text, bytes) else text, name)
    if not rows:
        raise FatalError(f"{name}: no records")
    return rows


def storable(name: str, n: int, field: str, value, line: int | None = None) -> str:
    """`value` as text a database can store: NUL (which PostgreSQL text cannot hold) and lone surrogate
    escapes such as \\ud800 (not Unicode text) are refused, naming the record (and its line), on SQLite as on
    PostgreSQL."""
    text = "" if value is None else str(value)
    on = f" on line {line}" if line is not None else ""
    if "\x00" in text:
        raise FatalError(f"{name}: record {n}: '{field}' holds a NUL character (\\u0000){on}, which the study "
                         f"database cannot store; remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FatalError(f"{name}: record {n}: '{field}' holds a lone surrogate escape (such as \\ud800){on}, "
                         f"which is not Unicode text") from None
    return text


def guess_stratum(impression: str) -> str:
    """"abnormal" when the reference impression states a finding — the one definition radgpt uses everywhere
    (radgpt.findings.faithfulness.is_abnormal); `Fields.stratum` overrides the guess."""
    from radgpt.findings.faithfulness import is_abnormal

    return "abnormal" if is_abnormal(impression) else "normal"


def _stratum_value(name: str, value) -> str:
    v = str(value).strip().lower()
    if v in ("normal", "0", "false", "no"):
        return "normal"
    if v in ("abnormal", "1", "true", "yes"):
        return "abnormal"
    raise FatalError(f"{name}: stratum value {value!r} is not normal/abnormal (or 0/1)")


def load_references(name: str, text: str | bytes, fields: Fields) -> dict[str, dict]:
    rows = read_jsonl(name, text)
    line0, first = rows[0]
    where = f"{name}:{line0}"
    fid = pick_field(where, first, fields.ref_id, ID_FIELDS, "case id")
    ffind = pick_field(where, first, fields.ref_findings, FINDINGS_FIELDS, "findings")
    fimp = pick_field(where, first, fields.ref_impression, IMPRESSION_FIELDS, "reference impression")
    find = pick_field(where, first, fields.ref_indication, INDICATION_FIELDS, "indication", required=False)
    out: dict[str, dict] = {}
    seen: dict[str, int] = {}
    for n, (line, row) in enumerate(rows, 1):
        missing = [f for f in (fid, ffind, fimp) if f not in row]
        if missing:
            raise FatalError(f"{name}:{line}: record {n} lacks {', '.join(missing)}")
        key = storable(name, n, fid, row[fid], line)
        if key in out:
            raise FatalError(f"{name}:{line}: case id {key} appears twice (first on line {seen[key]})")
        seen[key] = line
        if fields.stratum:
            if fields.stratum not in row:
                raise FatalError(f"{name}:{line}: record {n} lacks the stratum field '{fields.stratum}'")
            stratum = _stratum_value(f"{name}:{line}", row[fields.stratum])
        else:
            stratum = guess_stratum(str(row[fimp]))
        out[key] = {"findings": storable(name, n, ffind, row[ffind], line),
                    "reference": storable(name, n, fimp, row[fimp], line), "stratum": stratum,
                    "indication": storable(name, n, find, row.get(find) if find else None, line).strip()}
    return out


def load_predictions(name: str, text: str | bytes, fields: Fields) -> dict[str, str]:
    rows = read_jsonl(name, text)
    where = f"{name}:{rows[0][0]}"
    fid = pick_field(where, rows[0][1], fields.pred_id, ID_FIELDS, "case id")
    # the same names `radgpt evaluate` accepts, so one predictions file serves both
    fimp = pick_field(where, rows[0][1], fields.pred_impression, PREDICTION_FIELDS, "predicted impression")
    out: dict[str, str] = {}
    seen: dict[str, int] = {}
    for n, (line, row) in enumerate(rows, 1):
        if fid not in row or fimp not in row:
            raise FatalError(f"{name}:{line}: record {n} lacks '{fid}' or '{fimp}'")
        key = str(row[fid])
        if key in out:
            raise FatalError(f"{name}:{line}: case id {key} appears twice (first on line {seen[key]})")
        seen[key] = line
        out[key] = storable(name, n, fimp, row[fimp], line)
    return out


def _examples(ids: set[str]) -> str:
    shown = sorted(ids, key=lambda s: (len(s), s))[:3]
    return ", ".join(shown) + (", ..." if len(ids) > 3 else "")


def check_coverage(ref_name: str, refs: dict, preds: dict[str, tuple[str, dict]], intersect: bool) -> list[str]:
    """The case ids every file shares. Unless `intersect`, any difference is an error naming the files."""
    ref_ids = set(refs)
    problems = []
    common = set(ref_ids)
    for file, pred in preds.values():
        ids = set(pred)
        common &= ids
        lacking, extra = ref_ids - ids, ids - ref_ids
        if lacking:
            problems.append(f"{file} lacks {len(lacking)} of the reference cases (e.g. {_examples(lacking)})")
        if extra:
            problems.append(f"{file} has {len(extra)} cases not in {ref_name} (e.g. {_examples(extra)})")
    if problems and not intersect:
        raise FatalError(
            f"the files do not cover the same cases as {ref_name} ({len(ref_ids)} cases): "
            + "; ".join(problems)
            + ". Fix the files or pass --intersect to study only the cases all of them share."
        )
    if not common:
        raise FatalError(f"no case id is shared by {ref_name} and every prediction file")
    return sorted(common, key=lambda s: (len(s), s))


def select_cases(strata: dict[str, str], n: int | None, method: str, seed: int | str) -> list[str]:
    """Seeded choice of `n` case ids: uniformly, or half normal / half abnormal ('stratified')."""
    ids = sorted(strata, key=lambda s: (len(s), s))
    rng = random.Random(f"cases/{seed}")
    if n is None or n >= len(ids):
        if method == "stratified" and n is not None and n > len(ids):
            raise FatalError(f"asked for {n} cases but only {len(ids)} are available")
        return ids
    if n < 1:
        raise FatalError("--n-cases must be at least 1")
    if method == "random":
        return sorted(rng.sample(ids, n), key=ids.index)
    if method != "stratified":
        raise FatalError(f"unknown selection '{method}' (random or stratified)")
    normal = [i for i in ids if strata[i] == "normal"]
    abnormal = [i for i in ids if strata[i] == "abnormal"]
    n_abn = min(len(abnormal), (n + 1) // 2)
    n_norm = n - n_abn
    if n_norm > len(normal):
        n_norm, n_abn = len(normal), n - len(normal)
    chosen = rng.sample(abnormal, n_abn) + rng.sample(normal, n_norm)
    return sorted(chosen, key=ids.index)


def blinding_codes(names: list[str], seed: int | str) -> dict[str, str]:
    """name -> code. Codes are assigned after a seeded shuffle, so code order says nothing about input order."""
    shuffled = sorted(names)
    random.Random(f"codes/{seed}").shuffle(shuffled)
    return {name: (f"SYS-{chr(65 + i)}" if i < 26 else f"SYS-{i + 1}") for i, name in enumerate(shuffled)}


def new_seed() -> str:
    """128 random bits: far beyond any search, unlike a small integer (0..200,000 takes seconds)."""
    return secrets.token_hex(16)


def reader_plan(seed: int | str, username: str, cases: dict[int, list[int]]) -> list[tuple[int, list[int]]]:
    """One reader's order: cases shuffled, and the candidates within each case shuffled, from (seed, reader)."""
    rng = random.Random(f"reader/{seed}/{username}")
    case_ids = sorted(cases)
    rng.shuffle(case_ids)
    plan = []
    for case_id in case_ids:
        cands = sorted(cases[case_id])
        rng.shuffle(cands)
        plan.append((case_id, cands))
    return plan


def create_study(
    Session: sessionmaker,
    references: tuple[str, str],
    predictions: list[tuple[str, str, str]],
    *,
    fields: Fields | None = None,
    n_cases: int | None = None,
    selection: str = "random",
    seed: int | str | None = None,
    include_reference: bool = False,
    pairwise: bool = False,
    intersect: bool = False,
    name: str = "Reader study",
) -> dict:
    """references = (file name, text); predictions = [(model name, file name, text)]; a text given as bytes
    (the file as read) lets a line that is not UTF-8 be named by its byte offset. Returns a summary.
    `seed` None draws a secret one (the admin sees it on the key page and in `analyze`); a chosen seed
    makes the study reproducible but only as blind as the seed is secret."""
    fields = fields or Fields()
    seed = new_seed() if seed is None else str(seed)
    if not 0 < len(seed) <= 64:
        raise FatalError("the seed must be 1-64 characters")
    if not predictions:
        raise FatalError("give at least one prediction file")
    if include_reference and pairwise:
        raise FatalError(
            "--include-reference and --pairwise exclude each other: pairwise shows the reference labelled, "
            "which would unblind it as a candidate"
        )
    storable("the study", 1, "name", name)
    ref_name, ref_text = references
    refs = load_references(ref_name, ref_text, fields)
    preds: dict[str, tuple[str, dict]] = {}
    for model, file, text in predictions:
        if model == REFERENCE_NAME:
            raise FatalError(f"'{REFERENCE_NAME}' is reserved for the reference impressions; rename {file}")
        if model in preds:
            raise FatalError(f"two prediction files are named '{model}' ({preds[model][0]}, {file}); use NAME=PATH")
        storable(file, 1, "model name", model)
        preds[model] = (file, load_predictions(file, text, fields))
    common = check_coverage(ref_name, refs, preds, intersect)
    chosen = select_cases({i: refs[i]["stratum"] for i in common}, n_cases, selection, seed)

    with Session.begin() as s:
        if s.scalar(select(Study.id)) is not None:
            raise FatalError("this database already holds a study; use a new --db")
        s.add(Study(name=name, seed=seed, include_reference=include_reference, pairwise=pairwise,
                    selection=f"{selection}:{len(chosen)}"))
        names = list(preds) + ([REFERENCE_NAME] if include_reference else [])
        codes = blinding_codes(names, seed)
        systems = {}
        for model in sorted(names, key=codes.get):  # ids in code order, not --pred order
            source = preds[model][0] if model in preds else ref_name
            systems[model] = System(code=codes[model], name=model, is_reference=model == REFERENCE_NAME,
                                    source=Path(source).name)
            s.add(systems[model])
        s.flush()
        rng = random.Random(f"candidates/{seed}")
        merged_cases = merged_candidates = 0
        for case_key in chosen:
            r = refs[case_key]
            case = Case(source_id=case_key, findings=r["findings"], indication=r["indication"],
                        reference=r["reference"], stratum=r["stratum"])
            s.add(case)
            s.flush()
            # Candidate ids in a seeded order per case, so no id pattern follows the --pred order.
            shown: dict[str, Candidate] = {}
            same: list[tuple[Candidate, Candidate]] = []
            for model in rng.sample(names, len(names)):
                text = r["reference"] if model == REFERENCE_NAME else preds[model][1][case_key]
                cand = Candidate(case_id=case.id, system_id=systems[model].id, text=text)
                s.add(cand)
                first = shown.setdefault(same_text(text), cand)
                if first is not cand:  # the same text as a model before it: rated once, counted for both
                    same.append((cand, first))
            if same:
                s.flush()
                for cand, first in same:
                    cand.same_as_id = first.id
                merged_cases += 1
                merged_candidates += len(same)
        strata = [refs[i]["stratum"] for i in chosen]
    return {"cases": len(chosen), "normal": strata.count("normal"), "abnormal": strata.count("abnormal"),
            "systems": {codes[m]: m for m in names}, "seed": seed, "merged_cases": merged_cases,
            "merged_candidates": merged_candidates,
            "with_indication": sum(bool(refs[i]["indication"]) for i in chosen)}


def assign_reader(s: Session, user: User) -> int:
    """Create the reader's worklist (idempotent: a reader who has one keeps it). Returns its length."""
    study = s.scalar(select(Study))
    if study is None:
        return 0
    if s.scalar(select(Assignment.id).where(Assignment.reader_id == user.id).limit(1)) is not None:
        return 0
    cases: dict[int, list[int]] = {}
    # a candidate with the same text as another is not shown again (its model gets that one's ratings)
    for cand_id, case_id in s.execute(select(Candidate.id, Candidate.case_id).where(Candidate.same_as_id.is_(None))):
        cases.setdefault(case_id, []).append(cand_id)
    plan = reader_plan(study.seed, user.username, cases)
    for pos, (case_id, cands) in enumerate(plan):
        a = Assignment(token=secrets.token_urlsafe(12), reader_id=user.id, case_id=case_id, position=pos)
        s.add(a)
        s.flush()
        s.add_all(Slot(token=secrets.token_urlsafe(12), assignment_id=a.id, candidate_id=c, position=i)
                  for i, c in enumerate(cands))
    return len(plan)


def assign_all_readers(Session: sessionmaker) -> None:
    """Readers invited before the study existed get their worklists now."""
    with Session.begin() as s:
        for user in s.scalars(select(User).where(User.role == "reader")):
            assign_reader(s, user)
