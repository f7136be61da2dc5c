"""`train.micro_batch_size: auto` / `eval.batch_size: auto`: the config accepts them, CPU resolves without
probing, the GPU back-off halves on an (injected) out-of-memory error and nothing else, the probe leaves the
model and the random streams as they were, generation backs off on a GPU only, and a run folder records the
size that ran."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import radgpt.finetune.autobatch as ab
from radgpt.common.config import ConfigError, load_config
from radgpt.common.errors import FatalError
from radgpt.runs.config import FinetuneConfig

REPO = Path(__file__).resolve().parents[1]
GPU_RECIPES = ["llama2-7b-lora", "mistral-7b-lora", "qwen25-7b-lora", "llama31-8b-qlora",
               "radiology-gpt-alpaca7b"]


@pytest.fixture(scope="module")
def tiny(tiny_base) -> Path:
    """conftest's session-wide tiny base model (built once for the whole suite; tests only read it)."""
    return tiny_base


# ---- config


def test_config_takes_auto_and_integers_and_names_the_key_on_garbage(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  micro_batch_size: auto\neval:\n  batch_size: 32\n")
    cfg = load_config(FinetuneConfig, y)
    assert (cfg.train.micro_batch_size, cfg.eval.batch_size) == ("auto", 32)
    assert load_config(FinetuneConfig, y, ["train.micro_batch_size=8"]).train.micro_batch_size == 8
    for bad in ("fast", "4.5", "true", "AUTO"):
        with pytest.raises(ConfigError, match=r"'train.micro_batch_size' must be"):
            load_config(FinetuneConfig, None, [f"train.micro_batch_size={bad}"])
    y.write_text("eval:\n  batch_size: lots\n")
    with pytest.raises(ConfigError, match=r"c.yaml: 'eval.batch_size' must be"):
        load_config(FinetuneConfig, y)


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_gpu_recipes_default_to_auto(name):
    cfg = load_config(FinetuneConfig, REPO / "configs" / f"{name}.yaml")
    assert cfg.train.micro_batch_size == "auto" and cfg.eval.batch_size == "auto"
    assert cfg.train.batch_size == 128  # the effective batch is the recipe's, whatever micro-batch runs


# ---- sizes and back-off


def test_candidates_are_powers_of_two_that_keep_the_effective_batch():
    assert ab.micro_batch_candidates(128) == [128, 64, 32, 16, 8, 4, 2, 1]
    assert ab.micro_batch_candidates(96, processes=2) == [16, 8, 4, 2, 1]  # 96 = 3 × 2 × 16
    assert ab.micro_batch_candidates(12) == [4, 2, 1]
    with pytest.raises(FatalError, match="multiple of the number of processes"):
        ab.micro_batch_candidates(7, processes=2)


def _oom_above(limit: int, error):
    tried = []

    def attempt(m: int) -> bool:
        tried.append(m)
        if m > limit:
            raise error
        return True

    return attempt, tried


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA out of memory"),  # the bare message (no full stop) older code paths raise
    RuntimeError("CUDA error: out of memory"),
])
def test_back_off_halves_until_it_fits(error, monkeypatch):
    freed = []
    monkeypatch.setattr(ab, "free_device_memory", lambda: freed.append(1))
    lines = []
    attempt, tried = _oom_above(16, error)
    assert ab.first_that_fits(ab.micro_batch_candidates(128), attempt, lines.append) == 16
    assert tried == [128, 64, 32, 16]
    assert len(freed) == 3  # memory handed back after every failed size
    assert lines[0] == "micro batch 128: out of memory; trying 64"


