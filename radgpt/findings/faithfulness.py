"""Faithfulness of impressions to their findings, read by the labeler — and the one normal/abnormal rule.

An impression can score well on ROUGE and still be the worst output this product can give: a fluent
"No acute abnormality" for findings that describe a nodule. These measures look at what is *stated*:

  missed-abnormal   the reference states a finding, the prediction states none (share of such references);
  finding P/R/F1    the findings the prediction states against those the reference states, micro-averaged
                    over all cases (a finding = a labeler observation group, so "nodule" and "mass" are one
                    lung lesion, "infiltrate" and "opacity" one lung opacity);
  unsupported       findings a prediction states that its own findings text never states (nor a sign of
                    it: opacity supports pneumonia) — a hallucination or a finding copied from a prior case.
                    Computed for the references too: their rate is the floor (radiologists add what the
                    findings text leaves out, and the labeler misreads some).

`consistency_flags` checks one impression against its findings for a reader: what it omits, invents,
contradicts, re-grades, compares without a prior, or copies from a prior case — each flag with a severity
by clinical significance and character spans to highlight.

`is_abnormal` is the single normal/abnormal definition used by finetune's validation, evaluate's
subgroups, the study's strata and the benches: a text is abnormal when the labeler finds a stated
(positive or uncertain) finding other than a support device in it.
"""

from __future__ import annotations

import re

from radgpt.findings import labeler
from radgpt.findings.labeler import CONCEPTS, NEGATIVE, POSITIVE, UNCERTAIN, mentions

# An impression may name a diagnosis the findings support only by its sign: "opacity" → "pneumonia".
SUPPORTED_BY = {
    "Pneumonia": {"Lung Opacity", "Consolidation"},
    "Consolidation": {"Lung Opacity", "Pneumonia"},
    "Atelectasis": {"Lung Opacity"},
    "Edema": {"Lung Opacity", "Cardiomegaly", "interstitial_disease"},
    "Lung Lesion": {"Lung Opacity", "granuloma"},
    "Lung Opacity": {"Consolidation", "Pneumonia", "Atelectasis", "Edema", "Lung Lesion", "interstitial_disease"},
    "Cardiomegaly": {"Enlarged Cardiomediastinum"},
    "Enlarged Cardiomediastinum": {"Cardiomegaly"},
    "Emphysema": {"hyperinflation"},
    "hyperinflation": {"Emphysema"},
    "interstitial_disease": {"Lung Opacity", "Fibrosis", "Edema"},
    "Fibrosis": {"interstitial_disease"},
    "granuloma": {"Lung Lesion"},
}


def is_abnormal(text: str) -> bool:
    """True when the text states a finding (devices aside). Empty text is not abnormal."""
    return labeler._abnormal(mentions(text or ""))


def _group(concept: str) -> str:
    chexpert, cxr14, _ = CONCEPTS[concept]
    return chexpert or cxr14 or concept


def stated(text: str) -> set[str]:
    """The finding groups a text states (positive or uncertain), support devices included."""
    return {_group(m.concept) for m in mentions(text or "") if m.status in (POSITIVE, UNCERTAIN)}


def unsupported_groups(have: set[str], claimed: set[str]) -> set[str]:
    """Of the groups an impression states (`claimed`), those its findings (stating `have`) neither state nor
    show a stated sign of. One rule for the measure, the flags, the repair and retrieval's re-ranking."""
    return {g for g in claimed - have if g != "Support Devices" and not SUPPORTED_BY.get(g, set()) & have}


def unsupported(findings: str, impression: str) -> set[str]:
    """Finding groups the impression states that the findings neither state nor show a sign of."""
    return unsupported_groups(stated(findings), stated(impression))


