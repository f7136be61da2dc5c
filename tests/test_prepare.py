"""`radgpt prepare` end to end: outputs, splits, duplicates, leakage flags, bad input and exit codes, and the
invariants every prepared corpus keeps (hypothesis-generated multi-patient corpora). Everything here runs on
a fresh clone: the OpenI files it reads are the ones bundled in data/openi/."""

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from radgpt.cli import main
from radgpt.prepare.splits import SPLITS
from tests.mimic_tree import FINDINGS_POOL, findings_and_impression, mimic_layout
from tests.report_fixtures import iu_rows, mimic_report, write_mimic_tree, write_openi_folder

OPENI = Path(__file__).resolve().parents[1] / "data/openi"  # bundled: no ../shared needed


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _run(*argv) -> int:
    return main(["prepare", *map(str, argv), "--quiet"])


def test_prepare_iu_csv_end_to_end(tmp_path):
    out = tmp_path / "out"
    assert _run(OPENI / "indiana_reports.csv", "--out", out) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["items_read"] == 2982 and s["parsed"] == 2982
    kept = sum(d["records"] for d in s["splits"].values())
    # every report is either kept or skipped with a reason: nothing silently dropped
    assert kept + s["skipped_total"] == 2982
    assert len(_jsonl(out / "skipped.jsonl")) == s["skipped_total"]
    assert s["skipped_by_reason"]["no findings section"] > 400
    # patient-level: no patient in two splits
    patients = {sp: {r["patient_id"] for r in _jsonl(out / "records" / f"{sp}.jsonl")} for sp in SPLITS}
    assert not (patients["train"] & patients["validate"]) and not (patients["train"] & patients["test"])
    alpaca = _jsonl(out / "alpaca" / "train.jsonl")
    assert alpaca[0]["instruction"] == "Derive the impression from findings in the radiology report"
    assert alpaca[0]["input"] and alpaca[0]["output"]
    chat = _jsonl(out / "chat" / "train.jsonl")
    assert [m["role"] for m in chat[0]["messages"]] == ["user", "assistant"]
    assert (out / "config.yaml").read_text().startswith("inputs:")


def test_prepare_is_reproducible_and_seeded(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 1), (b, 1), (c, 2)):
        assert _run("data/openi/indiana_reports.csv", "--out", out, f"split.seed={seed}") == 0
    assert (a / "records/test.jsonl").read_bytes() == (b / "records/test.jsonl").read_bytes()
    assert (a / "records/test.jsonl").read_bytes() != (c / "records/test.jsonl").read_bytes()


def test_clin_summ_jsonl_duplicates_and_leakage(tmp_path):
    src = tmp_path / "pairs.jsonl"
    rows = [json.loads(x) for x in (OPENI / "clin-summ/train.jsonl").read_text().splitlines()[:300]]
    # exact duplicates: four copies of one pair, and a second copy of 40 others under new ids
    rows += [dict(rows[0], idx=10_000 + i) for i in range(3)]
    rows += [dict(r, idx=20_000 + i) for i, r in enumerate(rows[1:41])]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert _run(src, "--out", out) == 2  # no patient column: stops rather than split by report silently
    assert _run(src, "--out", out, "split.by=report") == 0  # OpenI has one report per patient
    s = json.loads((out / "summary.json").read_text())
    assert s["split_by"] == "report"
    # one copy survives in each split it lands in; the rest are removed (same split) or flagged (held out)
    dups = sum(d["duplicates_removed"] for d in s["splits"].values())
    leaked = sum(d["pairs_also_in_train"] for d in s["splits"].values())
    assert dups + leaked >= 3 + 40 - 1 and leaked >= 1
    train_pairs = {(r["input"], r["output"]) for r in _jsonl(out / "alpaca/train.jsonl")}
    for sp in ("validate", "test"):
        held_out = _jsonl(out / "alpaca" / f"{sp}.jsonl")
        # flagged exactly when a model trained on train has seen the pair
        assert [bool(r.get("in_train")) for r in held_out] == [(r["input"], r["output"]) in train_pairs
                                                               for r in held_out]
        assert sum(bool(r.get("in_train")) for r in held_out) == s["splits"][sp]["pairs_also_in_train"]
    assert len(_jsonl(out / "skipped.jsonl")) == dups  # each removed copy is in skipped.jsonl


