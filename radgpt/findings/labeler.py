"""A rule-based chest X-ray finding labeler: pure Python regular expressions, no model, no download.

How it reads a report (the NegEx recipe, as CheXpert and NegBio do it, without their parsers):
  1. lower-case it and split it into sentences;
  2. find mentions of *concepts* (fine-grained: "nodule", "infiltrate", "vascular congestion"), each
     mapped to a CheXpert observation and/or a ChestX-ray14 label — the two schemes do not line up
     one to one (CheXpert's "Lung Lesion" is ChestX-ray14's Mass + Nodule; Emphysema has no CheXpert
     observation), so concepts are the common ground and a scheme is a view of them;
  3. split each sentence into clauses at scope ends ("but", "however", "which", ";") and decide each
     mention from the nearest cue before it in its clause (negation "no", "without", "free of";
     uncertainty "may", "possible", "cannot be excluded"), else from a cue after it ("is not seen",
     "has resolved", "is suspected"), else positive; pseudo-negations ("no change in") are skipped;
  4. a label is positive if any mention is, else uncertain if any is, else negative; a label with no
     mention is "not_mentioned". CheXpert's "No Finding" is positive when nothing but support devices
     is positive or uncertain — counting the concepts CheXpert has no label for (emphysema, fibrosis).

The vocabulary was written while reading OpenI (Indiana University) reports; docs/evaluate.md gives its
agreement with the NegBio gold labels on the half of the corpus it was developed on and on the other half.

Server API: `label(text)`, `label_many(texts)`, `mentions(text)`, `is_normal(text)`,
`positive_findings(text)`; findings ↔ impression checks are in faithfulness.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

POSITIVE, NEGATIVE, UNCERTAIN, NOT_MENTIONED = "positive", "negative", "uncertain", "not_mentioned"
_RANK = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1}

CHEXPERT = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
CHESTXRAY14 = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
SCHEMES = {"chexpert": CHEXPERT, "chestxray14": CHESTXRAY14}

# Heart-size phrasing is the richest: "borderline heart size", "heart is mildly enlarged",
# "heart size remains slightly large", "enlargement of the cardiac silhouette". NegBio does not count
# "heart size upper limits of normal" or "top normal", and neither does this vocabulary.
_HEART = r"(?:heart|cardiac silhouette|cardiac)"
_SIZE_UP = r"(?:enlarged|enlargement|large|borderline|increased)"
_CARDIOMEGALY = "|".join([
    r"cardiomegal\w*",
    _HEART + r"(?: size)?(?: \w+){0,4}? " + _SIZE_UP,
    r"(?:enlarged|borderline|large|increased?(?: in)?)(?: \w+){0,2}? " + _HEART,
    r"(?:cardiac|cardiomediastinal) enlargement|enlargement of the (?:heart|cardiac silhouette)",
])

# concept: (CheXpert observation or None, ChestX-ray14 label or None, pattern). Order matters only
# where two patterns could start at the same place: the earlier one wins.
CONCEPTS: dict[str, tuple[str | None, str | None, str]] = {
    "cardiomegaly": ("Cardiomegaly", "Cardiomegaly", _CARDIOMEGALY),
    "widened_mediastinum": ("Enlarged Cardiomediastinum", None,
                            r"(?:widen\w*|enlarged?|prominent) (?:superior )?mediastin\w*"
                            r"|mediastin\w* (?:is |are )?(?:widen\w*|enlarge\w*)|enlarged cardiomediastinal"),
    "pleural_thickening": ("Pleural Other", "Pleural_Thickening",
                           r"(?<!bronchial )(?<!bronchial wall )(?<!interstitial )thickening|thicken\w* (?:of )?(?:the )?pleura\w*"
                           r"|apical (?:pleural )?cap(?:ping|s)?"),
    "pleural_other": ("Pleural Other", None, r"pleural (?:plaques?|calcifications?)|fibrothorax"),
    "effusion": ("Pleural Effusion", "Effusion", r"effusions?|pleural fluid|hydrothora\w*"),
    "pneumothorax": ("Pneumothorax", "Pneumothorax", r"pneumothora\w*|hydropneumothora\w*"),
    "edema": ("Edema", "Edema", r"o?edema\w*"),
    "congestion": ("Edema", None, r"(?:vascular|pulmonary|venous) congestion|congestive heart failure|\bchf\b"),
    "consolidation": ("Consolidation", "Consolidation", r"consolidat\w*"),
    "pneumonia": ("Pneumonia", "Pneumonia", r"pneumonia\w*|bronchopneumonia"),
    "infection": ("Pneumonia", None, r"infection|infectious process"),
    "atelectasis": ("Atelectasis", "Atelectasis", r"atelecta\w*|collaps(?:e|ed)\b"),
    "infiltrate": ("Lung Opacity", "Infiltration", r"infiltrat\w*"),
    "opacity": ("Lung Opacity", None, r"opaci\w*|air ?space disease|densit(?:y|ies)|haziness"),
    "mass": ("Lung Lesion", "Mass", r"mass(?:es)?\b"),
    # "nodular opacity" is not a nodule to NegBio, but "reticulonodular"/"fibronodular" changes are
    "nodule": ("Lung Lesion", "Nodule", r"nodules?\b|\w+nodular"),
    "nodular": ("Lung Lesion", None, r"nodular"),
    "lesion": ("Lung Lesion", None, r"cavitary|cavitation|cavity|lung lesions?|pulmonary lesions?"),
    "emphysema": (None, "Emphysema", r"emphysem\w*"),
    "fibrosis": (None, "Fibrosis", r"fibros\w*|fibrotic"),
    "hernia": (None, "Hernia", r"hernia\w*"),
    "fracture": ("Fracture", None, r"fractur\w*"),
    # Findings neither scheme labels but a radiologist expects in the impression when present; they make a
    # report abnormal (is_normal) and count in faithfulness, but not against CheXpert's "No Finding".
    "granuloma": (None, None, r"granulomas?\b|granulomatous"),
    "hyperinflation": (None, None, r"hyperinflat\w*|hyperexpan\w*|over-?inflat\w*|\bcopd\b"
                                   r"|chronic obstructive pulmonary disease"),
    # not "interstitial edema / opacities / infiltrates": those are the edema, opacity and infiltrate concepts
    "interstitial_disease": (None, None, r"interstitial (?:lung )?(?:disease|markings|prominence|pattern|changes"
                                         r"|thickening)"),
    "scoliosis": (None, None, r"scolio\w*|kyphos\w*|kyphotic"),
    "degenerative_change": (None, None, r"degenerative|spondylos\w*|osteophyt\w*|arthriti\w*"),
    "free_air": (None, None, r"free (?:intraperitoneal |subdiaphragmatic )?air|pneumoperitone\w*"),
    # the device itself is the "device" concept; this is what is wrong with it ("tube ... too low")
    "malpositioned_device": (None, None, r"malposition\w*|misplaced|(?:in|into|within) the right main ?stem"
                                         r"|(?:too|overly) (?:low|high|deep|proximal|distal)|coiled|kinked"),
    "device": ("Support Devices", None,
               r"pacemaker|pacer|defibrillator|\bicd\b|catheters?|picc|central line|central venous line"
               r"|(?:endotracheal|enteric|feeding|chest|ng|nasogastric|tracheostomy) tube|port-?a-?cath|stents?"
               r"|sternotomy wires|sternal wires|leads?\b"),
}

_MENTION = re.compile(
    "|".join(rf"(?P<{name}>\b(?:{pattern}))" for name, (_, _, pattern) in CONCEPTS.items()))

# One pass finds every cue; finditer tries the alternatives left to right at each position, so the
# longer multi-word cues listed first ("cannot be excluded", "no change in") win over "no"/"not".
_CUE = re.compile("|".join([
    r"(?P<pseudo>\bno (?:significant |interval |appreciable |substantial )?(?:change|increase|worsening|progression)"
    r"|\bnot (?:significantly )?changed|\bgram[- ]negative)",
    r"(?P<postunc>\bcan ?not (?:be )?(?:excluded|ruled out)|\bcan't (?:be )?(?:excluded|ruled out)"
    r"|\b(?:is |are )?not (?:be )?(?:entirely |completely )?(?:excluded|ruled out)|\bdifficult to (?:exclude|rule out)"
    r"|\b(?:is|are) (?:suspected|possible|questioned|likely|favored)\b|\?)",
    r"(?P<unc>\bcan ?not (?:exclude|rule out)|\bcan't (?:exclude|rule out)|\bnot exclude\w*"
    # an indication's question is not a finding: "rule out pneumonia", "r/o ptx", "evaluate for effusion"
    r"|\bto (?:exclude|rule out)\b|\brule out\b|\br/o\b|\bruling out\b|\bevaluat(?:e|ion|ing) for\b"
    r"|\bassess(?:ment)? for\b|\bquestion of\b|\bquery\b|\bvs\.?\b|\bversus\b|\bmay\b|\bmight\b|\bcould\b|\bpossibl[ey]\b|\blikely\b|\bsuspect\w*"
    r"|\bsuspicious\b|\bsuggest\w*|\bquestion(?:able|ably|ed)?\b|\bconcern\w*|\bworrisome\b"
    r"|\bdifferential\b|\bconsider\w*|\bequivocal\b|\bindeterminate\b|\bpresumed\b"
    r"|\bperhaps\b|\buncertain\b)",
    r"(?P<postneg>\b(?:is|are|was|were) (?:not|no longer) (?:seen|present|identified|visualized|evident|appreciated|demonstrated|noted|visible)"
    r"|\b(?:has|have) (?:since |nearly |almost )?(?:resolved|cleared)|\b(?:is|are) absent"
    r"|\bexcluded\b|\bruled out\b)",
    r"(?P<negboth>\bresolved\b|\bresolving\b)",  # "resolved edema" and "edema, resolved"
    r"(?P<neg>\bno\b|\bnot\b|\bwithout\b|\bnegative for\b|\bfree of\b|\bclear of\b|\babsence of\b"
    r"|\bresolution of\b|\bremoval of\b|\brather than\b|\bnor\b|\bnone\b|\bnegative\b)",
    r"(?P<term>\bbut\b|\bhowever\b|\balthough\b|\bthough\b|\bwhich\b|\bexcept\b|\baside from\b|\bapart from\b"
    r"|\bwhile\b|\bwhereas\b|\bwith the exception\b|[;:])",
    r"(?P<comma>,)",
]))
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


@dataclass(frozen=True)
class Mention:
    concept: str       # e.g. "nodule"
    status: str        # positive / negative / uncertain
    start: int         # character span in the text as given
    end: int
    text: str

    @property
    def chexpert(self) -> str | None:
        return CONCEPTS[self.concept][0]

    @property
    def chestxray14(self) -> str | None:
        return CONCEPTS[self.concept][1]


def _status(sentence: str, cues: list[tuple[int, int, str]], start: int, end: int) -> str:
    """Decide one mention from the cues of its sentence (sorted by position)."""
    before: tuple[int, int, str] | None = None  # the cue that governs the mention from the left
    comma = None  # end of the last comma before the mention
    for cue in cues:
        c_start, c_end, kind = cue
        if c_start >= end:
            break
        if kind == "comma":
            comma = c_end
        elif kind == "term":
            before, comma = None, None
        elif kind in ("neg", "unc", "negboth"):
            # "no focal opacity to suggest pneumonia": a hedge inside a negation's list stays negated
            if kind == "unc" and before is not None and before[2] == "neg" and (comma is None or comma < before[0]):
                continue
            before = cue
        # a cue inside the mention counts too: "heart is not enlarged" is matched from "heart"
    if before is not None:
        # a negation reaches across commas only through a list: "no effusion, pneumothorax, or
        # consolidation", not "no effusion seen, left hilar calcifications and dense nodule"
        if comma is not None and comma > before[1]:
            segment = sentence[comma:start].split()
            if len(segment) > 3 and "or" not in segment and "nor" not in segment:
                before = None
    if before is not None:
        return UNCERTAIN if before[2] == "unc" else NEGATIVE
    for c_start, c_end, kind in cues:
        if c_start < end:
            continue
        if kind == "term":
            break
        if kind in ("postneg", "negboth"):
            return NEGATIVE
        if kind == "postunc":
            return UNCERTAIN
    return POSITIVE


def mentions(text: str) -> list[Mention]:
    """Every concept mention in `text`, with its status and character span."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a few characters lower-case to two ("İ"): keep spans aligned
        lowered = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    found: list[Mention] = []
    offset = 0
    for sentence in _SENTENCE.split(lowered):
        pos = lowered.find(sentence, offset) if sentence else offset
        offset = pos + len(sentence)
        hits = list(_MENTION.finditer(sentence))
        if not hits:
            continue
        cues = [(m.start(), m.end(), m.lastgroup) for m in _CUE.finditer(sentence) if m.lastgroup != "pseudo"]
        for m in hits:
            status = _status(sentence, cues, m.start(), m.end()) if cues else POSITIVE
            found.append(Mention(m.lastgroup, status, pos + m.start(), pos + m.end(), text[pos + m.start():pos + m.end()]))
    return found


