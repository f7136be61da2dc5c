"""Statistics on synthetic data, the comparison, the report files, and the CLIs with good and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from radgpt.cli import main
from radgpt.common.stats import holm
from radgpt.evaluate import stats
from radgpt.evaluate.metrics import MetricResult, compute_results

FAST = "rouge,bleu,clinical"


def _mean_result(values) -> MetricResult:
    values = list(map(float, values))
    return MetricResult(float(np.mean(values)), values)


def test_paired_test_finds_a_known_difference():
    rng = np.random.default_rng(1)
    a = rng.normal(60, 15, 400)
    b = a - 4 + rng.normal(0, 5, 400)  # b is 4 points worse on the same samples
    diff, p = stats.paired_permutation(_mean_result(a), _mean_result(b), 2000, seed=0)
    assert diff == pytest.approx(4, abs=1)
    assert p < 0.001


def test_paired_test_finds_no_difference_when_there_is_none():
    rng = np.random.default_rng(2)
    a = rng.normal(60, 15, 400)
    b = a + rng.normal(0, 5, 400)  # same system plus symmetric noise
    _, p = stats.paired_permutation(_mean_result(a), _mean_result(b), 2000, seed=0)
    assert p > 0.05
    # the test is calibrated: under the null hypothesis p < 0.05 about 5% of the time
    rejections = 0
    for seed in range(60):
        r = np.random.default_rng(100 + seed)
        x = r.normal(0, 1, 100)
        y = x + r.normal(0, 1, 100)
        rejections += stats.paired_permutation(_mean_result(x), _mean_result(y), 300, seed=seed)[1] < 0.05
    assert rejections <= 9


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(3)
    small, large = rng.normal(50, 10, 100), rng.normal(50, 10, 1600)
    lo_s, hi_s = stats.bootstrap_ci(_mean_result(small), stats.bootstrap_counts(100, 1000, 0))
    lo_l, hi_l = stats.bootstrap_ci(_mean_result(large), stats.bootstrap_counts(1600, 1000, 0))
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    covered = 0  # a 95% interval covers the true mean in ~95% of samples
    for seed in range(40):
        x = np.random.default_rng(10 + seed).normal(50, 10, 100)
        lo, hi = stats.bootstrap_ci(_mean_result(x), stats.bootstrap_counts(100, 500, seed))
        covered += lo < 50 < hi
    assert covered >= 34
    assert (hi_l - lo_l) < 0.4 * (hi_s - lo_s)  # width ~ 1/sqrt(n): 4× narrower
    assert (hi_s - lo_s) == pytest.approx(2 * 1.96 * 10 / 10, rel=0.25)


def test_corpus_metrics_resample_their_statistics():
    refs = ["small left pleural effusion", "no acute disease", "cardiomegaly", "right lower lobe pneumonia"]
    hyps = ["left pleural effusion", "no acute disease", "no cardiomegaly", "pneumonia"]
    results, _ = compute_results(refs, hyps, ["bleu", "clinical"])
    ones = np.ones((1, 4))
    for name in ("bleu", "bleu_hf", "clinical_f1_pos_micro", "clinical_f1_macro"):
        assert stats.weighted_aggregate(results[name], ones)[0] == pytest.approx(results[name].aggregate)
    lo, hi = stats.bootstrap_ci(results["bleu"], stats.bootstrap_counts(4, 200, 0))
    assert lo <= results["bleu"].aggregate <= hi


def test_holm():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


# ---------------------------------------------------------------- the CLI
REFS = [
    {"idx": 1, "inputs": "Small left pleural effusion. No pneumothorax.", "target": "Small left pleural effusion."},
    {"idx": 2, "inputs": "Heart size normal. Lungs clear.", "target": "No acute cardiopulmonary abnormality."},
    {"idx": 3, "inputs": "The heart is enlarged. No edema.", "target": "Cardiomegaly without edema."},
    {"idx": 4, "inputs": "Right lower lobe airspace opacity.", "target": "Right lower lobe pneumonia."},
    {"idx": 5, "inputs": "Lungs are clear. No effusion.", "target": "Normal chest."},
    {"idx": 6, "inputs": "Emphysematous changes. No focal consolidation.", "target": "Emphysema without acute disease."},
]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path):
    refs = _write(tmp_path / "refs.jsonl", REFS)
    good = _write(tmp_path / "good.jsonl", [{"idx": r["idx"], "prediction": r["target"]} for r in reversed(REFS)])
    normal = _write(tmp_path / "normal.jsonl", [{"id": r["idx"], "impression": "No acute disease."} for r in REFS])
    return tmp_path, refs, good, normal


def test_evaluate_writes_the_reports(files, capsys):
    tmp, refs, good, normal = files
    out = tmp / "out"
    assert main(["evaluate", "--refs", str(refs), "--pred", f"good={good}", "--pred", f"normal={normal}",
                 "--metrics", FAST, "--bootstrap", "200", "--permutations", "200", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 6 and set(report["models"]) == {"good", "normal"}
    assert report["models"]["good"]["scores"]["rougeL"]["value"] == pytest.approx(100.0)
    rl = report["models"]["normal"]["scores"]["rougeL"]
    assert rl["ci_low"] <= rl["value"] <= rl["ci_high"]
    # two models: the second is tested against the first (the reference model) on the main metrics
    assert {c["metric"] for c in report["comparisons"]} == {"rouge1", "rouge2", "rougeL", "bleu",
                                                            "clinical_f1_pos_micro", "clinical_f1_pos_macro"}
    assert all("p_holm" in c and c["a"] == "normal" and c["b"] == "good" for c in report["comparisons"])
    assert report["reference_model"] == "good"
    abnormal = report["subgroups"]["reference"]["abnormal"]
    assert abnormal["n"] == 4 and abnormal["models"]["normal"]["predicted_normal_pct"] == pytest.approx(100.0)
    assert len(report["subgroups"]["findings_length"]) >= 2
    assert report["per_label"]["support"]["Pleural Effusion"] == 1
    assert report["consistency"]["normal"]["omitted"] >= 3
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "http" not in html.replace("https://", "").split("<body>")[0]
    assert "## Paired tests" in (out / "report.md").read_text()
    assert len((out / "per_sample.jsonl").read_text().splitlines()) == 12
    assert "good" in capsys.readouterr().out


def _fails(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    return err


def test_mismatched_ids_are_listed(files, capsys):
    tmp, refs, _, _ = files
    bad = _write(tmp / "bad.jsonl", [{"idx": i, "prediction": "x"} for i in (1, 2, 3, 4, 98, 99)])
    _fails(capsys, ["evaluate", "--refs", str(refs), "--pred", f"m={bad}", "--metrics", FAST, "--out", str(tmp / "o")],
           "2 reference ids have no prediction (first: 5, 6)", "2 prediction ids are not in the references (first: 98, 99)")


def test_different_lengths_without_ids(files, capsys):
    tmp, _refs, _, _ = files
    noid_refs = _write(tmp / "r.jsonl", [{"impression": r["target"]} for r in REFS])
    short = _write(tmp / "s.jsonl", [{"prediction": "x"}] * 5)
    _fails(capsys, ["evaluate", "--refs", str(noid_refs), "--pred", str(short), "--metrics", FAST, "--out", str(tmp / "o")],
           "5 predictions but 6 references")


def test_non_utf8_missing_field_bad_json_unknown_metric(files, capsys):
    tmp, refs, good, _ = files
    latin = tmp / "latin.jsonl"
    latin.write_bytes('{"idx": 1, "prediction": "épanchement"}\n'.encode("latin-1"))
    _fails(capsys, ["evaluate", "--refs", str(refs), "--pred", str(latin), "--out", str(tmp / "o")],
           "latin.jsonl:1: not UTF-8")
    missing = _write(tmp / "missing.jsonl", [{"idx": 1, "prediction": "x"}, {"idx": 2}])
    _fails(capsys, ["evaluate", "--refs", str(refs), "--pred", str(missing), "--out", str(tmp / "o")],
           "missing.jsonl:2: missing field 'prediction'")
    nofield = _write(tmp / "nofield.jsonl", [{"idx": 1, "answer": "x"}])
    _fails(capsys, ["evaluate", "--refs", str(refs), "--pred", str(nofield), "--out", str(tmp / "o")],
           "no prediction text field", "--*-field")
    broken = tmp / "broken.jsonl"
    broken.write_text('{"idx": 1, "prediction": "x"}\n{"idx": 2, \n', encoding="utf-8")
    _fails(capsys, ["evaluate", "--refs", str(refs), "--pred", str(broken), "--out", str(tmp / "o")],
           "broken.jsonl:2: not valid JSON")
    _fails(capsys, ["evaluate", "--refs", str(refs), "--pred", str(good), "--metrics", "rouge,blue", "--out", str(tmp / "o")],
           "unknown metric 'blue'")
    _fails(capsys, ["evaluate", "--refs", str(tmp / "nope.jsonl"), "--pred", str(good)], "nope.jsonl: file not found")


def test_empty_predictions_and_missing_optional_metric(files, capsys):
    import importlib.util

    tmp, refs, _, _ = files
    preds = _write(tmp / "p.jsonl", [{"idx": r["idx"], "prediction": r["target"] if r["idx"] > 2 else None if r["idx"] == 1 else ""}
                                     for r in REFS])
    out = tmp / "out"
    assert main(["evaluate", "--refs", str(refs), "--pred", f"m={preds}", "--metrics", "rouge,radgraph", "--no-html",
                 "--bootstrap", "50", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "m: 2 empty predictions (scored 0)" in err
    report = json.loads((out / "report.json").read_text())
    assert report["models"]["m"]["empty_predictions"] == 2
    if importlib.util.find_spec("radgraph") is None:
        assert "radgraph_f1 skipped" in err and "radgraph" in report["skipped"]
    assert not (out / "report.html").exists()


def test_field_overrides(files, capsys):
    tmp, _refs, _, _ = files
    custom_refs = _write(tmp / "c.jsonl", [{"study": f"s{r['idx']}", "gold": r["target"]} for r in REFS])
    custom_pred = _write(tmp / "cp.jsonl", [{"study": f"s{r['idx']}", "gen": r["target"]} for r in REFS])
    assert main(["evaluate", "--refs", str(custom_refs), "--ref-field", "gold", "--pred", str(custom_pred),
                 "--pred-field", "gen", "--id-field", "study", "--metrics", "rouge", "--no-html",
                 "--bootstrap", "20", "--permutations", "20", "--out", str(tmp / "o")]) == 0
    report = json.loads((tmp / "o" / "report.json").read_text())
    assert report["models"]["cp"]["scores"]["rouge1"]["value"] == pytest.approx(100.0)
    assert report["consistency"] is None  # no findings in these references


def test_label_cli(tmp_path, capsys):
    src = _write(tmp_path / "r.jsonl", [{"id": "a", "findings": "No pleural effusion.", "impression": "Possible atelectasis."},
                                        {"id": "b", "findings": "", "impression": "Normal chest."}])
    out = tmp_path / "labels.csv"
    assert main(["label", str(src), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    header = lines[0].split(",")
    a = dict(zip(header, lines[1].split(",")))
    assert a["id"] == "a" and a["Pleural Effusion"] == "0" and a["Atelectasis"] == "-1"
    assert dict(zip(header, lines[2].split(",")))["No Finding"] == "1"
    assert main(["label", str(src), "--scheme", "chestxray14"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rows[0]["labels"]["Effusion"] == "negative" and "Hernia" in rows[0]["labels"]
    _fails(capsys, ["label", str(src), "--fields", "report"], "no field report")


# ---------------------------------------------------------------- provenance, paper table, worst cases, hygiene
def _impress_line(idx, text, **prov):
    """A line as `radgpt impress` writes it (provenance object included)."""
    provenance = {"model": "runs/r1", "kind": "model", "backend": "transformers", "device": "cpu",
                  "base": "packaged:smollm2-135m-instruct", "adapter_sha256": "ab" * 32, "prompt_template": "chatml-cases",
                  "shots": 3, "preset": "greedy", "decoding": {"max_new_tokens": 128, "num_beams": 1}, **prov}
    return {"id": idx, "impression": text, "time": f"2026-12-01T10:00:0{idx}+00:00", "provenance": provenance}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One CLI run shared by the tests below: a model whose lines carry provenance (one line with another
    preset), and the constant normal sentence under a name LaTeX must escape."""
    import hashlib

    tmp = tmp_path_factory.mktemp("evaluated")
    refs = _write(tmp / "refs.jsonl", REFS)
    lines = [_impress_line(r["idx"], r["target"]) for r in REFS]
    lines[-1] = _impress_line(REFS[-1]["idx"], REFS[-1]["target"], preset="sampled")
    lora = _write(tmp / "lora.jsonl", lines)
    normal = _write(tmp / "normal.jsonl", [{"idx": r["idx"], "prediction": "No acute disease."} for r in REFS])
    out = tmp / "out"
    assert main(["evaluate", "--refs", str(refs), "--pred", f"lora={lora}", "--pred", f"const_normal={normal}",
                 "--metrics", FAST, "--bootstrap", "200", "--permutations", "200", "--worst", "3",
                 "--out", str(out)]) == 0
    sha = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (refs, lora, normal)}
    return out, json.loads((out / "report.json").read_text()), sha


