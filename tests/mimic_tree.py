"""Synthetic MIMIC-CXR corpora with several studies per patient: the case a patient-level split exists for.

OpenI has one report per patient, so a split by report id and a split by patient give the same answer
on it; MIMIC-CXR (and every hospital export) has many studies per patient. These reports follow the
layout of the one report the MIMIC-CXR owners publish (../shared/data/mimic-cxr/example_report.txt):
a centred FINAL REPORT title, lines starting with one space wrapped at 79 columns, upper-case headers
ending in `:`, PHI as `___`. The sentences are written for these tests; no real MIMIC text is used.
"""

from __future__ import annotations

import random
import textwrap
from dataclasses import dataclass
from pathlib import Path

from tests.report_fixtures import write_mimic_tree

# (findings sentence, what an impression says about it or "" for a normal statement)
FINDINGS_POOL: tuple[tuple[str, str], ...] = (
    ("The lungs are clear without focal consolidation.", ""),
    ("Heart size is normal.", ""),
    ("No pneumothorax is seen.", ""),
    ("Mediastinal and hilar contours are unremarkable.", ""),
    ("There is a small left pleural effusion.", "Small left pleural effusion."),
    ("A small right pleural effusion is new.", "New small right pleural effusion."),
    ("Mild cardiomegaly is unchanged.", "Stable mild cardiomegaly."),
    ("Patchy opacity at the right lung base may reflect atelectasis.", "Right basilar atelectasis."),
    ("Pulmonary vascular congestion is mild.", "Mild pulmonary vascular congestion."),
    ("An endotracheal tube terminates 4 cm above the carina.", "Endotracheal tube in standard position."),
    ("A right internal jugular line ends in the low SVC.", "Right internal jugular line in the low SVC."),
    ("Degenerative changes are seen in the thoracic spine.", ""),
)
NORMAL_IMPRESSION = "No acute cardiopulmonary process."
# The findings of the most common report: written, word for word, for many patients (as in MIMIC, where
# ~12% of training findings are exact duplicates).
NORMAL_CODE = 0b1111


def findings_and_impression(code: int) -> tuple[str, str]:
    """The report with this code (1 .. 2**len(FINDINGS_POOL)-1): the pool sentences whose bit is set.
    Different codes give different findings, so a corpus has duplicates only where it asks for them."""
    chosen = [FINDINGS_POOL[j] for j in range(len(FINDINGS_POOL)) if code >> j & 1]
    findings = " ".join(s for s, _ in chosen)
    impression = " ".join(i for _, i in chosen if i) or NORMAL_IMPRESSION
    return findings, impression


def mimic_layout(findings: str, impression: str, indication: str = "___ year old man with cough") -> str:
    wrap = lambda t: "\n".join(" " + x for x in textwrap.wrap(t, 78))  # noqa: E731
    return (f"{' ' * 33}FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  {indication}\n \n"
            f" TECHNIQUE:  Chest PA and lateral\n \n COMPARISON:  ___\n \n"
            f" FINDINGS: \n \n{wrap(findings)}\n \n IMPRESSION: \n \n{wrap(impression)}\n")


@dataclass
class Study:
    subject: int  # MIMIC subject_id: the patient
    study: int  # MIMIC study_id: the report (file s<study>.txt)
    findings: str
    impression: str

    @property
    def record_id(self) -> str:
        return f"s{self.study}"

    @property
    def patient_id(self) -> str:
        return str(self.subject)


def multi_study_corpus(n_patients: int, studies: tuple[int, int] = (2, 6), normal_share: float = 0.0,
                       seed: int = 0) -> list[Study]:
    """n_patients patients with studies[0]..studies[1] studies each. Every report's text is unique, except
    that a `normal_share` of them are the same normal report (identical across patients)."""
    rng = random.Random(seed)
    codes = [c for c in range(1, 2 ** len(FINDINGS_POOL)) if c != NORMAL_CODE]
    rng.shuffle(codes)
    codes = iter(codes)
    out = []
    for p in range(n_patients):
        subject = 10_000_032 + 1_009 * p  # 8 digits starting with 1: files/p10/p10000032/
        for _ in range(rng.randint(*studies)):
            code = NORMAL_CODE if rng.random() < normal_share else next(codes)
            study = 50_000_000 + len(out) * 7_919 + rng.randrange(7_919)
            out.append(Study(subject, study, *findings_and_impression(code)))
    return out


def write_corpus(root: Path, corpus: list[Study]) -> Path:
    """files/p10/p10000032/s50414267.txt for every study, in the MIMIC-CXR layout."""
    studies = {(s.subject, s.study): mimic_layout(s.findings, s.impression) for s in corpus}
    return write_mimic_tree(root, studies)