_UNLABELLED = {c for c, (chex, cxr14, _) in CONCEPTS.items() if chex is None and cxr14 is None}


def _abnormal(found: list[Mention], unlabelled: bool = True) -> bool:
    # Any finding but a device, in either scheme: "emphysema without acute disease" is not normal even
    # though CheXpert has no emphysema observation. `unlabelled=False` ignores the concepts neither scheme
    # labels (granuloma, scoliosis, ...), as CheXpert's "No Finding" does.
    return any(m.status in (POSITIVE, UNCERTAIN) and m.concept != "device"
               and (unlabelled or m.concept not in _UNLABELLED) for m in found)


def is_normal(text: str) -> bool:
    """True when the report states no finding (devices aside), positive or uncertain, in either scheme."""
    return bool((text or "").strip()) and not _abnormal(mentions(text))


def positive_findings(text: str) -> list[str]:
    """The findings a text states, in order of first mention, as short names ("nodule", "possible
    pneumonia", "support device"): positive concepts, then uncertain ones prefixed "possible". This is
    the line the default model's prompt carries, so the model sees what it must not leave out."""
    status: dict[str, str] = {}
    for m in mentions(text or ""):
        if m.status in (POSITIVE, UNCERTAIN) and _RANK[m.status] > _RANK.get(status.get(m.concept, ""), 0):
            status[m.concept] = m.status
    names = {"device": "support device"}
    return [("" if st == POSITIVE else "possible ") + names.get(c, c.replace("_", " ")) for c, st in status.items()]


