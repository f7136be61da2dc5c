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
import html
import re
from dataclasses import dataclass, field

from radgpt.prepare.records import DEFAULT_PHI_TOKEN, normalize_text

# Canonical section -> header spellings seen in practice. Misspellings are caught by fuzzy match.
HEADER_NAMES: dict[str, tuple[str, ...]] = {
    "findings": ("FINDINGS", "FINDING", "FINDINGS FINDINGS", "REPORT", "DESCRIPTION", "BODY"),
    "impression": ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS", "OPINION", "SUMMARY",
                   "INTERPRETATION", "DIAGNOSIS", "IMPRESSION AND RECOMMENDATION",
                   "IMPRESSION AND RECOMMENDATIONS", "IMPRESSION/RECOMMENDATION", "IMPRESSION/RECOMMENDATIONS"),
    "findings_impression": ("FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION", "IMPRESSION AND FINDINGS",
                            "FINDINGS AND IMPRESSIONS", "FINDINGS IMPRESSION", "FINDINGS & IMPRESSION",
                            "IMPRESSION/FINDINGS"),
    "indication": ("INDICATION", "INDICATIONS", "CLINICAL INDICATION", "CLINICAL INDICATIONS", "CLINICAL HISTORY",
                   "HISTORY", "REASON FOR EXAM", "REASON FOR EXAMINATION", "REASON FOR STUDY", "REASON FOR REFERRAL",
                   "REASON", "CLINICAL INFORMATION", "CLINICAL INFO", "CLINICAL DATA", "CLINICAL NOTES",
                   "CLINICAL QUESTION", "CLINICAL DETAILS", "CLINICAL", "HX", "HISTORY AND INDICATION",
                   "INDICATION/HISTORY", "HISTORY/INDICATION", "CLINICAL HISTORY/INDICATION"),
    "comparison": ("COMPARISON", "COMPARISONS", "COMPARISON STUDY", "COMPARISON STUDIES", "COMPARISON EXAM",
                   "COMPARISON EXAMS", "PRIOR STUDIES", "PRIOR STUDY", "PRIORS", "PRIOR EXAMS", "PRIOR"),
    "technique": ("TECHNIQUE", "TECHNIQUES", "PROCEDURE", "PROCEDURES", "VIEWS", "PROTOCOL"),
    "examination": ("EXAMINATION", "EXAM", "STUDY", "TYPE OF EXAMINATION", "EXAMINATIONS", "EXAM TYPE",
                    "EXAMINATION TYPE", "STUDY TYPE", "PROCEDURE DESCRIPTION", "EXAM DESCRIPTION"),
    "recommendation": ("RECOMMENDATION", "RECOMMENDATIONS", "RECOMMENDATION(S)", "FOLLOW UP", "FOLLOW-UP"),
    "notification": ("NOTIFICATION", "NOTIFICATIONS", "COMMUNICATION", "CRITICAL RESULT", "CRITICAL RESULTS"),
    "wet_read": ("WET READ",),
    "addendum": ("ADDENDUM",),
    # export metadata written into the text: its own section, so it never runs on into the impression
    "metadata": ("REFERRING PHYSICIAN", "ORDERING PHYSICIAN", "ORDERING PROVIDER", "REQUESTING PHYSICIAN",
                 "REFERRING PROVIDER", "EXAM DATE", "DATE OF EXAM", "DATE OF SERVICE", "STUDY DATE", "DATE",
                 "ACCESSION", "ACCESSION NUMBER", "MRN", "PATIENT", "PATIENT NAME", "DOB", "DATE OF BIRTH",
                 "LOCATION", "PRIORITY", "MODALITY", "ORDER NUMBER"),
}
_LOOKUP = {name: canon for canon, names in HEADER_NAMES.items() for name in names}
_ALL_NAMES = [n for n, canon in _LOOKUP.items() if canon != "metadata"]

# Words that mark a header as a view description standing in for FINDINGS.
_VIEW_WORDS = {"VIEW", "VIEWS", "CHEST", "RADIOGRAPH", "RADIOGRAPHS", "PORTABLE", "AP", "PA", "LATERAL",
               "FRONTAL", "UPRIGHT", "SUPINE", "SEMI-UPRIGHT", "SEMIERECT", "ERECT", "LAT"}

