"""Synthetic messy hospital report exports (RIS/PACS CSV, one row per exam), with the gold answers.

    from tests.messy_exports import generate, write_export, variant_names
    csv_bytes, gold = generate(n_reports=200, seed=0, variant="default")

An export looks like what hospitals hand over: one row per exam with an accession number, a patient
MRN (several exams per patient), exam date, modality, procedure, ordering provider, and the WHOLE
report in one text column. The report texts are real IU chest X-ray sections
(data/openi/indiana_reports.csv, CC BY-NC-ND; a small built-in synthetic list if that file is missing)
laid out the many ways RIS templates and radiologists write them: header forms in any case
(`FINDINGS:`, `Findings -`, `Findings` alone, `IMPRESSION`, `CONCLUSION:`, `Opinion:`, `Summary:`),
body on the header's line or the next ones, hard-wrapped or one sentence a line, findings split in
paragraphs or under organ sub-headings (`Lungs: ...`), numbered impressions (`1.`/`1)`), impression
before findings, EXAM/HISTORY/INDICATION/REASON FOR EXAM/COMPARISON/TECHNIQUE sections, title lines,
signature/dictation/transcription lines and footers. Bytes are what Windows software writes: CRLF,
quoted multi-line fields, mostly ASCII with cp1252 characters (NBSP, curly quotes, en dash, é) in a
few rows; the "default" variant also has one or two rows made truly undecodable (bytes undefined in
cp1252 and invalid in UTF-8) that still split into CSV rows. Plus all-empty rows, unreported exams,
findings-only (preliminary) and impression-only reports.

Each gold entry (one per data row, in file order):
    row_line    physical line (1-based; the header is line 1) where the row starts in the file
    accession   the row's id column value ("" for an all-empty row)
    mrn         the row's patient column value (kept as text: leading zeros matter)
    findings    expected findings, whitespace-normalised (re.sub(r"\\s+", " ", t).strip())
    impression  expected impression, same normalisation ("" when the report has none)
    indication  expected indication (HISTORY / Indication / Reason for exam ...), or ""
    both        the row has both findings and impression (and is readable, not empty)
    readable    False for a row deliberately made undecodable
    empty       the report text is empty (all-empty row or an exam not yet reported)
    uid         the IU uid the texts came from ("" if none)
Expected texts never include the header word itself nor signature/dictation/transcription lines;
numbered impressions keep their numbers; organ sub-headings inside findings stay verbatim.

Variants (`variant_names()`): column names, encoding, delimiter, quoting and line ends; "random"
draws all of those from the seed. Everything is deterministic for a given (n_reports, seed, variant).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import random
import re
import textwrap
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IU_CSV = REPO / "data/openi/indiana_reports.csv"

ID_COLUMNS = ["AccessionNumber", "Accession", "Accession #", "StudyID"]
MRN_COLUMNS = ["PatientMRN", "MRN", "Patient ID", "PatientID", "patient_mrn"]
TEXT_COLUMNS = ["ReportText", "Report Text", "Report", "Narrative", "report_text", "REPORT"]

_SPACE = re.compile(r"\s+")
_BAD_MARK = "\x00BAD\x00"  # replaced by undecodable bytes after encoding
# bytes undefined in cp1252 (Python's codec refuses them) and never valid as a UTF-8 lead byte
_UNDEFINED_CP1252 = (0x81, 0x8D, 0x8F, 0x90, 0x9D)


def norm(text: str) -> str:
    """The normalisation the gold uses (Python's \\s includes NBSP)."""
    return _SPACE.sub(" ", text or "").strip()


# ---------------------------------------------------------------------------------------- variants

@dataclass(frozen=True)
class Variant:
    id_col: str = "AccessionNumber"
    mrn_col: str = "PatientMRN"
    text_col: str = "ReportText"
    extras: tuple[str, ...] = ("ExamDate", "Modality", "ProcedureDescription", "OrderingProvider")
    text_position: int = -1  # index of the report column among all columns (-1 = last)
    encoding: str = "cp1252"  # cp1252 | utf-8 | utf-8-sig
    eol: str = "\r\n"  # between rows
    inner_eol: tuple[str, ...] = ("\r\n",)  # inside quoted report fields (drawn per row)
    delimiter: str = ","
    quote_all: bool = False
    unreadable: tuple[int, int] = (0, 0)  # (min, max) undecodable rows
    date_format: str = "%m/%d/%Y %H:%M"
    mrn_style: str = "zero8"  # zero8 | letter | plain
    acc_style: str = "acc"  # acc | num | dash
    special_rate: float = 0.06  # rows with cp1252-type characters
    flat_rate: float = 0.04  # rows whose line breaks were flattened to spaces ("FINDINGS: ... IMPRESSION: ...")
    notes: tuple[str, ...] = field(default=())


VARIANTS: dict[str, Variant] = {
    # the house example: AccessionNumber, PatientMRN, ExamDate, ... ReportText; cp1252 + CRLF, broken rows
    "default": Variant(unreadable=(1, 2)),
    # spaces and '#' in the names, report column in the middle, Excel-style LF inside cells
    "spaced": Variant(id_col="Accession #", mrn_col="Patient ID", text_col="Report Text",
                      extras=("Exam Date", "Procedure Description", "Report Status", "Ordering Provider"),
                      text_position=2, inner_eol=("\n",), mrn_style="letter", acc_style="num",
                      unreadable=(0, 1)),
    # every field quoted, Narrative column, a PatientName column next to the MRN
    "narrative": Variant(id_col="Accession", mrn_col="MRN", text_col="Narrative",
                         extras=("PatientName", "ExamDate", "Modality", "ProcedureDescription"),
                         quote_all=True, inner_eol=("\r\n", "\n"), date_format="%Y-%m-%d %H:%M:%S",
                         acc_style="dash"),
    # a Linux-side dump: snake_case names, LF everywhere, UTF-8 text
    "snake": Variant(id_col="StudyID", mrn_col="patient_mrn", text_col="report_text",
                     extras=("exam_date", "modality", "procedure_description", "ordering_provider"),
                     text_position=3, encoding="utf-8", eol="\n", inner_eol=("\n",),
                     date_format="%Y-%m-%dT%H:%M:%S", mrn_style="plain", flat_rate=0.12),
    # upper-case names, REPORT column
    "upper": Variant(id_col="AccessionNumber", mrn_col="PatientID", text_col="REPORT",
                     extras=("EXAM_DATE", "MODALITY", "PROCEDURE", "ORDERING_PROVIDER", "STATUS"),
                     unreadable=(1, 1), acc_style="num"),
    # Excel "CSV UTF-8": BOM, CRLF, Report column
    "utf8-bom": Variant(id_col="Accession", mrn_col="MRN", text_col="Report", encoding="utf-8-sig",
                        inner_eol=("\n",), mrn_style="letter"),
    # European Excel: semicolon separator, day-first dates, cp1252
    "semicolon": Variant(id_col="AccessionNumber", mrn_col="Patient ID", text_col="Report Text",
                         delimiter=";", date_format="%d.%m.%Y %H:%M", unreadable=(1, 1)),
    # everything drawn from the seed (see _random_variant)
    "random": Variant(),
}


def variant_names() -> list[str]:
    """All variant names, for tests that loop over them."""
    return list(VARIANTS)


def _random_variant(rng: random.Random) -> Variant:
    encoding = rng.choice(["cp1252", "cp1252", "cp1252", "utf-8", "utf-8-sig"])
    extras_pool = ["ExamDate", "Modality", "ProcedureDescription", "OrderingProvider", "PatientName",
                   "ReportStatus", "Facility"]
    extras = tuple(rng.sample(extras_pool, rng.randint(1, 5)))
    n_cols = 3 + len(extras)
    eol = rng.choice(["\r\n", "\r\n", "\n"])
    return Variant(
        id_col=rng.choice(ID_COLUMNS), mrn_col=rng.choice(MRN_COLUMNS), text_col=rng.choice(TEXT_COLUMNS),
        extras=extras, text_position=rng.choice([-1, -1, rng.randrange(n_cols)]), encoding=encoding,
        eol=eol, inner_eol=(eol,) if rng.random() < 0.6 else ("\r\n", "\n"),
        delimiter=rng.choice([",", ",", ",", ",", ";", "\t"]), quote_all=rng.random() < 0.3,
        unreadable=(0, 2) if encoding == "cp1252" else (0, 0),
        date_format=rng.choice(["%m/%d/%Y %H:%M", "%Y-%m-%d %H:%M:%S", "%m/%d/%Y %I:%M %p", "%Y%m%d%H%M"]),
        mrn_style=rng.choice(["zero8", "letter", "plain"]), acc_style=rng.choice(["acc", "num", "dash"]),
        flat_rate=rng.choice([0.0, 0.04, 0.1]),
    )


# ----------------------------------------------------------------------------------- report texts

_FALLBACK_FINDINGS = [
    "The lungs are clear.", "There is no focal consolidation.", "No pleural effusion or pneumothorax.",
    "The heart size is normal.", "The cardiomediastinal silhouette is within normal limits.",
    "Mild cardiomegaly is unchanged.", "There is a small left pleural effusion.",
    "Right lower lobe opacity may represent atelectasis or pneumonia.", "Mild pulmonary vascular congestion.",
    "Degenerative changes of the thoracic spine.", "Calcified granuloma in the left upper lobe.",
    "Sternotomy wires are intact.", "The aorta is tortuous and calcified.", "No acute bony abnormality.",
    "Hyperexpanded lungs with flattened diaphragms.", "Streaky left basilar opacity, likely atelectasis.",
]
_FALLBACK_IMPRESSIONS = [
    "No acute cardiopulmonary abnormality.", "Small left pleural effusion.", "Mild cardiomegaly.",
    "Right lower lobe pneumonia in the appropriate clinical setting.", "No active disease.",
    "1. Left basilar atelectasis. 2. No pneumothorax.", "Hyperinflation consistent with COPD.",
    "Stable chest.", "Mild pulmonary edema.",
]
_FALLBACK_INDICATIONS = ["Cough.", "Chest pain.", "Shortness of breath.", "Fever and cough, rule out pneumonia.",
                         "Preoperative evaluation.", "Follow-up pneumonia.", ""]
_FALLBACK_COMPARISONS = ["None.", "", "Chest radiograph from last year.", "None available."]


def _fallback_reports(n: int = 400) -> list[dict]:
    rng = random.Random(12345)
    out = []
    for i in range(n):
        kind = rng.random()
        findings = " ".join(rng.sample(_FALLBACK_FINDINGS, rng.randint(2, 5))) if kind > 0.1 else ""
        impression = rng.choice(_FALLBACK_IMPRESSIONS) if kind < 0.95 else ""
        out.append({"uid": f"syn{i}", "image": "Xray Chest PA and Lateral",
                    "indication": rng.choice(_FALLBACK_INDICATIONS),
                    "comparison": rng.choice(_FALLBACK_COMPARISONS), "findings": findings,
                    "impression": impression})
    return out


# a text whose sentences open with a section/signature word, or that holds a colon, could be read as a
# header by any parser: such IU rows are left out so every gold answer is unambiguous
_HEADERISH = re.compile(
    r"(?:^|(?<=[.!?]\s))\s*(?:findings?|impressions?|conclusions?|opinion|summary|history|clinical|"
    r"indications?|comparisons?|technique|exam|examination|procedure|reason|signed|dictated|transcribed|"
    r"electronically|end of|final|report|addendum|recommendations?)\b", re.IGNORECASE)


# sign-off wording inside a section (IU has 'please call ... certified radiologist') would blur the gold
_SIGNOFF = re.compile(r"radiologist|signed|dictat|transcri|opportunity to assist|any questions|personally",
                      re.IGNORECASE)


def _usable(row: dict) -> bool:
    text = " ".join(row.get(k) or "" for k in ("findings", "impression", "indication"))
    if ":" in text or "\n" in text or "\r" in text or "_" in text or _HEADERISH.search(text) \
            or _SIGNOFF.search(text):
        return False
    return bool(norm(row.get("findings")) or norm(row.get("impression")))


def load_reports(path: Path | None = None) -> list[dict]:
    """IU report rows usable as report texts, or the built-in synthetic ones when the CSV is absent."""
    return [dict(r) for r in _load_reports(str(path or IU_CSV))]


@functools.lru_cache(maxsize=4)
def _load_reports(path: str) -> tuple[dict, ...]:
    if not Path(path).exists():
        return tuple(_fallback_reports())
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if _usable(r)]
    return tuple(rows or _fallback_reports())