def _aggregate(found: list[Mention], scheme: str) -> dict[str, str]:
    index = 0 if scheme == "chexpert" else 1
    out = {name: NOT_MENTIONED for name in SCHEMES[scheme]}
    for m in found:
        target = CONCEPTS[m.concept][index]
        if target is None:
            continue
        if out[target] == NOT_MENTIONED or _RANK[m.status] > _RANK[out[target]]:
            out[target] = m.status
    if scheme == "chexpert":
        out["No Finding"] = NOT_MENTIONED if _abnormal(found, unlabelled=False) else POSITIVE
    return out


def label(text: str, scheme: str = "chexpert") -> dict[str, str]:
    """{observation: positive | negative | uncertain | not_mentioned} for every label of the scheme.

    scheme: "chexpert" (14 CheXpert observations, the default) or "chestxray14" (the 14 NIH labels).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown label scheme {scheme!r} (choose from {', '.join(SCHEMES)})")
    return _aggregate(mentions(text or ""), scheme)


def label_many(texts: Iterable[str], scheme: str = "chexpert") -> list[dict[str, str]]:
    return [label(t, scheme) for t in texts]


def binary(labels: dict[str, str], uncertain_as: int = 0) -> dict[str, int]:
    """0/1 view of a label dict: positive → 1, uncertain → `uncertain_as`, anything else → 0.

    NegBio/ChestX-ray14 count uncertain mentions as positive (uncertain_as=1); CheXbert-F1 style
    clinical F1 counts only definite positives (uncertain_as=0).
    """
    return {k: 1 if v == POSITIVE else (uncertain_as if v == UNCERTAIN else 0) for k, v in labels.items()}