def test_provenance_has_input_hashes_and_what_produced_the_predictions(evaluated):
    out, report, sha = evaluated
    prov = report["provenance"]
    assert prov["references"]["sha256"] == sha["refs.jsonl"] and prov["references"]["lines"] == 6
    lora = prov["predictions"]["lora"]
    assert lora["sha256"] == sha["lora.jsonl"] and lora["path"].endswith("lora.jsonl")
    gen = lora["generator"]
    assert gen["adapter_sha256"] == "ab" * 32 and gen["backend"] == "transformers"
    assert gen["decoding"] == {"max_new_tokens": 128, "num_beams": 1} and gen["shots"] == 3
    assert gen["preset"] == "mixed" and sorted(lora["mixed"]["preset"]["values"]) == ["greedy", "sampled"]
    assert lora["generated"] == ["2026-12-01T10:00:01+00:00", "2026-12-01T10:00:06+00:00"]
    bare = prov["predictions"]["const_normal"]
    assert bare["sha256"] == sha["normal.jsonl"] and bare["generator"] == {} and bare["lines_with_provenance"] == 0
    page = (out / "report.html").read_text()
    for needle in ("ab" * 32, sha["lora.jsonl"], sha["refs.jsonl"], "mixed (2 values)", "max_new_tokens=128"):
        assert needle in page, needle
    assert "ab" * 32 in (out / "report.md").read_text()


