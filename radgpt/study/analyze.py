"""`radgpt study analyze`: descriptive statistics, significance tests, agreement, a figure and a report.

Tests treat the **case** as the unit: a case's score for a model is the mean over its readers, so several
readers rating the same case are not counted as independent evidence. Across models: Friedman (≥ 3
models, blocks = cases rated for every model); between pairs: Wilcoxon signed-rank on the same blocks,
Holm-corrected within each criterion. Agreement: Krippendorff's alpha, ordinal, units = (case, model),
one row per reader.
"""

from __future__ import annotations

import base64
import io
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from radgpt.study.criteria import CRITERIA, NAMES, PREFERENCES


def long_scores(rows: list[dict]) -> pd.DataFrame:
    """Rating rows (export.rating_rows) -> one row per (reader, case, model, criterion) with a score."""
    if not rows:
        return pd.DataFrame(columns=["reader", "case", "model", "criterion", "score"])
    wide = pd.DataFrame(rows)
    long = wide.melt(id_vars=["reader", "case", "model"], value_vars=list(NAMES), var_name="criterion",
                     value_name="score").dropna(subset=["score"])
    long["score"] = long["score"].astype(float)
    return long.reset_index(drop=True)


def describe(long: pd.DataFrame) -> pd.DataFrame:
    g = long.groupby(["model", "criterion"], sort=False)["score"]
    out = g.agg(n="count", mean="mean", sd="std", median="median").reset_index()
    order = {c: i for i, c in enumerate(NAMES)}
    return out.sort_values(["model", "criterion"], key=lambda s: s.map(order) if s.name == "criterion" else s,
                           ignore_index=True)


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni step-down adjusted p-values (scipy has no Holm; statsmodels would be a dependency)."""
    m = len(pvalues)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(np.argsort(pvalues)):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


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


def bar_figure(summary: pd.DataFrame, path: Path) -> bytes:
    """The paper's grouped bars: criteria on x, one bar per model, error bars = sd."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(summary["model"].unique())
    x = np.arange(len(NAMES))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(NAMES)), 3.8), dpi=120)
    for i, model in enumerate(models):
        s = summary[summary["model"] == model].set_index("criterion").reindex(list(NAMES))
        ax.bar(x + (i - (len(models) - 1) / 2) * width, s["mean"], width, yerr=s["sd"].fillna(0), capsize=3,
               label=model)
    ax.set_xticks(x, [CRITERIA[c]["label"] for c in NAMES])
    ax.set_ylim(0, 5.5)
    ax.set_yticks([1, 2, 3, 4, 5])
    ax.set_ylabel("Mean score (±sd)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=min(len(models), 5), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _html_table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3g}", na_rep="–", border=0, classes="grid")


def write_report(rows: list[dict], out: Path, title: str = "Reader study") -> dict[str, Path]:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from radgpt.study.export import to_csv

    out.mkdir(parents=True, exist_ok=True)
    long = long_scores(rows)
    if long.empty:
        from radgpt.errors import FatalError

        raise FatalError("no ratings yet: nothing to analyse")
    summary = describe(long)
    tests = compare(long)
    alpha = agreement(long)
    prefs = preferences(rows)
    files = {"ratings": out / "ratings.csv", "summary": out / "summary.csv", "tests": out / "tests.csv",
             "agreement": out / "agreement.csv", "figure": out / "scores.png", "report": out / "report.html"}
    files["ratings"].write_text(to_csv(rows), encoding="utf-8")
    summary.to_csv(files["summary"], index=False)
    tests.to_csv(files["tests"], index=False)
    alpha.to_csv(files["agreement"], index=False)
    if not prefs.empty:
        files["preferences"] = out / "preferences.csv"
        prefs.to_csv(files["preferences"], index=False)
    png = bar_figure(summary, files["figure"])
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape())
    html = env.get_template("report.html").render(
        title=title, n_readers=long["reader"].nunique(), n_cases=long["case"].nunique(),
        n_ratings=len(rows), figure=base64.b64encode(png).decode(), summary=_html_table(summary),
        tests=_html_table(tests), agreement=_html_table(alpha),
        preferences=_html_table(prefs) if not prefs.empty else None,
    )
    files["report"].write_text(html, encoding="utf-8")
    return files


def analyze_db(db: str, out: Path, blinded: bool = False) -> dict[str, Path]:
    from sqlalchemy import select

    from radgpt.study.export import rating_rows
    from radgpt.study.models import Study, open_db

    engine, Session = open_db(db)
    with Session() as s:
        study = s.scalar(select(Study))
        rows = rating_rows(s, blinded=blinded)
    engine.dispose()
    return write_report(rows, out, title=study.name if study else "Reader study")
