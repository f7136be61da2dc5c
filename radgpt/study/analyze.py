"""`radgpt study analyze`: descriptive statistics, significance tests, agreement, figures and a report.

Tests treat the **case** as the unit: a case's score for a model is the mean over its readers, so several
readers rating the same case are not counted as independent evidence. Across models: Friedman (≥ 3
models, blocks = cases rated for every model); between pairs: Wilcoxon signed-rank on the same blocks,
Holm-corrected within each criterion. Agreement: Krippendorff's alpha, ordinal, units = (case, model),
one row per reader. Confidence intervals of the mean scores: 95 %, bootstrap over cases (the same unit),
percentile, so they stay within the 1–5 scale (and are clipped to it besides). Per reader: the same means
for each reader, and the time each took per case. Model colours: `radgpt.common.palette`, as in
`radgpt evaluate`'s report.
"""

from __future__ import annotations

import base64
import io
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from radgpt.common.palette import colors_for
from radgpt.common.stats import holm
from radgpt.study.criteria import CRITERIA, NAMES, PREFERENCES, SCALE

CI_LEVEL = 0.95
BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0  # the intervals are reproducible: the same ratings give the same report


def long_scores(rows: list[dict]) -> pd.DataFrame:
    """Rating rows (export.rating_rows) -> one row per (reader, case, model, criterion) with a score."""
    if not rows:
        return pd.DataFrame(columns=["reader", "case", "model", "criterion", "score"])
    wide = pd.DataFrame(rows)
    long = wide.melt(id_vars=["reader", "case", "model"], value_vars=list(NAMES), var_name="criterion",
                     value_name="score").dropna(subset=["score"])
    long["score"] = long["score"].astype(float)
    return long.reset_index(drop=True)


