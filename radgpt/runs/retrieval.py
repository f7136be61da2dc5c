"""Retrieval of similar prior cases: TF-IDF over findings, cosine similarity.

On OpenI the phrasing of an impression is best predicted by similar prior reports (the TF-IDF
nearest-neighbour impression alone scores R-L 62.6 on validate), so retrieved cases go into the
prompt as examples — in training too, so the model learns when to reuse and when to edit them — and
are returned to the user, so a radiologist sees which prior reports an impression leans on.

The index is built from (id, findings, impression) cases; a run folder stores its cases as
`retrieval_cases.jsonl`, so inference retrieves from exactly the cases the model was trained with.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from radgpt.runs.folders import CASES_FILE


@dataclass
class PriorCase:
    """A prior report retrieved into a prompt or shown beside an impression (not the reader study's Case)."""

    id: str
    findings: str
    impression: str


MATCHES = ("words", "findings", "consistent")


def _with_finding_terms(text: str) -> str:
    """Findings text plus one pseudo-word per finding it states ("zzfinding_nodule"; "zzfinding_none" when
    it states none), repeated so they weigh like a few matching words: neighbours then share the query's
    positive findings, not only its phrasing — a normal query stops drawing an abnormal neighbour's
    impression into its prompt, and a nodule query draws nodule impressions."""
    from radgpt.findings.labeler import positive_findings

    found = [f.replace("possible ", "").replace(" ", "_") for f in positive_findings(text)] or ["none"]
    return text + " . " + " ".join(f"zzfinding_{f}" for f in found for _ in range(3))


class CaseIndex:
    def __init__(self, cases: list[PriorCase], match: str = "words"):
        """match: "words" — TF-IDF over the findings' words; "findings" — the same plus the findings the
        labeler reads in them (see _with_finding_terms); "consistent" — "findings", then the closest cases
        re-ranked so that those whose impression states exactly the query's findings come first (a prior
        impression that names a finding the query never states, or leaves out one it does, is what a small
        model copies into the wrong report).

        The index is fitted by scikit-learn's TfidfVectorizer and kept in radgpt's cache, keyed by the cases and
        settings: a later process loads it without importing scikit-learn (≈2.5 s of a one-off `radgpt impress`
        call on 2 cores) and scores queries with `_TfidfQuery`, which repeats the vectorizer's transform."""
        if not cases:
            raise ValueError("retrieval index needs at least one case")
        if match not in MATCHES:
            raise ValueError(f"unknown retrieval match {match!r} (choose from {', '.join(MATCHES)})")
        self.cases, self.match = cases, match
        self._stated: dict | None = None  # per case, the findings its impression states (for "consistent")
        self.query = _TfidfQuery.cached([self._text(c.findings) for c in cases])

    def _text(self, findings: str) -> str:
        return findings if self.match == "words" else _with_finding_terms(findings)

    def _rerank(self, query: str, hits: list[tuple[PriorCase, float]], k: int) -> list[tuple[PriorCase, float]]:
        from radgpt.findings.faithfulness import NOT_REQUIRED, stated, unsupported_groups

        if self._stated is None:
            self._stated = {id(c): stated(c.impression) for c in self.cases}
        have = stated(query)  # the query's findings are read once, each case's impression once per index
        want = have - NOT_REQUIRED

        def cost(hit):
            claimed = self._stated[id(hit[0])]
            return 2 * len(unsupported_groups(have, claimed)) + len(want - claimed)

        return sorted(hits, key=lambda h: (cost(h), -h[1]))[:k]

    def search_many(self, queries: list[str], k: int, exclude_ids: list[set[str]] | None = None
                    ) -> list[list[tuple[PriorCase, float]]]:
        """Top-k cases per query (cosine similarity), skipping ids in exclude_ids[i]."""
        if k <= 0 or not queries:
            return [[] for _ in queries]
        if self.match == "consistent":
            wide = self._search(queries, max(4 * k, 12), exclude_ids)
            return [self._rerank(q, h, k) for q, h in zip(queries, wide)]
        return self._search(queries, k, exclude_ids)

    def _search(self, queries: list[str], k: int, exclude_ids: list[set[str]] | None) -> list[list[tuple[PriorCase, float]]]:
        import numpy as np

        out = []
        for i, text in enumerate(queries):
            row = self.query.scores(self._text(text))
            excl = exclude_ids[i] if exclude_ids else set()
            take = min(len(row), k + len(excl))
            top = np.argpartition(-row, take - 1)[:take] if take < len(row) else np.arange(len(row))
            top = top[np.argsort(-row[top], kind="stable")]
            out.append([(self.cases[j], float(row[j])) for j in top if self.cases[j].id not in excl][:k])
        return out

    def search(self, query: str, k: int, exclude_ids: set[str] | None = None) -> list[tuple[PriorCase, float]]:
        return self.search_many([query], k, [exclude_ids or set()])[0]

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CASES_FILE
        with open(path, "w", encoding="utf-8") as f:
            for c in self.cases:
                f.write(json.dumps({"id": c.id, "findings": c.findings, "impression": c.impression},
                                   ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path, match: str = "words") -> CaseIndex | None:
        path = Path(folder) / CASES_FILE
        if not path.exists():
            return None
        return cls(load_cases(path), match)  # the one case reader (lines split at \n only: save writes U+2028 raw)


class _TfidfQuery:
    """A fitted TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True) over the cases, as plain
    arrays: the vocabulary, its idf, and the l2-normalised case matrix by term (CSC). `scores(text)` is the
    cosine similarity of one query with every case — the vectorizer's own transform (word 1–2-grams of
    `(?u)\\b\\w\\w+\\b` tokens, 1 + log tf, × idf, l2 norm) repeated in numpy, checked against scikit-learn's in
    tests/test_retrieval.py."""

    VERSION = 1
    _TOKEN = re.compile(r"(?u)\b\w\w+\b")

    def __init__(self, terms: list[str], idf, indptr, indices, data, n_cases: int):
        self.vocab = {t: i for i, t in enumerate(terms)}
        self.idf, self.indptr, self.indices, self.data, self.n_cases = idf, indptr, indices, data, n_cases

    @classmethod
    def fit(cls, texts: list[str]) -> _TfidfQuery:
        from sklearn.feature_extraction.text import TfidfVectorizer

        # word uni+bigrams, sublinear tf: robust to long findings that repeat boilerplate
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, lowercase=True)
        by_term = vec.fit_transform(texts).tocsc()
        terms = [""] * len(vec.vocabulary_)
        for term, i in vec.vocabulary_.items():
            terms[i] = term
        by_term.sort_indices()
        return cls(terms, vec.idf_, by_term.indptr, by_term.indices, by_term.data, len(texts))

    @classmethod
    def cached(cls, texts: list[str]) -> _TfidfQuery:
        import numpy as np

        from radgpt.runs.base_models import cache_dir

        key = hashlib.sha256(json.dumps([cls.VERSION, texts], ensure_ascii=False).encode()).hexdigest()[:24]
        path = cache_dir() / "retrieval" / f"tfidf-{key}.npz"
        if path.exists():
            try:
                z = np.load(path, allow_pickle=False)
                return cls(list(z["terms"]), z["idf"], z["indptr"], z["indices"], z["data"], int(z["n_cases"]))
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache entry is rebuilt below
        fitted = cls.fit(texts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.stem + f".{os.getpid()}.tmp.npz")
            np.savez(tmp, terms=np.array(list(fitted.vocab), dtype=str), idf=fitted.idf, indptr=fitted.indptr,
                     indices=fitted.indices, data=fitted.data, n_cases=fitted.n_cases)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache only costs the next process the fit
        return fitted

    def vector(self, text: str) -> dict[int, float]:
        import math

        tokens = self._TOKEN.findall(text.lower())
        grams = tokens + [f"{a} {b}" for a, b in itertools.pairwise(tokens)]
        counts: dict[int, int] = {}
        for g in grams:
            j = self.vocab.get(g)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        weights = {j: (1.0 + math.log(c)) * float(self.idf[j]) for j, c in counts.items()}
        norm = math.sqrt(sum(w * w for w in weights.values()))
        return {j: w / norm for j, w in weights.items()} if norm else {}

    def scores(self, text: str):
        import numpy as np

        row = np.zeros(self.n_cases)
        for j, w in self.vector(text).items():
            lo, hi = self.indptr[j], self.indptr[j + 1]
            row[self.indices[lo:hi]] += w * self.data[lo:hi]
        return row


def load_cases(path: str | Path):
    """(id, findings, impression) cases from JSONL, with the field names every radgpt reader accepts
    (radgpt.common.inputs: radgpt's {id, findings, impression}, clin-summ's {idx, inputs, target}, uid,
    study_id, ...), looked up line by line; a bad line is a FatalError naming file:line and counting the others."""
    from radgpt.common.errors import FatalError
    from radgpt.common.inputs import (
        FINDINGS_FIELDS,
        ID_FIELDS,
        IMPRESSION_FIELDS,
        first_field,
        read_json_objects,
    )

    cases = []
    for n, r in read_json_objects(path, "cases file"):
        fields = [first_field(r, names) for names in (ID_FIELDS, FINDINGS_FIELDS, IMPRESSION_FIELDS)]
        missing = [what for what, f in zip(("id", "findings", "impression"), fields) if f is None]
        if missing:
            raise FatalError(f"{path}:{n}: no {' or '.join(missing)} field; a case needs an id "
                             f"({', '.join(ID_FIELDS)}), findings ({', '.join(FINDINGS_FIELDS)}) and an impression "
                             f"({', '.join(IMPRESSION_FIELDS)}) (fields: {', '.join(r) or 'none'})")
        cid, f, i = (r[k] for k in fields)
        for k, value in zip(fields[1:], (f, i)):
            if not isinstance(value, str):
                raise FatalError(f"{path}:{n}: field '{k}' must be text, got {type(value).__name__}")
        cases.append(PriorCase(str(cid), f, i))
    if not cases:
        raise FatalError(f"{path}: no cases")
    return cases


