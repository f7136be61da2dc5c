"""Render a comparison (compare.py's dict) as report.md, one self-contained report.html, report.json and
the paper table (table.tex with booktabs, table.csv).

The HTML has no external resource: CSS inline, plots as base64 PNG (metric bars with 95% CIs, per-label F1
heatmap, per-sample score distributions; each model in its `palette.colors_for` colour, as in the study's
analysis), so it can be mailed or opened on an offline workstation. Both reports open with the provenance
(input files with sha256, and what the prediction lines say produced them) and end with the worst cases
side by side. Numbers in report.json and per_sample.jsonl are rounded to 6 significant digits.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path

# Names for the paper table and the plots' legends.
METRIC_LABELS = {
    "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum",
    "rouge1_stem": "ROUGE-1 (stemmed)", "rouge2_stem": "ROUGE-2 (stemmed)", "rougeL_stem": "ROUGE-L (stemmed)",
    "rougeLsum_stem": "ROUGE-Lsum (stemmed)", "bleu": "BLEU", "bleu_hf": "BLEU (HF evaluate)",
    "embed_cosine": "Embedding cosine (MiniLM)", "bertscore_minilm": "BERTScore F1 (MiniLM)",
    "clinical_f1_pos_micro": "Clinical F1, positive (micro)", "clinical_f1_pos_macro": "Clinical F1, positive (macro)",
    "clinical_f1_micro": "Clinical F1, status (micro)", "clinical_f1_macro": "Clinical F1, status (macro)",
    "radgraph_f1": "RadGraph F1", "chexbert_f1_micro": "CheXbert F1 (micro)",
}
# Provenance keys in the order a reader looks for them; the others follow in the order the lines have them.
_PROV_ORDER = ("model", "kind", "backend", "base", "adapter_sha256", "model_path", "endpoint", "endpoint_model",
               "device", "autocast", "compute_type", "quantization", "export", "prompt_template", "prompting", "shots", "preset",
               "decoding", "instruction", "cases")


def label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _num(v, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def clean(obj, digits: int = 6):
    """A JSON-ready copy: floats to `digits` significant digits (100.00000000000004 → 100.0), NaN → None."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: clean(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v, digits) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalars
        return clean(obj.item(), digits)
    return obj


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
    out.append(("Scores", (f"{result['n']} references; value [bootstrap 95% CI, {result['settings']['bootstrap']} "
                "resamples]; all scores 0–100, higher is better."), ["metric"] + models, rows))
    if result.get("metric_notes"):
        out.append(("Metric notes", ("How a metric was computed on these texts; see docs/evaluate.md, \"Reading the "
                    "scores\"."), ["metric", "note"], [[m, n] for m, n in result["metric_notes"].items()]))
    out += _provenance_tables(result)

    if result["comparisons"]:
        rows = [[f"{c['a']} − {c['b']}", c["metric"], f"{c['difference']:+.2f}",
                 f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]" if "ci_low" in c else "–", _p(c["p"]), _p(c["p_holm"]),
                 "yes" if c["significant"] else "no"] for c in result["comparisons"]]
        ref = result.get("reference_model")
        out.append(("Paired tests", (f"paired permutation test, {result['settings']['permutations']} shuffles; "
                    f"each model against the reference model ({ref}) on the main metrics, other pairs on "
                    f"{', '.join(result['key_metrics'])}; Holm-corrected over all {len(rows)} tests; significant at "
                    "0.05 after correction."),
                    ["models", "metric", "difference", "95% CI (paired bootstrap)", "p", "p (Holm)", "significant"],
                    rows))

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
    min_pos = pl.get("min_positives", 0)
    for obs in pl["labels"]:
        row = [obs, str(pl["support"][obs]), "yes" if pl.get("in_macro", {}).get(obs, True) else "no"]
        for name in models:
            row.append(_num(pl["f1"][name][obs]))
            if pl["rougeL"][name]:
                row.append(_num(pl["rougeL"][name].get(obs)))
        rows.append(row)
    header = ["label", "n (reference positives)", "in macro"]
    for name in models:
        header.append(f"{name} F1")
        if pl["rougeL"][name]:
            header.append(f"{name} R-L")
    out.append(("Per finding label", ("Positive-only F1 of the labels radgpt's labeler reads in the prediction "
                "vs the reference impression; R-L: mean ROUGE-L on references positive for the label. "
                f"Labels with fewer than {min_pos} reference positives are shown with their n but left out of the "
                "macro F1 (with one positive a label's F1 is 0 or 100 by chance)."), header, rows))

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
        out.append(("Faithfulness to the findings", (f"Missed-abnormal: of the {first['n_abnormal']} references "
                    "that state a finding, the share whose prediction states none (lower is better). Finding "
                    "P/R/F1: the findings the prediction states against those the reference states, micro-"
                    "averaged. Unsupported: findings a prediction states that its own findings text never states "
                    "(a hallucination or a finding copied from a prior case); the references' rate is the floor."),
                    ["model"] + [h for _, h in cols], rows))

    if result.get("consistency"):
        kinds = ["contradicted", "omitted", "unsupported", "severity_changed", "comparison_claim"]
        rows = [[name] + [str(c.get(k, 0)) for k in kinds] + [_num(c["reports_flagged_pct"]),
                                                             _num(c.get("reports_high_pct"))]
                for name, c in result["consistency"].items()]
        out.append(("Consistency with the findings", ("contradicted: states what the findings negate (or the "
                    "reverse); omitted: a stated finding left out; unsupported: a finding the findings never mention; "
                    "severity changed: moderate → small; comparison claim: stable / new / improved with no comparison "
                    "in the findings. High: a contradiction, or a missed or invented pneumothorax, nodule or mass, "
                    "free air or misplaced tube or line. The reference impressions' own rate is the floor."),
                    ["model"] + [k.replace("_", " ") for k in kinds] + ["reports flagged %", "with a high flag %"],
                    rows))
    return out