def case_bootstrap_ci(case: np.ndarray, score: np.ndarray, level: float = CI_LEVEL, n_boot: int = BOOTSTRAP,
                      seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean score, resampling whole cases (all their readers' scores go
    together: the case is the unit). Clipped to the scale. NaN with fewer than two cases."""
    codes, idx = np.unique(case, return_inverse=True)
    if len(codes) < 2:
        return np.nan, np.nan
    sums = np.bincount(idx, weights=score, minlength=len(codes))
    counts = np.bincount(idx, minlength=len(codes)).astype(float)
    draw = np.random.default_rng(seed).integers(0, len(codes), size=(n_boot, len(codes)))
    means = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(np.clip(lo, min(SCALE), max(SCALE))), float(np.clip(hi, min(SCALE), max(SCALE)))


def _criterion_order(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    order = {c: i for i, c in enumerate(NAMES)}
    return frame.sort_values(by, key=lambda s: s.map(order) if s.name == "criterion" else s, ignore_index=True)


def describe(long: pd.DataFrame) -> pd.DataFrame:
    """Per model × criterion: n ratings, cases, mean, its 95 % CI (bootstrap over cases), sd, median."""
    rows = []
    for (model, criterion), g in long.groupby(["model", "criterion"], sort=False):
        score = g["score"].to_numpy(dtype=float)
        lo, hi = case_bootstrap_ci(g["case"].astype(str).to_numpy(), score)
        rows.append({"model": model, "criterion": criterion, "n": len(score), "cases": g["case"].nunique(),
                     "mean": score.mean(), "ci_low": lo, "ci_high": hi,
                     "sd": score.std(ddof=1) if len(score) > 1 else np.nan, "median": float(np.median(score))})
    return _criterion_order(pd.DataFrame(rows), ["model", "criterion"])


def by_reader(long: pd.DataFrame) -> pd.DataFrame:
    """Per reader × model × criterion: n and mean (readers differ in severity; this shows by how much)."""
    g = long.groupby(["reader", "model", "criterion"], sort=False)["score"]
    return _criterion_order(g.agg(n="count", mean="mean").reset_index(), ["reader", "model", "criterion"])


def reader_table(per_reader: pd.DataFrame) -> pd.DataFrame:
    """`by_reader` wide, for the report: one row per reader × model, one mean column per criterion."""
    wide = per_reader.pivot_table(index=["reader", "model"], columns="criterion", values="mean")
    wide = wide.reindex(columns=[c for c in NAMES if c in wide.columns])
    n = per_reader.groupby(["reader", "model"])["n"].max().rename("n")
    return pd.concat([n, wide], axis=1).reset_index()


def reader_times(rows: list[dict]) -> pd.DataFrame:
    """Per reader: cases with a recorded time, and the median / quartiles / total of the time per case. A case's
    time is the largest `seconds` of its ratings: from the case being shown to its last rating saved."""
    cols = ["reader", "cases_timed", "median_s", "q1_s", "q3_s", "total_min"]
    df = pd.DataFrame(rows)
    if df.empty or "seconds" not in df or df["seconds"].isna().all():
        return pd.DataFrame(columns=cols)
    per_case = df.dropna(subset=["seconds"]).groupby(["reader", "case"])["seconds"].max()
    out = []
    for reader, t in per_case.groupby(level="reader"):
        out.append({"reader": reader, "cases_timed": len(t), "median_s": float(t.median()),
                    "q1_s": float(t.quantile(0.25)), "q3_s": float(t.quantile(0.75)), "total_min": float(t.sum() / 60)})
    return pd.DataFrame(out, columns=cols)


def _case_matrix(long: pd.DataFrame, criterion: str) -> pd.DataFrame:
    """cases × models, each cell the mean over readers; only cases scored for every model."""
    sub = long[long["criterion"] == criterion]
    return sub.pivot_table(index="case", columns="model", values="score", aggfunc="mean").dropna()


def compare(long: pd.DataFrame) -> pd.DataFrame:
    """One row per criterion for Friedman, one per (criterion, pair) for Wilcoxon."""
    out = []
    for criterion in NAMES:
        m = _case_matrix(long, criterion)
        models = sorted(m.columns)
        if len(models) >= 3 and len(m) >= 2:
            cols = [m[c].to_numpy() for c in models]
            if all(np.array_equal(cols[0], c) for c in cols[1:]):
                stat, p = 0.0, 1.0  # identical columns: scipy returns nan, the answer is "no difference"
            else:
                stat, p = stats.friedmanchisquare(*cols)
            out.append({"criterion": criterion, "test": "friedman", "a": "all", "b": "", "n_cases": len(m),
                        "statistic": float(stat), "p": float(p), "p_holm": float(p), "mean_diff": np.nan})
        pairs = []
        for a, b in itertools.combinations(models, 2):
            d = m[a].to_numpy() - m[b].to_numpy()
            if len(d) == 0:
                continue
            if np.all(d == 0):
                stat, p = 0.0, 1.0
            else:
                res = stats.wilcoxon(m[a], m[b], zero_method="wilcox")
                stat, p = float(res.statistic), float(res.pvalue)
            pairs.append({"criterion": criterion, "test": "wilcoxon", "a": a, "b": b, "n_cases": len(d),
                          "statistic": stat, "p": p, "mean_diff": float(d.mean())})
        for row, adj in zip(pairs, holm([r["p"] for r in pairs])):
            row["p_holm"] = adj
        out.extend(pairs)
    return pd.DataFrame(out, columns=["criterion", "test", "a", "b", "n_cases", "statistic", "p", "p_holm",
                                      "mean_diff"])


def agreement(long: pd.DataFrame) -> pd.DataFrame:
    import krippendorff

    out = []
    for criterion in NAMES:
        sub = long[long["criterion"] == criterion]
        table = sub.pivot_table(index="reader", columns=["case", "model"], values="score", aggfunc="first")
        paired_units = int((table.notna().sum(axis=0) >= 2).sum()) if len(table) else 0
        alpha = np.nan
        if len(table) >= 2 and paired_units >= 1 and len(np.unique(table.to_numpy()[~np.isnan(table.to_numpy())])) > 1:
            alpha = float(krippendorff.alpha(reliability_data=table.to_numpy(dtype=float),
                                             level_of_measurement="ordinal", value_domain=[1, 2, 3, 4, 5]))
        out.append({"criterion": criterion, "readers": len(table), "units_rated_twice": paired_units,
                    "alpha_ordinal": alpha})
    return pd.DataFrame(out)


def preferences(rows: list[dict]) -> pd.DataFrame:
    """Pairwise preference vs the reference per model, with a two-sided sign test (ties dropped)."""
    df = pd.DataFrame(rows)
    if df.empty or "preference" not in df or df["preference"].isna().all():
        return pd.DataFrame(columns=["model", *PREFERENCES, "p_sign"])
    out = []
    for model, g in df.dropna(subset=["preference"]).groupby("model"):
        counts = g["preference"].value_counts()
        win, loss = int(counts.get("candidate", 0)), int(counts.get("reference", 0))
        p = stats.binomtest(win, win + loss).pvalue if win + loss else 1.0
        out.append({"model": model, **{k: int(counts.get(k, 0)) for k in PREFERENCES}, "p_sign": float(p)})
    return pd.DataFrame(out)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _pyplot().close(fig)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def bar_figure(summary: pd.DataFrame, path: Path) -> bytes:
    """The paper's grouped bars: criteria on x, one bar per model (its palette colour), error bars = 95 % CI."""
    plt = _pyplot()
    models = sorted(summary["model"].unique())
    colors = colors_for(models)
    x = np.arange(len(NAMES))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(NAMES)), 3.8), dpi=120)
    for i, model in enumerate(models):
        s = summary[summary["model"] == model].set_index("criterion").reindex(list(NAMES))
        err = np.vstack([(s["mean"] - s["ci_low"]).fillna(0).clip(lower=0),
                         (s["ci_high"] - s["mean"]).fillna(0).clip(lower=0)])
        ax.bar(x + (i - (len(models) - 1) / 2) * width, s["mean"], width, yerr=err, capsize=3,
               label=model, color=colors[model])
    ax.set_xticks(x, [CRITERIA[c]["label"] for c in NAMES])
    ax.set_ylim(0, max(SCALE) + 0.1)
    ax.set_yticks(list(SCALE))
    ax.set_ylabel(f"Mean score ({CI_LEVEL:.0%} CI)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=min(len(models), 5), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def reader_figure(per_reader: pd.DataFrame, path: Path) -> bytes:
    """One panel per criterion: each reader's mean score for each model (palette colours), readers on x."""
    plt = _pyplot()
    readers = sorted(per_reader["reader"].unique())
    models = sorted(per_reader["model"].unique())
    colors = colors_for(models)
    fig, axes = plt.subplots(1, len(NAMES), figsize=(max(8, 2.3 * len(NAMES)), 3.4), dpi=120, sharey=True,
                             squeeze=False)
    x = np.arange(len(readers))
    for ax, criterion in zip(axes[0], NAMES):
        sub = per_reader[per_reader["criterion"] == criterion]
        for model in models:
            m = sub[sub["model"] == model].set_index("reader")["mean"].reindex(readers)
            ax.plot(x, m, marker="o", ms=5, lw=1, color=colors[model], label=model)
        ax.set_title(CRITERIA[criterion]["label"], fontsize=10)
        ax.set_xticks(x, readers, rotation=45 if len(readers) > 3 else 0, ha="right" if len(readers) > 3 else "center",
                      fontsize=8)
        ax.set_xlim(-0.5, len(readers) - 0.5)
        ax.set_ylim(min(SCALE) - 0.1, max(SCALE) + 0.1)
        ax.set_yticks(list(SCALE))
        ax.spines[["top", "right"]].set_visible(False)
    axes[0][0].set_ylabel("Mean score")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(models), 6), frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return _save(fig, path)


