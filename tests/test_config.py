"""Config layering: dataclass defaults ← YAML ← dotted overrides, and the errors for bad keys/values."""

import pytest

from radgpt.common.config import ConfigError, load_config, write_resolved
from radgpt.prepare.cli import PrepareConfig


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
