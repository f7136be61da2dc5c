"""Confidence intervals and paired significance tests over per-sample scores.

- Bootstrap 95% CI: resample the evaluation set with replacement (percentile interval). Corpus-level
  metrics (BLEU, micro/macro F1) are recomputed from resampled sufficient statistics, not averaged.
- Paired permutation test (approximate randomisation, as RadEval and sacrebleu's `--paired-ar` do): for
  each sample, swap the two systems' outputs with probability 1/2, recompute the difference; p is the
  share of shuffles at least as extreme as observed, with the +1 correction so p is never 0.
- Paired bootstrap CI of a difference between two systems: the same resamples for both.
- Holm's step-down correction over the whole family of tests run in one report.

Resampling uses count/mask matrices (B × n) and matrix products, so 1,000 draws of 1,000 samples are
fast and memory stays ~B·n floats.
"""

from __future__ import annotations

import numpy as np

from radgpt.evaluate.metrics import MetricResult


def _per(result: MetricResult) -> np.ndarray:
    return np.asarray(result.per_sample, dtype=float)


def weighted_aggregate(result: MetricResult, weights: np.ndarray) -> np.ndarray:
    """Aggregate under sample weights (B, n) — bootstrap counts or a subgroup mask — → (B,)."""
    weights = np.atleast_2d(weights).astype(float)
    if result.reduce is not None and result.stats is not None:
        return result.reduce(weights @ result.stats)
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights @ _per(result)) / np.maximum(total, 1e-12), np.nan)


def bootstrap_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) how many times each sample is drawn; shared by every metric and model of a report, so
    their intervals come from the same resamples."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float32)


def bootstrap_ci(result: MetricResult, counts: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    draws = weighted_aggregate(result, counts)
    alpha = (1 - level) / 2
    low, high = np.nanquantile(draws, [alpha, 1 - alpha])
    return float(low), float(high)


def paired_bootstrap_ci(a: MetricResult, b: MetricResult, counts: np.ndarray,
                        level: float = 0.95) -> tuple[float, float]:
    """95% CI of the difference a − b from the same resamples for both systems (a paired bootstrap): much
    narrower than the two systems' own intervals when their per-sample scores go together."""
    draws = weighted_aggregate(a, counts) - weighted_aggregate(b, counts)
    alpha = (1 - level) / 2
    low, high = np.nanquantile(draws, [alpha, 1 - alpha])
    return float(low), float(high)


def paired_permutation(a: MetricResult, b: MetricResult, n_perm: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(observed difference a − b, two-sided p) for two systems scored on the same samples."""
    n = len(a.per_sample)
    ones = np.ones((1, n))
    observed = float(weighted_aggregate(a, ones)[0] - weighted_aggregate(b, ones)[0])
    rng = np.random.default_rng(seed)
    swap = (rng.random((n_perm, n)) < 0.5).astype(float)
    keep = 1.0 - swap
    if a.reduce is not None and a.stats is not None and b.stats is not None:
        sa = keep @ a.stats + swap @ b.stats
        sb = keep @ b.stats + swap @ a.stats
        diffs = a.reduce(sa) - a.reduce(sb)
    else:
        pa, pb = _per(a), _per(b)
        diffs = (keep @ pa + swap @ pb - keep @ pb - swap @ pa) / n
    extreme = np.sum(np.abs(diffs) >= abs(observed) - 1e-12)
    return observed, float((extreme + 1) / (n_perm + 1))
