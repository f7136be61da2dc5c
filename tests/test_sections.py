"""The section parser on the published MIMIC-CXR example and on hand-written reports, one per rule."""

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from radgpt.prepare.records import normalize_text
from radgpt.prepare.sections import canonical_header, parse_report

EXAMPLE = Path(__file__).resolve().parents[2] / "shared/data/mimic-cxr/example_report.txt"


def test_published_mimic_example():
    if not EXAMPLE.exists():
        import pytest
        pytest.skip("../shared/data/mimic-cxr/example_report.txt not present")
    r = parse_report(EXAMPLE.read_text())
    assert r.impression == "Large left pleural effusion"
    assert r.findings.startswith("Cardiac size cannot be evaluated. Large left pleural effusion is new.")
    assert r.findings.endswith("There are mild degenerative changes in the thoracic spine")
    # wrapped lines are joined, the PHI placeholder is unified
    assert "Small right effusion is new." in r.findings
    assert r.indication == "XXXX year old woman with ?pleural effusion // ?pleural effusion"
    assert r.comparison == "XXXX"
    assert r.sections["technique"] == "Chest PA and lateral"
    assert r.sections["examination"] == "CHEST (PA AND LAT)"
    assert r.notes == []


def test_addendum_on_top_is_separated():
    text = """                                 ADDENDUM
 Findings were discussed with Dr. ___ at 10:30 on ___.
 ______________________________________________________________________________
                                 FINAL REPORT
 FINDINGS:  No effusion.

 IMPRESSION:  Normal chest.
"""
    r = parse_report(text)
    assert r.sections["addendum"] == "Findings were discussed with Dr. XXXX at 10:30 on XXXX."
    assert r.findings == "No effusion."
    assert r.impression == "Normal chest."
    assert "addendum separated from the report" in r.notes


def test_header_variants_and_misspellings():
    for header in ("IMPRESSION", "CONCLUSION", "IMPRESSON", "IMPRESION", "IMPRESSIONS"):
        r = parse_report(f" FINDINGS: Lungs clear.\n {header}: No acute process.\n")
        assert r.impression == "No acute process.", header
        assert r.findings == "Lungs clear.", header
    assert canonical_header("FINDNGS") == "findings"
    assert canonical_header("INDICATION") == "indication"
    assert canonical_header("COMPARISON") == "comparison"


def test_history_headers_are_the_indication():
    for header in ("CLINICAL HISTORY", "HISTORY", "REASON FOR EXAM", "INDICATION"):
        r = parse_report(f" {header}: Cough and fever.\n FINDINGS: Clear.\n IMPRESSION: Normal.\n")
        assert r.indication == "Cough and fever.", header


def test_view_name_header_stands_in_for_findings():
    r = parse_report(" PA AND LATERAL VIEWS OF THE CHEST:  The lungs are clear.  No\n effusion.\n\n"
                     " IMPRESSION:  No acute process.\n")
    assert r.findings == "The lungs are clear. No effusion."
    assert r.impression == "No acute process."
    assert any("view header" in n for n in r.notes)


def test_exam_name_line_under_examination_is_not_findings():
    r = parse_report(" EXAMINATION:\n CHEST (PA AND LAT): ___ at 10 hours.\n FINDINGS: Clear.\n IMPRESSION: Normal.\n")
    assert r.findings == "Clear."
    assert r.sections["examination"].startswith("CHEST (PA AND LAT)")


def test_combined_findings_and_impression():
    for header in ("FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION"):
        r = parse_report(f" {header}:\n Heart normal.  Lungs clear.\n\n No acute disease.\n")
        assert r.findings == "Heart normal. Lungs clear.", header
        assert r.impression == "No acute disease.", header


def test_no_headers_falls_back_to_last_paragraph():
    r = parse_report(" Heart size normal.  Lungs\n clear.\n\n No acute cardiopulmonary process.\n")
    assert r.impression == "No acute cardiopulmonary process."
    assert r.findings == "Heart size normal. Lungs clear."
    assert any("last paragraph" in n for n in r.notes)


def test_inline_and_next_line_bodies_and_times_are_not_headers():
    r = parse_report(" FINDINGS:\n Tube seen at 10:30 today.\n IMPRESSION: Tube in place.\n")
    assert r.findings == "Tube seen at 10:30 today."


def test_unknown_header_does_not_leak_into_impression():
    r = parse_report(" FINDINGS: Clear.\n IMPRESSION: Normal.\n NOTIFICATION: Called Dr. ___.\n")
    assert r.impression == "Normal."
    assert r.sections["notification"] == "Called Dr. XXXX."


def test_phi_placeholders_are_unified():
    assert normalize_text("Dr. ___ on ____ said XXXX") == "Dr. XXXX on XXXX said XXXX"
    assert normalize_text("Normal chest x-XXXX.") == "Normal chest x-XXXX."
    assert normalize_text("seen by ___", phi_token="[PHI]") == "seen by [PHI]"


def test_empty_and_whitespace_reports():
    assert parse_report("").sections == {}
    assert parse_report("   \n \n").notes == ["empty report"]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parser_never_raises_on_any_text(text):
    r = parse_report(text)
    assert isinstance(r.findings, str) and isinstance(r.impression, str)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["FINDINGS:", "IMPRESSION:", "____________", "ADDENDUM", " ", "\n", "x",
                                 "FINAL REPORT", "PA VIEW:", "HISTORY:", "No effusion.", ":", "___"]), max_size=40))
def test_parser_never_raises_on_header_soup(parts):
    parse_report("\n".join(parts))
