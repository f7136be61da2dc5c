"""Agreement of a labeler with the NegBio gold labels of the OpenI (Indiana University) reports.

Used by bench/bench_labeler.py and the agreement test. The NegBio file labels the 14 ChestX-ray14 findings
per report (`CXR<uid>`, 0/1); the report text is findings + impression from indiana_reports.csv.
The uids are split by parity: even uids are the half the labeler's rules were developed on, odd uids
were not looked at while writing them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

from radgpt.findings.labeler import CHESTXRAY14


def load_openi(openi_dir: str | Path) -> list[dict]:
    """[{uid, text, gold: {label: 0/1}}] for every report that has NegBio labels."""
    openi_dir = Path(openi_dir)
    with open(openi_dir / "indiana_reports.csv", newline="", encoding="utf-8") as fh:
        reports = {int(r["uid"]): r for r in csv.DictReader(fh)}
    rows = []
    with open(openi_dir / "negbio_openi_labels.csv", newline="", encoding="utf-8") as fh:
        for g in csv.DictReader(fh):
            uid = int(g["filename"].removeprefix("CXR"))
            if uid not in reports:
                continue
            r = reports[uid]
            text = " ".join(s.strip() for s in (r["findings"], r["impression"]) if s.strip())
            rows.append({"uid": uid, "text": text, "gold": {k: int(g[k]) for k in CHESTXRAY14}})
    return rows


def frequent_labels(rows: list[dict], min_positives: int = 20) -> list[str]:
    return [k for k in CHESTXRAY14 if sum(r["gold"][k] for r in rows) >= min_positives]


def agreement(rows: list[dict], predict: Callable[[str], dict[str, int]], labels: list[str]) -> dict:
    """Per-label precision/recall/F1 and their macro average for a 0/1 predictor."""
    counts = {k: [0, 0, 0] for k in labels}  # tp, fp, fn
    for r in rows:
        pred = predict(r["text"])
        for k in labels:
            p, g = pred.get(k, 0), r["gold"][k]
            counts[k][0] += p and g
            counts[k][1] += p and not g
            counts[k][2] += g and not p
    per_label = {}
    for k, (tp, fp, fn) in counts.items():
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_label[k] = {"precision": prec, "recall": rec, "f1": f1, "positives": tp + fn}
    macro = sum(v["f1"] for v in per_label.values()) / len(per_label) if per_label else 0.0
    return {"macro_f1": macro, "per_label": per_label}
