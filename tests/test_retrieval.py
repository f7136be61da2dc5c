"""The retrieval index: scikit-learn fits it, radgpt's cache keeps it, and a query is scored without importing
scikit-learn — with the same scores and the same neighbours as the vectorizer's own transform."""

import json
import subprocess
import sys

import numpy as np
import pytest

from radgpt.runs.retrieval import CaseIndex, PriorCase, _TfidfQuery
from tests.conftest import REPO

VALIDATE = REPO / "data/openi/clin-summ/validate.jsonl"
TRAIN = REPO / "data/openi/clin-summ/train.jsonl"


def _pairs(path, n=None):
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    return [PriorCase(str(r["idx"]), r["inputs"], r["target"]) for r in rows[:n]]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RADGPT_CACHE", str(tmp_path / "cache"))


def test_query_scores_equal_sklearns_transform():
    from sklearn.feature_extraction.text import TfidfVectorizer

    cases = _pairs(TRAIN)
    queries = [c.findings for c in _pairs(VALIDATE)] + ["", "XXXX", "Heart size normal. Heart size normal. Café"]
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, lowercase=True)
    matrix = vec.fit_transform([c.findings for c in cases])
    expected = (vec.transform(queries) @ matrix.T).toarray()
    ours = _TfidfQuery.fit([c.findings for c in cases])
    got = np.array([ours.scores(q) for q in queries])
    assert np.abs(got - expected).max() < 1e-12


def test_cached_index_gives_the_same_neighbours_and_needs_no_sklearn(tmp_path):
    cases = _pairs(TRAIN)
    queries = [c.findings for c in _pairs(VALIDATE, 60)]
    for match in ("words", "consistent"):
        fresh = CaseIndex(cases, match).search_many(queries, 5)  # fits and writes the cache
        again = CaseIndex(cases, match).search_many(queries, 5)  # loads it
        assert [[(c.id, round(s, 12)) for c, s in h] for h in fresh] == [[(c.id, round(s, 12)) for c, s in h]
                                                                          for h in again]
    assert list((tmp_path / "cache" / "retrieval").glob("tfidf-*.npz"))
    # a new process loading the cached index does not import scikit-learn
    code = ("import json, sys; from radgpt.runs.retrieval import PriorCase, CaseIndex; "
            f"rows=[json.loads(x) for x in open({str(TRAIN)!r})]; "
            "idx=CaseIndex([PriorCase(str(r['idx']), r['inputs'], r['target']) for r in rows], 'consistent'); "
            "idx.search('Small left pleural effusion.', 3); print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                         env={"RADGPT_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.stdout.strip() == "False"


def test_a_damaged_cache_entry_is_rebuilt(tmp_path):
    cases = _pairs(TRAIN, 200)
    CaseIndex(cases)
    entry = next((tmp_path / "cache" / "retrieval").glob("tfidf-*.npz"))
    entry.write_bytes(b"not an npz")
    hits = CaseIndex(cases).search(cases[0].findings, 1)
    assert hits[0][0].id == cases[0].id


def test_saved_cases_with_unicode_line_separators_load_back(tmp_path):
    """save() writes ensure_ascii=False, so U+2028 / U+0085 inside a report stay raw in the file; load() must
    split at newlines only (str.splitlines() would cut such a case in two and fail)."""
    from radgpt.runs.retrieval import CaseIndex, PriorCase

    cases = [PriorCase("a", "Heart size normal.\u2028Lungs clear.", "No acute\u0085disease."), PriorCase("b", "Effusion.", "Effusion.")]
    CaseIndex(cases).save(tmp_path)
    loaded = CaseIndex.load(tmp_path)
    assert [(c.id, c.findings, c.impression) for c in loaded.cases] == [(c.id, c.findings, c.impression) for c in cases]