def test_back_off_skips_a_fit_that_is_too_tight_and_raises_other_errors(monkeypatch):
    monkeypatch.setattr(ab, "free_device_memory", lambda: None)
    lines = []
    assert ab.first_that_fits([8, 4, 2], lambda m: m <= 4, lines.append) == 4
    assert "over 90% of GPU memory" in lines[0]
    attempt, tried = _oom_above(0, RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes"):  # a bug is not a memory problem: no retry
        ab.first_that_fits([8, 4, 2], attempt, lines.append)
    assert tried == [8]
    attempt, _ = _oom_above(0, torch.cuda.OutOfMemoryError("CUDA out of memory."))
    with pytest.raises(FatalError, match="even 1 does not fit.*gradient_checkpointing"):
        ab.first_that_fits([2, 1], attempt, lines.append)


def test_resolve_cpu_is_not_probed_and_gpu_is():
    def no_probe(sizes):
        raise AssertionError("CPU must not probe")

    assert ab.resolve_micro_batch("auto", 128, "cpu", probe=no_probe) == (4, "auto on CPU (not probed)")
    # capped: batch_size must stay a multiple of it
    assert ab.resolve_micro_batch("auto", 2, "cpu", probe=no_probe)[0] == 2
    asked = []
    m, why = ab.resolve_micro_batch("auto", 128, "cuda", probe=lambda s: asked.append(s) or 32)
    assert (m, asked) == (32, [[128, 64, 32, 16, 8, 4, 2, 1]]) and "fitted in GPU memory" in why
    # a resumed run keeps the size it started with (its checkpoint counts batches of that size)
    assert ab.resolve_micro_batch("auto", 128, "cuda", probe=no_probe, saved=16)[0] == 16
    assert ab.resolve_micro_batch(8, 128, "cuda", probe=no_probe) == (8, "set in the config")
    with pytest.raises(FatalError, match="must be a multiple of train.micro_batch_size × processes"):
        ab.resolve_micro_batch(3, 128, "cpu")
    with pytest.raises(FatalError, match="positive integer or auto, got 0"):
        ab.resolve_micro_batch(0, 128, "cpu")


def test_eval_batch_size():
    assert (ab.eval_batch_size("auto", "cpu"), ab.eval_batch_size("auto", "cuda")) == (16, 128)
    assert ab.eval_batch_size(5, "cuda") == 5
    with pytest.raises(FatalError, match="eval.batch_size must be a positive integer"):
        ab.eval_batch_size(0, "cpu")


# ---- the probe on a real (tiny) model


def test_probe_runs_real_steps_and_leaves_model_and_randomness_alone(tiny):
    from radgpt.finetune.data import read_examples, tokenize
    from radgpt.finetune.train import _make_loss_module, build_model
    from radgpt.runs.base_models import load_tokenizer
    from radgpt.runs.prompts import PromptTemplate

    cfg = load_config(FinetuneConfig, None, [f"model.base={tiny}", "lora.r=4"])
    lm = build_model(cfg, "cpu")
    tok = load_tokenizer(str(tiny))
    examples = read_examples(str(REPO / "data/openi/clin-summ/train.jsonl"), ["findings_impression"],
                             cfg.data.instruction)[:40]
    items, _ = tokenize(examples, tok, PromptTemplate.load("alpaca"), 256)
    longest = max(len(t.input_ids) for t in items)
    seen = []
    inner = _make_loss_module(lm, None)

    class OomAbove8(torch.nn.Module):  # the real loss, with a GPU that has room for 8 examples
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, ids, labels, mask):
            seen.append(tuple(ids.shape))
            if ids.shape[0] > 8:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
            return self.inner(ids, labels, mask)

    before = {k: v.clone() for k, v in lm.state_dict().items()}
    module = OomAbove8()
    module.eval()
    rng = torch.get_rng_state()
    lines = []
    chosen = ab.probe_micro_batch(module, items, tok.pad_token_id, 16, [32, 16, 8, 4], "cpu", lines.append)
    assert chosen == 8
    assert [s[0] for s in seen] == [32, 16, 8, 8]  # 8 fits: two passes, the second as accumulation runs it
    assert all(s[1] >= longest for s in seen)  # the longest examples, padded
    assert lines == ["micro batch 32: out of memory; trying 16", "micro batch 16: out of memory; trying 8"]
    assert torch.equal(torch.get_rng_state(), rng)  # the probe's dropout did not move the run's random stream
    assert not module.training  # train mode was the probe's only
    assert all(p.grad is None for p in lm.parameters())
    assert all(torch.equal(before[k], v) for k, v in lm.state_dict().items())


# ---- generation back-off


class _FakeBackend:
    def __init__(self, device: str, room: int):
        self.device, self.room, self.calls = device, room, []

    def count_tokens(self, prompt: str) -> int:
        return len(prompt)

    def generate(self, prompts, decoding):
        from radgpt.impress.backends.base import Generation

        self.calls.append(len(prompts))
        if len(prompts) > self.room:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return [Generation(p.upper(), "stop", len(p), len(p)) for p in prompts]


