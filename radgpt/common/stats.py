"""Statistics both the automatic evaluation and the reader study report with."""

from __future__ import annotations


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni step-down adjusted p-values (monotone, capped at 1), in the input order. Written here
    because scipy has none (scipy.stats.false_discovery_control is Benjamini–Hochberg) and statsmodels would be a
    dependency for one function."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted
