"""Each corpus reader on small fixtures, and what each kind of bad input gets."""

from pathlib import Path

import pytest

from radgpt.common.errors import FatalError
from radgpt.prepare.records import Problem, Record, normalize_text
from radgpt.prepare.sources import ColumnMap, ReadOptions, detect_source, read_source
from tests.report_fixtures import (
    iu_rows,
    mimic_report,
    write_mimic_tree,
    write_mimic_zip,
    write_openi_folder,
    write_openi_tgz,
)

OPTS = ReadOptions()


def _read(path: Path, source: str | None = None, opts: ReadOptions = OPTS):
    items = list(read_source(path, source or detect_source(path), opts))
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Problem)]


def test_openi_xml_folder_and_tgz_match_the_csv(tmp_path):
    rows = iu_rows(12)
    folder = write_openi_folder(tmp_path / "xml", rows)
    tgz = write_openi_tgz(tmp_path / "ecgen.tgz", folder)
    for path in (folder, tgz):
        assert detect_source(path) == "openi-xml"
        recs, probs = _read(path)
        assert not probs and len(recs) == 12
        by_id = {r.id: r for r in recs}
        for row in rows:
            r = by_id[f"CXR{row['uid']}"]
            assert r.findings == normalize_text(row["findings"])
            assert r.impression == normalize_text(row["impression"])
            assert r.indication == normalize_text(row["indication"])
            assert r.mesh == [m for m in row["MeSH"].split(";") if m]


def test_openi_xml_bad_files_are_named_and_counted(tmp_path):
    folder = write_openi_folder(tmp_path / "xml", iu_rows(3))
    (folder / "broken.xml").write_text("<eCitation><uId id='CXR9'></eCitation", encoding="utf-8")
    (folder / "empty.xml").write_bytes(b"")
    (folder / "latin.xml").write_bytes("<eCitation>caf\xe9</eCitation>".encode("latin-1"))
    recs, probs = _read(folder)
    assert len(recs) == 3
    reasons = {Path(p.origin).name: p.reason for p in probs}
    assert reasons["broken.xml"].startswith("XML does not parse (line 1")
    assert reasons["empty.xml"] == "empty file"
    assert reasons["latin.xml"].startswith("not UTF-8: byte 0xe9")


def test_mimic_tree_and_zip_ids_and_sections(tmp_path):
    studies = {(10000032, 50414267): mimic_report("Lungs clear.", "No acute process."),
               (10000032, 53189527): mimic_report("Small left effusion.", "Left effusion."),
               (10000764, 57375967): b"\xff\xfe not utf8",
               (10000898, 50771383): b""}
    tree = write_mimic_tree(tmp_path / "mimic", studies)
    z = write_mimic_zip(tmp_path / "mimic-cxr-reports.zip", studies)
    for path in (tree, z):
        assert detect_source(path) == "mimic"
        recs, probs = _read(path)
        assert sorted(r.id for r in recs) == ["s50414267", "s53189527"]
        r = next(r for r in recs if r.id == "s53189527")
        assert (r.patient_id, r.study_id, r.findings, r.impression) == ("10000032", "53189527",
                                                                        "Small left effusion.", "Left effusion.")
        assert sorted(p.reason.split(":")[0] for p in probs) == ["empty file", "not UTF-8"]
        assert all("s5" in p.origin for p in probs)  # the file is named


def test_iu_csv_and_missing_columns(tmp_path):
    recs, probs = _read(Path("data/openi/indiana_reports.csv"))
    assert len(recs) == 2982 and not probs
    assert recs[0].id == "1" and recs[0].mesh == ["normal"] and recs[0].sections["examination"]
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,notes\n1,hello\n")
    recs, probs = _read(bad)
    assert not recs and len(probs) == 1
    assert probs[0].reason.startswith("no report column found; columns are ['uid', 'notes']")
    assert "columns.text=NAME" in probs[0].reason


def test_table_jsonl_clin_summ_and_bad_lines(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text('{"idx": 0, "inputs": "Lungs clear.", "target": "Normal."}\n'
                 "{not json\n"
                 '["a list"]\n'
                 '{"idx": 3, "inputs": "Effusion.", "target": "Effusion."}\n', encoding="utf-8")
    recs, probs = _read(f)
    assert [r.id for r in recs] == ["0", "3"] and recs[0].findings == "Lungs clear."
    assert [p.origin.rsplit(":", 1)[1] for p in probs] == ["2", "3"]
    assert "line 2 is not valid JSON" in probs[0].reason and probs[0].data == {"line": "{not json"}


def test_table_mediqa_columns_and_explicit_mapping(tmp_path):
    f = tmp_path / "mediqa.json"
    f.write_text('[{"study_id": "a1", "findings": "F.", "impression": "I.", "background": "B."}]')
    recs, _ = _read(f)
    assert (recs[0].id, recs[0].indication) == ("a1", "B.")
    g = tmp_path / "inhouse.csv"
    g.write_text("ACC,FIND_TXT,IMP_TXT\nA1,Clear lungs.,Normal.\nA2,short row\n")
    opts = ReadOptions(columns=ColumnMap(id="ACC", findings="FIND_TXT", impression="IMP_TXT"))
    recs, probs = _read(g, "table", opts)
    assert recs[0].findings == "Clear lungs." and recs[0].id == "A1"
    assert probs[0].reason == "line 3: row has 2 fields, header has 3" and probs[0].origin.endswith(":3")
    opts = ReadOptions(columns=ColumnMap(findings="NOPE"))
    _, probs = _read(g, "table", opts)
    assert "column 'NOPE' (columns.findings) not found" in probs[0].reason


def test_table_free_text_column_is_parsed(tmp_path):
    f = tmp_path / "reports.jsonl"
    f.write_text('{"id": "r1", "report": "FINDINGS: Lungs clear.\\nIMPRESSION: Normal."}\n')
    recs, _ = _read(f)
    assert (recs[0].findings, recs[0].impression) == ("Lungs clear.", "Normal.")


def test_non_utf8_rows_are_read_as_cp1252_and_noted(tmp_path):
    f = tmp_path / "latin.jsonl"
    f.write_bytes('{"findings": "caf\xe9", "impression": "x"}\n'.encode("latin-1") + b'{"findings": "ok", "impression": "y"}\n'
                  + b'{"findings": "bad \x81", "impression": "z"}\n')
    recs, probs = _read(f)
    assert [r.findings for r in recs] == ["caf\xe9", "ok"]
    assert recs[0].notes == ["line 1: not UTF-8 (byte 0xe9): read as cp1252"] and recs[1].notes == []
    assert probs[0].origin.endswith(":3") and probs[0].reason.startswith("line 3: byte 0x81 is not utf-8 or cp1252")
    opts = ReadOptions(encoding="utf-8")  # one encoding named: no fallback, each row that does not fit is reported
    recs, probs = _read(f, "table", opts)
    assert [r.findings for r in recs] == ["ok"] and [p.origin[-2:] for p in probs] == [":1", ":3"]


def test_detection_errors(tmp_path):
    with pytest.raises(FatalError, match="no such file"):
        detect_source(tmp_path / "missing")
    (tmp_path / "x.parquet").write_text("x")
    with pytest.raises(FatalError, match="--source"):
        detect_source(tmp_path / "x.parquet")
    with pytest.raises(FatalError, match="unknown source type"):
        list(read_source(tmp_path, "dicom", OPTS))
