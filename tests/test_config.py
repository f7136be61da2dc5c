"""Config layering: dataclass defaults ← YAML ← flags ← dotted overrides, and the errors for bad keys and
values."""

import argparse
from pathlib import Path

import pytest

from radgpt.cli import main
from radgpt.common.config import (
    ConfigError,
    add_config_flags,
    config_help,
    flag_values,
    load_config,
    split_overrides,
    write_resolved,
)
from radgpt.evaluate import cli as evaluate_cli
from radgpt.impress import cli as impress_cli
from radgpt.prepare.cli import PrepareConfig
from radgpt.study import cli as study_cli


def test_yaml_then_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("out: o1\nsplit:\n  seed: 5\n  train: 0.7\n  validate: 0.2\n  test: 0.1\ntasks: [findings_impression]\n")
    cfg = load_config(PrepareConfig, y, ["split.seed=9", "filters.max_findings_words=100", "tasks=a,b"])
    assert (cfg.out, cfg.split.seed, cfg.split.train) == ("o1", 9, 0.7)
    assert cfg.filters.max_findings_words == 100
    assert cfg.tasks == ["a", "b"]
    write_resolved(cfg, tmp_path)
    again = load_config(PrepareConfig, tmp_path / "config.yaml")
    assert again == cfg  # the resolved config reloads to the same run


def test_unknown_keys_list_close_matches(tmp_path):
    with pytest.raises(ConfigError, match="did you mean split.seed"):
        load_config(PrepareConfig, None, ["split.sed=1"])
    y = tmp_path / "c.yaml"
    y.write_text("filters:\n  min_findngs_words: 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'filters.min_findngs_words'.*min_findings_words"):
        load_config(PrepareConfig, y)