# ------------------------------------------------------------------------------------ vocabularies

_FINDINGS_WORDS = ["Findings"] * 12 + ["Finding"]
_IMPRESSION_WORDS = (["Impression"] * 14 + ["Conclusion"] * 3 + ["Opinion"] * 2 + ["Summary", "Impressions",
                                                                                   "Conclusions"])
_INDICATION_HEADERS = ["HISTORY", "History", "CLINICAL HISTORY", "Clinical history", "Clinical History",
                       "INDICATION", "Indication", "Indications", "REASON FOR EXAM", "Reason for exam",
                       "Reason for Exam", "CLINICAL INDICATION", "Clinical indication"]
_EXAM_HEADERS = ["EXAM", "Exam", "EXAMINATION", "Examination", "PROCEDURE", "Procedure"]
_EXAM_NAMES = ["CHEST 2 VIEWS", "XR CHEST PA AND LATERAL", "Chest, 2 views, frontal and lateral",
               "CHEST PA/LAT", "XR CHEST 2V", "Radiographs of the chest, PA and lateral",
               "CR CHEST 1 VIEW PORTABLE", "X-ray chest PA and lateral"]
_COMPARISON_HEADERS = ["COMPARISON", "Comparison", "COMPARISONS", "Comparisons"]
_TECHNIQUE = ["TECHNIQUE: PA and lateral views of the chest.", "Technique: Frontal and lateral views.",
              "TECHNIQUE: Single portable AP view of the chest.", "Technique: 2 views.",
              "TECHNIQUE:\nPA and lateral chest radiographs were obtained."]