# Sub-headings of a structured findings section ("LUNGS: Clear.  HEART: Normal size."): part of the findings.
_SUBHEADINGS = {"LUNG", "LUNGS", "HEART", "CARDIAC", "PLEURA", "PLEURAL", "PLEURAL SPACE", "PLEURAL SPACES",
                "MEDIASTINUM", "CARDIOMEDIASTINAL", "CARDIOMEDIASTINAL SILHOUETTE", "HEART AND MEDIASTINUM",
                "HILA", "HILUM", "BONES", "BONY STRUCTURES", "OSSEOUS STRUCTURES", "SOFT TISSUES", "SOFT TISSUE",
                "MUSCULOSKELETAL", "LINES", "TUBES", "LINES AND TUBES", "TUBES AND LINES", "LINES/TUBES",
                "TUBES/LINES", "SUPPORT DEVICES", "DEVICES", "UPPER ABDOMEN", "ABDOMEN", "AIRWAYS", "AIRWAY",
                "DIAPHRAGM", "AORTA", "VASCULATURE", "PULMONARY VASCULATURE", "LUNG PARENCHYMA", "PARENCHYMA",
                "THORACIC SPINE", "SPINE", "HEART SIZE", "TRACHEA", "OTHER"}

# A header: start of line, upper-case words (digits and a little punctuation allowed), a colon not
# followed by a digit (times like 10:30 are text), then optional inline text.
_HEADER = re.compile(r"^\s*([A-Z][A-Z0-9 ,/&()'\-\.]{0,70}?)\s*:(?!\d)\s*(.*)$")
# The forms of hospital exports, in any case: "Findings:", "findings -", "Impression" alone on its line.
# Only names in HEADER_NAMES count here ("Lungs: clear." and "Heart - normal" are text).
_HEADER_ANY = re.compile(r"^\s*([A-Za-z][A-Za-z ,/&()'\-]{0,50}?)\s*(:+|\s[-\u2013\u2014]+(?=\s|$)|[-\u2013\u2014]+$|$)"
                         r"[-\u2013\u2014:\s]*(.*)$")
_SEPARATOR = re.compile(r"^\s*_{10,}\s*$")
# a line drawn with punctuation ("--", "=====", "***"), not MIMIC's addendum separator; a lone "." is text
_RULE = re.compile(r"^\s*[-=*~#_+<>|]{2,}\s*$")
_TITLES = {"FINAL REPORT", "PRELIMINARY REPORT", "ADDENDUM", "REPORT", "FINAL ADDENDUM", "WET READ"}
_FOOTER = re.compile(r"^[\s*=\-#\[(<]*(?:end of (?:report|impression|addendum|document)|report (?:end|complete)"
                     r"|(?:final|preliminary|prelim|draft|corrected|amended|signed|unsigned|verified)(?: report| result)?"
                     r"|page \d+(?: of \d+)?)[\s*=\-#.\])>]*$"
                     # report status notes: "Preliminary report, impression to follow."
                     r"|^[\s*\[(]*(?:preliminary|prelim|draft|wet read)\b[^.]*\bto follow\b.*$", re.IGNORECASE)

# Sign-off lines (signature, dictation, transcription, attestation): never findings or impression. A line that
# starts with one, and everything after it up to the next header, is kept under "signature".
_SIGNED = (r"(?:electronically |digitally )?(?:e-?signed|signed|verified|approved|authenticated|finali[sz]ed|"
           r"dictated|transcribed|interpreted|reported|read|reviewed|released|co-?signed)")
_SIGNOFF = re.compile(
    rf"^\s*(?:this (?:report|study|exam) (?:was|has been|is) |(?:final |preliminary )?report )?{_SIGNED}"
    rf"(?:\s*(?:and|&|/|,)\s*{_SIGNED})*(?:\s+electronically)?\s*(?:by\b|on\b|at\b|:|-\s|\d|\(|$)"
    r"|^\s*(?:attending|staff|reading|interpreting|consultant|signing|supervising|reporting)?\s*"
    r"(?:radiologist|physician|resident|fellow|attending|transcriptionist|dictating physician)s?\s*:"
    r"|^\s*(?:I|I,[^,]{1,60},)\s+have\s+(?:personally\s+)?(?:reviewed|examined|seen)\b"
    r"|^\s*(?:workstation|transcription|dictation)(?: date| time| id)?\s*:"
    r"|^\s*(?:job|document)\s*(?:#|id|number|no\.?)\s*:?\s*\w+\s*$"
    r"|^\s*D:\s*\d.*\bT:\s*\d",
    re.IGNORECASE)