def test_bad_values_and_files(tmp_path):
    with pytest.raises(ConfigError, match="'split.seed' must be int"):
        load_config(PrepareConfig, None, ["split.seed=abc"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(PrepareConfig, None, ["split.seed"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(PrepareConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(PrepareConfig, bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(PrepareConfig, bad)


# --- one way to configure each verb: defaults ← --config YAML ← flags ← key=value --------------------------

def _resolve(module, argv):
    """The verb's parser as `radgpt VERB` builds it, then the verb's resolved config (no model, no work)."""
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    args, extra = p.parse_known_args(argv)
    args.inputs.extend(extra)
    return module.resolve_config(args)


def test_impress_config_yaml_flags_overrides(tmp_path):
    y = tmp_path / "impress.yaml"
    y.write_text("model: baseline:nearest\nshots: 2\nsimilar: 5\nbatch_size: 64\nrepair: true\n"
                 "field: inputs\ninputs: [from_yaml.jsonl]\n")
    cfg = _resolve(impress_cli, ["--config", str(y)])
    assert (cfg.model, cfg.shots, cfg.similar, cfg.batch_size, cfg.repair, cfg.inputs) == \
        ("baseline:nearest", 2, 5, 64, True, ["from_yaml.jsonl"])
    # flags over the YAML; a flag not given keeps the YAML's value (shots stays 2, not the flag's default)
    cfg = _resolve(impress_cli, ["a.jsonl", "--config", str(y), "--similar", "1", "--no-repair",
                                 "--batch-size", "8"])
    assert (cfg.similar, cfg.repair, cfg.batch_size, cfg.shots, cfg.field) == (1, False, 8, 2, "inputs")
    assert cfg.inputs == ["a.jsonl"]  # positional inputs replace the YAML's
    # key=value over the flags, wherever it stands on the line
    cfg = _resolve(impress_cli, ["a.jsonl", "similar=4", "--config", str(y), "--similar", "1", "repair=true",
                                 "max_new_tokens=32"])
    assert (cfg.similar, cfg.repair, cfg.max_new_tokens, cfg.inputs) == (4, True, 32, ["a.jsonl"])


def test_impress_findings_with_an_equals_sign_stay_findings(tmp_path):
    cfg = _resolve(impress_cli, ["LVEF=55%. Lungs are clear.", "shots=1"])
    assert cfg.inputs == ["LVEF=55%. Lungs are clear."] and cfg.shots == 1
    odd = tmp_path / "a=b.txt"
    odd.write_text("x\n")
    assert split_overrides([str(odd), "lvef=55% lungs clear"], impress_cli.ImpressConfig) == \
        ([str(odd), "lvef=55% lungs clear"], [])
    long_text = "lvef=55%. " + "Lungs are clear. " * 30  # longer than a file name may be: no OSError
    assert split_overrides([long_text, "shots=2"], impress_cli.ImpressConfig) == ([long_text], ["shots=2"])


def test_impress_unknown_key_and_bad_value(tmp_path, capsys):
    assert main(["impress", "Lungs clear.", "--model", "baseline:normal", "shot=3"]) == 2
    assert "unknown config key 'shot'; did you mean shots" in capsys.readouterr().err
    y = tmp_path / "c.yaml"
    y.write_text("batch_sise: 3\n")
    assert main(["impress", "Lungs clear.", "--config", str(y)]) == 2
    assert "c.yaml: unknown config key 'batch_sise'; did you mean batch_size" in capsys.readouterr().err
    assert main(["impress", "Lungs clear.", "--model", "baseline:normal", "preset=beams"]) == 2
    assert "preset 'beams': choose from greedy" in capsys.readouterr().err
    y.write_text("similar: many\n")
    assert main(["impress", "Lungs clear.", "--config", str(y)]) == 2
    assert "'similar' must be int" in capsys.readouterr().err


def test_impress_runs_from_a_yaml_config(tmp_path):
    inp = tmp_path / "f.jsonl"
    inp.write_text('{"idx": 7, "inputs": "Heart size normal. Lungs are clear."}\n')
    out = tmp_path / "o.jsonl"
    y = tmp_path / "c.yaml"
    y.write_text(f"inputs: [{inp}]\nfield: inputs\nid_field: idx\nmodel: baseline:last-sentence\nout: {out}\n"
                 "with_findings: true\n")
    assert main(["impress", "--config", str(y)]) == 0
    line = out.read_text().splitlines()
    assert len(line) == 1 and '"id": "7"' in line[0] and '"findings": "Heart size normal.' in line[0]


def test_shipped_example_configs_load():
    configs = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config(impress_cli.ImpressConfig, configs / "impress-batch.yaml")
    assert cfg.field == "inputs" and cfg.batch_size == 512
    study = load_config(study_cli.StudyConfig, configs / "study.yaml")
    assert study.create.n_cases == 50 and study.create.seed is None and study.serve.host == "127.0.0.1"


def test_impress_config_choices_match_the_code():
    from radgpt.impress.load import BACKENDS
    from radgpt.runs.decoding import PRESETS

    p = argparse.ArgumentParser()
    impress_cli.add_arguments(p)
    choices = {a.dest: a.choices for a in p._actions}
    assert choices["config:backend"] == list(BACKENDS) and choices["config:preset"] == sorted(PRESETS)


def test_evaluate_config_yaml_flags_overrides(tmp_path):
    y = tmp_path / "e.yaml"
    y.write_text("refs: r.jsonl\npred: [a=a.jsonl, b=b.jsonl]\nmetrics: [rouge, bleu]\nbootstrap: 50\n"
                 "html: false\n")
    cfg = _resolve(evaluate_cli, ["--config", str(y)])
    assert (cfg.refs, cfg.pred, cfg.metrics, cfg.bootstrap, cfg.html) == \
        ("r.jsonl", ["a=a.jsonl", "b=b.jsonl"], ["rouge", "bleu"], 50, False)
    cfg = _resolve(evaluate_cli, ["--config", str(y), "--pred", "c=c.jsonl", "--metrics", "rouge,embedding",
                                  "--bootstrap", "20"])
    assert (cfg.pred, cfg.metrics, cfg.bootstrap, cfg.refs) == \
        (["c=c.jsonl"], ["rouge", "embedding"], 20, "r.jsonl")
    cfg = _resolve(evaluate_cli, ["--config", str(y), "--bootstrap", "20", "bootstrap=7", "html=true"])
    assert (cfg.bootstrap, cfg.html) == (7, True)
    with pytest.raises(ConfigError, match="unknown config key 'bootstrp'; did you mean bootstrap"):
        _resolve(evaluate_cli, ["--config", str(y), "bootstrp=7"])


def test_evaluate_needs_refs_and_preds(capsys):
    assert main(["evaluate", "--pred", "x.jsonl"]) == 2
    assert "no references: pass --refs" in capsys.readouterr().err
    assert main(["evaluate", "--refs", "r.jsonl"]) == 2
    assert "no predictions: pass --pred" in capsys.readouterr().err


def test_study_config_sections_flags_overrides(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text("db: study.db\ncreate:\n  references: r.jsonl\n  predictions: [a=a.jsonl]\n  n_cases: 10\n"
                 "serve:\n  port: 9000\n  sqlite_sync: normal\nanalyze:\n  out: rep\n")
    cfg = _resolve(study_cli, ["serve", "--config", str(y)])
    assert (cfg.db, cfg.serve.port, cfg.serve.sqlite_sync, cfg.serve.host) == \
        ("study.db", 9000, "normal", "127.0.0.1")
    cfg = _resolve(study_cli, ["serve", "--config", str(y), "--port", "9001", "--db", "other.db"])
    assert (cfg.serve.port, cfg.db) == (9001, "other.db")
    cfg = _resolve(study_cli, ["serve", "--config", str(y), "--port", "9001", "serve.port=9002"])
    assert cfg.serve.port == 9002
    # overrides after --predictions (which takes several values) are overrides, not model files
    cfg = _resolve(study_cli, ["create", "--config", str(y), "--predictions", "b=b.jsonl", "c.jsonl",
                               "create.n_cases=20"])
    assert (cfg.create.predictions, cfg.create.n_cases, cfg.create.references) == \
        (["b=b.jsonl", "c.jsonl"], 20, "r.jsonl")
    cfg = _resolve(study_cli, ["add-reader", "alice", "--config", str(y)])
    assert cfg.db == "study.db"
    with pytest.raises(ConfigError, match="unknown config key 'serve.prot'; did you mean serve.port"):
        _resolve(study_cli, ["serve", "--config", str(y), "serve.prot=1"])
    with pytest.raises(ConfigError, match="'serve.sqlite_sync' must be one of"):
        _resolve(study_cli, ["serve", "--config", str(y), "serve.sqlite_sync=off"])


def test_study_required_settings_come_from_flags_or_yaml(tmp_path, capsys):
    assert main(["study", "analyze", "--out", str(tmp_path / "r")]) == 2
    assert "no study database: pass --db" in capsys.readouterr().err
    assert main(["study", "analyze", "--db", str(tmp_path / "s.db")]) == 2
    assert "analyze: pass --out DIR (or analyze.out in the --config YAML)" in capsys.readouterr().err


def test_help_shows_field_comments(capsys):
    for argv, comment in [(["impress", "--help"], "OpenI validate: 5.1 impressions/s at 512"),
                          (["evaluate", "--help"], "bootstrap resamples for the CIs"),
                          (["study", "create", "--help"], "WEAKENS BLINDING"),
                          (["study", "serve", "--help"], "every rating fsynced")]:
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
        assert comment in text, argv
        assert "defaults ← --config YAML ← flags ← key=value overrides" in text, argv
        assert "(config key)" not in text, argv  # every flag's placeholder was replaced by its comment


def test_config_flags_helper():
    import dataclasses

    @dataclasses.dataclass
    class Demo:
        count: int = 3  # how many
        keep: bool = True  # false (--no-keep): throw them away
        tags: list[str] = dataclasses.field(default_factory=list)  # labels
        hidden: str = ""  # YAML only

    p = argparse.ArgumentParser()
    flags = add_config_flags(p, Demo, flags={"hidden": None})
    assert flags == {"count": "--count", "keep": "--no-keep", "tags": "--tags"}
    assert flag_values(p.parse_args([])) == {}  # flags not given leave nothing to override the YAML with
    assert flag_values(p.parse_args(["--count", "5", "--no-keep", "--tags", "a", "--tags", "b"])) == \
        {"count": 5, "keep": False, "tags": ["a", "b"]}
    with pytest.raises(SystemExit):
        p.parse_args(["--hidden", "x"])
    text = config_help(Demo(), flags=flags)
    assert "hidden = \"\"  — YAML only" in text and "count, keep, tags" in text
    assert "false (--no-keep)" not in p.format_help() and "throw them away" in p.format_help()


def test_prepare_out_and_out_key_must_agree(tmp_path, capsys):
    src = tmp_path / "r.csv"
    src.write_text("id,patient_id,findings,impression\n1,p1,Lungs clear.,Normal.\n")
    assert main(["prepare", str(src), "--out", str(tmp_path / "a"), f"out={tmp_path / 'b'}", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "name different output folders" in err and "--out DIR" in err and not (tmp_path / "a").exists()
    assert main(["prepare", str(src), "--out", str(tmp_path / "a"), f"out={tmp_path / 'a'}/", "--quiet"]) == 0
    assert (tmp_path / "a" / "config.yaml").is_file()
    assert main(["prepare", str(src), f"out={tmp_path / 'c'}", "--quiet"]) == 0  # the alias alone
    assert (tmp_path / "c" / "summary.json").is_file()


def test_prepare_follows_the_one_precedence_defaults_yaml_flags_overrides(tmp_path, monkeypatch):
    """prepare's flags sit between its YAML and key=value overrides, as for every other verb."""
    import radgpt.prepare.cli as prepare_cli
    from radgpt.cli import main

    seen = {}

    def fake_prepare(cfg, console, force=False):
        seen["cfg"] = cfg
        return {"written": 1}

    monkeypatch.setattr(prepare_cli, "prepare", fake_prepare)
    monkeypatch.setattr(prepare_cli, "print_summary", lambda summary, console: None)
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text("source: csv\nsplit:\n  file: from-yaml.csv\n")
    assert main(["prepare", "r.jsonl", "--config", str(yaml_file), "--quiet"]) == 0
    assert seen["cfg"].source == "csv" and seen["cfg"].split.file == "from-yaml.csv"  # YAML over defaults
    assert main(["prepare", "r.jsonl", "--config", str(yaml_file), "--source", "jsonl", "--split-file", "f.csv",
                 "--quiet"]) == 0
    assert seen["cfg"].source == "jsonl" and seen["cfg"].split.file == "f.csv"  # flags over YAML
    assert main(["prepare", "r.jsonl", "--config", str(yaml_file), "--source", "jsonl", "source=openi",
                 "--for-inference", "--quiet"]) == 0
    assert seen["cfg"].source == "openi" and seen["cfg"].for_inference  # overrides over flags
    assert main(["prepare", "r.jsonl", "--out", str(tmp_path / "a"), f"out={tmp_path / 'b'}", "--quiet"]) == 2