_TITLES = ["XR CHEST PA AND LATERAL", "CHEST X-RAY, 2 VIEWS", "RADIOLOGY REPORT", "*** Final Report ***",
           "FINAL REPORT", "DIAGNOSTIC RADIOLOGY REPORT", "Chest Radiograph"]
_FOOTERS = ["END OF REPORT", "*** Final Report ***", "*** End of Report ***", "[END OF REPORT]",
            "** FINAL **", "-- End of report --"]
_RADIOLOGISTS = ["Jane Smith", "John Doe", "Maria Garcia", "Wei Chen", "Ahmed Khan", "Sarah O'Neil",
                 "Robert Miller", "Priya Patel", "David Kim", "Laura Rossi"]
_ACCENTED_RADIOLOGISTS = ["Renée Côté", "José Núñez", "Hélène Dubé", "André Lefèvre"]
_TRANSCRIPTIONISTS = ["mk", "JT", "sr/ab", "LMW", "tkj"]
_PROVIDERS = ["Smith, John MD", "Brown, Alice DO", "Nguyen, Thanh MD", "Okafor, Chidi MD", "Weber, Anna NP",
              "Lee, Grace MD", "Hernandez, Luis PA-C"]
_PATIENT_NAMES = ["DOE, JOHN", "ROE, JANE", "SMITH, ALEX", "JONES, PAT", "TAYLOR, SAM", "MOORE, CHRIS"]
_PROCEDURES = ["XR CHEST PA AND LATERAL", "XR CHEST 2 VIEWS", "XR CHEST 1 VIEW", "CHEST PA/LAT",
               "XR CHEST PA LAT"]
