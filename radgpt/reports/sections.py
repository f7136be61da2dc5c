"""Split a free-text radiology report into sections.

Written for the MIMIC-CXR layout (a centred `FINAL REPORT` title, lines starting with a space and
wrapped at ~79 columns, upper-case headers ending in `:`), and robust to what that corpus really
contains: addenda on top behind a line of underscores, header variants and misspellings
(`CONCLUSION`, `IMPRESSON`, `FINDINGS AND IMPRESSION`), view names used in place of `FINDINGS:`
(`PA AND LATERAL VIEWS OF THE CHEST:`), history headers for the indication, and reports with no
headers at all (then the customary fallback: the last paragraph is the impression).

`parse_report(text)` never raises on any string; it returns a `ParsedReport` whose `notes` say
which fallback rules fired, so a user can audit them.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass, field

from radgpt.reports.records import DEFAULT_PHI_TOKEN, normalize_text

# Canonical section -> header spellings seen in practice. Misspellings are caught by fuzzy match.
HEADER_NAMES: dict[str, tuple[str, ...]] = {
    "findings": ("FINDINGS", "FINDING", "FINDINGS FINDINGS", "REPORT", "DESCRIPTION", "BODY"),
    "impression": ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS", "OPINION", "SUMMARY",
                   "INTERPRETATION", "DIAGNOSIS"),
    "findings_impression": ("FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION", "IMPRESSION AND FINDINGS",
                            "FINDINGS AND IMPRESSIONS", "FINDINGS IMPRESSION", "FINDINGS & IMPRESSION",
                            "IMPRESSION/FINDINGS"),
    "indication": ("INDICATION", "INDICATIONS", "CLINICAL INDICATION", "CLINICAL HISTORY", "HISTORY",
                   "REASON FOR EXAM", "REASON FOR EXAMINATION", "REASON FOR STUDY", "CLINICAL INFORMATION",
                   "CLINICAL DATA", "CLINICAL NOTES", "CLINICAL QUESTION", "HX"),
    "comparison": ("COMPARISON", "COMPARISONS", "COMPARISON STUDY", "COMPARISON STUDIES", "PRIOR STUDIES",
                   "PRIOR STUDY", "PRIORS"),
    "technique": ("TECHNIQUE", "TECHNIQUES", "PROCEDURE"),
    "examination": ("EXAMINATION", "EXAM", "STUDY", "TYPE OF EXAMINATION", "EXAMINATIONS"),
    "recommendation": ("RECOMMENDATION", "RECOMMENDATIONS", "RECOMMENDATION(S)", "FOLLOW UP", "FOLLOW-UP"),
    "notification": ("NOTIFICATION", "NOTIFICATIONS", "COMMUNICATION"),
    "wet_read": ("WET READ",),
    "addendum": ("ADDENDUM",),
}
_LOOKUP = {name: canon for canon, names in HEADER_NAMES.items() for name in names}
_ALL_NAMES = list(_LOOKUP)

# Words that mark a header as a view description standing in for FINDINGS.
_VIEW_WORDS = {"VIEW", "VIEWS", "CHEST", "RADIOGRAPH", "RADIOGRAPHS", "PORTABLE", "AP", "PA", "LATERAL",
               "FRONTAL", "UPRIGHT", "SUPINE", "SEMI-UPRIGHT", "SEMIERECT", "ERECT", "LAT"}

# A header: start of line, upper-case words (digits and a little punctuation allowed), a colon not
# followed by a digit (times like 10:30 are text), then optional inline text.
_HEADER = re.compile(r"^\s*([A-Z][A-Z0-9 ,/&()'\-\.]{0,70}?)\s*:(?!\d)\s*(.*)$")
_SEPARATOR = re.compile(r"^\s*_{10,}\s*$")
_TITLES = {"FINAL REPORT", "PRELIMINARY REPORT", "ADDENDUM", "REPORT", "FINAL ADDENDUM", "WET READ"}


@dataclass
class ParsedReport:
    sections: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def findings(self) -> str:
        return self.sections.get("findings", "")

    @property
    def impression(self) -> str:
        return self.sections.get("impression", "")

    @property
    def indication(self) -> str:
        return self.sections.get("indication", "")

    @property
    def comparison(self) -> str:
        return self.sections.get("comparison", "")


@functools.lru_cache(maxsize=4096)  # headers repeat across a corpus; difflib is slow
def canonical_header(name: str) -> str | None:
    """Map a header's text to a canonical section name, or None if it is not a header we know."""
    key = re.sub(r"\s+", " ", name.strip().upper().rstrip("."))
    if key in _LOOKUP:
        return _LOOKUP[key]
    words = set(re.split(r"[ ,/()]+", key)) - {""}
    if words & {"FINDINGS", "FINDING"} and words & {"IMPRESSION", "IMPRESSIONS", "CONCLUSION"}:
        return "findings_impression"
    if len(key) >= 5:
        close = difflib.get_close_matches(key, _ALL_NAMES, n=1, cutoff=0.8)
        if close:
            return _LOOKUP[close[0]]
    if words & _VIEW_WORDS and len(words) <= 10:
        return "view"
    return None