# A sign-off at the end of a text line ("No acute disease. Electronically signed by Dr. X on ...").
_SIGNOFF_INLINE = re.compile(
    r"(?<=[.!?])\s+(?=(?:this (?:report|study|exam) (?:was|has been|is) )?(?:(?:final |preliminary )?report )?"
    r"(?:(?:reviewed|read|dictated|verified|approved) and )?"
    r"(?:electronically |digitally )?(?:signed|dictated|transcribed|verified|e-signed|finali[sz]ed)"
    r"(?: electronically)? by\b|I(?:,[^,]{1,60},)? have (?:personally )?(?:reviewed|examined)\b)"
    # in any place of a line, the unmistakable ones ("...no effusion Electronically signed by: ...")
    r"|\s+(?=(?:electronically|digitally) signed\b"
    r"|(?:dictated|transcribed|signed|read|reviewed|verified|approved|interpreted)(?: by)?\s*:"
    r"|(?:\w+ )?(?:radiologist|resident|fellow|attending)\s*:|\*+\s*(?:dictated|signed)\b)",
    re.IGNORECASE)
# Inside a line flattened from several: a drawn rule or an end-of-report mark starts a new line there.
_INLINE_BREAK = re.compile(r"[-=*~#]{5,}|\s+(?=[\[(*=<-]*\s*end of (?:report|document)\b)"
                           r"|\s+(?=[*=#\[(]{1,}\s*(?:final|preliminary|prelim|draft)(?: report)?\s*[*=#\])]+)", re.IGNORECASE)
# A sign-off phrase cut by a line wrap: "... infiltrate. This report was" / "electronically signed by ..."
_SIGNOFF_LEAD = re.compile(r"(?<=[.!?])\s+(?:this (?:report|study|exam) (?:was|has been|is)|(?:final |preliminary )?report"
                           r"|(?:reviewed|read|dictated|verified|approved) and|electronically|digitally)"
                           r"(?: electronically)?\s*$", re.IGNORECASE)


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


_NOT_BARE = {"REPORT", "BODY", "PRIOR", "PRIORS", "REASON", "CLINICAL", "STUDY", "HX", "DESCRIPTION", "DIAGNOSIS",
             "VIEWS", "EXAM", "PROCEDURE", "PROCEDURES", "PROTOCOL", "INTERPRETATION"}


def _header_key(name: str) -> str:
    return re.sub(r"\s+", " ", name.strip().upper().rstrip("."))


def _any_case_header(line: str) -> tuple[str, str, str] | None:
    """(canonical, raw header, inline text) for a known header in any case and form, else None."""
    m = _HEADER_ANY.match(line)
    if not m or not m.group(1).strip():
        return None
    raw, sep, inline = m.group(1).strip(), m.group(2), m.group(3)
    canon = _LOOKUP.get(_header_key(raw))
    if canon is None:
        return None
    if not sep.strip() and (inline.strip() or canon == "metadata" or _header_key(raw) in _NOT_BARE
                            or not raw[0].isupper()):
        # a bare line is a header only when it is the whole line, an unambiguous name, and capitalised ("history"
        # alone is more likely the last word of a wrapped sentence)
        return None
    return canon, raw, inline


def _segment(lines: list[str], low_text: str) -> tuple[list[str], list[tuple[str, str, list[str]]]]:
    """Cut lines at headers. Returns (lines before the first header, [(canonical, raw header, lines)]).

    Upper-case `NAME:` lines are headers as in MIMIC-CXR (fuzzy-matched, unknown names kept under their own
    name); in any case, only known names count (`Findings:`, `impression -`, `Conclusion` alone on its line).
    Sign-off lines start a "signature" section that runs to the next header; rules and footers are dropped."""
    preamble: list[str] = []
    segments: list[tuple[str, str, list[str]]] = []
    sign_cues, footer_cues = _has(low_text, _SIGNOFF_WORDS), _has(low_text, _FOOTER_WORDS)

    def add(line: str) -> None:
        (segments[-1][2] if segments else preamble).append(line)

    for line in lines:
        stripped = line.strip()
        if not stripped:
            add(line)  # paragraph breaks matter
            continue
        if stripped.upper() in _TITLES and stripped == stripped.upper():
            continue  # centred titles carry no content
        low = stripped.lower()
        # each regex runs only on the lines a cheap test lets through: most report lines are plain text
        if _RULE.match(line) or (footer_cues and _has(low, _FOOTER_WORDS) and _FOOTER.match(stripped)):
            continue
        may_sign = sign_cues and _has(low, _SIGNOFF_WORDS)
        if may_sign and _SIGNOFF.match(line):
            last = segments[-1][2] if segments else preamble
            if last and (lead := _SIGNOFF_LEAD.search(last[-1])):
                last[-1], line = last[-1][:lead.start()], last[-1][lead.start():].strip() + " " + line.strip()
            segments.append(("signature", "", [line]))
            continue
        inline_sign = _SIGNOFF_INLINE.search(line) if may_sign else None
        if inline_sign:
            line, signoff = line[:inline_sign.start()], line[inline_sign.end():]
        m = _HEADER.match(line)
        if m and _is_header_candidate(m.group(1)) and _header_key(m.group(1)) not in _SUBHEADINGS:
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
                if inline_sign:
                    segments.append(("signature", "", [signoff]))
                continue
        found = _any_case_header(line) if low.split(None, 1)[0].rstrip(":-\u2013\u2014").upper() in _FIRST_WORDS else None
        if found:
            canon, raw, inline = found
            segments.append((canon, raw, [inline] if inline.strip() else []))
        else:
            add(line)
        if inline_sign:
            segments.append(("signature", "", [signoff]))
    return preamble, segments