_FACILITIES = ["MAIN CAMPUS", "NORTH CLINIC", "ED", "OUTPATIENT IMAGING"]
# cp1252-flavoured additions (NBSP, curly quotes, en dash, curly apostrophe, é)
_SPECIAL_FINDINGS = ["Stable 4\u20135 mm nodule in the right upper lobe.",
                     "Previously described \u201chaziness\u201d at the bases is not seen.",
                     "The patient\u2019s chin overlies the lung apices.",
                     "Heart size upper normal \u2013 unchanged."]
_SPECIAL_IMPRESSIONS = ["Follow-up in 4\u20136 weeks is suggested.",
                        "No \u201cacute\u201d process."]
_SPECIAL_INDICATIONS = ["Transfer from H\u00f4pital Saint-J\u00e9r\u00f4me.", "Cough \u2013 rule out pneumonia."]

_SUBHEADINGS = [
    (("Lines/tubes", "Tubes and lines", "Support devices"), re.compile(r"\b(tube|catheter|line|pacer|pacemaker|"
                                                                        r"port|wire|clip|stent)", re.IGNORECASE)),
    (("Pleura", "Pleural spaces"), re.compile(r"pleura|pneumothorax|effusion", re.IGNORECASE)),
    (("Lungs", "Lung fields", "Lungs and airways"), re.compile(r"lung|pulmon|consolidat|opacit|atelecta|"
                                                                r"edema|granulom|nodul|airspace|infiltr", re.IGNORECASE)),
    (("Heart", "Heart and mediastinum", "Cardiomediastinal", "Mediastinum"),
     re.compile(r"heart|cardi|mediastin|aort|hilar|hila|vascul", re.IGNORECASE)),
    (("Bones", "Osseous structures", "Bony thorax", "Musculoskeletal"),
     re.compile(r"bone|bony|osseous|spine|rib|fractur|degenerat|thoracic|vertebra|sternot|clavic|shoulder", re.IGNORECASE)),
]


def _sentences(text: str) -> list[str]:
    text = norm(text)
    if not text:
        return []
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9(])", text) if s]


def _header_word_starts(line: str) -> bool:
    """A body line must not begin like a header (keeps the gold unambiguous after wrapping)."""
    return bool(re.match(r"\s*(findings?|impressions?|conclusions?|opinion|summary|history|indications?|"
                         r"comparisons?|technique|exam|examination|procedure|reason|signed|dictated|"
                         r"transcribed|electronically|end|final|report|lungs|heart|pleura|bones)\b", line, re.IGNORECASE))


def _wrap(text: str, width: int) -> list[str]:
    """Hard-wrap like a RIS template; never let a continuation line start with a header-like word."""
    for w in (width, width + 7, width + 13, width + 23, 10_000):
        lines = textwrap.wrap(text, w, break_long_words=False, break_on_hyphens=False)
        if not any(_header_word_starts(line) for line in lines[1:]):
            return lines
    return [text]


@dataclass
class _Report:
    text: str
    findings: str
    impression: str
    indication: str


class _Builder:
    """Lays out one report; `body` lines are what the gold is made of."""

    def __init__(self, rng: random.Random, eol: str, flat: bool = False):
        self.rng, self.eol, self.flat = rng, eol, flat
        self.blocks: list[list[str]] = []

    # header line + body lines; returns the body text (for the gold)
    def section(self, word: str, body: list[str], same_line_ok: bool = True, nbsp: bool = False,
                alone_ok: bool = True) -> str:
        rng = self.rng
        forms = [f"{word.upper()}:", f"{word.title()}:", f"{word.upper()}:", f"{word.title()}:",
                 f"{word.lower()}:", f"{word.upper()} -", f"{word.title()} -", f"{word.upper()} :"]
        weights = [6, 6, 3, 3, 1, 1.5, 1.5, 0.5]
        if self.flat:  # on one line only a colon tells a header from text
            forms, weights = forms[:4], weights[:4]
        elif alone_ok:
            forms += [word.upper(), word.title()]
            weights += [2, 1.5]
        head = rng.choices(forms, weights)[0]
        lines: list[str] = []
        punct = head.endswith((":", "-"))
        if punct and same_line_ok and body and rng.random() < 0.45:
            sep = "\u00a0" if nbsp else rng.choice([" ", " ", " ", "  ", "\t"])
            lines.append(head + sep + body[0])
            lines.extend(body[1:])
        else:
            lines.append(head + (rng.choice(["", "", " ", "  "]) if rng.random() < 0.2 else ""))
            if rng.random() < 0.15:
                lines.append("")  # MIMIC style: a blank line under the header
            lines.extend(body)
        self.blocks.append(lines)
        return norm(" ".join(body))

    def lines(self, lines: list[str]) -> None:
        self.blocks.append(lines)

    def render(self) -> str:
        rng = self.rng
        if self.flat:  # an export that lost the line breaks: one line, sections run together
            words = [line.strip() for block in self.blocks for line in block if line.strip()]
            return rng.choice([" ", " ", "  "]).join(words)
        out: list[str] = []
        for i, block in enumerate(self.blocks):
            if i:
                out.extend([""] * rng.choices([0, 1, 2], [3, 6, 1])[0])
            out.extend(block)
        # trailing spaces on a few lines, indentation on some reports
        indent = rng.random() < 0.1
        res = []
        for line in out:
            if line and rng.random() < 0.05:
                line += rng.choice([" ", "  ", "\t"])
            if indent and line:
                line = " " + line
            res.append(line)
        text = self.eol.join(res)
        if rng.random() < 0.08:
            text = self.eol + text
        if rng.random() < 0.15:
            text += self.eol
        return text