def faithfulness(refs: list[str], hyps: list[str], findings: list[str] | None = None) -> dict:
    """Corpus-level faithfulness figures (percentages, one decimal) and per-sample values."""
    n = len(refs)
    ref_sets = [stated(r) for r in refs]
    hyp_sets = [stated(h) for h in hyps]
    ref_abn = [is_abnormal(r) for r in refs]
    hyp_abn = [is_abnormal(h) for h in hyps]
    tp = sum(len(r & h) for r, h in zip(ref_sets, hyp_sets))
    fp = sum(len(h - r) for r, h in zip(ref_sets, hyp_sets))
    fn = sum(len(r - h) for r, h in zip(ref_sets, hyp_sets))
    p = tp / (tp + fp) if tp + fp else 0.0
    r_ = tp / (tp + fn) if tp + fn else 0.0
    n_abn = sum(ref_abn)
    missed = [a and not h for a, h in zip(ref_abn, hyp_abn)]
    out = {
        "n": n, "n_abnormal": n_abn,
        "missed_abnormal": round(100 * sum(missed) / n_abn, 1) if n_abn else 0.0,
        "false_abnormal": round(100 * sum(h and not a for a, h in zip(ref_abn, hyp_abn)) / max(n - n_abn, 1), 1),
        "finding_precision": round(100 * p, 1), "finding_recall": round(100 * r_, 1),
        "finding_f1": round(100 * 2 * p * r_ / (p + r_), 1) if p + r_ else 0.0,
    }
    per_sample = {"missed_abnormal": [int(m) for m in missed]}
    if findings is not None:
        uh = [unsupported(f, h) for f, h in zip(findings, hyps)]
        ur = [unsupported(f, r) for f, r in zip(findings, refs)]
        n_h, n_r = sum(len(s) for s in hyp_sets), sum(len(s) for s in ref_sets)
        out.update({
            "unsupported_rate": round(100 * sum(len(s) for s in uh) / max(n_h, 1), 1),
            "unsupported_rate_references": round(100 * sum(len(s) for s in ur) / max(n_r, 1), 1),
            "with_unsupported": round(100 * sum(bool(s) for s in uh) / max(n, 1), 1),
            "with_unsupported_references": round(100 * sum(bool(s) for s in ur) / max(n, 1), 1),
        })
        per_sample["unsupported"] = [sorted(s) for s in uh]
    return {"summary": out, "per_sample": per_sample}


# ---------------------------------------------------------------------------------------- consistency flags
# A missed or invented one of these changes what happens to the patient today.
CRITICAL = {"Pneumothorax", "Lung Lesion", "free_air", "malpositioned_device"}
# Findings a reader expects in the impression when present; leaving them out is more than style.
MAJOR = {"Pleural Effusion", "Consolidation", "Pneumonia", "Edema", "Cardiomegaly", "Enlarged Cardiomediastinum",
         "Lung Opacity", "Atelectasis", "Fracture", "Emphysema", "Fibrosis", "interstitial_disease"}
# Findings routinely listed without the impression repeating them; omitting them is not a flag.
NOT_REQUIRED = {"Support Devices", "degenerative_change", "scoliosis", "granuloma"}

_SEVERITY_WORDS = {"trace": 0, "tiny": 0, "minimal": 0, "minimally": 0, "small": 1, "mild": 1, "mildly": 1,
                   "slight": 1, "slightly": 1, "moderate": 2, "moderately": 2, "large": 3, "severe": 3,
                   "severely": 3, "marked": 3, "markedly": 3, "massive": 3, "extensive": 3}
_SEVERITY = re.compile(r"\b(" + "|".join(_SEVERITY_WORDS) + r")\b")
# An impression that compares ("stable", "new", "improved") needs a comparison in the findings.
_COMPARISON_CLAIM = re.compile(r"\b(interval|stable|unchanged|improv\w*|worsen\w*|progress\w*|new|newly|resolv\w*"
                               r"|increas\w*|decreas\w*|again (?:seen|noted|demonstrated)|persist\w*|redemonstrat\w*"
                               r"|since)\b", re.IGNORECASE)
_COMPARISON_BASIS = re.compile(r"\b(prior|previous|previously|comparison|compared|since|interval|stable|unchanged"
                               r"|again|redemonstrat\w*|persist\w*|improv\w*|worsen\w*|increas\w*|decreas\w*|new"
                               r"|resolv\w*|progress\w*|remain\w*|old|chronic|known)\b", re.IGNORECASE)
_FLAG_SEVERITY = {"high": 3, "medium": 2, "low": 1}
FLAG_TYPES = ("contradicted", "omitted", "unsupported", "severity_changed", "comparison_claim", "copied")


def _by_group(found: list) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in found:
        g = _group(m.concept)
        if g not in out or labeler._RANK[m.status] > labeler._RANK[out[g]]:
            out[g] = m.status
    return out


def _severity(text: str, found: list, group: str) -> tuple[int, str] | None:
    """The strongest severity word next to a stated mention of `group` (3 words before, 2 after)."""
    best = None
    low = text.lower()
    for m in found:
        if _group(m.concept) != group or m.status == NEGATIVE:
            continue
        # within the mention's own clause: "moderate cardiomegaly. Large effusion" is not large cardiomegaly
        before = " ".join(re.split(r"[.;:,\n]", low[:m.start])[-1].split()[-3:])
        after = " ".join(re.split(r"[.;:,\n]", low[m.end:])[0].split()[:2])
        for w in _SEVERITY.findall(before + " " + after):
            if best is None or _SEVERITY_WORDS[w] > best[0]:
                best = (_SEVERITY_WORDS[w], w)
    return best


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", (text or "").lower()).split())


