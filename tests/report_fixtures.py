"""Small corpora written on the fly: OpenI XML from CSV rows, synthetic MIMIC-CXR trees and zips."""

from __future__ import annotations

import csv
import tarfile
import textwrap
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parents[1]
IU_CSV = REPO / "data/openi/indiana_reports.csv"


def iu_rows(n: int | None = None) -> list[dict]:
    with open(IU_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return rows[:n] if n else rows


def openi_xml(row: dict) -> str:
    mesh = "".join(f"<major>{escape(m)}</major>" for m in row["MeSH"].split(";") if m)
    parts = [f'<AbstractText Label="{label}">{escape(row[key])}</AbstractText>'
             for label, key in (("COMPARISON", "comparison"), ("INDICATION", "indication"),
                                ("FINDINGS", "findings"), ("IMPRESSION", "impression"))]
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<eCitation><uId id="CXR{row["uid"]}"/>'
            f"<MeSH>{mesh}</MeSH><MedlineCitation><Article><Abstract>{''.join(parts)}"
            f"</Abstract></Article></MedlineCitation>"
            f'<parentImage id="CXR{row["uid"]}_1_IM-0001-3001"><caption>x</caption></parentImage></eCitation>\n')


def write_openi_folder(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        (folder / f"{row['uid']}.xml").write_text(openi_xml(row), encoding="utf-8")
    return folder


def write_openi_tgz(path: Path, folder: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for f in sorted(folder.glob("*.xml")):
            tf.add(f, arcname=f"ecgen-radiology/{f.name}")
    return path


def mimic_report(findings: str, impression: str, indication: str = "Cough.") -> str:
    wrap = lambda t: "\n".join(" " + x for x in textwrap.wrap(t, 78))  # noqa: E731
    return (f"{' ' * 33}FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  {indication}\n \n"
            f" FINDINGS: \n \n{wrap(findings)}\n \n IMPRESSION: \n \n{wrap(impression)}\n")


def write_mimic_tree(root: Path, studies: dict[tuple[int, int], str | bytes]) -> Path:
    """studies: {(subject_id, study_id): text or raw bytes} -> files/pNN/pNNNNNNNN/sNNNNNNNN.txt"""
    for (subject, study), text in studies.items():
        d = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}"
        d.mkdir(parents=True, exist_ok=True)
        data = text if isinstance(text, bytes) else text.encode()
        (d / f"s{study}.txt").write_bytes(data)
    return root


def write_mimic_zip(path: Path, studies: dict[tuple[int, int], str | bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for (subject, study), text in studies.items():
            zf.writestr(f"files/p{str(subject)[:2]}/p{subject}/s{study}.txt", text)
    return path
