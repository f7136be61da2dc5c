"""Patient-level train/validate/test assignment that needs no second pass over the data.

A patient's split is a pure function of (seed, patient id): a keyed hash mapped to [0, 1) and cut at
the split fractions. So one patient can never land in two splits, the assignment is reproducible,
and a 227k-report corpus is split while streaming, in memory that does not grow with it.
A given split file (e.g. MIMIC-CXR's official split csv) overrides the hash.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from radgpt.common.errors import FatalError

SPLITS = ("train", "validate", "test")
_ALIASES = {"train": "train", "training": "train", "validate": "validate", "validation": "validate",
            "val": "validate", "valid": "validate", "dev": "validate", "test": "test", "testing": "test"}


def hash_split(patient_id: str, seed: int, fractions: tuple[float, float, float]) -> str:
    digest = hashlib.blake2b(f"{seed}:{patient_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    edge = 0.0
    for name, frac in zip(SPLITS, fractions):
        edge += frac
        if u < edge:
            return name
    return SPLITS[-1]


def load_split_file(path: Path) -> tuple[dict[str, str], str]:
    """Read a CSV with a `split` column and an id column (study_id, id, subject_id or patient_id).
    Returns ({id: split}, which id column it keyed on)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            key = next((c for c in ("study_id", "id", "subject_id", "patient_id") if c in cols), None)
            if "split" not in cols or key is None:
                raise FatalError(f"{path}: split file needs a 'split' column and one of "
                                 f"study_id/id/subject_id/patient_id; it has {cols}")
            mapping: dict[str, str] = {}
            for i, row in enumerate(reader, start=2):
                split = _ALIASES.get((row["split"] or "").strip().lower())
                if split is None:
                    raise FatalError(f"{path}:{i}: unknown split {row['split']!r} (use train/validate/test)")
                ident = (row[key] or "").strip().lstrip("sp") if key in ("study_id", "subject_id") else row[key].strip()
                mapping[ident] = split
    except OSError as e:
        raise FatalError(f"{path}: cannot read split file ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise FatalError(f"{path}: split file is not UTF-8") from None
    return mapping, key