def _findings_body(rng: random.Random, text: str) -> list[str]:
    sents = _sentences(text)
    style = rng.random()
    if len(sents) >= 3 and style < 0.15:
        # organ sub-headings inside findings: 'Lungs: ...', 'Heart: ...' (stay part of the findings)
        groups: dict[str, list[str]] = {}
        names = {keys: rng.choice(keys) for keys, _ in _SUBHEADINGS}
        lead: list[str] = []
        for s in sents:
            for keys, pat in _SUBHEADINGS:
                if pat.search(s):
                    groups.setdefault(names[keys], []).append(s)
                    break
            else:
                lead.append(s)
        lines = [" ".join(lead)] if lead else []
        for keys, _ in _SUBHEADINGS:
            name = names[keys]
            if name in groups:
                lines.append(f"{name}: {' '.join(groups[name])}")
        return lines
    if len(sents) >= 2 and style < 0.35:
        return sents  # one sentence a line
    if len(sents) >= 4 and style < 0.45:
        cut = rng.randint(1, len(sents) - 1)  # two paragraphs with a blank line between
        return _wrap(" ".join(sents[:cut]), rng.randint(55, 95)) + [""] + _wrap(" ".join(sents[cut:]),
                                                                              rng.randint(55, 95))
    if style < 0.8:
        return _wrap(norm(text), rng.randint(50, 100))
    return [norm(text)]


def _impression_body(rng: random.Random, text: str) -> list[str]:
    text = norm(text)
    numbered = re.split(r"\s+(?=\d{1,2}[.)]\s)", text)
    if len(numbered) > 1 or re.match(r"\d{1,2}[.)]\s", text):
        return numbered  # the report's own numbering, one item a line
    sents = _sentences(text)
    r = rng.random()
    if len(sents) >= 2 and r < 0.45:
        fmt = rng.choice(["{}.", "{}.", "{})", "{}. "])
        items = [f"{fmt.format(i)} {s}".replace("  ", " ") for i, s in enumerate(sents, 1)]
        if rng.random() < 0.15:  # a blank line between items
            items = [x for item in items for x in (item, "")][:-1]
        return items
    if len(sents) == 1 and r < 0.15:
        return [f"{rng.choice(['1.', '1)'])} {sents[0]}"]
    if r < 0.7:
        return _wrap(text, rng.randint(50, 100))
    return [text]


def _date_str(rng: random.Random, when: datetime) -> str:
    return rng.choice([when.strftime("%m/%d/%Y %H:%M"), when.strftime("%m/%d/%Y %I:%M %p"),
                       when.strftime("%Y-%m-%d %H:%M"), when.strftime("%m/%d/%Y")])


def _signature(rng: random.Random, when: datetime, accented: bool) -> list[str]:
    doc = rng.choice(_ACCENTED_RADIOLOGISTS if accented else _RADIOLOGISTS)
    res = rng.choice(_RADIOLOGISTS)
    signed = when + timedelta(minutes=rng.randint(5, 300))
    dictated = when + timedelta(minutes=rng.randint(1, 60))
    d, s = _date_str(rng, dictated), _date_str(rng, signed)
    options = [
        f"Electronically signed by: Dr. {doc}, MD on {s}",
        f"Electronically signed by {doc}, M.D. {s}",
        f"Electronically Signed By: {doc} MD",
        f"Signed: {doc} MD {signed:%Y-%m-%d}",
        f"Reviewed and electronically signed by {doc}, MD on {s}",
        f"This report was electronically signed by {doc}, MD on {s}.",
        f"Attending Radiologist: {doc}, MD",
        f"Radiologist: Dr. {doc}",
        f"Read by: {doc}, MD",
        f"Final report signed by Dr. {doc} {s}",
    ]
    lines = [rng.choice(options)]
    if rng.random() < 0.5:
        lines.insert(0, rng.choice([f"Dictated by: {doc}, MD", f"Dictated by: Dr. {res}", f"Dictated: {d}",
                                    f"Dictated by {res}, MD (resident) {d}"]))
    if rng.random() < 0.4:
        lines.append(rng.choice([f"Transcribed by: {rng.choice(_TRANSCRIPTIONISTS)}", f"Transcribed: {s}",
                                 f"D: {d}  T: {s}", f"Transcribed by: {rng.choice(_TRANSCRIPTIONISTS)} {s}"]))
    if rng.random() < 0.2:
        lines.insert(0, rng.choice(["I have personally reviewed the images and agree with the report above.",
                                    "I have personally reviewed the images and agree with the findings.",
                                    f"Resident: {res}, MD"]))
    if rng.random() < 0.2:
        lines.insert(0, rng.choice(["-" * rng.randint(20, 60), "=" * 40, "*" * 30]))
    return lines


