"""Metrics registry: `compute(refs, hyps) -> {"aggregate", "per_sample", "skipped", "empty_predictions"}`.

Every score is on a 0–100 scale. A *group* is one pass of one library that yields several named metrics
(rouge_score gives ROUGE-1/2/L/Lsum at once). Groups import their library only when computed, so
importing this module costs nothing.

  group       metrics                                    how
  rouge       rouge1 rouge2 rougeL rougeLsum             rouge_score, no stemming, per-sample F1 averaged —
                                                         how HF `evaluate` and the Open-i/MIMIC papers report
  rouge_stem  rouge1_stem … rougeLsum_stem               the same with the Porter stemmer
  bleu        bleu                                       sacrebleu corpus BLEU (13a, exp smoothing); per
                                                         sample: sacrebleu sentence BLEU (exp smoothing,
                                                         effective order: an exact 3-word match is 100)
              bleu_hf                                    HF `evaluate` "bleu" (13a tokens, corpus level, no
                                                         smoothing; HF prints it on 0–1, here ×100); per
                                                         sample the same smoothed sentence BLEU as `bleu`
                                                         (unsmoothed sentence BLEU is 0 for any text
                                                         under 4 tokens)
  embedding   embed_cosine bertscore_minilm              packaged offline MiniLM (see embedding.py)
  clinical    clinical_f1_pos_micro/_macro               radgpt labeler on both texts, 14 CheXpert labels,
                                                         positive mentions only (CheXbert-F1 style)
              clinical_f1_micro/_macro                   same, but the status must agree too (positive,
                                                         negative or uncertain mention)
                                                         macro: over the labels with at least
                                                         MIN_LABEL_POSITIVES (5) reference positives (or
                                                         mentions, for the status variant), since the F1
                                                         of a label with one positive is 0 or 100 by chance
  radgraph    radgraph_f1       optional plugin: needs the `radgraph` package and its weights cached
  chexbert    chexbert_f1_micro optional plugin: needs `f1chexbert` and its weights cached

Corpus-level metrics (BLEU, micro/macro F1) also return per-sample sufficient statistics and a reducer,
so the bootstrap in stats.py resamples them exactly instead of averaging per-sample scores.
Empty predictions score 0 on every per-sample metric and are counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from radgpt.common.errors import FatalError


class OptionalMetricMissing(Exception):
    """An optional metric cannot run here (package or weights missing); its message is one line."""


@dataclass
class MetricResult:
    aggregate: float
    per_sample: list[float]
    # For corpus-level metrics: per-sample statistics (n, k) and reduce((B, k) summed stats) -> (B,) scores.
    stats: np.ndarray | None = None
    reduce: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)
    note: str = ""  # how this metric was computed on these texts, when that depends on them (one line)


# A label needs this many reference positives to count in a macro F1 (clinical_f1_*_macro).
MIN_LABEL_POSITIVES = 5


# ---------------------------------------------------------------- ROUGE
def _rouge(refs: list[str], hyps: list[str], stem: bool) -> dict[str, MetricResult]:
    from rouge_score import rouge_scorer

    kinds = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(kinds, use_stemmer=stem)
    per = {k: [] for k in kinds}
    for ref, hyp in zip(refs, hyps):
        scores = scorer.score(ref, hyp)  # (target, prediction)
        for k in kinds:
            per[k].append(100.0 * scores[k].fmeasure)
    suffix = "_stem" if stem else ""
    return {k + suffix: MetricResult(float(np.mean(v)) if v else 0.0, v) for k, v in per.items()}


# ---------------------------------------------------------------- BLEU
def _bleu_reducer(smooth: str):
    def reduce(summed: np.ndarray) -> np.ndarray:
        from sacrebleu.metrics import BLEU

        out = np.empty(len(summed))
        for b, row in enumerate(summed.astype(int).tolist()):
            # sacrebleu's stats layout: sys_len, ref_len, 4 × correct, 4 × total
            out[b] = BLEU.compute_bleu(row[2:6], row[6:10], row[0], row[1], smooth_method=smooth).score
        return np.minimum(out, 100.0)  # exp(log(1)) rounding gives 100.00000000000004
    return reduce


def _bleu(refs: list[str], hyps: list[str]) -> dict[str, MetricResult]:
    from sacrebleu.metrics import BLEU

    corpus = BLEU()  # 13a tokenizer, exp smoothing: sacrebleu's defaults
    stats = np.asarray(corpus._extract_corpus_statistics(hyps, [refs]), dtype=np.int64).reshape(len(hyps), -1)
    # sentence BLEU needs smoothing: without it any text under 4 tokens scores 0, even an exact match.
    # sacrebleu's sentence_bleu defaults: exp smoothing + effective order (n-gram orders the hypothesis
    # is too short for are left out), so "No acute disease" against itself is 100.
    sentence = BLEU(effective_order=True)
    per = [min(100.0, sentence.sentence_score(h, [r]).score) for r, h in zip(refs, hyps)]
    exp_reduce, none_reduce = _bleu_reducer("exp"), _bleu_reducer("none")
    total = stats.sum(axis=0, keepdims=True)
    # HF evaluate's "bleu" (the tensorflow/nmt compute_bleu on 13a tokens, max order 4, smooth=False) is
    # sacrebleu's formula with smooth_method="none": same clipped counts, same brevity penalty, and 0 when
    # any n-gram order has no match. Cross-checked against a direct port of nmt's formula in the tests.
    # Per sample both use the smoothed sentence BLEU above (HF's unsmoothed formula on one sentence is 0
    # whenever a 4-gram is missing); they differ only at corpus level, and only when an n-gram order has
    # no match in the whole corpus (then bleu_hf is 0).
    return {
        "bleu": MetricResult(float(exp_reduce(total)[0]), per, stats, exp_reduce),
        "bleu_hf": MetricResult(float(none_reduce(total)[0]), list(per), stats, none_reduce),
    }


# ---------------------------------------------------------------- embedding similarity
def _embedding(refs: list[str], hyps: list[str]) -> dict[str, MetricResult]:
    from radgpt.evaluate.embedding import similarity

    return {k: MetricResult(float(np.mean(v)) if v else 0.0, v) for k, v in similarity(refs, hyps).items()}


# ---------------------------------------------------------------- clinical F1 from the labeler
def _f1_reducers(n_labels: int, in_macro: np.ndarray | None = None):
    """(micro, macro) reducers of summed (B, n_labels×3) tp/fp/fn. The macro averages the labels in
    `in_macro` (a boolean mask, fixed on the full set so every resample averages the same labels) that
    are seen in the resample; None: every label seen."""
    keep = np.ones(n_labels, dtype=bool) if in_macro is None else np.asarray(in_macro, dtype=bool)

    def micro(summed: np.ndarray) -> np.ndarray:
        tp, fp, fn = (summed.reshape(len(summed), n_labels, 3).sum(axis=1)).T
        denom = 2 * tp + fp + fn
        return np.where(denom > 0, 100.0 * 2 * tp / np.maximum(denom, 1), 0.0)

    def macro(summed: np.ndarray) -> np.ndarray:
        per = summed.reshape(len(summed), n_labels, 3)[:, keep]
        tp, fp, fn = per[..., 0], per[..., 1], per[..., 2]
        denom = 2 * tp + fp + fn
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)  # a label seen nowhere has no F1
        if f1.shape[1] == 0:
            return np.zeros(len(summed))
        with np.errstate(invalid="ignore"):
            out = 100.0 * np.nanmean(np.where(np.isnan(f1).all(axis=1, keepdims=True), 0.0, f1), axis=1)
        return out
    return micro, macro


def macro_labels(stats: np.ndarray, n_labels: int, min_positives: int = MIN_LABEL_POSITIVES) -> np.ndarray:
    """Boolean mask of the labels with at least `min_positives` reference positives (tp + fn) in `stats`
    ((n, n_labels×3) per-sample tp/fp/fn)."""
    support = stats.reshape(len(stats), n_labels, 3)[..., [0, 2]].sum(axis=(0, 2))
    return support >= min_positives


def clinical_stats(ref_labels: list[dict], hyp_labels: list[dict], status: bool) -> np.ndarray:
    """(n, 14×3) tp/fp/fn per CheXpert label. status=False: positive mentions only; True: the status
    (positive/negative/uncertain) of every mentioned label must agree."""
    from radgpt.findings.labeler import CHEXPERT, NOT_MENTIONED, POSITIVE

    out = np.zeros((len(ref_labels), len(CHEXPERT), 3), dtype=np.int64)
    for i, (r, h) in enumerate(zip(ref_labels, hyp_labels)):
        for j, obs in enumerate(CHEXPERT):
            if status:
                in_r, in_h = r[obs] != NOT_MENTIONED, h[obs] != NOT_MENTIONED
                match = in_r and in_h and r[obs] == h[obs]
            else:
                in_r, in_h = r[obs] == POSITIVE, h[obs] == POSITIVE
                match = in_r and in_h
            out[i, j] = (match, in_h and not match, in_r and not match)
    return out.reshape(len(ref_labels), -1)


def _clinical(refs: list[str], hyps: list[str], min_positives: int = MIN_LABEL_POSITIVES) -> dict[str, MetricResult]:
    from radgpt.findings.labeler import CHEXPERT, label

    ref_labels, hyp_labels = [label(t) for t in refs], [label(t) for t in hyps]
    out = {}
    for name, status in (("clinical_f1_pos", False), ("clinical_f1", True)):
        stats = clinical_stats(ref_labels, hyp_labels, status)
        keep = macro_labels(stats, len(CHEXPERT), min_positives)
        what = "mentions" if status else "positives"
        if keep.any():
            left_out = [obs for obs, k in zip(CHEXPERT, keep) if not k]
            note = (f"macro over the {int(keep.sum())} labels with at least {min_positives} reference {what}"
                    + (f"; left out: {', '.join(left_out)}" if left_out else ""))
        else:  # a small set: no label has enough positives; average every label seen, and say so
            keep = None
            note = f"no label has {min_positives} reference {what}: macro over every label seen (unstable)"
        micro, macro = _f1_reducers(len(CHEXPERT), keep)
        # per sample: F1 over that report's labels; two reports with nothing to match agree fully
        per = [float(v) if s.sum() else 100.0 for v, s in zip(micro(stats), stats)]
        total = stats.sum(axis=0, keepdims=True)
        out[name + "_micro"] = MetricResult(float(micro(total)[0]), per, stats, micro)
        out[name + "_macro"] = MetricResult(float(macro(total)[0]), list(per), stats, macro, note=note)
    return out


# ---------------------------------------------------------------- optional plugins
def _radgraph(refs: list[str], hyps: list[str]) -> dict[str, MetricResult]:
    try:
        from radgraph import F1RadGraph
    except ImportError:
        raise OptionalMetricMissing("radgraph_f1 skipped: package 'radgraph' is not installed "
                                    "(pip install radgraph, then cache its weights; radgpt never downloads)") from None
    try:
        scorer = F1RadGraph(reward_level="partial")
        mean, per, _, _ = scorer(hyps=hyps, refs=refs)
    except Exception as e:  # noqa: BLE001 — weights not in the local cache while offline, or an API change
        raise OptionalMetricMissing(f"radgraph_f1 skipped: RadGraph could not run offline "
                                    f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None
    return {"radgraph_f1": MetricResult(100.0 * float(mean), [100.0 * float(x) for x in per])}


def _chexbert(refs: list[str], hyps: list[str]) -> dict[str, MetricResult]:
    try:
        from f1chexbert import F1CheXbert
    except ImportError:
        raise OptionalMetricMissing("chexbert_f1_micro skipped: package 'f1chexbert' is not installed "
                                    "(pip install f1chexbert, then cache its weights; radgpt never downloads)") from None
    try:
        scorer = F1CheXbert()
        _, per, report, _ = scorer(hyps=hyps, refs=refs)
    except Exception as e:  # noqa: BLE001 — as above
        raise OptionalMetricMissing(f"chexbert_f1_micro skipped: CheXbert could not run offline "
                                    f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None
    return {"chexbert_f1_micro": MetricResult(100.0 * float(report["micro avg"]["f1-score"]),
                                              [100.0 * float(x) for x in per])}


# group -> (function, the metric names it yields)
GROUPS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "rouge": (lambda r, h: _rouge(r, h, stem=False), ("rouge1", "rouge2", "rougeL", "rougeLsum")),
    "rouge_stem": (lambda r, h: _rouge(r, h, stem=True),
                   ("rouge1_stem", "rouge2_stem", "rougeL_stem", "rougeLsum_stem")),
    "bleu": (_bleu, ("bleu", "bleu_hf")),
    "embedding": (_embedding, ("embed_cosine", "bertscore_minilm")),
    "clinical": (_clinical, ("clinical_f1_pos_micro", "clinical_f1_pos_macro", "clinical_f1_micro",
                             "clinical_f1_macro")),
    "radgraph": (_radgraph, ("radgraph_f1",)),
    "chexbert": (_chexbert, ("chexbert_f1_micro",)),
}
OPTIONAL = ("radgraph", "chexbert")
DEFAULT = tuple(GROUPS)  # every group; optional ones skip themselves with one line when they cannot run
OFFLINE = tuple(g for g in GROUPS if g not in OPTIONAL)


def resolve(names: list[str] | None) -> list[str]:
    """Group names from a mix of group and metric names ("rouge", "bleu_hf"); "all" and "offline" too."""
    if not names:
        return list(DEFAULT)
    out: list[str] = []
    for name in names:
        if name == "all":
            groups = list(DEFAULT)
        elif name == "offline":
            groups = list(OFFLINE)
        elif name in GROUPS:
            groups = [name]
        else:
            groups = [g for g, (_, produced) in GROUPS.items() if name in produced]
            if not groups:
                known = sorted(set(GROUPS) | {m for _, p in GROUPS.values() for m in p})
                raise FatalError(f"unknown metric '{name}' (choose from all, offline, {', '.join(known)})")
        out.extend(g for g in groups if g not in out)
    return out


def compute_results(refs: list[str], hyps: list[str], metrics: list[str] | None = None,
                    on_group: Callable[[str], None] | None = None) -> tuple[dict[str, MetricResult], dict[str, str]]:
    """Run the requested groups. Returns ({metric: MetricResult}, {group: why it was skipped})."""
    if len(refs) != len(hyps):
        raise FatalError(f"{len(refs)} references but {len(hyps)} predictions")
    refs = [r or "" for r in refs]
    hyps = [h or "" for h in hyps]
    empty = [i for i, h in enumerate(hyps) if not h.strip()]
    results: dict[str, MetricResult] = {}
    skipped: dict[str, str] = {}
    for group in resolve(metrics):
        if on_group:
            on_group(group)
        fn, _ = GROUPS[group]
        try:
            produced = fn(refs, hyps)
        except OptionalMetricMissing as e:
            skipped[group] = str(e)
            continue
        for name, res in produced.items():
            for i in empty:  # an empty prediction is a failure, whatever a metric would make of it
                res.per_sample[i] = 0.0
            results[name] = res
    return results, skipped


def compute(refs: list[str], hyps: list[str], metrics: list[str] | None = None) -> dict:
    """{"aggregate": {metric: score}, "per_sample": {metric: [scores]}, "skipped": {group: reason},
    "empty_predictions": count} — every score on 0–100."""
    results, skipped = compute_results(refs, hyps, metrics)
    return {
        "aggregate": {k: r.aggregate for k, r in results.items()},
        "per_sample": {k: list(r.per_sample) for k, r in results.items()},
        "skipped": skipped,
        "empty_predictions": sum(1 for h in hyps if not (h or "").strip()),
    }
