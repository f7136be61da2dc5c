"""Reader-study statistics on synthetic ratings: a known effect is found, no effect is not."""

from __future__ import annotations

import numpy as np
import pytest

from radgpt.common.palette import colors_for
from radgpt.common.stats import holm
from radgpt.study import analyze
from radgpt.study.analyze import (
    agreement,
    by_reader,
    case_bootstrap_ci,
    compare,
    describe,
    long_scores,
    preferences,
    reader_table,
    reader_times,
    write_report,
)
from radgpt.study.criteria import NAMES


def synthetic_rows(effects: dict[str, float], n_cases=30, readers=("r1", "r2", "r3"), noise=0.5, seed=0,
                   shared_case_effect=True):
    """Scores = model effect + a per-case difficulty shared by readers + reader noise, clipped to 1..5."""
    rng = np.random.default_rng(seed)
    rows = []
    for case in range(n_cases):
        difficulty = rng.normal(0, 0.7) if shared_case_effect else 0.0
        truth = {m: base + difficulty + rng.normal(0, 0.3) for m, base in effects.items()}
        for reader in readers:
            for model, t in truth.items():
                row = {"reader": reader, "case": f"c{case}", "stratum": "abnormal", "code": model, "model": model,
                       "is_reference": False, "comment": "", "updated_at": 0.0}
                for c in NAMES:
                    row[c] = int(np.clip(np.rint(t + rng.normal(0, noise)), 1, 5))
                row["preference"] = "candidate" if t > 3.5 else "reference"
                rows.append(row)
    return rows


def test_holm_matches_hand_computation():
    # p sorted: 0.01*3=0.03, 0.02*2=0.04, 0.04*1=0.04 (monotone)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_known_effect_is_detected():
    rows = synthetic_rows({"good": 4.3, "mid": 3.0, "bad": 1.8})
    long = long_scores(rows)
    summary = describe(long)
    means = summary[summary.criterion == "clinical_utility"].set_index("model")["mean"]
    assert means["good"] > means["mid"] > means["bad"]
    assert set(summary.columns) >= {"n", "mean", "sd", "median"}
    assert (summary["n"] == 90).all()  # 30 cases x 3 readers
    tests = compare(long)
    fried = tests[tests.test == "friedman"]
    assert len(fried) == len(NAMES) and (fried.p < 1e-6).all()
    pairs = tests[tests.test == "wilcoxon"]
    assert len(pairs) == 3 * len(NAMES)
    assert (pairs.p_holm < 0.001).all() and (pairs.p_holm >= pairs.p).all()
    assert (agreement(long).alpha_ordinal > 0.7).all()  # readers see the same quality
    prefs = preferences(rows).set_index("model")
    assert prefs.loc["good", "candidate"] > 25 and prefs.loc["good", "p_sign"] < 1e-6


def test_no_effect_is_not_detected():
    rows = synthetic_rows({"a": 3.0, "b": 3.0, "c": 3.0}, seed=1, noise=1.0, shared_case_effect=False)
    tests = compare(long_scores(rows))
    assert (tests[tests.test == "friedman"].p > 0.01).all()
    assert (tests[tests.test == "wilcoxon"].p_holm > 0.05).mean() >= 0.9
    alpha = agreement(long_scores(rows)).alpha_ordinal
    assert (alpha.abs() < 0.2).all()  # ratings are noise: no agreement beyond chance


def test_two_models_single_reader_and_identical_scores():
    rows = synthetic_rows({"a": 4.0, "b": 4.0}, readers=("solo",), noise=0.0, shared_case_effect=False)
    for r in rows:
        for c in NAMES:
            r[c] = 4
    long = long_scores(rows)
    tests = compare(long)
    assert set(tests.test) == {"wilcoxon"} and (tests.p == 1.0).all()  # no Friedman for two models
    assert agreement(long).alpha_ordinal.isna().all()  # one reader: agreement undefined, not an error