def _build_report(rng: random.Random, row: dict, kind: str, eol: str, when: datetime, special: bool,
                  flat: bool = False) -> _Report:
    b = _Builder(rng, eol, flat)
    findings_text = norm(row.get("findings")) if kind in ("both", "findings") else ""
    impression_text = norm(row.get("impression")) if kind in ("both", "impression") else ""
    indication_text = norm(row.get("indication"))
    # cp1252-type characters: decide where (the gold follows the text as written)
    nbsp_header = special and rng.random() < 0.4
    accented_sig = special and rng.random() < 0.4
    if special:
        pick = rng.random()
        if findings_text and pick < 0.45:
            findings_text = f"{findings_text} {rng.choice(_SPECIAL_FINDINGS)}"
        elif impression_text and pick < 0.7:
            impression_text = f"{impression_text} {rng.choice(_SPECIAL_IMPRESSIONS)}"
        elif indication_text:
            indication_text = f"{indication_text} {rng.choice(_SPECIAL_INDICATIONS)}"
        if findings_text and " " in findings_text and rng.random() < 0.5:
            spaces = [m.start() for m in re.finditer(" ", findings_text)]
            at = rng.choice(spaces)
            findings_text = findings_text[:at] + "\u00a0" + findings_text[at + 1:]

    if rng.random() < 0.3:
        b.lines([rng.choice(_TITLES)])
    pre: list[tuple[str, object]] = []
    if rng.random() < 0.65:
        exam = rng.choice(_EXAM_NAMES + [norm(row.get("image")) or _EXAM_NAMES[0]])
        sep = rng.choice([": ", ": ", ":\t", ":" + eol, " - "])
        pre.append(("exam", f"{rng.choice(_EXAM_HEADERS)}{sep}{exam}"))
    gold_indication = ""
    if indication_text and rng.random() < 0.85:
        pre.append(("indication", indication_text))
    comparison = norm(row.get("comparison"))
    if rng.random() < 0.6:
        if not comparison or rng.random() < 0.3:
            comparison = rng.choice(["None.", "None", f"{when - timedelta(days=rng.randint(30, 900)):%m/%d/%Y}",
                                     "Chest radiograph from prior year.", "No prior studies available."])
        if special and rng.random() < 0.3:
            comparison = f"Outside films from H\u00f4pital Sainte-Th\u00e9r\u00e8se, {comparison}"
        pre.append(("comparison", f"{rng.choice(_COMPARISON_HEADERS)}:{rng.choice([' ', ' ', '  '])}{comparison}"))
    if rng.random() < 0.3:
        pre.append(("technique", rng.choice(_TECHNIQUE).replace("\n", eol)))
    if rng.random() < 0.15 and len(pre) > 1:
        rng.shuffle(pre)  # indication before exam, comparison first ...
    for what, value in pre:
        if what == "indication":
            head = rng.choice(_INDICATION_HEADERS)
            body = _wrap(value, rng.randint(50, 100)) if rng.random() < 0.6 else [value]
            if rng.random() < 0.2:
                lines = [f"{head}:"] + body
            else:
                lines = [f"{head}:{rng.choice([' ', ' ', '  '])}{body[0]}"] + body[1:]
            gold_indication = norm(" ".join(body))
            b.lines(lines)
        else:
            b.lines(str(value).split(eol))

    sections = []
    if findings_text:
        sections.append("findings")
    if impression_text:
        sections.append("impression")
    if len(sections) == 2 and rng.random() < 0.12:
        sections.reverse()  # impression first
    gold_f = gold_i = ""
    for name in sections:
        if name == "findings":
            body = _findings_body(rng, findings_text)
            # a findings body that opens with a sub-heading reads badly on the header's own line
            same_ok = not re.match(r"[A-Z][\w /]+: ", body[0])
            gold_f = b.section(rng.choice(_FINDINGS_WORDS), body, same_line_ok=same_ok, nbsp=nbsp_header)
        else:
            body = _impression_body(rng, impression_text)
            gold_i = b.section(rng.choice(_IMPRESSION_WORDS), body, nbsp=nbsp_header)
    if rng.random() < 0.75 or accented_sig:
        sig = _signature(rng, when, accented_sig)
        if kind == "findings" and not flat and rng.random() < 0.5:
            sig.insert(0, rng.choice(["Preliminary report, impression to follow.", "PRELIMINARY REPORT",
                                      "*** Preliminary ***"]))
        b.lines(sig)
    if rng.random() < 0.15:
        b.lines([rng.choice(_FOOTERS)])
    return _Report(b.render(), gold_f, gold_i, gold_indication)