def test_paper_table_latex_and_csv(evaluated):
    import csv

    out, report, _ = evaluated
    rows = list(csv.DictReader((out / "table.csv").open(encoding="utf-8")))
    assert [r["metric"] for r in rows] == report["main_metrics"]
    tests = {c["metric"]: c for c in report["comparisons"]}
    for r in rows:
        score = report["models"]["lora"]["scores"][r["metric"]]
        assert float(r["lora"]) == pytest.approx(score["value"], abs=0.006)
        assert float(r["lora_ci_low"]) <= float(r["lora"]) + 0.01 <= float(r["lora_ci_high"]) + 0.02
        assert float(r["const_normal_p_holm"]) == pytest.approx(tests[r["metric"]]["p_holm"], rel=1e-3)
        assert float(r["const_normal_minus_lora"]) == pytest.approx(tests[r["metric"]]["difference"], abs=0.006)
        assert "lora_p" not in r  # the reference model is not tested against itself
    tex = (out / "table.tex").read_text()
    assert tex.count("\\toprule") == tex.count("\\midrule") == tex.count("\\bottomrule") == 1
    body = tex.split("\\toprule")[1].split("\\bottomrule")[0]
    table_rows = [line for line in body.splitlines() if line.strip().endswith("\\\\")]
    assert len(table_rows) == 1 + len(report["main_metrics"])  # header + one per metric
    assert len({line.count("&") for line in table_rows}) == 1  # every row has the header's columns
    assert "const\\_normal" in table_rows[0] and "const_normal" not in body  # LaTeX-escaped model name
    assert "ROUGE-L &" in tex and "\\begin{tabular}{lrrr}" in tex and "Holm" in tex
    assert tex.count("\\begin{") == tex.count("\\end{")


