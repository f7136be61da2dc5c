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

Paired tests: every other model against the *reference model* (the first --pred unless named) on the main
metrics (the paper table), and the other pairs on the key metrics; one Holm family over all of them.
Duplicate metrics (rougeLsum = rougeL on one-line texts, bleu_hf = bleu at corpus level) are dropped when
they are identical for every model, with a note saying so. Worst cases: the references the models miss
(reference abnormal, prediction normal) or score lowest on, side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations

import numpy as np

from radgpt.common.stats import holm
from radgpt.evaluate import metrics, stats
from radgpt.evaluate.io import Reference
from radgpt.findings import labeler
from radgpt.findings.faithfulness import FLAG_TYPES, consistency_flags, faithfulness, is_abnormal, stated

# Shown in subgroup tables and tested between every pair of models (when computed); every metric gets a CI.
KEY_METRICS = ("rougeL", "bleu", "bertscore_minilm", "clinical_f1_pos_micro")
# The paper table (table.tex / table.csv): tested between each model and the reference model.
MAIN_METRICS = ("rouge1", "rouge2", "rougeL", "bleu", "bertscore_minilm", "clinical_f1_pos_micro",
                "clinical_f1_pos_macro", "radgraph_f1", "chexbert_f1_micro")
# metric -> the metric it duplicates on most texts; dropped from the report when identical for every model
DUPLICATES = {"rougeLsum": "rougeL", "rougeLsum_stem": "rougeL_stem", "bleu_hf": "bleu"}
_WHY_DUPLICATE = {
    "rougeLsum": "rougeLsum splits sentences on line breaks only, and these texts have none",
    "rougeLsum_stem": "rougeLsum splits sentences on line breaks only, and these texts have none",
    "bleu_hf": "HF evaluate's unsmoothed corpus BLEU equals sacrebleu's whenever every n-gram order has a "
               "match somewhere in the corpus; per sample both are sacrebleu's smoothed sentence BLEU",
}
STATIC_NOTES = {
    "bleu": "corpus BLEU (sacrebleu, 13a, exp smoothing); per sample: sentence BLEU with exp smoothing and "
            "effective order, so an exact 3-word match scores 100",
    "bertscore_minilm": "BERTScore F1 with the packaged MiniLM, not comparable with published (roberta-large) "
                        "BERTScore",
}
WORST_DEFAULT = 10


def _f1(tp: int, fp: int, fn: int) -> float | None:
    return None if tp + fp + fn == 0 else 100.0 * 2 * tp / (2 * tp + fp + fn)