def _value(v, limit: int | None = 160) -> str:
    """One provenance value as text: dicts (decoding) in full as k=v, long texts (an instruction) cut
    (in full in report.json)."""
    if v is None:
        return "–"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_value(x, limit)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        text = ", ".join(_value(x, None) for x in v)
    else:
        text = str(v)
    text = " ".join(text.split())
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "…"


def _provenance_tables(result: dict) -> list[tuple[str, str, list[str], list[list[str]]]]:
    prov = result.get("provenance")
    if not prov:
        return []
    models = list(result["models"])
    preds = prov.get("predictions", {})
    ref = prov.get("references", {})
    rows = [["file"] + [preds.get(n, {}).get("path", "–") for n in models],
            ["sha256"] + [preds.get(n, {}).get("sha256", "–") for n in models],
            ["lines"] + [str(preds.get(n, {}).get("lines", "–")) for n in models],
            ["text field"] + [str(preds.get(n, {}).get("text_field", "–")) for n in models]]
    keys = [k for k in _PROV_ORDER if any(k in preds.get(n, {}).get("generator", {}) for n in models)]
    keys += list(dict.fromkeys(k for n in models for k in preds.get(n, {}).get("generator", {}) if k not in keys))
    for k in keys:
        row = [k]
        for n in models:
            p = preds.get(n, {})
            v = p.get("generator", {}).get(k)
            if k in p.get("mixed", {}):
                row.append(f"mixed ({p['mixed'][k]['distinct']} values)")
            else:
                row.append(_value(v) if k in p.get("generator", {}) else "–")
        rows.append(row)
    rows.append(["generated"] + [" – ".join(preds.get(n, {}).get("generated", [])) or "–" for n in models])
    bare = [n for n in models if not preds.get(n, {}).get("lines_with_provenance")]
    settings = prov.get("settings", {})
    note = (f"References: {ref.get('path')} (sha256 {ref.get('sha256')}, {ref.get('lines')} lines; fields "
            f"{ref.get('id_field')} / {ref.get('text_field')} / {ref.get('findings_field')}). radgpt "
            f"{prov.get('radgpt_version')}, {prov.get('created')}; metrics {','.join(settings.get('metrics', []))}, "
            f"{settings.get('bootstrap')} bootstrap resamples, {settings.get('permutations')} permutations, seed "
            f"{settings.get('seed')}. Per model, what its prediction lines say produced them (radgpt impress writes a "
            "provenance object on every line); \"mixed\": the lines disagree (values in report.json).")
    if bare:
        note += f" No provenance in the lines of: {', '.join(bare)} (not written by radgpt impress)."
    return [("Provenance", note, ["", *models], rows)]