def test_worst_cases_list_a_missed_abnormal_case(evaluated):
    out, report, _ = evaluated
    cases = report["worst_cases"]["cases"]
    assert len(cases) == 3
    first = cases[0]
    assert first["models"]["const_normal"]["missed_abnormal"] is True
    assert first["models"]["lora"]["missed_abnormal"] is False
    assert "const_normal" in first["reason"] and first["reference"] and first["findings"]
    assert first["models"]["const_normal"]["prediction"] == "No acute disease."
    assert first["models"]["const_normal"]["missed_findings"]  # what the reference states and it does not
    assert set(first["models"]["lora"]["scores"]) == set(report["key_metrics"])
    page = (out / "report.html").read_text()
    assert "<h2>Worst cases</h2>" in page and "MISSED ABNORMAL" in page and first["reference"] in page
    assert "## Worst cases" in (out / "report.md").read_text()


def test_report_hygiene_rounding_duplicates_macro_and_colours(evaluated):
    from radgpt.common.palette import colors_for

    out, report, _ = evaluated
    text = (out / "report.json").read_text()
    assert "00000000" not in text and "99999999" not in text  # 100.00000000000004 and friends are rounded
    assert report["models"]["lora"]["scores"]["bleu"]["value"] == 100.0
    assert "rougeLsum" not in report["metrics"] and "rougeLsum" in report["metric_notes"]["rougeL"]
    assert report["duplicates_dropped"]["rougeLsum"] == "rougeL"
    # the constant sentence shares no 4-gram with any reference: HF's unsmoothed corpus BLEU is 0, so
    # bleu_hf is not a duplicate of bleu here and stays, with a note
    assert "bleu_hf" in report["metrics"] and "differs from bleu" in report["metric_notes"]["bleu_hf"]
    # six references: no label reaches 5 positives, and the report says what the macro fell back to
    assert "no label has 5 reference positives" in report["metric_notes"]["clinical_f1_pos_macro"]
    assert report["per_label"]["support"]["Pleural Effusion"] == 1
    assert report["per_label"]["in_macro"]["Pleural Effusion"] is False
    assert "| Pleural Effusion | 1 | no |" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for name, colour in colors_for(["lora", "const_normal"]).items():
        assert f"background:{colour}'></span>{name}" in page


