"""Labeler figure: agreement with the NegBio gold labels on the OpenI reports, and speed, side by side
with a naive keyword labeler.

    .venv/bin/python bench/bench_labeler.py            # needs ../shared/data/openi

Gold: ../shared/data/openi/negbio_openi_labels.csv (ChestX-ray14 labels, 0/1) on findings + impression of
indiana_reports.csv. Macro-F1 over the labels with >= 20 positives. NegBio counts an uncertain mention as
not positive, so radgpt's uncertain → 0 here. The rules were developed reading the even-uid half ("dev");
the odd-uid half ("held-out") was only scored, so it is the honest figure.
Speed: reports per second of CPU time (time.process_time) on one core, best of 3 passes over all reports.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from radgpt.findings.labeler import binary, label  # noqa: E402
from radgpt.findings.negbio import agreement, frequent_labels, load_openi  # noqa: E402

OPENI = Path(__file__).resolve().parents[2] / "shared" / "data" / "openi"

# The baseline the shared README describes: a keyword anywhere in the report, unless a negation cue comes
# earlier in its sentence.
_KEYWORDS = {
    "Atelectasis": "atelecta", "Cardiomegaly": "cardiomegaly", "Effusion": "effusion", "Infiltration": "infiltrat",
    "Mass": "mass", "Nodule": "nodul", "Pneumonia": "pneumonia", "Pneumothorax": "pneumothora",
    "Consolidation": "consolidat", "Edema": "edema", "Emphysema": "emphysem", "Fibrosis": "fibros",
    "Pleural_Thickening": "pleural thickening", "Hernia": "hernia",
}
_NEG = re.compile(r"\b(?:no|not|without|negative|free of)\b")


def naive(text: str) -> dict[str, int]:
    out = dict.fromkeys(_KEYWORDS, 0)
    for sentence in re.split(r"(?<=\.)\s+", text.lower()):
        for lab, kw in _KEYWORDS.items():
            at = sentence.find(kw)
            if at >= 0 and not _NEG.search(sentence, 0, at):
                out[lab] = 1
    return out


def radgpt(text: str) -> dict[str, int]:
    return binary(label(text, "chestxray14"), uncertain_as=0)


def speed(fn, texts: list[str]) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for t in texts:
            fn(t)
        best = min(best, time.process_time() - t0)
    return len(texts) / best


def main() -> int:
    if not OPENI.is_dir():
        print(f"{OPENI} not found", file=sys.stderr)
        return 2
    rows = load_openi(OPENI)
    labels = frequent_labels(rows)
    halves = {"all": rows, "dev (even uid)": [r for r in rows if r["uid"] % 2 == 0],
              "held-out (odd uid)": [r for r in rows if r["uid"] % 2 == 1]}
    results = {name: {h: agreement(sub, fn, labels) for h, sub in halves.items()}
               for name, fn in (("naive keyword", naive), ("radgpt", radgpt))}
    texts = [r["text"] for r in rows]
    rates = {"naive keyword": speed(naive, texts), "radgpt": speed(radgpt, texts)}

    print(f"NegBio agreement, {len(rows)} OpenI reports, macro-F1 over {len(labels)} labels with >= 20 positives\n")
    print(f"| labeler | {' | '.join(f'macro-F1 {h} (n={len(s)})' for h, s in halves.items())} | reports/s (1 core) |")
    print("|---|" + "---|" * (len(halves) + 1))
    for name, res in results.items():
        print(f"| {name} | " + " | ".join(f"{res[h]['macro_f1']:.3f}" for h in halves) + f" | {rates[name]:,.0f} |")
    print("\nPer label (all reports): F1 naive / radgpt, radgpt precision and recall\n")
    print("| label | positives | naive F1 | radgpt F1 | radgpt P | radgpt R | radgpt F1 dev | radgpt F1 held-out |")
    print("|---|---|---|---|---|---|---|---|")
    for lab in labels:
        n, r = results["naive keyword"]["all"]["per_label"][lab], results["radgpt"]["all"]["per_label"][lab]
        dev = results["radgpt"]["dev (even uid)"]["per_label"][lab]["f1"]
        held = results["radgpt"]["held-out (odd uid)"]["per_label"][lab]["f1"]
        print(f"| {lab} | {r['positives']} | {n['f1']:.3f} | {r['f1']:.3f} | {r['precision']:.3f} | "
              f"{r['recall']:.3f} | {dev:.3f} | {held:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