_INLINE_SECTIONS = ("findings", "impression", "findings_impression", "indication", "comparison", "technique",
                    "examination", "recommendation")
# A known header inside a line: exports that flatten a report onto one line ("INDICATION: Cough. FINDINGS:
# Clear. IMPRESSION: Normal."). In any case after a sentence end; capitalised ("Findings:", "FINDINGS:") after
# any word. Found by looking back from each colon (a regex over every header name is 5× slower on MIMIC).
_INLINE_NAMES = {n for n in _LOOKUP if _LOOKUP[n] in _INLINE_SECTIONS and n not in _NOT_BARE}
_INLINE_MAX_WORDS = max(len(n.split()) for n in _INLINE_NAMES)


# Cue words: the regexes for sign-offs, footers and breaks run only on the reports, then the lines, that hold
# one (most MIMIC-CXR lines hold none; running every regex on every line made the parser 3× slower).
_SIGNOFF_WORDS = ("signed", "dictated", "transcribed", "verified", "finaliz", "finalis", "radiologist", "resident",
                  "fellow", "attending", "reviewed", "read by", "read:", "approved", "interpreted", "i have",
                  "i, ", "*", "job", "document", "workstation", "transcription", "dictation", "d:")
_FOOTER_WORDS = ("end of", "page", "final", "prelim", "draft", "corrected", "amended", "signed", "verified",
                 "report", "read")
_BREAK_WORDS = ("end of", "-----", "=====", "*****", "~~~~~", "#####", "final", "prelim", "draft")


_FIRST_WORDS = {name.split()[0] for name in _LOOKUP}  # a line whose first word starts no header name is text


def _has(low: str, words: tuple[str, ...]) -> bool:
    return any(w in low for w in words)


def _inline_header_start(line: str, colon: int) -> int | None:
    """Where a known header ending at `colon` starts, if it starts a new section inside the line."""
    words = line[:colon].rsplit(None, _INLINE_MAX_WORDS)
    for k in range(min(_INLINE_MAX_WORDS, len(words) - 1), 0, -1):
        name = " ".join(words[-k:])
        if _header_key(name) not in _INLINE_NAMES:
            continue
        prev = words[-k - 1]
        if prev.upper() in ("AND", "&", "OR") or prev.endswith("/") or _header_key(f"{prev} {name}") in _LOOKUP:
            return None  # part of a longer header: "FINDINGS AND IMPRESSION:", "CLINICAL HISTORY:"
        if not (prev.endswith((".", "!", "?", ";")) or name[0].isupper()):
            return None
        start = colon
        for w in reversed(words[-k:]):
            start = line.rfind(w, 0, start)
        return start
    return None


def _split_inline_headers(line: str, break_cues: bool = True) -> list[str]:
    if break_cues and _has(line.lower(), _BREAK_WORDS) and _INLINE_BREAK.search(line) and not _RULE.match(line):
        return [part for piece in _INLINE_BREAK.split(line) for part in _split_inline_headers(piece.strip(), False)]
    if ":" not in line:
        return [line]
    parts, start = [], 0
    colon = line.find(":")
    while colon >= 0:
        cut = _inline_header_start(line, colon) if line[start:colon].strip() else None
        if cut is not None and cut > start and line[start:cut].strip():
            parts.append(line[start:cut].rstrip())
            start = cut
        colon = line.find(":", colon + 1)
    parts.append(line[start:])
    return parts


