"""Sharing a run without its reports: `radgpt export --format adapter --without-cases | --pseudonymize-ids`,
and impress on a shared folder that has no cases."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path

import pytest
import yaml

from radgpt.cli import main
from radgpt.common.errors import FatalError
from radgpt.export.engines import export_run
from radgpt.export.share import pseudonym, share_run
from radgpt.impress.load import load_model
from radgpt.runs.folders import SHARE_MANIFEST

REPO = Path(__file__).resolve().parents[1]

CASES = [  # distinctive text, so that a copy anywhere in the shared folder is found
    {"id": "ACC-7731-0001", "findings": "Zebra-striped opacity in the left apex measuring 31 mm, unchanged.",
     "impression": "Stable apical zebra lesion, see prior."},
    {"id": "ACC-7731-0002", "findings": "Quokka-shaped density projecting over the right hilum.",
     "impression": "Right hilar quokka density, recommend CT."},
    {"id": "ACC-7731-0002", "findings": "Second report under the same accession, wombat pattern at both bases.",
     "impression": "Bibasilar wombat pattern."},
    {"id": "ACC-7731-0003", "findings": "Heart size normal. Lungs clear. No effusion, no pneumothorax here.",
     "impression": "No acute disease in this platypus case."},
]
VAL = {"id": "ACC-9999-0042", "impression": "No acute disease.", "reference": "Echidna-like nodule, follow up."}
SECRET_PATHS = ("/srv/st-elsewhere", "/home/dr-x")


def fake_run(root: Path, k: int = 2, readme: bool = True) -> Path:
    """A run folder with tiny stand-in files: enough for export --format adapter and impress's checks."""
    from radgpt.runs.prompts import PromptTemplate

    run = root / "run"
    (run / "checkpoints" / "step-000001").mkdir(parents=True)
    (run / "checkpoints" / "step-000001" / "trainer_state.pt").write_bytes(b"state")
    (run / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    (run / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "base_model_name_or_path": "/home/dr-x/models/base"}))
    train = root / "train.jsonl"  # the training file config.yaml names: impress must not fall back to it
    train.write_text("".join(json.dumps(c) + "\n" for c in CASES))
    (run / "config.yaml").write_text(yaml.safe_dump({
        "out": "/srv/st-elsewhere/runs/r1", "model": {"base": "hub-org/tiny-base"},
        "lora": {"r": 4, "init_from": "/srv/st-elsewhere/runs/r0"},
        "data": {"train": str(train), "validate": "/srv/st-elsewhere/val.jsonl", "template": "chatml-cases",
                 "retrieval_k": k}}, sort_keys=False))
    PromptTemplate.load("chatml-cases").save(run)
    (run / "tokenizer.json").write_text("{}")
    (run / "tokenizer_config.json").write_text("{}")
    (run / "retrieval_cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CASES))
    (run / "val_predictions.jsonl").write_text(json.dumps(VAL) + "\n")
    (run / "val_metrics.json").write_text(json.dumps({"rougeL": 50.0}))
    (run / "train_log.csv").write_text("step,loss\n1,2.5\n")
    (run / "notes.txt").write_text("scratch notes, not a radgpt file")
    if readme:
        (run / "README.md").write_text("# my-run\n\nLicence: internal use only.\n\n## What this folder contains\n\n"
                                       "old list\n\n## Limits\n\nSmall model.\n")
    return run


def all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_shared_folder_holds_no_report_text_ids_or_data_paths(tmp_path, capsys):
    run = fake_run(tmp_path)
    out = tmp_path / "share"
    assert main(["export", str(run), "--format", "adapter", "--without-cases", "--out", str(out)]) == 0
    assert Path(capsys.readouterr().out.strip().splitlines()[-1]) == out
    names = {p.name for p in out.iterdir()}
    assert names == {"adapter_model.safetensors", "adapter_config.json", "config.yaml", "prompt_template.json",
                     "tokenizer.json", "tokenizer_config.json", "README.md", "val_metrics.json", "train_log.csv",
                     SHARE_MANIFEST}
    blob = all_bytes(out)
    for c in CASES:
        for text in (c["findings"], c["impression"], c["id"]):
            assert text.encode() not in blob, text
    for text in (VAL["reference"], VAL["id"], *SECRET_PATHS):
        assert text.encode() not in blob, text
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["out"] is None and cfg["data"]["train"] is None and cfg["data"]["validate"] is None
    assert cfg["lora"]["init_from"] is None and cfg["data"]["retrieval_k"] == 2
    assert cfg["model"]["base"] == "hub-org/tiny-base"  # kept: inference needs it
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "hub-org/tiny-base"
    manifest = json.loads((out / SHARE_MANIFEST).read_text())
    assert manifest["cases"] == "left out" and manifest["cases_in_folder"] == 0
    assert set(manifest["left_out"]) == {"retrieval_cases.jsonl", "val_predictions.jsonl", "checkpoints/", "notes.txt"}
    assert set(manifest["files"]) == names
    assert {"out", "data.train", "data.validate", "lora.init_from"} <= set(manifest["paths_removed"])
    card = (out / "README.md").read_text()
    assert "Licence: internal use only." in card and "## Limits\n\nSmall model." in card  # the rest is the author's
    assert card.count("## What this folder contains") == 1 and "old list" not in card
    assert "--cases FILE.jsonl" in card and "| `adapter_model.safetensors` |" in card
    assert (run / "retrieval_cases.jsonl").exists() and (run / "val_predictions.jsonl").exists()  # source untouched


def test_impress_on_a_folder_shared_without_cases_asks_for_cases(tmp_path, capsys):
    run = fake_run(tmp_path)
    out = share_run(run, tmp_path / "share", "omit", log=lambda *a: None)
    assert main(["impress", "Heart size normal.", "--model", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pass --cases FILE.jsonl" in err and "prior reports" in err
    # even with the training file named again in its config, a shared folder never retrieves from it
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    cfg["data"]["train"] = str(tmp_path / "train.jsonl")
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(FatalError, match="pass --cases FILE.jsonl"):
        load_model(str(out))
    # a run folder (not shared) that lost its cases still finds the file it was trained on (unchanged)
    (run / "retrieval_cases.jsonl").unlink()
    from radgpt.runs.run import RunFolder

    index = RunFolder(run).case_index()
    assert index is not None and len(index.cases) == len(CASES)
    assert RunFolder(out).case_index() is None


def test_pseudonymized_ids_are_keyed_stable_and_mapped_outside_the_folder(tmp_path, monkeypatch):
    import secrets

    key = bytes(range(32))
    monkeypatch.setattr(secrets, "token_bytes", lambda n: key)
    run = fake_run(tmp_path)
    out, id_map = tmp_path / "share", tmp_path / "ids.json"
    assert main(["export", str(run), "--format", "adapter", "--pseudonymize-ids", "--id-map", str(id_map),
                 "--out", str(out)]) == 0
    shared = [json.loads(x) for x in (out / "retrieval_cases.jsonl").read_text().splitlines()]
    assert [(c["findings"], c["impression"]) for c in shared] == [(c["findings"], c["impression"]) for c in CASES]
    ids = [c["id"] for c in shared]
    assert not {c["id"] for c in CASES} & set(ids)
    assert ids[1] == ids[2] and len(set(ids)) == 3  # one accession, one pseudonym
    mapping = json.loads(id_map.read_text())
    assert [mapping[c["id"]] for c in CASES] == ids
    for c, new in zip(CASES, ids):  # HMAC-SHA256 under the key; plain or unkeyed hashes do not give it
        assert new == hmac.new(key, c["id"].encode(), hashlib.sha256).hexdigest()[:16]
        assert new not in (hashlib.sha256(c["id"].encode()).hexdigest()[:16],
                           hmac.new(b"", c["id"].encode(), hashlib.sha256).hexdigest()[:16])
    blob = all_bytes(out)
    assert key not in blob and key.hex().encode() not in blob and b"ACC-7731" not in blob
    assert json.loads((out / SHARE_MANIFEST).read_text())["cases"] == "ids pseudonymised"
    # the next export draws a new key: its pseudonyms cannot be linked to these
    monkeypatch.undo()
    again = share_run(run, tmp_path / "share2", "pseudonymize", log=lambda *a: None)
    ids2 = [json.loads(x)["id"] for x in (again / "retrieval_cases.jsonl").read_text().splitlines()]
    assert not set(ids2) & set(ids) and ids2[1] == ids2[2]
    assert pseudonym(key, "x") != pseudonym(bytes(32), "x")


def test_share_refusals(tmp_path, capsys):
    run = fake_run(tmp_path)
    share = str(tmp_path / "share")
    cases = [
        (["--format", "adapter", "--id-map", str(tmp_path / "m.json"), "--out", share], "--id-map goes with"),
        (["--format", "adapter", "--pseudonymize-ids", "--id-map", share + "/m.json", "--out", share],
         "outside the shared folder"),
        (["--format", "adapter", "--out", str(run / "inside")], "outside the run folder"),
        (["--format", "adapter", "--without-cases"], "--out"),
        (["--without-cases"], "--out"),  # an engine export to share is not written into the cache
        (["--format", "adapter", "--quantization", "q8_0", "--out", share], "--quantization is for"),
    ]
    for args, message in cases:
        assert main(["export", str(run), *args]) == 2, args
        assert message in capsys.readouterr().err, args
    assert main(["export", str(run), "--format", "adapter", "--without-cases", "--out", share]) == 0
    assert main(["export", str(run), "--format", "adapter", "--out", share]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "adapter", "--out", share, "--force"]) == 0
    assert (Path(share) / "retrieval_cases.jsonl").exists()  # included unless --without-cases, and said so
    assert "holds 4 training reports verbatim" in capsys.readouterr().out


def test_a_run_without_model_card_gets_one_listing_its_files(tmp_path):
    run = fake_run(tmp_path, readme=False)
    out = share_run(run, tmp_path / "share", "omit", log=lambda *a: None)
    card = (out / "README.md").read_text()
    assert card.startswith("# run\n") and "## What this folder contains" in card
    for name in ("adapter_config.json", "config.yaml", "prompt_template.json", SHARE_MANIFEST, "README.md"):
        assert f"`{name}`" in card or name in card, name


def test_the_shipped_model_card_lists_every_file_of_its_folder():
    folder = REPO / "models/radgpt-smollm2-135m"
    card = (folder / "README.md").read_text()
    section = card.split("## What this folder contains", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`([^`]+)`", "\n".join(x.split("|")[1] for x in section.splitlines()
                                                     if x.startswith("| `"))))
    assert {p.name for p in folder.iterdir()} <= listed
    assert "CC BY-NC-ND 4.0" in card


def test_shared_tiny_run_impresses_with_the_users_cases(tiny_run, tmp_path):
    from radgpt.runs.decoding import Decoding

    out = share_run(tiny_run, tmp_path / "share", "omit", log=lambda *a: None)
    # tiny_run's config names the repo's OpenI train file: a shared folder must not fall back to it
    with pytest.raises(FatalError, match="pass --cases FILE.jsonl"):
        load_model(str(out), backend="transformers")
    cases = tmp_path / "mine.jsonl"
    cases.write_text("".join(json.dumps(c) + "\n" for c in CASES))
    model = load_model(str(out), backend="transformers", cases=str(cases))
    assert model.shots == 2 and len(model.index.cases) == len(CASES)
    [res] = model.impress(["Heart size normal. Lungs clear."], Decoding(max_new_tokens=4), similar=2, repair=False)
    assert {c.id for c in res.similar_cases} <= {c["id"] for c in CASES} and len(res.shot_ids) == 2


def test_engine_export_without_cases(tiny_run, tmp_path):
    out = export_run(tiny_run, tmp_path / "ct2", log=lambda *a: None, cases="omit")
    assert not (out / "retrieval_cases.jsonl").exists() and (out / "model.bin").exists()
    assert json.loads((out / SHARE_MANIFEST).read_text())["cases"] == "left out"
    assert json.loads((out / "radgpt_export.json").read_text())["source_run"] == Path(tiny_run).resolve().name
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["train"] is None and cfg["out"] is None
    assert str(Path(tiny_run).resolve()).encode() not in all_bytes(out)  # the run's own path (out=, source_run)
    assert b"clin-summ" not in (out / "config.yaml").read_bytes()  # data.train / data.validate
    with pytest.raises(FatalError, match="pass --cases FILE.jsonl"):
        load_model(str(out))
