"""`radgpt label`: stdin one report per line, indications left out unless asked, hospital column names,
cp1252 CSVs read with a warning, errors that name the file and field."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from radgpt.cli import main

REPORT = "INDICATION: Rule out pneumonia.\nFINDINGS: Lungs are clear.\nIMPRESSION: Normal chest."


def _stdin(monkeypatch, text: str | bytes) -> None:
    data = text.encode("utf-8") if isinstance(text, str) else text
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def _jsonl(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def _hospital_csv(path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["AccessionNumber", "ReportText"])
        writer.writerow(["ACC001", REPORT])
        writer.writerow(["ACC002", "FINDINGS: Small right pleural effusion.\nIMPRESSION: Effusion."])
    return path


def test_stdin_is_one_report_per_line(monkeypatch, capsys):
    _stdin(monkeypatch, "No pleural effusion.\n\nRight lower lobe pneumonia.\r\nThe heart is enlarged.\n")
    assert main(["label", "-"]) == 0
    rows = _jsonl(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert rows[0]["labels"]["Pleural Effusion"] == "negative"
    assert rows[1]["labels"]["Pneumonia"] == "positive"
    assert rows[2]["labels"]["Cardiomegaly"] == "positive"


def test_stdin_through_the_installed_command():
    exe = Path(sys.executable).with_name("radgpt")
    if not exe.exists():
        pytest.skip("radgpt console script not installed next to this python")
    done = subprocess.run([str(exe), "label", "-"], input="No effusion.\nPneumothorax.\nNormal chest.\n",
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3
    assert "labelled 3 reports" in done.stderr


def test_indication_is_not_labelled_by_default(tmp_path, capsys):
    src = _hospital_csv(tmp_path / "export.csv")
    assert main(["label", str(src)]) == 0
    captured = capsys.readouterr()
    rows = _jsonl(captured.out)
    assert [r["id"] for r in rows] == ["ACC001", "ACC002"]
    assert rows[0]["labels"]["Pneumonia"] == "not_mentioned"
    assert rows[0]["labels"]["No Finding"] == "positive"
    assert rows[1]["labels"]["Pleural Effusion"] == "positive"
    assert "indication left out of 1" in captured.err


def test_with_indication_labels_the_question(tmp_path, capsys):
    src = _hospital_csv(tmp_path / "export.csv")
    out = tmp_path / "labels.csv"
    assert main(["label", str(src), "--with-indication", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    assert rows[0]["id"] == "ACC001" and rows[0]["Pneumonia"] == "-1"  # "rule out pneumonia" is uncertain
    assert rows[1]["Pleural Effusion"] == "1"


def test_structured_columns_exclude_the_indication_unless_asked(tmp_path, capsys):
    src = tmp_path / "s.csv"
    src.write_text("Study_ID,Indication,Findings,Impression\n"
                   "s1,Rule out pneumonia.,Lungs are clear.,Normal chest.\n", encoding="utf-8")
    assert main(["label", str(src)]) == 0
    row = _jsonl(capsys.readouterr().out)[0]
    assert row["id"] == "s1" and row["labels"]["Pneumonia"] == "not_mentioned"
    assert main(["label", str(src), "--with-indication"]) == 0
    assert _jsonl(capsys.readouterr().out)[0]["labels"]["Pneumonia"] == "uncertain"


def test_a_report_without_findings_or_impression_is_labelled_whole_with_a_warning(tmp_path, capsys):
    src = tmp_path / "r.jsonl"
    src.write_text(json.dumps({"id": "x", "text": "INDICATION: cough\nRight lower lobe pneumonia."}) + "\n",
                   encoding="utf-8")
    assert main(["label", str(src)]) == 0
    captured = capsys.readouterr()
    assert _jsonl(captured.out)[0]["labels"]["Pneumonia"] == "positive"
    assert "whole text was labelled" in captured.err and f"{src}:1" in captured.err


@pytest.mark.parametrize("id_col,text_col", [
    ("Accession Number", "Report Text"), ("accession", "report_text"), ("Accession #", "Narrative"),
    ("STUDY_ID", "REPORT"), ("uid", "Text"),
])
def test_hospital_column_names(tmp_path, capsys, id_col, text_col):
    src = tmp_path / "h.csv"
    with open(src, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([[id_col, "Other", text_col], ["A7", "x", "Moderate cardiomegaly."]])
    assert main(["label", str(src)]) == 0
    row = _jsonl(capsys.readouterr().out)[0]
    assert row["id"] == "A7" and row["labels"]["Cardiomegaly"] == "positive"


def test_explicit_field_names_match_loosely(tmp_path, capsys):
    src = tmp_path / "h.csv"
    src.write_text("Acc No,Body\nZ1,Small pneumothorax.\n", encoding="utf-8")
    assert main(["label", str(src), "--fields", "body", "--id-field", "acc_no"]) == 0
    row = _jsonl(capsys.readouterr().out)[0]
    assert row["id"] == "Z1" and row["labels"]["Pneumothorax"] == "positive"


def test_utf8_bom_is_not_part_of_the_first_column(tmp_path, capsys):
    src = tmp_path / "bom.csv"
    src.write_bytes("\ufeffAccessionNumber,ReportText\nB1,No effusion.\n".encode("utf-8"))
    assert main(["label", str(src)]) == 0
    captured = capsys.readouterr()
    assert _jsonl(captured.out)[0]["id"] == "B1" and "warning" not in captured.err


def test_cp1252_csv_is_read_with_a_warning(tmp_path, capsys):
    src = tmp_path / "windows.CSV"
    src.write_bytes(b"AccessionNumber,ReportText\r\n"
                    b"W1,No pleural effusion.\r\n"
                    b"W2,Heart size\xa0is enlarged \x96 moderate.\r\n")
    assert main(["label", str(src)]) == 0
    captured = capsys.readouterr()
    rows = _jsonl(captured.out)
    assert [r["id"] for r in rows] == ["W1", "W2"]
    assert rows[1]["labels"]["Cardiomegaly"] == "positive"
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert str(src) in warnings[0] and "cp1252" in warnings[0] and "line 3" in warnings[0]


def test_text_that_is_neither_utf8_nor_cp1252_is_an_error(tmp_path, capsys):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"No effusion.\n\x81\x8d\n")
    assert main(["label", str(src)]) == 2
    err = capsys.readouterr().err
    assert f"{src}:2" in err and "UTF-8" in err and "Traceback" not in err


@pytest.mark.parametrize("content,argv,needle", [
    ("AccessionNumber,Comments\n1,x\n", [], "no report text field"),
    ("id,report\n1,x\n", ["--fields", "findings"], "no field findings"),
    ("id,report\n1,x\n", ["--id-field", "mrn"], "no id field mrn"),
    ("id,report\n1,x,y\n", [], "quote fields that contain commas"),
])
def test_errors_name_the_file_and_field(tmp_path, capsys, content, argv, needle):
    src = tmp_path / "bad.csv"
    src.write_text(content, encoding="utf-8")
    assert main(["label", str(src), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(src) in err and needle in err, err


def test_non_text_field_is_an_error(tmp_path, capsys):
    src = tmp_path / "r.jsonl"
    src.write_text(json.dumps({"id": 1, "report": "No effusion."}) + "\n" + json.dumps({"id": 2, "report": 5}) + "\n",
                   encoding="utf-8")
    assert main(["label", str(src)]) == 2
    err = capsys.readouterr().err
    assert f"{src}:2" in err and "'report'" in err


def test_help_describes_stdin_and_indication(capsys):
    with pytest.raises(SystemExit):
        main(["label", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "one report per line" in out and "--with-indication" in out
