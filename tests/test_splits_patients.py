"""Patient-level splits and leakage flags where they matter: MIMIC-style patients with several studies.

OpenI has one report per patient, so on it a split by report id and a split by patient agree and a
test cannot tell them apart. Here every patient has 2-6 studies (tests/mimic_tree.py), and the same
normal report is written for many patients, as in MIMIC-CXR and in hospital exports.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from radgpt.cli import main
from radgpt.prepare.splits import SPLITS
from tests.mimic_tree import multi_study_corpus, write_corpus


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def _prepare(src: Path, out: Path, *overrides: str) -> dict:
    assert main(["prepare", str(src), "--out", str(out), "--quiet", *overrides]) == 0
    return json.loads((out / "summary.json").read_text())


def _records(out: Path) -> dict[str, list[dict]]:
    return {s: _jsonl(out / "records" / f"{s}.jsonl") for s in SPLITS}


def _splits_of_patients(records: dict[str, list[dict]]) -> dict[str, set[str]]:
    where: dict[str, set[str]] = defaultdict(set)
    for split, rows in records.items():
        for r in rows:
            where[r["patient_id"]].add(split)
    return where


def _pair(r: dict) -> tuple[str, str]:
    return r["findings"], r["impression"]


@pytest.fixture(scope="module")
def corpus():
    return multi_study_corpus(80, studies=(2, 6), seed=3)  # ~320 reports, each text unique


@pytest.fixture(scope="module")
def tree(corpus, tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("mimic") / "mimic-cxr", corpus)


def test_all_studies_of_a_patient_land_in_one_split(corpus, tree, tmp_path):
    studies_of = defaultdict(list)
    for st in corpus:
        studies_of[st.patient_id].append(st.record_id)
    assert min(map(len, studies_of.values())) >= 2  # the fixture: no single-study patient
    summary = _prepare(tree, tmp_path / "out")
    records = _records(tmp_path / "out")
    spanning = {p: sorted(s) for p, s in _splits_of_patients(records).items() if len(s) > 1}
    assert not spanning, f"patients with studies in two splits: {spanning}"
    # every study is there, under the patient (subject id) its folder names
    written = {r["id"]: r["patient_id"] for rows in records.values() for r in rows}
    assert written == {st.record_id: st.patient_id for st in corpus}
    assert summary["split_by"] == "patient"
    assert [summary["splits"][s]["patients"] for s in SPLITS] == [
        len({r["patient_id"] for r in records[s]}) for s in SPLITS]
    assert sum(summary["splits"][s]["patients"] for s in SPLITS) == len(studies_of)
    assert all(records[s] for s in SPLITS)  # all three splits in use: there was a boundary to cross


def test_the_corpus_would_catch_a_split_by_report(tree, tmp_path):
    """The same corpus split by report id (split.by=report, or a split keyed on the record id by mistake)
    puts many patients in two splits: the test above is not vacuous on it."""
    summary = _prepare(tree, tmp_path / "out", "split.by=report")
    assert summary["split_by"] == "report"
    spanning = [p for p, s in _splits_of_patients(_records(tmp_path / "out")).items() if len(s) > 1]
    assert len(spanning) >= 10


def test_the_same_report_in_train_and_held_out_is_flagged_or_dropped(tmp_path):
    corpus = multi_study_corpus(60, studies=(1, 4), normal_share=0.3, seed=5)
    tree = write_corpus(tmp_path / "mimic-cxr", corpus)
    out = tmp_path / "flag"
    summary = _prepare(tree, out)
    records = _records(out)
    train_pairs = {_pair(r) for r in records["train"]}
    n_flagged = 0
    for split in ("validate", "test"):
        for r in records[split]:
            assert bool(r.get("in_train")) == (_pair(r) in train_pairs), (split, r["id"])
        flagged = {r["id"] for r in records[split] if r.get("in_train")}
        for fmt in ("alpaca", "chat"):  # the datasets a model trains and is scored on carry the same flag
            rows = _jsonl(out / fmt / f"{split}.jsonl")
            assert [x["id"] for x in rows] == [r["id"] for r in records[split]]
            assert {x["id"] for x in rows if x.get("in_train")} == flagged
        assert summary["splits"][split]["pairs_also_in_train"] == len(flagged)
        n_flagged += len(flagged)
    assert n_flagged >= 1  # the shared normal report is in train and in a held-out split
    assert not any(r.get("in_train") for r in records["train"])

    # within a split one copy is kept; the others are skipped with the reason, and counted
    skipped = _jsonl(out / "skipped.jsonl")
    for split, rows in records.items():
        assert len({_pair(r) for r in rows}) == len(rows)
        dups = [x for x in skipped if x["reason"] == f"duplicate (findings, impression) pair within {split}"]
        assert len(dups) == summary["splits"][split]["duplicates_removed"]
        assert all(_pair(x["data"]) in {_pair(r) for r in rows} for x in dups)
    assert sum(summary["splits"][s]["duplicates_removed"] for s in SPLITS) >= 1
    assert sum(map(len, records.values())) + len(skipped) == len(corpus)

    # split.drop_leaked=true: the flagged reports are gone from the held-out splits, nothing else is
    dropped = tmp_path / "drop"
    summary2 = _prepare(tree, dropped, "split.drop_leaked=true")
    records2 = _records(dropped)
    for split in ("validate", "test"):
        kept = [r["id"] for r in records2[split]]
        assert kept == [r["id"] for r in records[split] if not r.get("in_train")]
        assert not any(_pair(r) in train_pairs for r in records2[split])
        assert [x["id"] for x in _jsonl(dropped / "alpaca" / f"{split}.jsonl")] == kept
    assert summary2["written"] == summary["written"] - n_flagged


def test_a_split_file_that_puts_a_patient_in_two_splits_is_flagged(tmp_path, capsys):
    corpus = multi_study_corpus(6, studies=(2, 3), seed=1)
    tree = write_corpus(tmp_path / "mimic-cxr", corpus)
    patients = sorted({st.subject for st in corpus})
    split_of = dict(zip(patients, ["train"] * 4 + ["validate", "test"]))

    def write_split(rows: list[tuple[int, int, str]]) -> Path:
        path = tmp_path / "split.csv"
        path.write_text("dicom_id,study_id,subject_id,split\n"
                        + "".join(f"d{study},{study},{subject},{split}\n" for subject, study, split in rows))
        return path

    clean = [(st.subject, st.study, split_of[st.subject]) for st in corpus]
    summary = _prepare(tree, tmp_path / "clean", f"split.file={write_split(clean)}")
    assert summary["split_by"] == "split file" and summary["patients_in_two_splits_in_split_file"] == 0
    assert not [p for p, s in _splits_of_patients(_records(tmp_path / "clean")).items() if len(s) > 1]

    # one study of a training patient moved to test: the file's split is used, and the patient is flagged
    moved = corpus[0]
    assert split_of[moved.subject] == "train"
    leaky = [(sub, stu, "test" if stu == moved.study else split) for sub, stu, split in clean]
    path = write_split(leaky)
    assert main(["prepare", str(tree), "--out", str(tmp_path / "leaky"), f"split.file={path}"]) == 0
    assert "split file puts 1 patient(s) in more than one split" in " ".join(capsys.readouterr().out.split())
    summary = json.loads((tmp_path / "leaky" / "summary.json").read_text())
    assert summary["patients_in_two_splits_in_split_file"] == 1
    assert _splits_of_patients(_records(tmp_path / "leaky"))[moved.patient_id] == {"train", "test"}
