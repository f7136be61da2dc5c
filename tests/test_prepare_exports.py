"""`radgpt prepare` on hospital-style exports (tests/messy_exports.py): sections found unaided, every row
accounted for, splits by patient, and what the user must decide (patients, overwriting) asked, not assumed."""

import csv
import json
from pathlib import Path

import pytest

from radgpt.cli import main
from radgpt.prepare.sections import parse_report
from radgpt.prepare.splits import SPLITS
from tests.messy_exports import variant_names, write_export


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def _run(*argv) -> int:
    return main(["prepare", *map(str, argv), "--quiet"])


def _records(out: Path) -> dict[str, dict]:
    return {r["id"]: r for s in SPLITS for r in _jsonl(out / "records" / f"{s}.jsonl")}


def _parsed(out: Path) -> dict[str, dict]:
    """Every report as parsed: the written records and the skipped ones (duplicates, no impression), whose
    record skipped.jsonl keeps."""
    kept = {x["data"]["id"]: x["data"] for x in _jsonl(out / "skipped.jsonl") if (x["data"] or {}).get("id")}
    return {**kept, **_records(out)}


@pytest.mark.parametrize("variant", ["default", "random"])
def test_messy_export_unaided(tmp_path, variant):
    src = tmp_path / "export.csv"
    gold = write_export(src, n_reports=200, seed=3, variant=variant)
    out = tmp_path / "out"
    assert _run(src, "--out", out) == 0
    recs, parsed = _records(out), _parsed(out)
    skipped = _jsonl(out / "skipped.jsonl")
    s = json.loads((out / "summary.json").read_text())

    both = [g for g in gold if g["both"] and g["readable"]]
    exact = sum(1 for g in both if (parsed[g["accession"]]["findings"], parsed[g["accession"]]["impression"])
                == (g["findings"], g["impression"]))
    assert exact / len(both) >= 0.98, f"{exact}/{len(both)} exactly right"
    # the indication is read from its headers (HISTORY, Clinical history, Reason for exam, ...)
    with_ind = [g for g in both if g["indication"]]
    assert sum(parsed[g["accession"]]["indication"] == g["indication"] for g in with_ind) >= 0.95 * len(with_ind)
    # signatures never reach a section used for training
    assert not any("signed by" in (r["impression"] + r["findings"]).lower() for r in recs.values())

    # patients: detected from the MRN column, never in two splits
    split_of: dict[str, set] = {}
    for r in recs.values():
        split_of.setdefault(r["patient_id"], set()).add(r["split"])
    assert split_of and all(len(v) == 1 for v in split_of.values())
    assert {r["patient_id"] for r in recs.values()} <= {g["mrn"] for g in gold}

    # every row accounted for: written + skipped == rows, and each skipped row named by its first line
    assert s["written"] == len(recs)
    assert s["items_read"] == len(gold) == s["written"] + s["skipped_total"]
    assert s["unreadable"] + s["parsed"] == s["items_read"]
    lines = {int(x["origin"].rsplit(":", 1)[1]) for x in skipped}
    for g in gold:
        if g["empty"] or not g["readable"]:
            assert g["row_line"] in lines, g
    for g in gold:
        if g["accession"] in recs:
            assert recs[g["accession"]]["origin"].endswith(f":{g['row_line']}")
    unreadable = [x for x in skipped if "not utf-8 or cp1252" in x["reason"]]
    assert len(unreadable) == sum(not g["readable"] for g in gold)
    assert all(x["reason"].startswith(f"line {x['origin'].rsplit(':', 1)[1]}:") for x in unreadable)
    # the detected mapping is in the summary
    cols = s["inputs"][0]["columns"]
    assert {"id", "patient_id", "text"} <= cols.keys()


def test_every_variant_is_read_without_flags(tmp_path):
    for variant in variant_names():
        src = tmp_path / f"{variant}.csv"
        gold = write_export(src, n_reports=60, seed=7, variant=variant)
        out = tmp_path / variant
        assert _run(src, "--out", out) == 0, variant
        parsed = _parsed(out)
        both = [g for g in gold if g["both"] and g["readable"]]
        exact = sum(1 for g in both if (parsed[g["accession"]]["findings"], parsed[g["accession"]]["impression"])
                    == (g["findings"], g["impression"]))
        assert exact >= len(both) - 2, (variant, exact, len(both))