# ------------------------------------------------------------------------------------------ export

def _mrn(rng: random.Random, style: str, used: set[str]) -> str:
    while True:
        if style == "zero8":
            v = f"{rng.randint(1, 9_999_999):08d}"
            if not v.startswith("0"):
                v = "0" + v[1:]  # leading zeros: an MRN is text, not a number
        elif style == "letter":
            v = f"E{rng.randint(1_000_000, 9_999_999)}"
        else:
            v = str(rng.randint(100_000, 9_999_999))
        if v not in used:
            used.add(v)
            return v


def _accession(rng: random.Random, style: str, when: datetime, used: set[str]) -> str:
    while True:
        if style == "acc":
            v = f"ACC{when:%Y%m%d}{rng.randint(0, 9999):04d}"
        elif style == "num":
            v = str(rng.randint(10_000_000, 99_999_999))
        else:
            v = f"RAD-{when:%Y}-{rng.randint(0, 999_999):06d}"
        if v not in used:
            used.add(v)
            return v


def _extra_value(rng: random.Random, col: str, var: Variant, when: datetime, status: str, name: str) -> str:
    key = col.lower().replace("_", "").replace(" ", "")
    if "date" in key:
        return when.strftime(var.date_format)
    if "modality" in key:
        return rng.choice(["CR", "CR", "DX"])
    if "procedure" in key:
        return rng.choice(_PROCEDURES)
    if "provider" in key:
        return rng.choice(_PROVIDERS)
    if "status" in key:
        return status
    if "name" in key:
        return name
    if "facility" in key:
        return rng.choice(_FACILITIES)
    return ""