def consistency_flags(findings: str, impression: str, priors: list[tuple[str, str]] | tuple = ()) -> list[dict]:
    """Disagreements between a report's findings and its (generated) impression, most severe first.

    Each flag is {"type", "severity", "observation", "message", "findings_spans", "impression_spans"}:
      "contradicted"      (high)  the impression asserts what the findings negate, or negates what they state;
      "omitted"           a finding the findings state is not in the impression: high for a pneumothorax, a
                          nodule or mass, free air or a misplaced tube or line; medium for the major findings
                          (effusion, consolidation, cardiomegaly, ...); low for the rest;
      "unsupported"       the impression states a finding the findings never mention nor show a sign of
                          (opacity → pneumonia is supported): high when critical, else medium;
      "severity_changed"  (medium) both state it, at different severity ("moderate" → "small");
      "comparison_claim"  (medium) "stable / new / improved / interval" with no comparison in the findings;
      "copied"            (medium; high with an unsupported finding) word for word the impression of a prior
                          case in `priors` ((case id, impression) pairs), and not the normal boilerplate.
    The spans are [start, end) character offsets in each text, for highlighting. Empty findings give no
    flags: there is nothing to check the impression against.
    """
    if not (findings or "").strip():
        return []
    impression = impression or ""
    f_found, i_found = mentions(findings), mentions(impression)
    f, i = _by_group(f_found), _by_group(i_found)
    flags = []

    def flag(kind: str, severity: str, group: str | None, message: str, f_spans=None, i_spans=None) -> None:
        if f_spans is None:
            f_spans = [[m.start, m.end] for m in f_found if _group(m.concept) == group]
        if i_spans is None:
            i_spans = [[m.start, m.end] for m in i_found if _group(m.concept) == group]
        flags.append({"type": kind, "severity": severity, "observation": group, "message": message,
                      "findings_spans": f_spans, "impression_spans": i_spans})

    stated_f = {g for g, st in f.items() if st in (POSITIVE, UNCERTAIN)}
    stated_i = {g for g, st in i.items() if st in (POSITIVE, UNCERTAIN)}
    invented = unsupported_groups(stated_f, stated_i)
    for g in list(dict.fromkeys([*f, *i])):
        fs, is_ = f.get(g, "not_mentioned"), i.get(g, "not_mentioned")
        name = g.lower().replace("_", " ")
        critical = g in CRITICAL
        if is_ in (POSITIVE, UNCERTAIN) and fs == NEGATIVE:
            flag("contradicted", "high", g, f"impression states {name} but the findings negate it")
        elif is_ == NEGATIVE and fs == POSITIVE:
            flag("contradicted", "high", g, f"impression negates {name} but the findings state it")
        elif fs == "not_mentioned" and g in invented:
            flag("unsupported", "high" if critical else "medium", g,
                 f"impression states {name}, which the findings never mention")
        elif fs == POSITIVE and is_ == "not_mentioned" and g not in NOT_REQUIRED:
            if not any(g in SUPPORTED_BY.get(o, ()) for o in stated_i):
                severity = "high" if critical else "medium" if g in MAJOR else "low"
                flag("omitted", severity, g, f"findings state {name}, which the impression omits")
        elif fs in (POSITIVE, UNCERTAIN) and is_ in (POSITIVE, UNCERTAIN):
            sf, si = _severity(findings, f_found, g), _severity(impression, i_found, g)
            if sf and si and sf[0] != si[0]:
                flag("severity_changed", "medium", g, f"findings say {sf[1]} {name}, the impression says {si[1]}")

    claims = list(_COMPARISON_CLAIM.finditer(impression))
    if claims and not _COMPARISON_BASIS.search(findings):
        words = ", ".join(dict.fromkeys(c.group(0).lower() for c in claims))
        flag("comparison_claim", "medium", None, f"impression compares with a prior study ({words}) but the "
             "findings hold no comparison", [], [[c.start(), c.end()] for c in claims])

    if impression.strip() and is_abnormal(impression):
        norm = _normalise(impression)
        for case_id, text in priors:
            if _normalise(text) == norm:
                has_unsupported = any(x["type"] == "unsupported" for x in flags)
                flag("copied", "high" if has_unsupported else "medium", None, f"impression is word for word the "
                     f"impression of prior case {case_id}", [], [[0, len(impression)]])
                break
    flags.sort(key=lambda x: -_FLAG_SEVERITY[x["severity"]])
    return flags


# ---------------------------------------------------------------------------------------- repair
# Left out of an impression that states other findings, these are still added: critical ones and the acute
# major ones a reader acts on today (on validate this raised finding F1 by 1.4 and left ROUGE-L unchanged).
ALWAYS_ADD = CRITICAL | {"Pleural Effusion", "Consolidation", "Pneumonia", "Edema"}
# Stated alongside these, "no acute disease" would contradict the impression itself.
ACUTE = {"Pneumothorax", "Pleural Effusion", "Consolidation", "Pneumonia", "Edema", "Lung Opacity", "Atelectasis",
         "free_air", "malpositioned_device", "Enlarged Cardiomediastinum"}