def test_split_file_and_mimic_tree(tmp_path):
    studies = {(10000032, 50000001): mimic_report("Lungs clear.", "Normal."),
               (10000032, 50000002): mimic_report("Effusion.", "Effusion."),
               (10000764, 50000003): mimic_report("Edema.", "Edema."),
               (10000898, 50000004): mimic_report("Pneumothorax.", "Pneumothorax.")}
    tree = write_mimic_tree(tmp_path / "mimic", studies)
    split = tmp_path / "split.csv"
    split.write_text("dicom_id,study_id,subject_id,split\nd1,50000001,10000032,train\nd2,50000002,10000032,train\n"
                     "d3,50000003,10000764,validate\nd4,50000004,10000898,test\n")
    out = tmp_path / "out"
    assert _run(tree, "--out", out, "--split-file", split) == 0
    assert [r["id"] for r in _jsonl(out / "records/validate.jsonl")] == ["s50000003"]
    assert [r["id"] for r in _jsonl(out / "records/test.jsonl")] == ["s50000004"]
    assert len(_jsonl(out / "records/train.jsonl")) == 2


def test_bad_records_are_counted_and_kept(tmp_path):
    folder = write_openi_folder(tmp_path / "xml", iu_rows(20))
    (folder / "broken.xml").write_text("<eCitation>", encoding="utf-8")
    out = tmp_path / "out"
    assert _run(folder, tmp_path / "missing-folder", "--out", out) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["unreadable"] == 1
    assert s["skipped_by_reason"]["XML does not parse"] == 1
    assert s["skipped_by_reason"]["no such file or folder"] == 1
    skipped = _jsonl(out / "skipped.jsonl")
    no_findings = [x for x in skipped if x["reason"] == "no findings section"]
    assert no_findings and all(x["data"]["id"].startswith("CXR") for x in no_findings)  # the record is kept


def test_fatal_misuse_exits_nonzero_with_one_line(tmp_path, capsys):
    assert _run(tmp_path / "nothing-here", "--out", tmp_path / "o") == 2
    assert "no input found" in capsys.readouterr().err
    assert _run("data/openi/indiana_reports.csv", "--source", "dicom", "--out", tmp_path / "o") == 2
    assert "unknown source type 'dicom'" in capsys.readouterr().err
    assert _run("data/openi/indiana_reports.csv", "--out", tmp_path / "o", "split.sed=3") == 2
    assert "did you mean split.seed" in capsys.readouterr().err
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert _run("data/openi/indiana_reports.csv", "--out", ro / "x") == 2
    assert _run("data/openi/indiana_reports.csv", "--out", "/proc/radgpt-out") == 2
    assert "not writable" in capsys.readouterr().err