def _is_header_candidate(name: str) -> bool:
    letters = [c for c in name if c.isalpha()]
    # at least two letters, not a lone PHI placeholder, at most eight words
    return len(letters) >= 2 and name.strip("X_ ") != "" and len(name.split()) <= 8


def _paragraphs(lines: list[str]) -> list[str]:
    paras, cur = [], []
    for line in lines:
        if line.strip():
            cur.append(line.strip())
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    return paras


def _split_blocks(lines: list[str]) -> list[list[str]]:
    blocks, cur = [], []
    for line in lines:
        if _SEPARATOR.match(line):
            blocks.append(cur)
            cur = []
        else:
            cur.append(line)
    blocks.append(cur)
    return [b for b in blocks if any(x.strip() for x in b)]


def _segment(lines: list[str]) -> tuple[list[str], list[tuple[str, str, list[str]]]]:
    """Cut lines at headers. Returns (lines before the first header, [(canonical, raw header, lines)])."""
    preamble: list[str] = []
    segments: list[tuple[str, str, list[str]]] = []
    for line in lines:
        stripped = line.strip()
        if stripped.upper() in _TITLES and stripped == stripped.upper():
            continue  # centred titles carry no content
        m = _HEADER.match(line)
        if m and _is_header_candidate(m.group(1)):
            raw = m.group(1).strip()
            canon = canonical_header(raw)
            if canon is None and len(raw.split()) <= 4 and not m.group(2).strip().startswith(("(", ",")):
                # An unknown upper-case header (e.g. "NOTE:") still starts a new section, so it does
                # not leak into the impression; it is kept under its own name.
                canon = re.sub(r"[^a-z0-9]+", "_", raw.lower()).strip("_") or "other"
            if canon == "view" and segments and segments[-1][0] == "examination" and not any(
                x.strip() for x in segments[-1][2]
            ):
                # "EXAMINATION:" followed by "CHEST (PA AND LAT): <date>" names the exam, not findings
                segments[-1][2].append(line)
                continue
            if canon is not None:
                segments.append((canon, raw, [m.group(2)] if m.group(2).strip() else []))
                continue
        (segments[-1][2] if segments else preamble).append(line)
    return preamble, segments


def _is_addendum(block: list[str]) -> bool:
    head = " ".join(x.strip() for x in block[:3]).upper()
    return "ADDENDUM" in head


def parse_report(text: str, phi_token: str = DEFAULT_PHI_TOKEN) -> ParsedReport:
    """Split one report into sections. Never raises on any input string."""
    out = ParsedReport()
    if not isinstance(text, str) or not text.strip():
        out.notes.append("empty report")
        return out
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")

    blocks = _split_blocks(lines)
    if len(blocks) > 1:
        addenda = [b for b in blocks if _is_addendum(b)]
        main = [b for b in blocks if not _is_addendum(b)]
        if main and addenda:
            out.notes.append("addendum separated from the report")
            out.sections["addendum"] = normalize_text(
                " ".join(" ".join(_paragraphs(b)) for b in addenda), phi_token
            )
            # the addendum's own title line is not content
            out.sections["addendum"] = re.sub(r"^ADDENDUM:?\s*", "", out.sections["addendum"])
            lines = [x for b in main for x in b + [""]]
        else:
            lines = [x for b in blocks for x in b + [""]]

    preamble, segments = _segment(lines)
    collected: dict[str, list[str]] = {}
    for canon, raw, seg_lines in segments:
        if canon == "view":
            out.notes.append(f"view header '{raw}' read as findings")
            canon = "findings"
        body = " ".join(_paragraphs(seg_lines))
        if body:
            collected.setdefault(canon, []).append(body)
        else:
            collected.setdefault(canon, [])
    for canon, bodies in collected.items():
        out.sections[canon] = normalize_text(" ".join(bodies), phi_token)

    # FINDINGS AND IMPRESSION: one block that is both; the last paragraph is the conclusion.
    if "findings_impression" in collected and not out.sections.get("impression"):
        seg = next(s for s in segments if s[0] == "findings_impression")
        paras = _paragraphs(seg[2])
        if len(paras) >= 2:
            out.sections.setdefault("findings", "")
            if not out.sections["findings"]:
                out.sections["findings"] = normalize_text(" ".join(paras[:-1]), phi_token)
            out.sections["impression"] = normalize_text(paras[-1], phi_token)
            out.notes.append("combined findings/impression: last paragraph taken as impression")
        else:
            out.notes.append("combined findings/impression in one paragraph: no separate impression")

    pre_paras = _paragraphs(preamble)
    has_fi = any(k in out.sections for k in ("findings", "impression", "findings_impression"))
    if not has_fi and pre_paras:
        # No findings/impression headers: the customary fallback for MIMIC-CXR.
        out.sections["impression"] = normalize_text(pre_paras[-1], phi_token)
        if len(pre_paras) > 1:
            out.sections["findings"] = normalize_text(" ".join(pre_paras[:-1]), phi_token)
        out.notes.append("no findings/impression headers: last paragraph taken as impression")
    elif pre_paras:
        out.sections["preamble"] = normalize_text(" ".join(pre_paras), phi_token)
    return out