def test_no_duplicate_rows_when_identical_and_both_kept_when_not():
    from radgpt.evaluate.compare import compare
    from radgpt.evaluate.io import Reference

    refs = [Reference(str(i), r["target"], r["inputs"]) for i, r in enumerate(REFS)]
    one_line = compare(refs, {"a": [r["target"] for r in REFS], "b": [r["target"] + " Stable." for r in REFS]},
                       ["rouge", "bleu"], n_boot=30, n_perm=30)
    assert "rougeLsum" not in one_line["metrics"] and "bleu_hf" not in one_line["metrics"]
    assert set(one_line["duplicates_dropped"]) == {"rougeLsum", "bleu_hf"}
    assert "bleu_hf not shown" in one_line["metric_notes"]["bleu"]
    assert "bleu_hf" not in one_line["per_sample"]["a"]
    lines = [Reference("0", "Small effusion.\nNo pneumothorax.", ""), Reference("1", "Cardiomegaly.\nNo edema.", "")]
    multi = compare(lines, {"a": ["No pneumothorax.\nSmall effusion.", "Cardiomegaly."]}, ["rouge"], n_boot=30, n_perm=30)
    assert "rougeLsum" in multi["metrics"] and "line breaks" in multi["metric_notes"]["rougeLsum"]


def test_reference_model_option_and_terminal_names(files, capsys, monkeypatch):
    tmp, refs, good, normal = files
    monkeypatch.setenv("COLUMNS", "60")  # a narrow terminal: the values wrap, the metric names do not
    out = tmp / "o"
    assert main(["evaluate", "--refs", str(refs), "--pred", f"good={good}", "--pred", f"normal={normal}",
                 "--reference", "normal", "--metrics", "clinical", "--bootstrap", "20", "--permutations", "20",
                 "--no-html", "--worst", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("clinical_f1_pos_micro", "clinical_f1_pos_macro"):
        assert name in printed, printed
    report = json.loads((out / "report.json").read_text())
    assert report["reference_model"] == "normal" and report["worst_cases"]["cases"] == []
    assert all(c["a"] == "good" and c["b"] == "normal" for c in report["comparisons"])
    assert "normal_p_holm" not in (out / "table.csv").read_text().splitlines()[0]
    assert "good_p_holm" in (out / "table.csv").read_text().splitlines()[0]
    _fails(capsys, ["evaluate", "--refs", str(refs), "--pred", f"good={good}", "--reference", "nope",
                    "--out", str(tmp / "o2")], "--reference 'nope'", "good")
