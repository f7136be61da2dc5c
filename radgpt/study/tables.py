"""Ratings as flat rows (admin only): what the CSV export and the analysis both start from."""

from __future__ import annotations

import csv
import io
from collections import Counter

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, aliased

from radgpt.study.criteria import NAMES as CRITERIA
from radgpt.study.db import Assignment, Candidate, Case, Rating, Slot, System, User

COLUMNS = ["reader", "case", "stratum", "code", "model", "is_reference", *CRITERIA, "preference", "comment",
           "seconds", "shared_by", "updated_at"]


def rating_rows(s: Session, blinded: bool = False) -> list[dict]:
    """One row per rated candidate and model. `blinded` leaves model names out (codes only).

    A text that several models wrote for a case was shown (and rated) once: its rating gives one row for each
    of those models, with `shared_by` = how many (1 for a text only one model wrote). `seconds` is the time
    on the case's page until this rating was saved; `updated_at` the save time, ISO 8601 in UTC."""
    shown, member = aliased(Candidate), aliased(Candidate)
    q = (
        select(User.username, Case.source_id, Case.stratum, System.code, System.name, System.is_reference, Rating)
        .select_from(Rating)
        .join(Slot, Slot.id == Rating.slot_id)
        .join(Assignment, Assignment.id == Slot.assignment_id)
        .join(User, User.id == Assignment.reader_id)
        .join(shown, shown.id == Slot.candidate_id)
        .join(member, or_(member.id == shown.id, member.same_as_id == shown.id))
        .join(Case, Case.id == shown.case_id)
        .join(System, System.id == member.system_id)
        .order_by(User.username, Assignment.position, Slot.position, System.code)
    )
    rows, rating_ids = [], []
    for reader, case, stratum, code, name, is_ref, r in s.execute(q):
        row = {"reader": reader, "case": case, "stratum": stratum, "code": code,
               "model": code if blinded else name, "is_reference": bool(is_ref)}
        row.update({c: getattr(r, c) for c in CRITERIA})
        row.update({"preference": r.preference, "comment": r.comment, "seconds": r.seconds,
                    "updated_at": r.updated_at.isoformat() if r.updated_at else None})
        rows.append(row)
        rating_ids.append(r.id)
    shared = Counter(rating_ids)
    for row, rid in zip(rows, rating_ids):
        row["shared_by"] = shared[rid]
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