def _worst_sections(result: dict) -> list[tuple[str, str, str, list[str], list[list[str]]]]:
    """(title, findings, reference line, header, rows) per worst case."""
    worst = result.get("worst_cases") or {}
    out = []
    for case in worst.get("cases", []):
        first = next(iter(case["models"].values()))
        shown = list(first["scores"])
        header = ["model", "impression"] + shown + ["missed findings", "unsupported"]
        rows = [["reference", case["reference"]] + [""] * len(shown)
                + ["states: " + (", ".join(case.get("reference_findings", [])) or "no finding"), ""]]
        for name, cell in case["models"].items():
            missed = ", ".join(cell["missed_findings"]) or "–"
            if cell["missed_abnormal"]:
                missed = "MISSED ABNORMAL: " + missed
            rows.append([name, cell["prediction"] or "(empty)"] + [_num(cell["scores"][m]) for m in shown]
                        + [missed, ", ".join(cell.get("unsupported_findings", [])) or "–"])
        out.append((f"{case['id']} — {case['reason']}", case.get("findings", ""), case["reference"], header, rows))
    return out


def _worst_note(result: dict) -> str:
    worst = result.get("worst_cases") or {}
    return (f"The {len(worst.get('cases', []))} worst cases, in this order: {worst.get('order', '')}. Missed findings: "
            "what the reference states (labeler observation groups) and the prediction does not; unsupported: what "
            "the prediction states that its findings never do.")


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
        lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
        lines.append("")
    sections = _worst_sections(result)
    if sections:
        lines += ["## Worst cases", "", _worst_note(result), ""]
        for title, findings, _, header, rows in sections:
            lines += [f"### {title}", ""]
            if findings:
                lines += [f"Findings: {_md_cell(findings)}", ""]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
            lines.append("")
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


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

    from radgpt.common.palette import colors_for

    models = list(result["models"])
    colour = colors_for(models)  # a model's colour is the same in every radgpt plot (the study's analysis too)
    key = result["key_metrics"] or result["metrics"][:4]
    out = {}
    if key:
        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(key) * max(1, len(models)) / 2, 3.6))
        width = 0.8 / max(1, len(models))
        x = np.arange(len(key))
        for i, name in enumerate(models):
            s = result["models"][name]["scores"]
            vals = [s[m]["value"] for m in key]
            # a percentile interval need not contain the estimate (tiny sets): never a negative error bar
            err = [[max(0.0, s[m]["value"] - s[m]["ci_low"]) for m in key],
                   [max(0.0, s[m]["ci_high"] - s[m]["value"]) for m in key]]
            ax.bar(x + i * width - 0.4 + width / 2, vals, width, yerr=err, capsize=3, label=name,
                   color=colour[name])
        ax.set_xticks(x, [label(m) for m in key], rotation=15)
        ax.set_ylabel("score (0–100), 95% CI")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        out["Scores with 95% confidence intervals"] = _png(fig)

    pl = result["per_label"]
    labels = [o for o in pl["labels"] if pl["support"][o] > 0 or any(pl["f1"][n][o] is not None for n in models)]
    if labels and models:
        grid = np.array([[np.nan if pl["f1"][n][o] is None else pl["f1"][n][o] for o in labels] for n in models])
        fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(labels), 0.9 + 0.5 * len(models)))
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        excluded = {o for o in labels if not pl.get("in_macro", {}).get(o, True)}
        ax.set_xticks(range(len(labels)), [f"{o} ({pl['support'][o]}){'*' if o in excluded else ''}" for o in labels],
                      rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(models)), models)
        for tick in ax.get_yticklabels():
            tick.set_color(colour.get(tick.get_text(), "black"))
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
        fig.colorbar(im, ax=ax, label="F1")
        title = "Per-label F1 (reference positives in brackets"
        if excluded:
            title += f"; * fewer than {pl.get('min_positives')}: left out of the macro F1"
        out[title + ")"] = _png(fig)

    dist = [m for m in ("rougeL", "bertscore_minilm") if m in result["metrics"]]
    if dist and models:
        fig, axes = plt.subplots(1, len(dist), figsize=(4.5 * len(dist), 3.2), squeeze=False)
        bins = np.linspace(0, 100, 21)
        for ax, m in zip(axes[0], dist):
            for name in models:
                ax.hist(result["per_sample"][name][m], bins=bins, histtype="step", linewidth=1.5, label=name,
                        color=colour[name])
            ax.set_xlabel(f"per-sample {label(m)}")
            ax.set_ylabel("reports")
        axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        out["Per-sample score distributions"] = _png(fig)
    return out


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:14px}th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f0f0f0}td{text-align:right}td:first-child{text-align:left}.note{color:#555;font-size:13px}
td.t{text-align:left;max-width:36em}td.h{text-align:left;font-family:monospace;font-size:12px;word-break:break-all}
td.m{white-space:nowrap}
.case{border-top:1px solid #ddd;margin-top:1em}.findings{font-size:13px;color:#333;max-width:60em}
.missed{color:#b00;font-weight:600}.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.3em;border-radius:2px}
img{max-width:100%}"""


def to_html(result: dict, images: dict[str, str]) -> str:
    from radgpt.common.palette import colors_for

    e = html.escape
    colour = colors_for(list(result["models"]))

    def who(name: str) -> str:
        if name not in colour:
            return e(name)
        return f"<span class='swatch' style='background:{colour[name]}'></span>{e(name)}"

    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>radgpt evaluation</title>"
             f"<style>{_CSS}</style></head><body><h1>radgpt evaluation report</h1>"),
             f"<p>{result['n']} references, {_num(result['reference_normal_pct'])}% normal by the labeler"
             + (f"; reference model for the paired tests: {who(result['reference_model'])}"
                if result.get("reference_model") else "") + ". Paper table: table.tex (booktabs), table.csv.</p>"]
    if result["skipped"]:
        parts.append("<ul>" + "".join(f"<li>{e(m)}</li>" for m in result["skipped"].values()) + "</ul>")
    for title, data in images.items():
        parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='data:image/png;base64,{data}'>")
    for title, note, header, rows in _tables(result):
        parts.append(f"<h2>{e(title)}</h2>")
        if note:
            parts.append(f"<p class='note'>{e(note)}</p>")
        parts.append("<table><tr>" + "".join(f"<th>{who(h)}</th>" for h in header) + "</tr>")
        for r in rows:
            cells = []
            for k, c in enumerate(r):
                if title == "Provenance" and k:
                    cells.append(f"<td class='{'h' if r[0] in ('sha256', 'adapter_sha256') else 't'}'>{e(c)}</td>")
                elif title == "Metric notes" and k:
                    cells.append(f"<td class='t'>{e(c)}</td>")
                else:
                    cells.append(f"<td>{e(c)}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    sections = _worst_sections(result)
    if sections:
        parts.append(f"<h2>Worst cases</h2><p class='note'>{e(_worst_note(result))}</p>")
        for title, findings, _, header, rows in sections:
            parts.append(f"<div class='case'><h3>{e(title)}</h3>")
            if findings:
                parts.append(f"<p class='findings'><b>Findings:</b> {e(findings)}</p>")
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
            for r in rows:
                cells = [f"<td class='m'>{who(r[0])}</td>", f"<td class='t'>{e(r[1])}</td>"]
                cells += [f"<td>{e(c)}</td>" for c in r[2:-2]]
                missed_cls = " missed" if r[-2].startswith("MISSED") else ""
                cells += [f"<td class='t{missed_cls}'>{e(r[-2])}</td>", f"<td class='t'>{e(r[-1])}</td>"]
                parts.append("<tr>" + "".join(cells) + "</tr>")
            parts.append("</table></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------- the paper table
def _tests_vs_reference(result: dict) -> dict[tuple[str, str], dict]:
    """(model, metric) -> its paired test against the reference model."""
    ref = result.get("reference_model")
    return {(c["a"], c["metric"]): c for c in result.get("comparisons", []) if c.get("vs_reference") and c["b"] == ref}


def paper_rows(result: dict) -> list[dict]:
    """The main results table as rows: {"metric", "label", model: {"value", "ci_low", "ci_high"} and, for the
    other models, "difference", "p", "p_holm" against the reference model}."""
    ref = result.get("reference_model")
    tests = _tests_vs_reference(result)
    rows = []
    for m in result.get("main_metrics") or result["metrics"]:
        row = {"metric": m, "label": label(m), "models": {}}
        for name, model in result["models"].items():
            s = model["scores"][m]
            cell = {"value": s["value"], "ci_low": s["ci_low"], "ci_high": s["ci_high"]}
            if name != ref and (name, m) in tests:
                c = tests[(name, m)]
                cell.update({"difference": c["difference"], "difference_ci_low": c.get("ci_low"),
                             "difference_ci_high": c.get("ci_high"), "p": c["p"], "p_holm": c["p_holm"]})
            row["models"][name] = cell
        rows.append(row)
    return rows


def _csv_num(v) -> str:
    return "" if v is None else f"{v:.2f}"


def _csv_p(v) -> str:
    return "" if v is None else f"{v:.4g}"


def table_csv(result: dict) -> str:
    """One row per main metric: each model's value and 95% CI, and for the other models the difference,
    p and Holm-corrected p against the reference model."""
    ref = result.get("reference_model")
    models = list(result["models"])
    header = ["metric", "label"]
    for name in models:
        header += [name, f"{name}_ci_low", f"{name}_ci_high"]
        if name != ref and ref is not None:
            header += [f"{name}_minus_{ref}", f"{name}_minus_{ref}_ci_low", f"{name}_minus_{ref}_ci_high",
                       f"{name}_p", f"{name}_p_holm"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in paper_rows(result):
        out = [row["metric"], row["label"]]
        for name in models:
            c = row["models"][name]
            out += [f"{c['value']:.2f}", f"{c['ci_low']:.2f}", f"{c['ci_high']:.2f}"]
            if name != ref and ref is not None:
                out += [_csv_num(c.get("difference")), _csv_num(c.get("difference_ci_low")),
                        _csv_num(c.get("difference_ci_high")), _csv_p(c.get("p")), _csv_p(c.get("p_holm"))]
        w.writerow(out)
    return buf.getvalue()


_TEX_ESCAPE = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPE.get(ch, ch) for ch in str(text))


def _tex_p(v) -> str:
    if v is None:
        return "--"
    return "$<$0.001" if v < 0.001 else f"{v:.3f}"


def table_tex(result: dict) -> str:
    """The main results table for a paper: LaTeX with booktabs (\\usepackage{booktabs})."""
    ref = result.get("reference_model")
    models = list(result["models"])
    prov = result.get("provenance") or {}
    lines = [f"% radgpt evaluate: main results, {result['n']} references"
             + (f" (radgpt {prov.get('radgpt_version')}, {prov.get('created')})" if prov else ""),
             "% needs \\usepackage{booktabs}"]
    if prov.get("references"):
        lines.append(f"% references: {prov['references'].get('path')} sha256 {prov['references'].get('sha256')}")
    for name, p in (prov.get("predictions") or {}).items():
        g = p.get("generator", {})
        what = ", ".join(f"{k}={_value(g[k], 80)}" for k in ("model", "backend", "adapter_sha256", "preset") if k in g)
        lines.append(f"% {name}: {p.get('path')} sha256 {p.get('sha256')}" + (f"; {what}" if what else ""))
    cols = "l"
    head = ["Metric"]
    for name in models:
        cols += "r"
        head.append(tex_escape(name))
        if name != ref and ref is not None:
            cols += "r"
            head.append("$p$")
    lines += ["\\begin{table}[t]", "\\centering", "\\small", f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
              " & ".join(head) + " \\\\", "\\midrule"]
    for row in paper_rows(result):
        cells = [tex_escape(row["label"])]
        for name in models:
            c = row["models"][name]
            cells.append(f"{c['value']:.1f} [{c['ci_low']:.1f}, {c['ci_high']:.1f}]")
            if name != ref and ref is not None:
                cells.append(_tex_p(c.get("p_holm")))
        lines.append(" & ".join(cells) + " \\\\")
    n_tests = len(result.get("comparisons", []))
    caption = (f"Scores on {result['n']} references (0--100, higher is better): value [95\\% bootstrap CI, "
               f"{result['settings']['bootstrap']} resamples].")
    if ref is not None and len(models) > 1:
        caption += (f" $p$: paired permutation test ({result['settings']['permutations']} shuffles) against "
                    f"{tex_escape(ref)}, Holm-corrected over all {n_tests} tests of the report.")
    lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{caption}}}", "\\label{tab:radgpt-evaluate}",
              "\\end{table}", ""]
    return "\n".join(lines)


def write(result: dict, out_dir: str | Path, html_report: bool = True) -> dict[str, Path]:
    """report.md, report.html, report.json (everything but per-sample scores), per_sample.jsonl, and the paper
    table (table.tex, table.csv)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "report.md", "json": out_dir / "report.json",
             "per_sample": out_dir / "per_sample.jsonl", "tex": out_dir / "table.tex", "csv": out_dir / "table.csv"}
    paths["markdown"].write_text(markdown(result), encoding="utf-8")
    summary = clean({k: v for k, v in result.items() if k not in ("per_sample", "ids")})
    paths["json"].write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    paths["tex"].write_text(table_tex(result), encoding="utf-8")
    paths["csv"].write_text(table_csv(result), encoding="utf-8")
    with open(paths["per_sample"], "w", encoding="utf-8") as fh:
        for name, per in result["per_sample"].items():
            fh.writelines(json.dumps(clean({"id": rid, "model": name, **{m: v[k] for m, v in per.items()}})) + "\n"
                          for k, rid in enumerate(result["ids"]))
    if html_report:
        paths["html"] = out_dir / "report.html"
        paths["html"].write_text(to_html(result, plots(result)), encoding="utf-8")
    return paths
