"""Test-wide guards (never touch a hub, never open a socket off this machine) and the fixtures that more
than one test module uses. Helpers that build things live in modules beside this one (tiny_model.py,
report_fixtures.py, mimic_tree.py, messy_exports.py); no test module imports another."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_OPENI = SHARED / "data" / "openi"
ASSETS = Path(__file__).resolve().parent / "assets"
TRAIN = REPO / "data/openi/clin-summ/train.jsonl"  # bundled with the repo: needs no ../shared


def _is_local(address) -> bool:
    if isinstance(address, tuple):
        host = address[0]
    else:
        return True  # AF_UNIX paths
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname that is not localhost would need DNS: refuse


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self, address):
    if not _is_local(address):
        raise RuntimeError(f"test tried to reach the network: {address!r} (only loopback is allowed)")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_local(address):
        raise RuntimeError(f"test tried to reach the network: {address!r} (only loopback is allowed)")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_openi() -> Path:
    if not SHARED_OPENI.is_dir():
        pytest.skip("../shared/data/openi not present")
    return SHARED_OPENI


# ---------------------------------------------------------------------------------------- tiny models
@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A 2-layer Llama with a small BPE tokenizer (tests/tiny_model.py): the stand-in for a base model."""
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-base") / "model")


@pytest.fixture(scope="session")
def tiny_run(tiny_base, tmp_path_factory) -> Path:
    """The tiny model fine-tuned for one step with 2 retrieved examples per prompt: a real run folder."""
    from radgpt.common.config import load_config
    from radgpt.finetune.train import finetune
    from radgpt.runs.config import FinetuneConfig

    root = tmp_path_factory.mktemp("impress")
    val = root / "val.jsonl"
    val.write_text("".join(TRAIN.read_text().splitlines(keepends=True)[500:504]))
    cfg = load_config(FinetuneConfig, None, [
        f"model.base={tiny_base}", f"out={root / 'run'}", f"data.train={TRAIN}", f"data.validate={val}",
        "data.max_train_samples=40", "data.retrieval_k=2", "train.batch_size=8", "train.micro_batch_size=4",
        "train.max_steps=1", "train.save_every=0", "eval.generate=false", "lora.r=4"])
    finetune(cfg, log=lambda *a: None)
    return root / "run"


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory) -> Path:
    """tiny_run exported to CTranslate2 (int8)."""
    from radgpt.export.engines import export_run

    return export_run(tiny_run, tmp_path_factory.mktemp("export") / "ct2", log=lambda *a: None)


@pytest.fixture(scope="session")
def beam_trap(tmp_path_factory):
    """A model on which greedy decoding and beam search must disagree (tests/tiny_model.py
    build_beam_trap_model): (folder, greedy token ids, beam token ids)."""
    from tests.tiny_model import build_beam_trap_model

    return build_beam_trap_model(tmp_path_factory.mktemp("beam-trap") / "model")