def compare(refs: list[Reference], predictions: dict[str, list[str]], metric_names: list[str] | None = None,
            n_boot: int = 1000, n_perm: int = 1000, seed: int = 0,
            progress: Callable[[str], None] | None = None, reference: str | None = None,
            worst: int = WORST_DEFAULT) -> dict:
    """The comparison as one JSON-ready dict. `reference`: the model the others are tested against
    (default: the first); `worst`: how many worst cases to list (0: none)."""
    n = len(refs)
    if predictions and reference is None:
        reference = next(iter(predictions))
    if predictions and reference not in predictions:
        raise ValueError(f"reference model {reference!r} is not among {', '.join(predictions)}")
    say = progress or (lambda _msg: None)
    ref_texts = [r.impression for r in refs]
    results: dict[str, dict[str, metrics.MetricResult]] = {}
    skipped: dict[str, str] = {}
    for name, hyps in predictions.items():
        results[name], skip = metrics.compute_results(ref_texts, hyps, metric_names,
                                                      on_group=lambda g, name=name: say(f"{name}: {g}"))
        skipped.update(skip)
    metric_order = list(next(iter(results.values())).keys()) if results else []
    notes = {m: STATIC_NOTES[m] for m in metric_order if m in STATIC_NOTES}
    for m in metric_order:
        model_notes = list(dict.fromkeys(res[m].note for res in results.values() if res[m].note))
        if model_notes:
            notes[m] = "; ".join([*([notes[m]] if m in notes else []), *model_notes])
    dropped = {}
    for dup, twin in DUPLICATES.items():
        if dup not in metric_order or twin not in metric_order:
            continue
        same = all(abs(res[dup].aggregate - res[twin].aggregate) < 1e-9
                   and np.allclose(res[dup].per_sample, res[twin].per_sample, rtol=0, atol=1e-9)
                   for res in results.values())
        if same:
            dropped[dup] = twin
            metric_order.remove(dup)
            for res in results.values():
                del res[dup]
            notes[twin] = "; ".join([*([notes[twin]] if twin in notes else []),
                                     f"{dup} not shown: identical to {twin} here ({_WHY_DUPLICATE[dup]})"])
        else:
            notes[dup] = f"differs from {twin} here" + (" (the texts hold line breaks)" if twin.startswith("rouge")
                                                        else " (an n-gram order has no match in the corpus)")
    key = [m for m in KEY_METRICS if m in metric_order]
    main = [m for m in MAIN_METRICS if m in metric_order] or list(metric_order)

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
        vs_reference = reference in (a, b)
        if b != reference and vs_reference:
            a, b = b, a  # model − reference
        for m in (main if vs_reference else key):
            diff, p = stats.paired_permutation(results[a][m], results[b][m], n_perm, seed)
            low, high = stats.paired_bootstrap_ci(results[a][m], results[b][m], counts)
            comparisons.append({"a": a, "b": b, "metric": m, "difference": diff, "ci_low": low, "ci_high": high,
                                "p": p, "vs_reference": vs_reference})
    for c, adj in zip(comparisons, holm([c["p"] for c in comparisons])):
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

    per_label = {"labels": [], "support": {}, "in_macro": {}, "min_positives": metrics.MIN_LABEL_POSITIVES,
                 "f1": {name: {} for name in results}, "rougeL": {name: {} for name in results}}
    for obs in labeler.CHEXPERT:
        ref_pos = np.array([lab[obs] == labeler.POSITIVE for lab in ref_labels])
        per_label["labels"].append(obs)
        per_label["support"][obs] = int(ref_pos.sum())
        per_label["in_macro"][obs] = bool(ref_pos.sum() >= metrics.MIN_LABEL_POSITIVES)
        for name, res in results.items():
            hyp_pos = np.array([lab[obs] == labeler.POSITIVE for lab in hyp_labels[name]])
            per_label["f1"][name][obs] = _f1(int((ref_pos & hyp_pos).sum()), int((~ref_pos & hyp_pos).sum()),
                                             int((ref_pos & ~hyp_pos).sum()))
            if "rougeL" in res and ref_pos.any():
                per_label["rougeL"][name][obs] = float(np.mean(np.asarray(res["rougeL"].per_sample)[ref_pos]))

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

    say("worst cases")
    worst_cases = _worst_cases(refs, predictions, results, faithful, key or metric_order, worst)

    return {
        "n": n,
        "metrics": metric_order,
        "key_metrics": key,
        "main_metrics": main,
        "reference_model": reference,
        "metric_notes": notes,
        "duplicates_dropped": dropped,
        "skipped": skipped,
        "settings": {"bootstrap": n_boot, "permutations": n_perm, "seed": seed},
        "reference_normal_pct": 100.0 * float(ref_normal.mean()) if n else 0.0,
        "models": models,
        "comparisons": comparisons,
        "subgroups": subgroups,
        "per_label": per_label,
        "consistency": consistency,
        "faithfulness": {name: f["summary"] for name, f in faithful.items()},
        "worst_cases": worst_cases,
        "per_sample": {name: {**{m: list(r.per_sample) for m, r in res.items()},
                              "missed_abnormal": faithful[name]["per_sample"]["missed_abnormal"]}
                       for name, res in results.items()},
        "ids": [r.id for r in refs],
    }


def _worst_cases(refs: list[Reference], predictions: dict[str, list[str]], results: dict, faithful: dict,
                 shown: list[str], top: int) -> dict:
    """The `top` references the models do worst on, side by side: first those whose reference states a
    finding (is_abnormal) that a model's prediction misses entirely (most models missing first), then by
    the loss — 100 − ROUGE-L (or the first metric), averaged over the models."""
    names = list(predictions)
    loss_metric = "rougeL" if "rougeL" in shown else (shown[0] if shown else None)
    out = {"loss": f"100 − {loss_metric}" if loss_metric else None, "order": "references a model's prediction "
           "calls normal while the reference states a finding (most models first), then the largest loss averaged "
           "over the models", "cases": []}
    if top <= 0 or not refs or not names:
        return out
    missed = np.array([faithful[name]["per_sample"]["missed_abnormal"] for name in names], dtype=int)
    if loss_metric:
        loss = 100.0 - np.array([results[name][loss_metric].per_sample for name in names], dtype=float)
    else:
        loss = np.zeros((len(names), len(refs)))
    n_missed, mean_loss = missed.sum(axis=0), loss.mean(axis=0)
    order = sorted(range(len(refs)), key=lambda i: (-n_missed[i], -mean_loss[i], i))[:top]
    for i in order:
        r = refs[i]
        ref_stated = stated(r.impression) - {"Support Devices"}
        models = {}
        for k, name in enumerate(names):
            hyp = predictions[name][i]
            cell = {"prediction": hyp,
                    "scores": {m: float(results[name][m].per_sample[i]) for m in shown},
                    "missed_abnormal": bool(missed[k, i]),
                    "missed_findings": sorted(ref_stated - stated(hyp))}
            if "unsupported" in faithful[name]["per_sample"]:
                cell["unsupported_findings"] = faithful[name]["per_sample"]["unsupported"][i]
            models[name] = cell
        who = [name for k, name in enumerate(names) if missed[k, i]]
        reason = (f"missed abnormal: {', '.join(who)}" if who
                  else f"loss {mean_loss[i]:.1f} (100 − {loss_metric}, mean over models)" if loss_metric else "")
        out["cases"].append({"id": r.id, "findings": r.findings, "reference": r.impression,
                             "reference_findings": sorted(ref_stated), "reason": reason, "models": models})
    return out