def test_no_usable_reports_exits_1(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("\n")
    assert _run(f, "--out", tmp_path / "o") == 1


# ---------------------------------------------------------------------------------------- invariants
# Small pools of sentences, so generated corpora hold the same report for one patient twice, for two
# patients, with and without a findings or impression section.
_SENTENCES = tuple(s for s, _ in FINDINGS_POOL[:6])
_IMPRESSIONS = ("No acute cardiopulmonary process.", "Small left pleural effusion.",
                "Stable mild cardiomegaly.", "")
_REPORT = st.tuples(st.lists(st.sampled_from(_SENTENCES), max_size=2), st.sampled_from(_IMPRESSIONS))
_FRACTIONS = ((0.8, 0.1, 0.1), (0.5, 0.3, 0.2), (0.34, 0.33, 0.33))


def _write_corpus(folder: Path, patients: list[list[tuple[str, str]]], fmt: str
                  ) -> tuple[Path, dict[str, str]]:
    """patients[p] = [(findings, impression), ...] as a JSONL export or a MIMIC-CXR tree.
    Returns (input path, {report id: patient id})."""
    patient_of: dict[str, str] = {}
    if fmt == "jsonl":
        src = folder / "export.jsonl"
        with open(src, "w", encoding="utf-8") as f:
            for p, reports in enumerate(patients):
                for findings, impression in reports:
                    rid = f"A{len(patient_of):05d}"
                    patient_of[rid] = f"MRN{p}"
                    f.write(json.dumps({"id": rid, "patient_id": f"MRN{p}", "findings": findings,
                                        "impression": impression}) + "\n")
        return src, patient_of
    studies = {}
    for p, reports in enumerate(patients):
        for findings, impression in reports:
            subject, study = 10_000_000 + p, 50_000_000 + len(patient_of)
            patient_of[f"s{study}"] = str(subject)
            studies[(subject, study)] = mimic_layout(findings, impression)
    return write_mimic_tree(folder / "mimic-cxr", studies), patient_of


# No shrinking: each example is a whole prepare run, and shrinking a failure took minutes; the failing
# corpus is printed as drawn (at most 25 patients).
@settings(max_examples=40, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(patients=st.lists(st.lists(_REPORT.map(lambda r: (" ".join(r[0]), r[1])), min_size=1, max_size=5),
                         min_size=1, max_size=25),
       fmt=st.sampled_from(["jsonl", "mimic"]), seed=st.integers(0, 10**6),
       fractions=st.sampled_from(_FRACTIONS))
def test_every_report_is_accounted_for_and_every_patient_is_in_one_split(patients, fmt, seed, fractions):
    with tempfile.TemporaryDirectory() as tmp:
        src, patient_of = _write_corpus(Path(tmp), patients, fmt)
        out = Path(tmp) / "out"
        split = [f"split.{name}={frac}" for name, frac in zip(SPLITS, fractions)]
        rc = _run(src, "--out", out, f"split.seed={seed}", *split)
        summary = json.loads((out / "summary.json").read_text())
        records = {sp: _jsonl(out / "records" / f"{sp}.jsonl") if (out / "records" / f"{sp}.jsonl").exists()
                   else [] for sp in SPLITS}
        skipped = _jsonl(out / "skipped.jsonl")
        datasets = {(fmt_, sp): _jsonl(out / fmt_ / f"{sp}.jsonl") if (out / fmt_ / f"{sp}.jsonl").exists()
                    else [] for fmt_ in ("alpaca", "chat") for sp in SPLITS}

    written = [r["id"] for rows in records.values() for r in rows]
    assert rc == (0 if written else 1)
    # every input report is written once or skipped once (with its reason), never both, never lost
    assert sorted(written + [x["data"]["id"] for x in skipped]) == sorted(patient_of)
    assert summary["items_read"] == len(patient_of)
    assert summary["written"] + summary["skipped_total"] == len(patient_of)
    # every patient's reports are in exactly one split, under the patient they came from
    where: dict[str, set[str]] = defaultdict(set)
    for sp, rows in records.items():
        for r in rows:
            assert r["patient_id"] == patient_of[r["id"]]
            where[r["patient_id"]].add(sp)
        assert summary["splits"][sp]["records"] == len(rows)
        assert summary["splits"][sp]["patients"] == len({r["patient_id"] for r in rows})
    assert all(len(s) == 1 for s in where.values()), {p: s for p, s in where.items() if len(s) > 1}
    # no pair twice in a split; a held-out pair is flagged exactly when train has it
    pair = lambda r: (r["findings"], r["impression"])  # noqa: E731
    train_pairs = {pair(r) for r in records["train"]}
    for sp, rows in records.items():
        assert len({pair(r) for r in rows}) == len(rows)
        flags = [bool(r.get("in_train")) for r in rows]
        assert flags == [sp != "train" and pair(r) in train_pairs for r in rows]
        for fmt_ in ("alpaca", "chat"):  # the training/eval datasets mirror the records, flags included
            got = datasets[(fmt_, sp)]
            assert [(x["id"], bool(x.get("in_train"))) for x in got] == [(r["id"], bool(r.get("in_train")))
                                                                        for r in rows]


@pytest.fixture(scope="module")
def big_export(tmp_path_factory) -> tuple[Path, int]:
    """1,200 patients with 1-2 reports each (unique texts), as a JSONL export."""
    path = tmp_path_factory.mktemp("big") / "export.jsonl"
    lines, code = [], 0
    for p in range(1200):
        for _ in range(1 + p % 2):
            code += 1
            findings, impression = findings_and_impression(code)
            lines.append(json.dumps({"id": f"A{code}", "patient_id": f"MRN{p}", "findings": findings,
                                     "impression": impression}))
    path.write_text("\n".join(lines) + "\n")
    return path, 1200


@settings(max_examples=6, deadline=None, derandomize=True, phases=(Phase.explicit, Phase.generate))
@given(seed=st.integers(0, 10**6), fractions=st.sampled_from(_FRACTIONS))
def test_split_sizes_follow_the_configured_fractions(big_export, seed, fractions):
    src, n_patients = big_export
    with tempfile.TemporaryDirectory() as tmp:
        split = [f"split.{name}={frac}" for name, frac in zip(SPLITS, fractions)]
        assert _run(src, "--out", Path(tmp) / "out", f"split.seed={seed}", *split) == 0
        summary = json.loads((Path(tmp) / "out" / "summary.json").read_text())
    share = [summary["splits"][sp]["patients"] / n_patients for sp in SPLITS]
    # 1,200 patients: a share's standard deviation is at most 1.5 points; 5 points is over 3 of them
    assert all(abs(got - want) < 0.05 for got, want in zip(share, fractions)), (share, fractions)
    assert sum(summary["splits"][sp]["patients"] for sp in SPLITS) == n_patients
