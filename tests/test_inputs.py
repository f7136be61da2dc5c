"""One input convention (radgpt.common.inputs): a file one command accepts, the others accept — impress,
evaluate, study create and retrieval read the same id / findings / impression names — and every reader names
a bad line by file:line (a byte that is not UTF-8 by its offset in the file) while a batch reads the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radgpt.common.errors import FatalError
from radgpt.common.inputs import BadLine, csv_rows, json_lines, read_json_objects
from radgpt.evaluate.io import align, read_predictions, read_references
from radgpt.impress.inputs import Bad, FindingsInput, read_inputs
from radgpt.runs.retrieval import load_cases
from radgpt.study.create import Fields, create_study, load_predictions, load_references

CASES = [("Heart normal. Lungs clear.", "No acute disease."),
         ("Small left pleural effusion. Heart normal.", "Small left effusion."),
         ("Cardiomegaly. No effusion.", "Cardiomegaly."),
         ("Right upper lobe opacity.", "Right upper lobe pneumonia.")]

# the shapes radgpt meets in the wild; each id field is one the readers used to disagree on
SHAPES = {
    "uid (OpenI)": lambda i, f, imp: {"uid": 100 + i, "findings": f, "impression": imp},
    "clin-summ": lambda i, f, imp: {"idx": 100 + i, "inputs": f, "target": imp},
    "study_id (MIMIC)": lambda i, f, imp: {"study_id": 100 + i, "findings": f, "impression": imp},
    "instruction": lambda i, f, imp: {"id": 100 + i, "instruction": "Summarize.", "input": f, "output": imp},
}
ID_OF = {"uid (OpenI)": "uid", "clin-summ": "idx", "study_id (MIMIC)": "study_id", "instruction": "id"}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("shape", list(SHAPES))
def test_one_file_is_read_alike_by_impress_evaluate_study_and_retrieval(tmp_path, shape):
    refs = _jsonl(tmp_path / "refs.jsonl", [SHAPES[shape](i, f, imp) for i, (f, imp) in enumerate(CASES)])
    ids = [str(100 + i) for i in range(len(CASES))]
    findings = [f for f, _ in CASES]
    impressions = [imp for _, imp in CASES]

    got = list(read_inputs([str(refs)], "auto", None, None, None))
    assert [(r.id, r.findings) for r in got if isinstance(r, FindingsInput)] == list(zip(ids, findings))

    ev, has_ids, prov = read_references(refs)
    assert has_ids and prov["id_field"] == ID_OF[shape]
    assert [(r.id, r.findings, r.impression) for r in ev] == list(zip(ids, findings, impressions))

    cases = load_cases(refs)
    assert [(c.id, c.findings, c.impression) for c in cases] == list(zip(ids, findings, impressions))

    st = load_references("refs.jsonl", refs.read_text(encoding="utf-8"), Fields())
    assert list(st) == ids
    assert [(v["findings"], v["reference"]) for v in st.values()] == list(zip(findings, impressions))

    # a predictions file with the same id field joins with it in both evaluate and study
    preds = _jsonl(tmp_path / "m.jsonl", [{ID_OF[shape]: 100 + i, "prediction": f"p{i}"}
                                          for i in reversed(range(len(CASES)))])
    p, p_ids, _ = read_predictions(preds)
    assert align(ev, has_ids, p, p_ids, "m", preds) == [f"p{i}" for i in range(len(CASES))]
    assert load_predictions("m.jsonl", preds.read_text(encoding="utf-8"), Fields()) == {
        str(100 + i): f"p{i}" for i in range(len(CASES))}


def test_study_create_accepts_the_uid_file_evaluate_accepts(tmp_path):
    from radgpt.study.db import open_db

    rows = [{"uid": f"CXR{i}", "findings": f, "impression": imp} for i, (f, imp) in enumerate(CASES)]
    ref_text = "".join(json.dumps(r) + "\n" for r in rows)
    pred_text = "".join(json.dumps({"uid": f"CXR{i}", "impression": "x"}) + "\n" for i in range(len(CASES)))
    _, Session = open_db(tmp_path / "s.db", create=True)
    summary = create_study(Session, ("refs.jsonl", ref_text), [("m", "m.jsonl", pred_text)], seed="s")
    assert summary["cases"] == len(CASES) and summary["abnormal"] == 3


def test_a_bad_line_is_named_and_a_batch_reads_the_rest(tmp_path):
    good = [json.dumps({"uid": i, "findings": f, "impression": imp}) for i, (f, imp) in enumerate(CASES)]
    path = tmp_path / "long.jsonl"
    path.write_text("\n".join([good[0], "{oops", good[1], "", "[1, 2]", good[2], good[3]]) + "\n",
                    encoding="utf-8")

    got = list(read_inputs([str(path)], "auto", None, None, None))
    assert [r.id for r in got if isinstance(r, FindingsInput)] == ["0", "1", "2", "3"]
    bad = [r for r in got if isinstance(r, Bad)]
    assert [b.where for b in bad] == [f"{path}:2", f"{path}:5"]
    assert bad[0].message.startswith("invalid JSON") and bad[1].message == "expected a JSON object, got list"

    # a reference or prediction file, a dataset, the study's files or the prior cases: the first bad line and
    # the count of the others, after reading the whole file (a dropped line would change what is scored)
    study = lambda p: load_references(p.name, p.read_text(encoding="utf-8"), Fields())  # noqa: E731
    for read, name in ((read_references, path), (load_cases, path), (read_json_objects, path), (study, path.name)):
        with pytest.raises(FatalError) as e:
            read(path)
        msg = str(e.value)
        assert msg.startswith(f"{name}:2: not valid JSON"), msg
        assert "1 more bad line" in msg and ":5: expected a JSON object, got list" in msg, msg


def test_a_line_that_is_not_utf8_is_named_with_its_byte_offset(tmp_path):
    line1 = json.dumps({"id": "a", "findings": "Heart normal.", "impression": "Normal."}).encode() + b"\n"
    line2 = b'{"id": "b", "findings": "Caf\xe9 lungs", "impression": "x"}\n'  # cp1252/latin-1 e-acute
    line3 = json.dumps({"id": "c", "findings": "Lungs clear.", "impression": "Normal."}).encode() + b"\n"
    path = tmp_path / "latin.jsonl"
    path.write_bytes(line1 + line2 + line3)
    offset = len(line1) + line2.index(b"\xe9")

    got = list(read_inputs([str(path)], "auto", None, None, None))
    assert [r.id for r in got if isinstance(r, FindingsInput)] == ["a", "c"]
    (bad,) = [r for r in got if isinstance(r, Bad)]
    assert bad.where == f"{path}:2" and bad.message == f"not UTF-8 text (byte 0xe9 at offset {offset} of the file)"
    assert path.read_bytes()[offset] == 0xE9  # the offset a hex editor would go to

    with pytest.raises(FatalError, match=rf"latin.jsonl:2: not UTF-8 text \(byte 0xe9 at offset {offset} of the "
                                         r"file\); re-save the file as UTF-8"):
        read_references(path)
    with pytest.raises(FatalError, match=rf"latin.jsonl:2: not UTF-8 text \(byte 0xe9 at offset {offset}"):
        load_references("latin.jsonl", path.read_bytes(), Fields())  # study create, given the file's bytes


def test_csv_with_a_bom_bad_bytes_and_unquoted_commas(tmp_path):
    head = "\ufeffuid,findings,impression\r\n".encode()
    row2 = b'7,"Heart normal,\nlungs clear.",Normal.\r\n'  # a quoted value spanning two lines
    row4 = b"8,Caf\xe9 opacity,x\r\n"
    row5 = b"9,Effusion, small,x\r\n"  # an unquoted comma: one value too many
    row6 = b"10,Cardiomegaly.,Cardiomegaly.\r\n"
    path = tmp_path / "excel.csv"
    path.write_bytes(head + row2 + row4 + b"\r\n" + row5 + row6)

    got = list(read_inputs([str(path)], "auto", None, None, None))
    # the BOM is not part of the first column's name, so `uid` is found as the id
    assert [(r.id, r.findings, r.where) for r in got if isinstance(r, FindingsInput)] == [
        ("7", "Heart normal,\nlungs clear.", f"{path}:2"), ("10", "Cardiomegaly.", f"{path}:7")]
    offset = len(head + row2) + row4.index(b"\xe9")
    assert [(b.where, b.message) for b in got if isinstance(b, Bad)] == [
        (f"{path}:4", f"not UTF-8 text (byte 0xe9 at offset {offset} of the file)"),
        (f"{path}:6", "4 values for 3 columns; quote values that contain commas")]

    cols, rows = csv_rows(path)
    assert cols == ["uid", "findings", "impression"] and sum(isinstance(r, BadLine) for r in rows) == 2


def test_line_separators_inside_json_strings_do_not_split_a_line(tmp_path):
    # json.dumps(ensure_ascii=False) writes U+2028 and U+0085 as they are; str.splitlines() would cut there
    rows = [{"id": "a", "findings": "Heart normal.\u2028Lungs clear.", "impression": "Normal.\x85"},
            {"id": "b", "findings": "Effusion.", "impression": "Effusion."}]
    text = "\ufeff" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)  # and a BOM first
    path = tmp_path / "cases.jsonl"
    path.write_text(text, encoding="utf-8")
    assert [(c.id, c.findings, c.impression) for c in load_cases(path)] == [
        (r["id"], r["findings"], r["impression"]) for r in rows]
    assert list(load_references("cases.jsonl", text, Fields())) == ["a", "b"]
    assert [n for n, _ in json_lines(path.read_bytes().split(b"\n"), "x")] == [1, 2]


def test_retrieval_cases_name_what_is_missing(tmp_path):
    path = _jsonl(tmp_path / "cases.jsonl", [{"id": 1, "findings": "a", "impression": "b"},
                                             {"uid": 2, "text": "c"}])
    with pytest.raises(FatalError, match=r"cases.jsonl:2: no impression field.*fields: uid, text"):
        load_cases(path)
    _jsonl(path, [{"id": 1, "findings": None, "impression": "b"}])
    with pytest.raises(FatalError, match=r"cases.jsonl:1: field 'findings' must be text, got NoneType"):
        load_cases(path)
    with pytest.raises(FatalError, match="nope.jsonl: cases file not found"):
        load_cases(tmp_path / "nope.jsonl")


def test_a_dataset_keyed_by_uid_keeps_its_ids_for_training(tmp_path):
    from radgpt.finetune.data import read_examples

    rows = [{"uid": f"CXR{i}", "findings": f, "impression": imp} for i, (f, imp) in enumerate(CASES)]
    examples = read_examples(_jsonl(tmp_path / "train.jsonl", rows))
    # the ids retrieval excludes a case by (its own report is not its example) and shows to the user
    assert [(e.id, e.input, e.output) for e in examples] == [(r["uid"], r["findings"], r["impression"]) for r in rows]
