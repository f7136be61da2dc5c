"""Render a comparison (compare.py's dict) as report.md, one self-contained report.html and report.json.

The HTML has no external resource: CSS inline, plots as base64 PNG (metric bars with 95% CIs, per-label F1
heatmap, per-sample score distributions), so it can be mailed or opened on an offline workstation.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path


def _num(v, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _p(v: float) -> str:
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _tables(result: dict) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(title, note, header, rows) for every table; shared by the Markdown and HTML renderers."""
    models = list(result["models"])
    key = result["key_metrics"]
    out = []
    rows = []
    for m in result["metrics"]:
        row = [m]
        for name in models:
            s = result["models"][name]["scores"][m]
            row.append(f"{_num(s['value'])} [{_num(s['ci_low'])}, {_num(s['ci_high'])}]")
        rows.append(row)
    rows.append(["empty predictions"] + [str(result["models"][n]["empty_predictions"]) for n in models])
    out.append(("Scores", f"{result['n']} references; value [bootstrap 95% CI, {result['settings']['bootstrap']} "
                "resamples]; all scores 0–100.", ["metric"] + models, rows))

    if result["comparisons"]:
        rows = [[f"{c['a']} − {c['b']}", c["metric"], f"{c['difference']:+.2f}", _p(c["p"]), _p(c["p_holm"]),
                 "yes" if c["significant"] else "no"] for c in result["comparisons"]]
        out.append(("Paired tests", f"paired permutation test, {result['settings']['permutations']} shuffles; "
                    f"Holm-corrected over all {len(rows)} tests; significant at 0.05 after correction.",
                    ["models", "metric", "difference", "p", "p (Holm)", "significant"], rows))

    for family, groups in result["subgroups"].items():
        rows = []
        for group, g in groups.items():
            for name in models:
                cell = g["models"][name]
                rows.append([group, str(g["n"]), name] + [_num(cell[m]) for m in key]
                            + [_num(cell["predicted_normal_pct"])])
        title = {"reference": "Normal vs abnormal reference", "findings_length": "By findings length (quartiles)",
                 "reference_length": "By reference length (quartiles)"}.get(family, family)
        note = ("A model biased toward normal shows a high predicted-normal % on abnormal references."
                if family == "reference" else "")
        out.append((title, note, ["group", "n", "model"] + key + ["predicted normal %"], rows))

    pl = result["per_label"]
    rows = []
    for obs in pl["labels"]:
        row = [obs, str(pl["support"][obs])]
        for name in models:
            row.append(_num(pl["f1"][name][obs]))
            if pl["rougeL"][name]:
                row.append(_num(pl["rougeL"][name].get(obs)))
        rows.append(row)
    header = ["label", "reference positives"]
    for name in models:
        header.append(f"{name} F1")
        if pl["rougeL"][name]:
            header.append(f"{name} R-L")
    out.append(("Per finding label", "Positive-only F1 of the labels radgpt's labeler reads in the prediction "
                "vs the reference impression; R-L: mean ROUGE-L on references positive for the label.",
                header, rows))

    if result.get("faithfulness"):
        cols = [("missed_abnormal", "missed-abnormal %"), ("false_abnormal", "false-abnormal %"),
                ("finding_precision", "finding P"), ("finding_recall", "finding R"), ("finding_f1", "finding F1"),
                ("unsupported_rate", "unsupported %"), ("with_unsupported", "impressions with unsupported %")]
        faith = result["faithfulness"]
        rows = [[name] + [_num(f.get(k)) for k, _ in cols] for name, f in faith.items()]
        first = next(iter(faith.values()))
        if "unsupported_rate_references" in first:
            rows.append(["(reference impressions)"] + [""] * 5 + [_num(first["unsupported_rate_references"]),
                                                             _num(first["with_unsupported_references"])])
        out.append(("Faithfulness to the findings", f"Missed-abnormal: of the {first['n_abnormal']} references "
                    "that state a finding, the share whose prediction states none (lower is better). Finding "
                    "P/R/F1: the findings the prediction states against those the reference states, micro-"
                    "averaged. Unsupported: findings a prediction states that its own findings text never states "
                    "(a hallucination or a finding copied from a prior case); the references' rate is the floor.",
                    ["model"] + [h for _, h in cols], rows))

    if result.get("consistency"):
        kinds = ["contradicted", "omitted", "unsupported", "severity_changed", "comparison_claim"]
        rows = [[name] + [str(c.get(k, 0)) for k in kinds] + [_num(c["reports_flagged_pct"]),
                                                             _num(c.get("reports_high_pct"))]
                for name, c in result["consistency"].items()]
        out.append(("Consistency with the findings", "contradicted: states what the findings negate (or the "
                    "reverse); omitted: a stated finding left out; unsupported: a finding the findings never mention; "
                    "severity changed: moderate → small; comparison claim: stable / new / improved with no comparison "
                    "in the findings. High: a contradiction, or a missed or invented pneumothorax, nodule or mass, "
                    "free air or misplaced tube or line. The reference impressions' own rate is the floor.",
                    ["model"] + [k.replace("_", " ") for k in kinds] + ["reports flagged %", "with a high flag %"],
                    rows))
    return out