# a list marker ("1.") belongs to the sentence after it, not to a sentence of its own
_SENTENCES = re.compile(r"(?:\d{1,2}[.)]\s+)?(?:[^.!?\s]|[.!?](?!\s|$))(?:[^.!?\n]|[.!?](?!\s|$))*(?:[.!?]+|$)")
_THERE_IS = re.compile(r"^(?:there (?:is|are)|again (?:seen|noted) (?:is|are)?)\s+(?:(?:an?|the)\s+)?", re.IGNORECASE)
_BENIGN = re.compile(r"\b(old|healed|healing|remote|(?<!not )(?<!definitively )calcified|granulomas?|granulomatous)\b",
                     re.IGNORECASE)
_NORMAL_SENTENCE = re.compile(r"\b(no acute|no active|normal|negative|no evidence of (?:acute|active)"
                              r"|no radiographic evidence)\b", re.IGNORECASE)
_LIST_MARK = re.compile(r"^\s*\d{1,2}[.)]\s+")


def _sentences(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _SENTENCES.finditer(text) if m.group(0).strip(" .")]


def _stated_in(text: str, found: list, start: int, end: int) -> set[str]:
    return {_group(m.concept) for m in found if start <= m.start < end and m.status != NEGATIVE}


def _tidy(sentence: str) -> str:
    s = _THERE_IS.sub("", _LIST_MARK.sub("", sentence.strip()))
    s = s[:1].upper() + s[1:]
    return s if s.endswith((".", "!", "?")) else s + "."


def repair(findings: str, impression: str) -> tuple[str, list[dict]]:
    """Make an impression say what its findings state, and nothing they do not. Returns (text, actions).

    Driven by the same labeler reading as `consistency_flags`:
      - a sentence of the impression that states a finding the findings never state (a finding carried over
        from a prior case) or contradicts them is removed;
      - then, if what is left states no finding while the findings state a critical (pneumothorax, nodule or
        mass, free air, misplaced tube or line) or major one (effusion, consolidation, cardiomegaly, ...), or
        leaves out a critical or acute one (effusion, consolidation, pneumonia, edema), the findings' own
        sentence stating it is added; a "no acute ..." sentence
        that an added acute finding would contradict is dropped. Sentences that call the finding old, healed,
        calcified or granulomatous are not added (radiologists leave those out of an impression).
    Added sentences are the radiologist's words from the findings, so they cannot invent anything; each
    action names the sentence, for the reader. An impression the check finds nothing wrong with comes back
    unchanged, as does one the repair would leave empty."""
    if not (findings or "").strip() or not (impression or "").strip():
        return impression, []
    flags = consistency_flags(findings, impression)
    remove = {f["observation"] for f in flags if f["type"] in ("unsupported", "contradicted")}
    if not remove and not any(f["type"] == "omitted" and f["severity"] in ("high", "medium") for f in flags):
        return impression, []
    i_found, f_found = mentions(impression), mentions(findings)
    actions, kept = [], []
    for start, end in _sentences(impression):
        sent = impression[start:end].strip()
        hit = [m for m in i_found if start <= m.start < end and _group(m.concept) in remove]
        if hit:
            actions.append({"action": "removed", "sentence": sent})
        else:
            kept.append((sent, _stated_in(impression, i_found, start, end)))
    have = set().union(*(g for _, g in kept)) if kept else set()
    have_finding = any(is_abnormal(s) for s, _ in kept)
    wanted = ALWAYS_ADD | (MAJOR if not have_finding else set())
    added, add_groups = [], set()
    for start, end in _sentences(findings):
        sent = findings[start:end]
        groups = (_stated_in(findings, f_found, start, end) & wanted) - have
        covered = {g for g in groups if any(g in SUPPORTED_BY.get(h, ()) for h in have)}
        if groups - covered and not _BENIGN.search(sent):
            text = _tidy(sent)
            if text not in added:
                added.append(text)
                add_groups |= groups
    if add_groups & ACUTE:
        for sent, groups in list(kept):
            if not groups and _NORMAL_SENTENCE.search(sent):
                kept.remove((sent, groups))
                actions.append({"action": "removed", "sentence": sent, "why": "an added finding contradicts it"})
    actions += [{"action": "added_from_findings", "sentence": s} for s in added]
    out = [_LIST_MARK.sub("", s) for s, _ in kept] + added
    if not out:
        return impression, []
    if len(out) > 1 and _LIST_MARK.match(impression):  # keep a numbered impression numbered
        return " ".join(f"{n}. {s}" for n, s in enumerate(out, 1)), actions
    return " ".join(out), actions