@pytest.mark.parametrize("device", ["cuda:0", "cpu"])
def test_generate_batch_halves_on_gpu_out_of_memory_only(device, monkeypatch):
    import radgpt.impress.backends.transformers as tb

    fake = _FakeBackend(device, room=5)
    monkeypatch.setattr(tb.TransformersBackend, "from_model", classmethod(lambda cls, m, t, a: fake))
    monkeypatch.setattr(tb, "free_device_memory", lambda: None)
    prompts = [f"p{'x' * (i * 7 % 13)}{i}" for i in range(20)]
    lines = []
    if device == "cpu":  # CPU behaviour unchanged: an error is an error
        with pytest.raises(torch.cuda.OutOfMemoryError):
            tb.generate_batch(None, None, prompts, batch_size=16, log=lines.append)
        return
    out = tb.generate_batch(None, None, prompts, batch_size=16, log=lines.append)
    assert out == [p.upper() for p in prompts]  # in input order, though generated shortest first
    assert fake.calls[:3] == [16, 8, 4] and set(fake.calls[3:]) == {4}  # later calls keep the size that fit
    assert lines == ["generation: out of GPU memory at 16 prompts per call; going on with 8",
                     "generation: out of GPU memory at 8 prompts per call; going on with 4"]


# ---- a run folder records what ran


def _run_cfg(tiny: Path, out: Path, *overrides: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, None, [
        f"model.base={tiny}", f"out={out}", "data.max_train_samples=24", "train.batch_size=8", "lora.r=4",
        "eval.generate=false", "data.validate=", "data.cutoff_len=128", "train.tensorboard=false",
        *overrides])


def test_auto_on_cpu_is_printed_and_written_and_resume_keeps_the_started_size(tiny, tmp_path):
    from radgpt.finetune.train import finetune

    lines = []
    finetune(_run_cfg(tiny, tmp_path / "a", "train.max_steps=1", "train.save_every=0"), log=lines.append)
    assert any("train.micro_batch_size=auto → 4 (auto on CPU (not probed)); gradient accumulation 2" in x
               for x in lines), lines
    saved = yaml.safe_load((tmp_path / "a/config.yaml").read_text())
    assert (saved["train"]["micro_batch_size"], saved["eval"]["batch_size"]) == (4, 16)
    assert "micro-batch auto on CPU" in (tmp_path / "a/README.md").read_text()

    # started at 2 (explicitly), resumed with auto: the folder's 2 wins over CPU's 4
    run = tmp_path / "b"
    finetune(_run_cfg(tiny, run, "train.micro_batch_size=2", "train.max_steps=1", "train.save_every=1"),
             log=lambda *a: None)
    lines = []
    finetune(_run_cfg(tiny, run, "train.max_steps=2", "train.save_every=1"), resume=True, log=lines.append)
    assert any("→ 2 (auto: the size this run folder was started with" in x for x in lines), lines
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["micro_batch_size"] == 2


# ---- the GPU check script, end to end on the tiny shape (CPU)


def test_gpu_check_table_math():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO / "bench"))
    rows = [{"step": 1, "tokens": 1000, "elapsed_s": 5.0}, {"step": 2, "tokens": 3000, "elapsed_s": 6.0},
            {"step": 3, "tokens": 5000, "elapsed_s": 7.0}]
    rate = gpu_check.steady_rates(rows, batch_size=128)
    assert rate == {"samples_per_s": 128.0, "tokens_per_s": 2000.0, "steps": 2}  # the warm-up step left out
    assert gpu_check.mfu(7e9, 9300, 989) == pytest.approx(6 * 7e9 * 9300 / 989e12)
    assert gpu_check.hms(125_000 / 88.9) == "0:23:26"


@pytest.mark.slow
def test_gpu_check_tiny_runs_end_to_end(tmp_path):
    work = tmp_path / "gpu_check"
    proc = subprocess.run([sys.executable, str(REPO / "bench/gpu_check.py"), "--tiny", "--work", str(work)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("| run |"):]
    assert table.count("\n| tiny") == 2, table
    assert "samples/s" in table and "epoch of 125,000 pairs" in table
    assert (work / "results.json").is_file() and (work / "table.md").is_file()
