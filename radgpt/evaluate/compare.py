"""Score several models on the same references and compare them: CIs, paired tests, subgroups.

`compare(refs, predictions)` returns one JSON-ready dict that report.py renders. Subgroups answer
"where does a model fail, and is it biased toward normal?" (the Radiology-GPT paper's concern):
  - reference normal vs abnormal (`faithfulness.is_abnormal` on the reference impression, the one
    definition finetune, the benches and the study share), with the rate at which each model *predicts*
    a normal impression in each group;
  - per CheXpert label: positive-only F1 of the model's labels against the reference's, and ROUGE-L on
    the references positive for that label;
  - findings-length quartile (the reference impression's length when the file has no findings).
Faithfulness (faithfulness.py): missed-abnormal rate, finding P/R/F1 against the reference, and — with
findings — unsupported findings, with the references' own rate as the floor.
"""

from __future__ import annotations

from itertools import combinations
from typing import Callable

import numpy as np

from radgpt.evaluate import labeler, metrics, stats
from radgpt.evaluate.faithfulness import FLAG_TYPES, consistency_flags, faithfulness, is_abnormal
from radgpt.evaluate.io import Reference

# Shown in subgroup tables and tested between models (when computed); every metric gets a CI.
KEY_METRICS = ("rougeL", "bleu", "bertscore_minilm", "clinical_f1_pos_micro")


def _f1(tp: int, fp: int, fn: int) -> float | None:
    return None if tp + fp + fn == 0 else 100.0 * 2 * tp / (2 * tp + fp + fn)


def compare(refs: list[Reference], predictions: dict[str, list[str]], metric_names: list[str] | None = None,
            n_boot: int = 1000, n_perm: int = 1000, seed: int = 0,
            progress: Callable[[str], None] | None = None) -> dict:
    n = len(refs)
    say = progress or (lambda _msg: None)
    ref_texts = [r.impression for r in refs]
    results: dict[str, dict[str, metrics.MetricResult]] = {}
    skipped: dict[str, str] = {}
    for name, hyps in predictions.items():
        results[name], skip = metrics.compute_results(ref_texts, hyps, metric_names,
                                                      on_group=lambda g, name=name: say(f"{name}: {g}"))
        skipped.update(skip)
    metric_order = list(next(iter(results.values())).keys()) if results else []
    key = [m for m in KEY_METRICS if m in metric_order]

    say("bootstrap confidence intervals")
    counts = stats.bootstrap_counts(n, n_boot, seed)
    models = {}
    for name, res in results.items():
        scores = {}
        for m, r in res.items():
            low, high = stats.bootstrap_ci(r, counts)
            scores[m] = {"value": r.aggregate, "ci_low": low, "ci_high": high}
        models[name] = {"scores": scores,
                        "empty_predictions": sum(1 for h in predictions[name] if not h.strip())}

    say("paired permutation tests")
    comparisons = []
    for a, b in combinations(results, 2):
        for m in key:
            diff, p = stats.paired_permutation(results[a][m], results[b][m], n_perm, seed)
            comparisons.append({"a": a, "b": b, "metric": m, "difference": diff, "p": p})
    for c, adj in zip(comparisons, stats.holm([c["p"] for c in comparisons])):
        c["p_holm"] = adj
        c["significant"] = adj < 0.05

    say("labels, subgroups and consistency flags")
    ref_labels = [labeler.label(t) for t in ref_texts]
    hyp_labels = {name: [labeler.label(h) for h in hyps] for name, hyps in predictions.items()}
    ref_normal = np.array([not is_abnormal(t) for t in ref_texts])
    pred_normal = {name: np.array([not is_abnormal(h) for h in hyps]) for name, hyps in predictions.items()}

    def group_row(mask: np.ndarray) -> dict:
        row = {"n": int(mask.sum()), "models": {}}
        for name, res in results.items():
            cell = {m: (float(stats.weighted_aggregate(res[m], mask[None])[0]) if mask.any() else None) for m in key}
            cell["predicted_normal_pct"] = 100.0 * float(pred_normal[name][mask].mean()) if mask.any() else None
            row["models"][name] = cell
        return row

    subgroups = {"reference": {"normal": group_row(ref_normal), "abnormal": group_row(~ref_normal)}}
    has_findings = sum(1 for r in refs if r.findings.strip()) >= 0.5 * n
    findings = [r.findings for r in refs] if has_findings else None
    faithful = {name: faithfulness(ref_texts, hyps, findings) for name, hyps in predictions.items()}
    lengths = np.array([len((r.findings if has_findings else r.impression).split()) for r in refs])
    edges = np.quantile(lengths, [0.25, 0.5, 0.75]) if n else np.zeros(3)
    quartile = np.digitize(lengths, edges, right=True)
    length_rows = {}
    for q in range(4):
        mask = quartile == q
        if not mask.any():
            continue
        lo, hi = int(lengths[mask].min()), int(lengths[mask].max())
        length_rows[f"Q{q + 1} ({lo}–{hi} words)"] = group_row(mask)
    subgroups["findings_length" if has_findings else "reference_length"] = length_rows

    per_label = {"labels": [], "support": {}, "f1": {name: {} for name in results},
                 "rougeL": {name: {} for name in results}}
    for obs in labeler.CHEXPERT:
        ref_pos = np.array([lab[obs] == labeler.POSITIVE for lab in ref_labels])
        per_label["labels"].append(obs)
        per_label["support"][obs] = int(ref_pos.sum())
        for name in results:
            hyp_pos = np.array([lab[obs] == labeler.POSITIVE for lab in hyp_labels[name]])
            per_label["f1"][name][obs] = _f1(int((ref_pos & hyp_pos).sum()), int((~ref_pos & hyp_pos).sum()),
                                             int((ref_pos & ~hyp_pos).sum()))
            if "rougeL" in results[name] and ref_pos.any():
                per_label["rougeL"][name][obs] = float(np.mean(np.asarray(results[name]["rougeL"].per_sample)[ref_pos]))

    consistency = None
    if has_findings:
        def count(pairs) -> dict:
            kinds = dict.fromkeys(FLAG_TYPES, 0)
            high = flagged = 0
            for fnd, imp in pairs:
                flags = consistency_flags(fnd, imp)
                flagged += bool(flags)
                high += any(f["severity"] == "high" for f in flags)
                for f in flags:
                    kinds[f["type"]] += 1
            return {**kinds, "reports_flagged_pct": 100.0 * flagged / max(n, 1),
                    "reports_high_pct": 100.0 * high / max(n, 1)}

        consistency = {name: count(zip((r.findings for r in refs), hyps)) for name, hyps in predictions.items()}
        # the references' own rate: the floor a model is compared to
        consistency["(reference impressions)"] = count((r.findings, r.impression) for r in refs)

    return {
        "n": n,
        "metrics": metric_order,
        "key_metrics": key,
        "skipped": skipped,
        "settings": {"bootstrap": n_boot, "permutations": n_perm, "seed": seed},
        "reference_normal_pct": 100.0 * float(ref_normal.mean()) if n else 0.0,
        "models": models,
        "comparisons": comparisons,
        "subgroups": subgroups,
        "per_label": per_label,
        "consistency": consistency,
        "faithfulness": {name: f["summary"] for name, f in faithful.items()},
        "per_sample": {name: {**{m: list(r.per_sample) for m, r in res.items()},
                              "missed_abnormal": faithful[name]["per_sample"]["missed_abnormal"]}
                       for name, res in results.items()},
        "ids": [r.id for r in refs],
    }