def generate(n_reports: int = 200, seed: int = 0, variant: str = "default",
             reports: list[dict] | None = None) -> tuple[bytes, list[dict]]:
    """One export: (the CSV file's bytes, one gold dict per data row in file order)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
    rng = random.Random(f"messy-export/{variant}/{seed}")
    var = _random_variant(rng) if variant == "random" else VARIANTS[variant]
    pool = list(reports) if reports is not None else list(_load_reports(str(IU_CSV)))
    pool = [r for r in pool if norm(r.get("findings")) or norm(r.get("impression"))]
    if not pool:
        raise ValueError("no report texts with findings or impression")

    n_empty = min(n_reports, rng.choice([1, 2]))
    n_bad = min(n_reports - n_empty, rng.randint(*var.unreadable))
    n_real = n_reports - n_empty

    # patients: 2-6 exams each (about 60 patients per 200 reports), dates increasing per patient
    used_mrn: set[str] = set()
    exams: list[tuple[str, datetime, str]] = []  # (mrn, when, patient name)
    start = datetime(2019, 1, 1)
    while len(exams) < n_real:
        k = rng.choice([2, 2, 3, 3, 3, 4, 4, 5, 6])
        mrn = _mrn(rng, var.mrn_style, used_mrn)
        name = rng.choice(_PATIENT_NAMES)
        when = start + timedelta(days=rng.randint(0, 900), minutes=rng.randint(0, 24 * 60))
        for _ in range(k):
            exams.append((mrn, when, name))
            when += timedelta(days=rng.randint(1, 200), minutes=rng.randint(0, 24 * 60))
    exams = exams[:n_real]
    exams.sort(key=lambda e: e[1])  # exports are in exam-date order: a patient's exams are scattered

    both_rows = [r for r in pool if norm(r.get("findings")) and norm(r.get("impression"))]
    f_rows = [r for r in pool if norm(r.get("findings"))]
    i_rows = [r for r in pool if norm(r.get("impression"))]
    picked_uids: set[str] = set()

    def pick(candidates: list[dict]) -> dict:
        for _ in range(20):
            r = rng.choice(candidates)
            if r.get("uid") not in picked_uids:
                break
        picked_uids.add(r.get("uid"))
        return r

    columns = [var.id_col, var.mrn_col, *var.extras]
    pos = var.text_position if var.text_position >= 0 else len(columns)
    columns.insert(min(pos, len(columns)), var.text_col)

    used_acc: set[str] = set()
    rows: list[tuple[list[str], dict]] = []
    bad_at = set(rng.sample(range(n_real), n_bad))
    for idx, (mrn, when, name) in enumerate(exams):
        r = rng.random()
        kind = "both" if r < 0.86 else ("findings" if r < 0.93 else "impression")
        candidates = {"both": both_rows, "findings": f_rows, "impression": i_rows}[kind]
        src = pick(candidates or pool)
        if kind == "both" and not (norm(src.get("findings")) and norm(src.get("impression"))):
            kind = "findings" if norm(src.get("findings")) else "impression"
        bad = idx in bad_at
        special = not bad and rng.random() < var.special_rate
        eol = rng.choice(var.inner_eol)
        flat = rng.random() < var.flat_rate
        rep = _build_report(rng, src, kind, eol, when, special, flat)
        text = rep.text
        if bad:
            # a chunk of bytes no codec reads, inside the findings (or impression) text
            target = rep.findings or rep.impression
            first = target.split(" ")[0]
            text = text.replace(first, first + " " + _BAD_MARK, 1)
        status = "Preliminary" if kind == "findings" else "Final"
        acc = _accession(rng, var.acc_style, when, used_acc)
        values = {var.id_col: acc, var.mrn_col: mrn, var.text_col: text}
        fields = [values.get(c) if c in values else _extra_value(rng, c, var, when, status, name) for c in columns]
        gold = {"row_line": 0, "accession": acc, "mrn": mrn, "findings": rep.findings,
                "impression": rep.impression, "indication": rep.indication,
                "both": bool(rep.findings and rep.impression) and not bad, "readable": not bad,
                "empty": False, "uid": str(src.get("uid") or "")}
        rows.append((fields, gold))

    # all-empty row(s) and an exam not reported yet
    for j in range(n_empty):
        at = rng.randint(0, len(rows))
        if j == 0 or rng.random() < 0.5:
            fields = [""] * len(columns)
            acc = mrn = ""
        else:
            mrn, when, name = rng.choice(exams) if exams else ("", start, "")
            acc = _accession(rng, var.acc_style, when, used_acc)
            values = {var.id_col: acc, var.mrn_col: mrn, var.text_col: ""}
            fields = [values.get(c) if c in values else _extra_value(rng, c, var, when, "Scheduled", name)
                      for c in columns]
        rows.insert(at, (fields, {"row_line": 0, "accession": acc, "mrn": mrn, "findings": "",
                                  "impression": "", "indication": "", "both": False, "readable": True,
                                  "empty": True, "uid": ""}))

    # bytes: header, then row by row (so line numbers are exact and bad bytes land inside one row)
    codec = "utf-8" if var.encoding.startswith("utf-8") else var.encoding
    out = bytearray(b"\xef\xbb\xbf" if var.encoding == "utf-8-sig" else b"")
    quoting = csv.QUOTE_ALL if var.quote_all else csv.QUOTE_MINIMAL

    def encode_row(fields: list[str]) -> bytes:
        buf = io.StringIO()
        csv.writer(buf, delimiter=var.delimiter, quoting=quoting, lineterminator=var.eol).writerow(fields)
        data = buf.getvalue().encode(codec)
        bad_bytes = bytes(rng.choice(_UNDEFINED_CP1252) for _ in range(rng.randint(3, 8)))
        return data.replace(_BAD_MARK.encode(codec), bad_bytes)

    out += encode_row(columns)
    golds = []
    for fields, gold in rows:
        gold["row_line"] = out.count(b"\n") + 1
        out += encode_row(fields)
        golds.append(gold)
    return bytes(out), golds


def export_info(variant: str = "default", seed: int = 0) -> dict:
    """The column names, encoding, delimiter ... an export of this variant and seed uses."""
    rng = random.Random(f"messy-export/{variant}/{seed}")
    var = _random_variant(rng) if variant == "random" else VARIANTS[variant]
    return {"variant": variant, "seed": seed, "id_column": var.id_col, "mrn_column": var.mrn_col,
            "text_column": var.text_col, "extras": list(var.extras), "encoding": var.encoding,
            "delimiter": var.delimiter, "eol": var.eol, "quote_all": var.quote_all}


def write_export(path: str | Path, n_reports: int = 200, seed: int = 0, variant: str = "default",
                 reports: list[dict] | None = None, gold_path: str | Path | None = None) -> list[dict]:
    """Write the export CSV to `path` (and the gold as JSON to `gold_path`, if given); returns the gold."""
    data, gold = generate(n_reports, seed, variant, reports)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if gold_path is not None:
        info = export_info(variant, seed) | {"n_reports": n_reports, "csv": path.name}
        Path(gold_path).write_text(json.dumps(info | {"rows": gold}, indent=1, ensure_ascii=False),
                                   encoding="utf-8")
    return gold


def generate_all(n_reports: int = 200, seed: int = 0,
                 reports: list[dict] | None = None) -> dict[str, tuple[bytes, list[dict]]]:
    """Every variant for one seed: {variant: (csv_bytes, gold)}."""
    return {name: generate(n_reports, seed, name, reports) for name in VARIANTS}


def load_gold(path: str | Path) -> list[dict]:
    """Gold rows from a JSON written by write_export (a bare list is accepted too)."""
    obj = json.loads(Path(path).read_text(encoding="utf-8"))
    return obj["rows"] if isinstance(obj, dict) else obj


__all__ = [
    "ID_COLUMNS",
    "MRN_COLUMNS",
    "TEXT_COLUMNS",
    "VARIANTS",
    "Variant",
    "export_info",
    "generate",
    "generate_all",
    "load_gold",
    "load_reports",
    "norm",
    "variant_names",
    "write_export",
]