def _html_table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3g}", na_rep="–", border=0, classes="grid")


def write_report(rows: list[dict], out: Path, title: str = "Reader study") -> dict[str, Path]:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from radgpt.study.tables import to_csv

    out.mkdir(parents=True, exist_ok=True)
    long = long_scores(rows)
    if long.empty:
        from radgpt.common.errors import FatalError

        raise FatalError("no ratings yet: nothing to analyse")
    summary = describe(long)
    tests = compare(long)
    alpha = agreement(long)
    prefs = preferences(rows)
    per_reader = by_reader(long)
    times = reader_times(rows)
    files = {"ratings": out / "ratings.csv", "summary": out / "summary.csv", "tests": out / "tests.csv",
             "agreement": out / "agreement.csv", "readers": out / "readers.csv", "times": out / "times.csv",
             "figure": out / "scores.png", "reader_figure": out / "readers.png", "report": out / "report.html"}
    files["ratings"].write_text(to_csv(rows), encoding="utf-8")
    summary.to_csv(files["summary"], index=False)
    tests.to_csv(files["tests"], index=False)
    alpha.to_csv(files["agreement"], index=False)
    per_reader.to_csv(files["readers"], index=False)
    times.to_csv(files["times"], index=False)
    if not prefs.empty:
        files["preferences"] = out / "preferences.csv"
        prefs.to_csv(files["preferences"], index=False)
    png = bar_figure(summary, files["figure"])
    reader_png = reader_figure(per_reader, files["reader_figure"])
    shared = sum(1 for r in rows if r.get("shared_by", 1) > 1)
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape())
    html = env.get_template("report.html").render(
        title=title, n_readers=long["reader"].nunique(), n_cases=long["case"].nunique(),
        n_ratings=len(rows), figure=base64.b64encode(png).decode(), summary=_html_table(summary),
        tests=_html_table(tests), agreement=_html_table(alpha),
        preferences=_html_table(prefs) if not prefs.empty else None,
        reader_figure=base64.b64encode(reader_png).decode(), readers=_html_table(reader_table(per_reader)),
        times=_html_table(times) if not times.empty else None, shared=shared, ci_level=f"{CI_LEVEL:.0%}",
        n_boot=BOOTSTRAP,
    )
    files["report"].write_text(html, encoding="utf-8")
    return files


def analyze_db(db: str, out: Path, blinded: bool = False) -> dict[str, Path]:
    from sqlalchemy import select

    from radgpt.study.db import Study, open_db
    from radgpt.study.tables import rating_rows

    engine, Session = open_db(db)
    with Session() as s:
        study = s.scalar(select(Study))
        rows = rating_rows(s, blinded=blinded)
    engine.dispose()
    return write_report(rows, out, title=study.name if study else "Reader study")
