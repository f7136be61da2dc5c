"""Ratings as flat rows (admin only): what the CSV export and the analysis both start from."""

from __future__ import annotations

import csv
import io

from sqlalchemy import select
from sqlalchemy.orm import Session

from radgpt.study.criteria import NAMES as CRITERIA
from radgpt.study.models import Assignment, Candidate, Case, Rating, Slot, System, User

COLUMNS = ["reader", "case", "stratum", "code", "model", "is_reference", *CRITERIA, "preference", "comment",
           "updated_at"]


def rating_rows(s: Session, blinded: bool = False) -> list[dict]:
    """One row per rated candidate. `blinded` leaves model names out (codes only)."""
    q = (
        select(User.username, Case.source_id, Case.stratum, System.code, System.name, System.is_reference, Rating)
        .select_from(Rating)
        .join(Slot, Slot.id == Rating.slot_id)
        .join(Assignment, Assignment.id == Slot.assignment_id)
        .join(User, User.id == Assignment.reader_id)
        .join(Candidate, Candidate.id == Slot.candidate_id)
        .join(Case, Case.id == Candidate.case_id)
        .join(System, System.id == Candidate.system_id)
        .order_by(User.username, Assignment.position, Slot.position)
    )
    rows = []
    for reader, case, stratum, code, name, is_ref, r in s.execute(q):
        row = {"reader": reader, "case": case, "stratum": stratum, "code": code,
               "model": code if blinded else name, "is_reference": bool(is_ref)}
        row.update({c: getattr(r, c) for c in CRITERIA})
        row.update({"preference": r.preference, "comment": r.comment, "updated_at": r.updated_at})
        rows.append(row)
    return rows


def _cell(value):
    # A reader's comment starting with = + - @ would run as a formula when the admin opens the CSV in a
    # spreadsheet (CSV injection); a leading apostrophe keeps it text.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    return buf.getvalue()
