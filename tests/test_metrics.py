"""Golden values for every metric on fixed strings, cross-checked against the reference libraries."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter

import pytest

from radgpt.common.errors import FatalError
from radgpt.evaluate import metrics

REF = "the cat sat on the mat"
HYP = "the cat sat on a mat"


def test_importing_the_registry_loads_nothing_heavy():
    code = ("import sys, radgpt.evaluate, radgpt.evaluate.metrics, radgpt.findings.labeler; "
            "heavy = [m for m in ('torch', 'transformers', 'rouge_score', 'sacrebleu', 'matplotlib') if m in sys.modules]; "
            "print(heavy); sys.exit(bool(heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rouge_golden_and_matches_rouge_score():
    from rouge_score import rouge_scorer

    out = metrics.compute([REF], [HYP], ["rouge"])["aggregate"]
    # unigrams 5/6 shared; bigrams 3/5; LCS "the cat sat on mat" = 5
    assert out["rouge1"] == pytest.approx(100 * 5 / 6)
    assert out["rouge2"] == pytest.approx(60.0)
    assert out["rougeL"] == pytest.approx(100 * 5 / 6)
    refs = ["No acute cardiopulmonary abnormality.", "Small left pleural effusions.", "Stable cardiomegaly."]
    hyps = ["No acute cardiopulmonary process.", "Left pleural effusion is small.", ""]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
    expected = [scorer.score(r, h) for r, h in zip(refs, hyps)]
    got = metrics.compute(refs, hyps, ["rouge"])
    for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert got["aggregate"][k] == pytest.approx(100 * sum(e[k].fmeasure for e in expected) / 3)


def test_rouge_stemming_variant():
    plain = metrics.compute(["pleural effusions"], ["pleural effusion"], ["rouge", "rouge_stem"])["aggregate"]
    assert plain["rouge1"] == pytest.approx(50.0)
    assert plain["rouge1_stem"] == pytest.approx(100.0)


def _nmt_bleu(refs, hyps):
    """A direct port of the tensorflow/nmt compute_bleu that HF `evaluate`'s "bleu" wraps (max order 4,
    no smoothing, 13a tokens, one reference)."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tok = Tokenizer13a()
    matches, possible = [0] * 4, [0] * 4
    ref_len = hyp_len = 0
    for r, h in zip(refs, hyps):
        r, h = tok(r).split(), tok(h).split()
        ref_len, hyp_len = ref_len + len(r), hyp_len + len(h)
        for n in range(1, 5):
            rc = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
            hc = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            matches[n - 1] += sum((rc & hc).values())
            possible[n - 1] += max(0, len(h) - n + 1)
    precisions = [m / p if p else 0.0 for m, p in zip(matches, possible)]
    geo = math.exp(sum(math.log(p) for p in precisions) / 4) if min(precisions) > 0 else 0.0
    ratio = hyp_len / ref_len
    bp = 1.0 if ratio > 1.0 else math.exp(1 - 1.0 / ratio)
    return 100 * geo * bp