def test_report_files(tmp_path, monkeypatch):
    rows = synthetic_rows({"good": 4.3, "bad": 2.0, "mid": 3.1}, n_cases=8)
    for i, r in enumerate(rows):
        r["seconds"] = 20.0 + i % 7
    drawn: dict[str, str] = {}
    real_bar = analyze._pyplot().Axes.bar

    def bar(self, x, height, *args, label=None, color=None, **kw):
        drawn[label] = color
        return real_bar(self, x, height, *args, label=label, color=color, **kw)

    monkeypatch.setattr(analyze._pyplot().Axes, "bar", bar)
    files = write_report(rows, tmp_path, "Synthetic")
    assert {"ratings", "summary", "tests", "agreement", "figure", "report", "preferences", "readers", "times",
            "reader_figure"} <= set(files)
    html = files["report"].read_text()
    assert "Synthetic" in html and "Krippendorff" in html and "<table" in html and "Per reader" in html
    assert "95% confidence interval" in html and "Time per case" in html
    assert files["figure"].read_bytes()[:4] == b"\x89PNG" and files["reader_figure"].read_bytes()[:4] == b"\x89PNG"
    # one colour per model name, the one evaluate's report gives it
    assert drawn == colors_for(["good", "bad", "mid"])


def test_confidence_intervals_stay_on_the_scale():
    # the probe of issue #15: mean ± sd went above 5 for a model rated 5 nearly always
    rows = synthetic_rows({"top": 6.0, "low": 0.0, "mid": 3.0}, n_cases=12, noise=0.8)
    summary = describe(long_scores(rows))
    assert {"ci_low", "ci_high", "cases"} <= set(summary.columns)
    assert (summary["mean"] + summary["sd"] > 5).any()  # what the old ±sd bars drew
    assert (summary.ci_low >= 1).all() and (summary.ci_high <= 5).all()
    assert (summary.ci_low <= summary["mean"]).all() and (summary["mean"] <= summary.ci_high).all()
    # the case is the unit: more cases, narrower; one case, no interval
    wide = describe(long_scores(synthetic_rows({"a": 3.0}, n_cases=6, seed=3)))
    narrow = describe(long_scores(synthetic_rows({"a": 3.0}, n_cases=120, seed=3)))
    assert ((narrow.ci_high - narrow.ci_low) < (wide.ci_high - wide.ci_low)).all()
    assert np.isnan(case_bootstrap_ci(np.array(["c1", "c1"]), np.array([3.0, 4.0]))).all()
    # the same ratings give the same intervals
    assert case_bootstrap_ci(np.array(["a", "b", "c"]), np.array([1.0, 3, 5])) == \
        case_bootstrap_ci(np.array(["a", "b", "c"]), np.array([1.0, 3, 5]))


def test_per_reader_breakdown_and_times():
    rows = synthetic_rows({"a": 3.0, "b": 4.0}, readers=("kind", "strict"), noise=0.0, shared_case_effect=False)
    for r in rows:
        if r["reader"] == "strict":
            for c in NAMES:
                r[c] = max(1, r[c] - 1)
        r["seconds"] = {"kind": 30.0, "strict": 90.0}[r["reader"]] + (r["model"] == "b")
    per = by_reader(long_scores(rows))
    means = per[per.criterion == "coherence"].set_index(["reader", "model"])["mean"]
    assert means[("strict", "a")] == pytest.approx(means[("kind", "a")] - 1)
    assert means[("strict", "b")] == pytest.approx(means[("kind", "b")] - 1)
    table = reader_table(per)
    assert list(table.columns) == ["reader", "model", "n", *NAMES] and len(table) == 4
    times = reader_times(rows).set_index("reader")
    # a case's time = its last rating's: 31 s (kind), 91 s (strict), for each of the 30 cases
    assert times.loc["kind", "median_s"] == 31 and times.loc["strict", "median_s"] == 91
    assert times.loc["strict", "cases_timed"] == 30 and times.loc["strict", "total_min"] == pytest.approx(30 * 91 / 60)
    assert reader_times([{k: v for k, v in r.items() if k != "seconds"} for r in rows]).empty
