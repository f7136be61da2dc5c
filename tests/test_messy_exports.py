"""The messy-export generator itself (tests/messy_exports.py): deterministic, and its gold is true to its bytes.

Tests of `radgpt prepare` on these exports belong with the parser; these only check the yardstick.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.messy_exports import (
    export_info,
    generate,
    load_gold,
    load_reports,
    norm,
    variant_names,
    write_export,
)

HEADERISH = re.compile(r"\b(findings?|impressions?|conclusions?|opinion|summary|history|indications?|"
                       r"comparisons?|technique|exam|examination|procedure|reason for exam)\s*(:|-\s)", re.IGNORECASE)
SIGNATURE = re.compile(r"signed|dictated|transcribed|end of report|final report|radiologist|personally reviewed",
                       re.IGNORECASE)


def _rows(data: bytes, variant: str, seed: int):
    """(start line, fields, raw bytes of the row) for each data row; latin-1 keeps bytes and line ends 1:1."""
    info = export_info(variant, seed)
    text = data.decode("latin-1")
    text = text.removeprefix("\u00ef\u00bb\u00bf")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=info["delimiter"])
    header = next(reader)
    lines = data.split(b"\n")
    out, prev = [], reader.line_num
    for fields in reader:
        start, prev = prev + 1, reader.line_num
        raw = b"\n".join(lines[start - 1:prev])
        out.append((start, fields, raw))
    return info, header, out


@pytest.mark.parametrize("variant", variant_names())
def test_gold_matches_the_bytes(variant):
    data, gold = generate(120, seed=3, variant=variant)
    info, header, rows = _rows(data, variant, 3)
    assert len(rows) == len(gold)
    id_i, mrn_i, text_i = (header.index(info[k]) for k in ("id_column", "mrn_column", "text_column"))
    codec = "utf-8" if info["encoding"].startswith("utf-8") else "cp1252"
    for (line, fields, raw), g in zip(rows, gold):
        assert g["row_line"] == line
        assert len(fields) == len(header)
        if not g["readable"]:
            for enc in ("utf-8", "cp1252"):
                with pytest.raises(UnicodeDecodeError):
                    raw.decode(enc)
            continue
        fields = [f.encode("latin-1").decode(codec) for f in fields]
        assert fields[id_i] == g["accession"] and fields[mrn_i] == g["mrn"]
        body = norm(fields[text_i])
        assert (body == "") == g["empty"]
        for key in ("findings", "impression", "indication"):
            assert g[key] in body, (key, g[key], fields[text_i])
        assert g["both"] == bool(g["findings"] and g["impression"])


def test_deterministic_for_a_seed():
    assert generate(80, seed=5) == generate(80, seed=5)
    assert generate(80, seed=5)[0] != generate(80, seed=6)[0]
    assert generate(80, seed=5, variant="random") == generate(80, seed=5, variant="random")


def test_expected_texts_hold_no_headers_or_signatures():
    for variant in ("default", "random"):
        for seed in range(3):
            _, gold = generate(200, seed=seed, variant=variant)
            for g in gold:
                for key in ("findings", "impression", "indication"):
                    assert not HEADERISH.search(g[key]), (key, g[key])
                    assert not SIGNATURE.search(g[key]), (key, g[key])
                    assert g[key] == norm(g[key])


def test_default_export_is_a_windows_export():
    data, gold = generate(200, seed=0)
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    assert data.split(b"\r\n", 1)[0].startswith(b"AccessionNumber,PatientMRN,")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    assert 1 <= sum(not g["readable"] for g in gold) <= 2
    assert 1 <= sum(g["empty"] for g in gold) <= 2
    assert any(b in data for b in (b"\xa0", b"\x93", b"\x96", b"\xe9", b"\x92"))
    kinds = Counter((bool(g["findings"]), bool(g["impression"])) for g in gold if g["readable"] and not g["empty"])
    assert kinds[(True, True)] > 150 and kinds[(True, False)] and kinds[(False, True)]
    assert any(g["indication"] for g in gold)


def test_patients_have_several_exams():
    for variant in ("default", "random"):
        _, gold = generate(200, seed=1, variant=variant)
        per = Counter(g["mrn"] for g in gold if g["mrn"])
        assert 40 <= len(per) <= 80
        assert sum(n >= 2 for n in per.values()) >= 0.9 * len(per)
        assert max(per.values()) <= 7  # up to 6 exams, plus maybe one unreported exam
        assert len({g["accession"] for g in gold if g["accession"]}) == sum(bool(g["accession"]) for g in gold)


def test_column_names_vary_across_variants():
    infos = [export_info(v, s) for v in variant_names() for s in range(3)]
    assert len({i["text_column"] for i in infos}) >= 5
    assert len({i["mrn_column"] for i in infos}) >= 4
    assert len({i["id_column"] for i in infos}) >= 3


def test_write_export_and_fallback_texts(tmp_path: Path):
    gold = write_export(tmp_path / "x.csv", 30, seed=2, gold_path=tmp_path / "x.gold.json")
    assert load_gold(tmp_path / "x.gold.json") == gold
    assert (tmp_path / "x.csv").read_bytes() == generate(30, seed=2)[0]
    synthetic = load_reports(tmp_path / "missing.csv")
    assert synthetic and all(r["findings"] or r["impression"] for r in synthetic)
    _, gold = generate(40, seed=0, reports=synthetic)
    assert len(gold) == 40 and sum(g["both"] for g in gold) > 20
