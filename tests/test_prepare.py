"""`radgpt prepare` end to end: outputs, splits, duplicates, leakage flags, bad input and exit codes."""

import json
import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from radgpt.cli import main
from radgpt.prepare.splits import SPLITS, hash_split
from tests.report_fixtures import iu_rows, mimic_report, write_mimic_tree, write_openi_folder


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _run(*argv) -> int:
    return main(["prepare", *map(str, argv), "--quiet"])


def test_prepare_shared_iu_csv_end_to_end(tmp_path, shared_openi):
    out = tmp_path / "out"
    assert _run(shared_openi / "indiana_reports.csv", "--out", out) == 0
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


def test_clin_summ_jsonl_duplicates_and_leakage(tmp_path, shared_openi):
    src = tmp_path / "pairs.jsonl"
    rows = [json.loads(x) for x in (shared_openi / "clin-summ/train.jsonl").read_text().splitlines()[:300]]
    rows += [dict(rows[0], idx=10_000 + i) for i in range(3)]  # exact duplicates of one pair
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert _run(src, "--out", out) == 2  # no patient column: stops rather than split by report silently
    assert _run(src, "--out", out, "split.by=report") == 0  # OpenI has one report per patient
    s = json.loads((out / "summary.json").read_text())
    assert s["split_by"] == "report"
    # one of the four copies survives in each split it lands in; the rest are removed or flagged
    dups = sum(d["duplicates_removed"] for d in s["splits"].values())
    leaked = sum(d["pairs_also_in_train"] for d in s["splits"].values())
    assert dups + leaked >= 3
    flagged = [r for sp in ("validate", "test") for r in _jsonl(out / "alpaca" / f"{sp}.jsonl") if r.get("in_train")]
    assert len(flagged) == sum(s["splits"][sp]["pairs_also_in_train"] for sp in ("validate", "test"))
    train_pairs = {(r["input"], r["output"]) for r in _jsonl(out / "alpaca/train.jsonl")}
    assert all((r["input"], r["output"]) in train_pairs for r in flagged)


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


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=12), st.integers(0, 5)), max_size=60), st.integers(0, 99))
def test_a_patient_never_spans_two_splits(studies, seed):
    assigned: dict[str, str] = {}
    for patient, _study in studies:
        split = hash_split(patient, seed, (0.6, 0.2, 0.2))
        assert split in SPLITS
        assert assigned.setdefault(patient, split) == split