_TITLE_RUN = re.compile(r"^(?:[A-Z0-9/&()\-]+\s+){2,}(?=[A-Z][a-z])")
_SHORT_SECTIONS = ("indication", "comparison", "technique", "examination")


def _is_title(line: str, next_line: str = "") -> bool:
    """An exam title line before the first header ("CHEST 2 VIEWS PA AND LATERAL", "Chest Radiograph", a date):
    no lower-case letters and no sentence end, or a few words with no end punctuation that the next line does
    not continue (it starts with a capital, or there is none)."""
    text = line.strip()
    if text.endswith((".", ",", ";", ":")):
        return False
    if not any(c.islower() for c in text):
        return True
    return len(text.split()) <= 8 and (not next_line.strip() or next_line.strip()[0].isupper())


def _is_addendum(block: list[str]) -> bool:
    head = " ".join(x.strip() for x in block[:3]).upper()
    return "ADDENDUM" in head


_MIMIC_TITLE = re.compile(r"^[ \t]*final report[ \t]*$", re.MULTILINE)
_MARKUP_BREAK = re.compile(r"<(?:br|p|div|li|tr)\b[^>]{0,200}>|</(?:p|div|li|tr)>", re.IGNORECASE)
_MARKUP_TAG = re.compile(r"</?[A-Za-z][^<>]{0,200}>")


def _unflatten(text: str) -> tuple[str, str]:
    """Line breaks that an export wrote as something else: HTML (`<br>`, `<p>`), HL7 v2's `\\.br\\`, or escaped
    `\\n` in a cell with no real line break. Returns (text, note) — note empty when nothing was changed."""
    if "\n" in text:
        return text, ""  # real line breaks: a stray "<BR>" (OpenI has some) is text, kept verbatim
    if "<" in text and _MARKUP_BREAK.search(text):
        text = _MARKUP_TAG.sub("", _MARKUP_BREAK.sub("\n", text))
        return html.unescape(text), "HTML line breaks and tags read as text lines"
    if "\\.br\\" in text:
        return text.replace("\\.br\\", "\n"), "HL7 \\.br\\ escapes read as line breaks"
    if "\\n" in text or "\\r" in text:
        return text.replace("\\r\\n", "\n").replace("\\n", "\n").replace("\\r", "\n"), "escaped \\n read as line breaks"
    return text, ""


def parse_report(text: str, phi_token: str = DEFAULT_PHI_TOKEN) -> ParsedReport:
    """Split one report into sections. Never raises on any input string."""
    out = ParsedReport()
    if not isinstance(text, str) or not text.strip():
        out.notes.append("empty report")
        return out
    text, note = _unflatten(text)
    if note:
        out.notes.append(note)
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

    low_text = _MIMIC_TITLE.sub("", text.lower())  # MIMIC-CXR's centred title is no cue
    break_cues = _has(low_text, _BREAK_WORDS)
    lines = [part for line in lines for part in _split_inline_headers(line, break_cues)]
    preamble, segments = _segment(lines, low_text)
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

    # Findings written without a header, before the impression (common in hospital exports): the text
    # before the first header (exam-title lines dropped), or the paragraphs after the first of a short
    # section (HISTORY, COMPARISON, ...) that runs straight into the impression.
    if out.sections.get("impression") and not out.sections.get("findings"):
        lead = list(preamble)
        while lead and (not lead[0].strip() or _is_title(lead[0], next((x for x in lead[1:] if x.strip()), ""))):
            lead.pop(0)
        first_imp = next((i for i, seg in enumerate(segments) if seg[0] == "impression"), 0)
        before = segments[first_imp - 1] if first_imp > 0 else None
        if _paragraphs(lead):
            # an exam title run into the first sentence of a flattened report: "XR CHEST PA AND LATERAL Lungs are"
            text = _TITLE_RUN.sub("", " ".join(_paragraphs(lead)))
            out.sections["findings"] = normalize_text(text, phi_token)
            out.notes.append("text before the first header taken as findings")
            preamble = preamble[:len(preamble) - len(lead)]
        elif before and before[0] in _SHORT_SECTIONS and len(_paragraphs(before[2])) >= 2:
            paras = _paragraphs(before[2])
            out.sections[before[0]] = normalize_text(paras[0], phi_token)
            out.sections["findings"] = normalize_text(" ".join(paras[1:]), phi_token)
            out.notes.append(f"paragraphs after the {before[0]} taken as findings")

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