def markdown(result: dict) -> str:
    lines = ["# radgpt evaluation report", ""]
    lines.append(f"{result['n']} references, {_num(result['reference_normal_pct'])}% normal by the labeler.")
    for msg in result["skipped"].values():
        lines.append(f"- {msg}")
    lines.append("")
    for title, note, header, rows in _tables(result):
        lines += [f"## {title}", ""]
        if note:
            lines += [note, ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(result: dict) -> dict[str, str]:
    """{title: base64 PNG}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(result["models"])
    key = result["key_metrics"] or result["metrics"][:4]
    out = {}
    if key:
        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(key) * max(1, len(models)) / 2, 3.6))
        width = 0.8 / max(1, len(models))
        x = np.arange(len(key))
        for i, name in enumerate(models):
            s = result["models"][name]["scores"]
            vals = [s[m]["value"] for m in key]
            err = [[s[m]["value"] - s[m]["ci_low"] for m in key], [s[m]["ci_high"] - s[m]["value"] for m in key]]
            ax.bar(x + i * width - 0.4 + width / 2, vals, width, yerr=err, capsize=3, label=name)
        ax.set_xticks(x, key, rotation=15)
        ax.set_ylabel("score (0–100), 95% CI")
        ax.legend(fontsize=8)
        out["Scores with 95% confidence intervals"] = _png(fig)

    pl = result["per_label"]
    labels = [o for o in pl["labels"] if pl["support"][o] > 0 or any(pl["f1"][n][o] is not None for n in models)]
    if labels and models:
        grid = np.array([[np.nan if pl["f1"][n][o] is None else pl["f1"][n][o] for o in labels] for n in models])
        fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(labels), 0.9 + 0.5 * len(models)))
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(labels)), [f"{o} ({pl['support'][o]})" for o in labels], rotation=40, ha="right",
                      fontsize=8)
        ax.set_yticks(range(len(models)), models)
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
        fig.colorbar(im, ax=ax, label="F1")
        out["Per-label F1 (reference positives in brackets)"] = _png(fig)

    dist = [m for m in ("rougeL", "bertscore_minilm") if m in result["metrics"]]
    if dist and models:
        fig, axes = plt.subplots(1, len(dist), figsize=(4.5 * len(dist), 3.2), squeeze=False)
        bins = np.linspace(0, 100, 21)
        for ax, m in zip(axes[0], dist):
            for name in models:
                ax.hist(result["per_sample"][name][m], bins=bins, histtype="step", linewidth=1.5, label=name)
            ax.set_xlabel(f"per-sample {m}")
            ax.set_ylabel("reports")
        axes[0][0].legend(fontsize=8)
        out["Per-sample score distributions"] = _png(fig)
    return out


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:14px}th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f0f0f0}td{text-align:right}td:first-child{text-align:left}.note{color:#555;font-size:13px}
img{max-width:100%}"""


def to_html(result: dict, images: dict[str, str]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>radgpt evaluation</title>"
             f"<style>{_CSS}</style></head><body><h1>radgpt evaluation report</h1>",
             f"<p>{result['n']} references, {_num(result['reference_normal_pct'])}% normal by the labeler.</p>"]
    if result["skipped"]:
        parts.append("<ul>" + "".join(f"<li>{e(m)}</li>" for m in result["skipped"].values()) + "</ul>")
    for title, data in images.items():
        parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='data:image/png;base64,{data}'>")
    for title, note, header, rows in _tables(result):
        parts.append(f"<h2>{e(title)}</h2>")
        if note:
            parts.append(f"<p class='note'>{e(note)}</p>")
        parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(result: dict, out_dir: str | Path, html_report: bool = True) -> dict[str, Path]:
    """report.md, report.html, report.json (everything but per-sample scores) and per_sample.jsonl."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "report.md", "json": out_dir / "report.json",
             "per_sample": out_dir / "per_sample.jsonl"}
    paths["markdown"].write_text(markdown(result), encoding="utf-8")
    summary = {k: v for k, v in result.items() if k not in ("per_sample", "ids")}
    paths["json"].write_text(json.dumps(summary, indent=2), encoding="utf-8")
    with open(paths["per_sample"], "w", encoding="utf-8") as fh:
        for name, per in result["per_sample"].items():
            for k, rid in enumerate(result["ids"]):
                fh.write(json.dumps({"id": rid, "model": name, **{m: v[k] for m, v in per.items()}}) + "\n")
    if html_report:
        paths["html"] = out_dir / "report.html"
        paths["html"].write_text(to_html(result, plots(result)), encoding="utf-8")
    return paths