def test_bleu_matches_sacrebleu_and_hf_formula():
    import sacrebleu

    refs = [REF, "there is a small left pleural effusion", "no acute cardiopulmonary abnormality"]
    hyps = [HYP, "small left pleural effusion", "no acute cardiopulmonary process"]
    got = metrics.compute(refs, hyps, ["bleu"])
    assert got["aggregate"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert got["aggregate"]["bleu_hf"] == pytest.approx(_nmt_bleu(refs, hyps))
    assert got["aggregate"]["bleu_hf"] == pytest.approx(50.7119, abs=1e-3)  # golden (from the port above)
    assert got["per_sample"]["bleu"][0] == pytest.approx(sacrebleu.sentence_bleu(HYP, [REF]).score)


def test_clinical_f1_golden():
    refs = ["Small left pleural effusion.", "Cardiomegaly."]
    hyps = ["Left pleural effusion.", "No cardiomegaly."]
    agg = metrics.compute(refs, hyps, ["clinical"])["aggregate"]
    # positive only: effusion TP; cardiomegaly FN; the second prediction is normal → No Finding FP
    assert agg["clinical_f1_pos_micro"] == pytest.approx(100 * 2 / (2 + 1 + 1))
    # with status: cardiomegaly mentioned by both but disagreeing counts as FP and FN
    assert agg["clinical_f1_micro"] == pytest.approx(100 * 2 / (2 + 2 + 1))
    # two reports: no label has 5 reference positives, so the macro falls back to every label seen
    # (effusion 1.0, cardiomegaly 0, No Finding 0) and says so
    assert agg["clinical_f1_pos_macro"] == pytest.approx(100 / 3)
    results, _ = metrics.compute_results(refs, hyps, ["clinical"])
    assert "no label has 5 reference positives" in results["clinical_f1_pos_macro"].note


def test_a_label_with_one_positive_is_left_out_of_the_macro():
    refs = ["Small left pleural effusion."] * 5 + ["Cardiomegaly."]
    hyps = ["Left pleural effusion."] * 5 + ["No acute disease."]
    results, _ = metrics.compute_results(refs, hyps, ["clinical"])
    macro = results["clinical_f1_pos_macro"]
    # effusion (5 positives, all found) is the only label in the macro; cardiomegaly (1 positive, F1 0) and
    # No Finding (0 positives, 1 false positive) are left out — they used to pull it to 33.3
    assert macro.aggregate == pytest.approx(100.0)
    assert "macro over the 1 labels with at least 5 reference positives" in macro.note
    assert "Cardiomegaly" in macro.note and "No Finding" in macro.note
    # the micro average still counts every label
    assert results["clinical_f1_pos_micro"].aggregate == pytest.approx(100 * 10 / (10 + 1 + 1))
    # the bootstrap averages the same labels in every resample
    from radgpt.evaluate import stats

    lo, hi = stats.bootstrap_ci(macro, stats.bootstrap_counts(6, 100, 0))
    assert lo == pytest.approx(100.0) and hi == pytest.approx(100.0)


def test_an_exact_three_word_match_scores_100_bleu_per_sample():
    out = metrics.compute(["No acute disease", "Normal chest."], ["No acute disease", "Normal chest."], ["bleu"])
    for name in ("bleu", "bleu_hf"):
        assert out["per_sample"][name] == [100.0, 100.0], name  # not 0.0, and never 100.00000000000004
    exact = metrics.compute([REF], [REF], ["bleu"])
    assert exact["per_sample"]["bleu"] == [100.0] and exact["aggregate"]["bleu"] == 100.0


def test_empty_predictions_score_zero_and_are_counted():
    out = metrics.compute(["No acute disease.", "Cardiomegaly."], ["No acute disease.", "  "], ["rouge", "bleu", "clinical"])
    assert out["empty_predictions"] == 1
    for name, per in out["per_sample"].items():
        assert per[1] == 0.0, name
    assert out["per_sample"]["rougeL"][0] == pytest.approx(100.0)


def test_unknown_metric_and_length_mismatch_are_clear_errors():
    with pytest.raises(FatalError, match="unknown metric 'rogue'"):
        metrics.compute(["a"], ["a"], ["rogue"])
    with pytest.raises(FatalError, match="2 references but 1 predictions"):
        metrics.compute(["a", "b"], ["a"])
    assert metrics.resolve(["bleu_hf", "rouge", "offline"]) == ["bleu", "rouge", "rouge_stem", "embedding", "clinical"]


def test_optional_metric_missing_is_skipped_with_one_line():
    import importlib.util

    if importlib.util.find_spec("radgraph") is not None:
        pytest.skip("radgraph is installed here")
    out = metrics.compute(["Cardiomegaly."], ["Cardiomegaly."], ["radgraph", "rouge"])
    assert "rougeL" in out["aggregate"] and "radgraph_f1" not in out["aggregate"]
    assert "\n" not in out["skipped"]["radgraph"] and "radgraph" in out["skipped"]["radgraph"]


@pytest.mark.slow
def test_embedding_similarity_with_the_packaged_minilm():
    refs = ["No acute cardiopulmonary abnormality.", "Large right pleural effusion.", "Cardiomegaly."]
    hyps = ["No acute cardiopulmonary abnormality.", "No acute cardiopulmonary abnormality.", ""]
    out = metrics.compute(refs, hyps, ["embedding"])["per_sample"]
    assert out["embed_cosine"][0] == pytest.approx(100.0, abs=1e-3)
    assert out["bertscore_minilm"][0] == pytest.approx(100.0, abs=1e-3)
    assert out["embed_cosine"][1] < 80 and out["bertscore_minilm"][1] < 80
    assert out["embed_cosine"][2] == 0.0  # empty prediction
    golden = metrics.compute(["No acute cardiopulmonary abnormality."], ["No acute cardiopulmonary process."],
                             ["embedding"])["aggregate"]
    assert golden["embed_cosine"] == pytest.approx(87.972, abs=0.05)
    assert golden["bertscore_minilm"] == pytest.approx(87.860, abs=0.05)