def test_cp1252_rows_are_read_and_noted_per_row(tmp_path):
    src = tmp_path / "x.csv"
    text = ("AccessionNumber,PatientMRN,ReportText\r\n"
            "A1,M1,\"FINDINGS: Heart size normal.\xa0Lungs clear.\r\nIMPRESSION: Normal.\"\r\n"
            "A2,M2,\"FINDINGS: Small effusion.\r\nIMPRESSION: Effusion.\"\r\n")
    src.write_bytes(text.encode("cp1252"))
    out = tmp_path / "out"
    assert _run(src, "--out", out) == 0
    recs = _records(out)
    assert recs["A1"]["findings"] == "Heart size normal. Lungs clear."
    assert recs["A1"]["notes"] == ["line 2: not UTF-8 (byte 0xa0): read as cp1252"] and recs["A2"]["notes"] == []
    assert json.loads((out / "summary.json").read_text())["read_as_cp1252"] == 1
    # a named encoding is used as given
    assert _run(src, "--out", tmp_path / "o2", "encoding=cp1252") == 0
    assert _records(tmp_path / "o2")["A1"]["notes"] == []
    assert _run(src, "--out", tmp_path / "o3", "encoding=klingon") == 2


def test_no_patient_column_stops_with_one_line(tmp_path, capsys):
    src = tmp_path / "x.csv"
    src.write_text("AccessionNumber,ReportText\nA1,FINDINGS: Clear. IMPRESSION: Normal.\n")
    assert _run(src, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no patient column" in err and "columns.patient_id=NAME" in err and "split.by=report" in err
    assert not (tmp_path / "o").exists()  # nothing written before the question is answered
    assert _run(src, "--out", tmp_path / "o", "split.by=report") == 0
    assert json.loads((tmp_path / "o/summary.json").read_text())["split_by"] == "report"
    # a mapping given by the user is used, and case/spacing of names does not matter
    src2 = tmp_path / "y.csv"
    src2.write_text("Acc,Pt Number,Body Of Report\nA1,P1,FINDINGS: Clear.\nIMPRESSION: Normal.\n".replace(
        "Clear.\n", "Clear. "))
    assert _run(src2, "--out", tmp_path / "o4", "columns.patient_id=pt_number", "columns.text=Body of report",
                "columns.id=ACC") == 0
    assert _records(tmp_path / "o4")["A1"]["patient_id"] == "P1"


def test_existing_output_needs_force_and_force_removes_stale_files(tmp_path, capsys):
    src = tmp_path / "x.csv"
    write_export(src, n_reports=30, seed=1)
    out = tmp_path / "out"
    assert _run(src, "--out", out, "--for-inference") == 0
    assert (out / "for_inference.jsonl").exists()
    (out / "my-notes.txt").write_text("mine")
    assert _run(src, "--out", out) == 2
    assert "already holds prepared data" in capsys.readouterr().err and "--force" in capsys.readouterr().err + "--force"
    assert _run(src, "--out", out, "--force") == 0
    assert not (out / "for_inference.jsonl").exists()  # what the earlier run wrote is gone ...
    assert (out / "my-notes.txt").read_text() == "mine"  # ... and nothing else


def test_for_inference_keeps_findings_only_reports_and_ids(tmp_path):
    src = tmp_path / "x.csv"
    gold = write_export(src, n_reports=80, seed=2)
    out = tmp_path / "out"
    assert main(["prepare", str(src), "--out", str(out), "--for-inference", "--quiet"]) == 0
    rows = _jsonl(out / "for_inference.jsonl")
    with_findings = [g for g in gold if g["findings"] and g["readable"]]
    assert {r["id"] for r in rows} == {g["accession"] for g in with_findings}
    assert any(g["findings"] and not g["impression"] for g in with_findings)  # no impression yet: kept
    by_id = {r["id"]: r for r in rows}
    assert all(by_id[g["accession"]]["findings"] == g["findings"] for g in with_findings)
    # impress reads it as it is, ids kept
    pred = tmp_path / "pred.jsonl"
    assert main(["impress", str(out / "for_inference.jsonl"), "--model", "baseline:last-sentence",
                 "--out", str(pred)]) == 0
    assert [r["id"] for r in _jsonl(pred)] == [r["id"] for r in rows]


def test_pseudonymized_ids(tmp_path):
    src = tmp_path / "x.csv"
    gold = write_export(src, n_reports=60, seed=4)
    out = tmp_path / "out"
    assert _run(src, "--out", out, "pseudonymize=true") == 0
    recs = _records(out)
    real = ({g["accession"] for g in gold} | {g["mrn"] for g in gold}) - {""}
    assert recs and not (set(recs) & real)
    assert not ({r["patient_id"] for r in recs.values()} & real)
    text = "".join(p.read_text() for p in out.rglob("*.jsonl") if p.name != "skipped.jsonl")
    text += "".join(json.dumps(x) for x in _jsonl(out / "skipped.jsonl") if x["data"] and "id" in x["data"])
    assert not any(f'"{x}"' in text for x in real)  # rows that could not be read stay verbatim in skipped.jsonl
    with open(out / "id_map.csv", newline="") as f:
        mapping = {(r["kind"], r["original"]): r["pseudonym"] for r in csv.DictReader(f)}
    g = next(g for g in gold if g["accession"] in {o for (k, o) in mapping if k == "report"})
    assert mapping[("report", g["accession"])] in recs
    # a patient keeps one pseudonym across reports, and splits stay by patient
    pats = [mapping[("patient", g["mrn"])] for g in gold if ("patient", g["mrn"]) in mapping]
    assert len(set(pats)) < len(pats)
    # a second run uses a fresh key: pseudonyms cannot be matched across runs without the id maps
    assert _run(src, "--out", tmp_path / "again", "pseudonymize=true") == 0
    assert not (set(recs) & set(_records(tmp_path / "again")))


@pytest.mark.parametrize("text, findings, impression, indication", [
    ("Clinical history: cough\nFindings: Lungs clear.\nImpression: Normal.", "Lungs clear.", "Normal.", "cough"),
    ("history: fever\nfindings: lungs clear.\nimpression: normal.", "lungs clear.", "normal.", "fever"),
    ("FINDINGS - Lungs clear.\nIMPRESSION - Normal.", "Lungs clear.", "Normal.", ""),
    ("Findings\nLungs clear.\n\nImpression\nNormal.", "Lungs clear.", "Normal.", ""),
    ("IMPRESSION:\n1. Small effusion.\n2. No pneumothorax.\n\nFINDINGS:\nSmall left effusion.",
     "Small left effusion.", "1. Small effusion. 2. No pneumothorax.", ""),
    ("Findings: Clear.\nConclusion: Normal chest.", "Clear.", "Normal chest.", ""),
    ("Findings: Clear.\nOpinion: Normal chest.\nElectronically signed by: Dr. A Smith on 01/02/2021 10:30",
     "Clear.", "Normal chest.", ""),
    ("Reason for exam: r/o pna\nFindings: Clear.\nDictated by: B Jones\nImpression: Normal.\nSigned: C Doe MD",
     "Clear.", "Normal.", "r/o pna"),
    ("FINDINGS: LUNGS: Clear. HEART: Normal size.\nIMPRESSION: Normal.", "LUNGS: Clear. HEART: Normal size.",
     "Normal.", ""),
    ("INDICATION: Cough. FINDINGS: Clear. IMPRESSION: Normal. Electronically signed by Dr X.", "Clear.",
     "Normal.", "Cough."),
    ("CHEST 2 VIEWS\nThe lungs are clear.\n\nIMPRESSION: Normal.\n*** END OF REPORT ***", "The lungs are clear.",
     "Normal.", ""),
])
def test_hospital_header_forms(text, findings, impression, indication):
    r = parse_report(text)
    assert (r.findings, r.impression, r.indication) == (findings, impression, indication)


def test_signature_text_is_kept_apart_not_lost():
    r = parse_report("FINDINGS: Clear.\nIMPRESSION: Normal.\nElectronically signed by: Dr. A Smith\n01/02/2021 10:30")
    assert r.impression == "Normal."
    assert r.sections["signature"] == "Electronically signed by: Dr. A Smith 01/02/2021 10:30"


@pytest.mark.parametrize("text", [
    "FINDINGS:\\nLungs clear.\\n\\nIMPRESSION:\\nNormal.",                                   # escaped in a database dump
    "FINDINGS:<br>Lungs clear.<br/><br><b>IMPRESSION:</b><br>Normal.",                    # HTML from a web RIS
    "FINDINGS:\\.br\\Lungs clear.\\.br\\IMPRESSION: Normal.",                               # HL7 v2 OBX text
])
def test_line_breaks_written_as_something_else(text):
    r = parse_report(text)
    assert (r.findings, r.impression) == ("Lungs clear.", "Normal.") and r.notes


@pytest.mark.parametrize("header, found", [
    ("Acc No,Pt ID,Rpt Text", {"id": "Acc No", "patient_id": "Pt ID", "text": "Rpt Text"}),
    ("ACCESSION_NBR;MEDICAL RECORD NUMBER;REPORT_BODY", {"id": "ACCESSION_NBR", "patient_id": "MEDICAL RECORD NUMBER",
                                                        "text": "REPORT_BODY"}),
    ("StudyID\tPatient No\tNarrative", {"id": "StudyID", "patient_id": "Patient No", "text": "Narrative"}),
])
def test_export_column_names_are_detected(tmp_path, header, found):
    from radgpt.prepare.sources import ReadOptions, table_columns

    f = tmp_path / "x.csv"
    f.write_text(header + "\n")
    assert table_columns(f, ReadOptions()) == found


def test_excel_export(tmp_path):
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Accession Number", "MRN", "Exam Date", "Report Text"])
    ws.append([1001.0, 555001, "2024-01-02", "FINDINGS:\nLungs clear.\n\nIMPRESSION:\nNormal._x000D_"])
    ws.append([None, None, None, None])
    ws.append([1002.0, 555001, "2024-02-02", "Findings: Small left effusion.\nImpression: Left effusion."])
    ws.append([1003.0, 555002, "2024-02-03", "Findings: Clear.\nImpression: Normal.", "stray"])
    wb.save(tmp_path / "export.xlsx")
    out = tmp_path / "out"
    assert _run(tmp_path / "export.xlsx", "--out", out) == 0
    recs = _records(out)
    assert (recs["1001"]["findings"], recs["1001"]["impression"], recs["1001"]["patient_id"]) == (
        "Lungs clear.", "Normal.", "555001")
    assert recs["1002"]["impression"] == "Left effusion."
    skipped = {x["origin"].rsplit("!", 1)[1]: x["reason"] for x in _jsonl(out / "skipped.jsonl")}
    assert skipped == {"row 3": "row 3: empty row", "row 5": "row 5: values beyond the header's 4 columns"}


def test_report_text_with_an_impression_column_beside_it(tmp_path):
    src = tmp_path / "x.csv"
    src.write_text("Accession,MRN,ReportText,Impression\n"
                   "A1,M1,\"FINDINGS: Lungs clear.\nIMPRESSION: Normal.\",Normal.\n"
                   "A2,M2,FINDINGS: Small effusion.,Effusion.\n")
    out = tmp_path / "out"
    assert _run(src, "--out", out) == 0
    recs = _parsed(out)
    assert (recs["A1"]["findings"], recs["A1"]["impression"]) == ("Lungs clear.", "Normal.")
    assert (recs["A2"]["findings"], recs["A2"]["impression"]) == ("Small effusion.", "Effusion.")
    assert "impression from its own column" in recs["A2"]["notes"][-1]


def test_prepare_help_lists_every_columns_key_with_its_meaning(capsys):
    import dataclasses

    from radgpt.prepare.sources import ColumnMap

    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(ColumnMap):
        line = next((x for x in out.splitlines() if x.strip().startswith(f"columns.{f.name} =")), "")
        assert "—" in line, f"columns.{f.name} has no meaning in --help"
    assert "split.by = patient" in out and "encoding = auto" in out
