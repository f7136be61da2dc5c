"""The training loop on a tiny in-process Llama: it learns, it only touches the adapter, it saves and
reloads exactly, it resumes to the same result, and bad input gets a clear error."""

import csv
import json
import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from radgpt.common.config import ConfigError, load_config
from radgpt.common.errors import FatalError
from radgpt.finetune.train import build_model, finetune
from radgpt.runs.config import FinetuneConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny(tiny_base) -> Path:
    """conftest's session-wide tiny base model (built once for the whole suite; tests only read it)."""
    return tiny_base


def _log(run: Path) -> list[dict]:
    with open(run / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _small_validate(tmp_path: Path, n: int = 8) -> Path:
    path = tmp_path / "validate.jsonl"
    path.write_text("\n".join((REPO / "data/openi/clin-summ/validate.jsonl").read_text().splitlines()[:n]) + "\n")
    return path


def _cfg(tiny: Path, out: Path, *overrides: str) -> FinetuneConfig:
    base = [f"model.base={tiny}", f"out={out}", "data.max_train_samples=48", "train.batch_size=8",
            "train.micro_batch_size=4", "train.lr=5e-3", "train.save_every=0", "eval.generate=false",
            "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]", "lora.r=4",
            "data.validate=data/openi/clin-summ/validate.jsonl", "data.cutoff_len=256"]
    return load_config(FinetuneConfig, None, base + list(overrides))


def test_loss_decreases_and_only_the_adapter_changes(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tiny).state_dict().items()}
    cfg = _cfg(tiny, tmp_path / "run", "train.epochs=4", "train.lr=3e-2")
    m = finetune(cfg, log=lambda *a: None)
    losses = [float(r["loss"]) for r in _log(tmp_path / "run")]
    assert all(math.isfinite(x) and x < 50 for x in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5, losses
    assert m["val_loss"] < losses[0]
    # base weights untouched on disk; the adapter holds LoRA A/B matrices that moved away from init (B=0)
    after = AutoModelForCausalLM.from_pretrained(tiny).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "run/adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)
    for name in ("config.yaml", "prompt_template.json", "tokenizer.json", "train_log.csv", "loss.png",
                 "val_metrics.json", "adapter_config.json"):
        assert (tmp_path / "run" / name).exists(), name


def test_adapter_reloads_to_identical_logits(tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = _cfg(tiny, tmp_path / "run", "train.max_steps=3", "data.validate=")
    finetune(cfg, log=lambda *a: None)
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    # the trained model, rebuilt from the run folder the way impress/serve do
    from radgpt.runs.run import RunFolder

    loaded = RunFolder(tmp_path / "run").load(merge=False)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), tmp_path / "run").eval()
    with torch.no_grad():
        a = loaded.model(ids).logits
        b = reloaded(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny).eval()(ids).logits
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, base, atol=1e-4)  # the adapter does something
    assert loaded.template.name == "alpaca"


def test_resume_reproduces_the_uninterrupted_run(tiny, tmp_path):
    full = _cfg(tiny, tmp_path / "full", "train.max_steps=6", "train.save_every=3", "data.validate=")
    m_full = finetune(full, log=lambda *a: None)
    # the same run "killed" after its step-3 checkpoint: keep the folder as it was at that point
    part = _cfg(tiny, tmp_path / "part", "train.max_steps=6", "train.save_every=3", "data.validate=")
    finetune(part, log=lambda *a: None)
    for f in (tmp_path / "part").glob("adapter_model.safetensors"):
        f.unlink()  # lose everything after the checkpoint
    shutil.rmtree(tmp_path / "part" / "checkpoints" / "step-000006", ignore_errors=True)
    m_resumed = finetune(part, resume=True, log=lambda *a: None)
    assert m_resumed["train_steps"] == 6
    assert m_resumed["final_train_loss"] == pytest.approx(m_full["final_train_loss"], abs=1e-4)
    # train_log.csv continues across the resume: tokens and elapsed_s are cumulative, not restarted
    full_rows, rows = _log(tmp_path / "full"), _log(tmp_path / "part")
    assert [r["step"] for r in rows] == [str(i) for i in range(1, 7)]
    assert [r["tokens"] for r in rows] == [r["tokens"] for r in full_rows]
    elapsed = [float(r["elapsed_s"]) for r in rows]
    assert elapsed == sorted(elapsed) and elapsed[3] >= elapsed[2]


def test_every_shipped_config_parses_and_builds(tiny, tmp_path):
    configs = sorted((REPO / "configs").glob("*.yaml"))
    for path in configs:  # every recipe opens with the command that runs it
        assert path.read_text().splitlines()[0].startswith("# radgpt "), path
    ft = [c for c in configs if c.read_text().startswith("# radgpt finetune")]
    assert len(ft) >= 6
    for path in ft:
        cfg = load_config(FinetuneConfig, path, [f"model.base={tiny}", "model.quantization=", "lora.init_from="])
        # a tiny Llama has the same projection names as the 7B families
        model = build_model(cfg, "cpu")
        assert any(p.requires_grad for p in model.parameters()), path


def test_bad_input_gets_clear_errors(tiny, tmp_path):
    with pytest.raises(ConfigError, match="did you mean lora.r"):
        load_config(FinetuneConfig, None, ["lora.rr=3"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"inputs": "a", "target": "b"}\n{oops\n')
    with pytest.raises(FatalError, match=r"bad.jsonl:2: not valid JSON"):
        finetune(_cfg(tiny, tmp_path / "r1", f"data.train={bad}"), log=lambda *a: None)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(FatalError, match="no examples"):
        finetune(_cfg(tiny, tmp_path / "r2", f"data.train={empty}"), log=lambda *a: None)
    with pytest.raises(FatalError, match="base model path not found"):
        finetune(_cfg(tiny, tmp_path / "r3", "model.base=./no/such/model"), log=lambda *a: None)
    with pytest.raises(FatalError, match="needs a CUDA GPU"):
        finetune(_cfg(tiny, tmp_path / "r4", "model.quantization=4bit"), log=lambda *a: None)
    with pytest.raises(FatalError, match="not in this model"):
        finetune(_cfg(tiny, tmp_path / "r5", "lora.target_modules=[query_key_value]"), log=lambda *a: None)
    with pytest.raises(FatalError, match="dataset file not found"):
        finetune(_cfg(tiny, tmp_path / "r6", "data.train=./no/such.jsonl"), log=lambda *a: None)
    with pytest.raises(FatalError, match="early_stopping_patience needs train.eval_every"):
        finetune(_cfg(tiny, tmp_path / "r7", "train.early_stopping_patience=2"), log=lambda *a: None)
    # a failed start leaves no (empty) run folder behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("r")]


def test_long_examples_are_truncated_and_counted(tiny, tmp_path):
    long = tmp_path / "long.jsonl"
    long.write_text("".join(json.dumps({"inputs": "effusion " * 400, "target": "Effusion."}) + "\n" for _ in range(8)))
    m = finetune(_cfg(tiny, tmp_path / "r", f"data.train={long}", "data.validate=", "train.max_steps=1",
                      "data.cutoff_len=64"), log=lambda *a: None)
    assert m["truncated_train"] == 8


def test_data_parallel_run_matches_single_process(tiny, tmp_path):
    """Two CPU processes (DDP over gloo, via torchrun) reach the single-process loss."""
    args = [f"model.base={tiny}", "data.max_train_samples=32", "train.batch_size=8", "train.micro_batch_size=2",
            "train.max_steps=3", "train.save_every=0", "data.validate=", "lora.r=4", "train.lr=5e-3",
            "lora.dropout=0"]  # dropout masks would differ between one process and two
    single = finetune(load_config(FinetuneConfig, None, args + [f"out={tmp_path / 's'}"]), log=lambda *a: None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
           "-m", "radgpt", "finetune", *args, f"out={tmp_path / 'd'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _log(tmp_path / "d")
    assert float(rows[-1]["loss"]) == pytest.approx(single["final_train_loss"], abs=2e-3)
    assert (tmp_path / "d/adapter_model.safetensors").exists()


def test_merge_gives_a_plain_model_with_the_same_logits(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    from radgpt.cli import main
    from radgpt.runs.run import RunFolder

    finetune(_cfg(tiny, tmp_path / "run", "train.max_steps=2", "data.validate="), log=lambda *a: None)
    assert main(["merge", str(tmp_path / "run"), "--out", str(tmp_path / "merged")]) == 0
    ids = torch.tensor([[5, 17, 42, 99]])
    with torch.no_grad():
        adapter = RunFolder(tmp_path / "run").load(merge=False).model(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()(ids).logits
        as_run = RunFolder(tmp_path / "merged").load().model(ids).logits
    assert torch.allclose(adapter, plain, atol=1e-5) and torch.allclose(plain, as_run)
    assert (tmp_path / "merged/prompt_template.json").exists()
    assert main(["merge", str(tmp_path / "nope"), "--out", str(tmp_path / "m2")]) == 2


def test_full_finetune_saves_a_whole_model_that_reloads(tiny, tmp_path):
    from radgpt.runs.run import RunFolder

    m = finetune(_cfg(tiny, tmp_path / "run", "lora.method=full", "train.max_steps=2", "data.validate="),
                 log=lambda *a: None)
    assert m["trainable_params"] == sum(p.numel() for p in RunFolder(tmp_path / "run").load().model.parameters())
    assert (tmp_path / "run/model.safetensors").exists() and not (tmp_path / "run/adapter_config.json").exists()
    loaded = RunFolder(tmp_path / "run").load()
    assert loaded.adapter is None and loaded.template.name == "alpaca"


def test_lora_dropout_acts_on_the_rank_activations_in_training_only(tiny, tmp_path):
    cfg = _cfg(tiny, tmp_path / "run", "lora.dropout=0.5")
    model = build_model(cfg, "cpu")
    hooked = [m for n, m in model.named_modules() if n.endswith("lora_A.default") and m._forward_hooks]
    assert len(hooked) == 7 * model.config.num_hidden_layers
    for m in model.modules():  # PEFT's own input dropout is off: the rate moved to the rank activations
        assert not isinstance(m, torch.nn.Dropout) or m.p == 0.0
    for n, p in model.named_parameters():  # B starts at 0: give it weight so A's dropout shows in the output
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    model.train()
    a, b = model(ids).logits, model(ids).logits
    assert not torch.allclose(a, b)  # a fresh mask each forward
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
    # the PEFT input-dropout behaviour stays available
    peft_way = build_model(_cfg(tiny, tmp_path / "r2", "lora.dropout=0.5", "lora.dropout_site=input"), "cpu")
    assert not any(m._forward_hooks for n, m in peft_way.named_modules() if n.endswith("lora_A.default"))
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in peft_way.modules())
    with pytest.raises(FatalError, match="dropout_site"):
        build_model(_cfg(tiny, tmp_path / "r3", "lora.dropout_site=middle"), "cpu")


def test_lora_init_from_continues_a_saved_adapter_and_refuses_one_that_does_not_fit(tiny, tmp_path):
    cfg = load_config(FinetuneConfig, None, [f"model.base={tiny}", "lora.r=4"])
    first = build_model(cfg, "cpu")
    with torch.no_grad():
        for n, p in first.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)  # a trained adapter: B is no longer zero
    first.save_pretrained(tmp_path / "run")
    cont = build_model(load_config(FinetuneConfig, None, [f"model.base={tiny}", "lora.r=4",
                                                          f"lora.init_from={tmp_path / 'run'}"]), "cpu")
    a = {n: p for n, p in first.named_parameters() if "lora_" in n}
    b = {n: p for n, p in cont.named_parameters() if "lora_" in n}
    assert a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)
    with pytest.raises(FatalError, match=r"does not fit.*pass lora.r=4 lora.alpha=16"):
        build_model(load_config(FinetuneConfig, None, [f"model.base={tiny}", "lora.r=8",
                                                       f"lora.init_from={tmp_path / 'run'}"]), "cpu")
    with pytest.raises(FatalError, match="not found"):
        build_model(load_config(FinetuneConfig, None, [f"model.base={tiny}", f"lora.init_from={tmp_path}"]), "cpu")


def test_the_shipped_adapter_fits_the_cpu_config_as_init_from():
    """`lora.init_from=models/radgpt-smollm2-135m` with configs/smollm2-135m-cpu.yaml: the same rank, alpha,
    target modules, base and prompt, so the shipped model can be adapted to a hospital's own reports."""
    import yaml

    shipped = REPO / "models/radgpt-smollm2-135m"
    cfg = load_config(FinetuneConfig, REPO / "configs/smollm2-135m-cpu.yaml",
                      [f"lora.init_from={shipped}"])
    adapter = json.loads((shipped / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (cfg.lora.r, cfg.lora.alpha)
    assert sorted(adapter["target_modules"]) == sorted(cfg.lora.target_modules)
    trained = yaml.safe_load((shipped / "config.yaml").read_text())
    assert trained["model"]["base"] == cfg.model.base
    assert (trained["data"]["template"], trained["data"]["retrieval_k"]) == (cfg.data.template, cfg.data.retrieval_k)


def test_no_future_warning_from_building_the_model(tiny):
    """transformers 5 deprecates is_gradient_checkpointing (read by peft's get_peft_model) and
    gradient_checkpointing_enable: neither reaches finetune's output."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_model(load_config(FinetuneConfig, None, [f"model.base={tiny}", "lora.r=4"]), "cpu")
        build_model(load_config(FinetuneConfig, None, [f"model.base={tiny}", "lora.r=4",
                                                       "model.gradient_checkpointing=true"]), "cpu")
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]


def test_help_lists_the_config_keys_with_their_comments(capsys):
    from radgpt.cli import main

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = capsys.readouterr().out
    for key in ("train.eval_every", "train.early_stopping_patience", "train.tensorboard", "lora.init_from",
                "data.train", "lora.r = 8", "eval.generate"):
        assert key in text, key
    assert "the adapter with the lowest one is kept in best/" in " ".join(text.split())
    assert "models/radgpt-smollm2-135m" in text


def test_resume_on_a_finished_run_trains_nothing_and_keeps_val_metrics(tiny, tmp_path):
    val = _small_validate(tmp_path)
    cfg = _cfg(tiny, tmp_path / "run", "train.max_steps=3", "train.save_every=2", f"data.validate={val}",
               "eval.generate=true", "eval.max_samples=4", "eval.max_new_tokens=8", "eval.batch_size=2")
    lines = []
    first = finetune(cfg, log=lines.append)
    # progress: steps/s and an ETA per step; the validation generation reports how far it is
    assert any("steps/s" in x and "ETA" in x and "loss" in x for x in lines if x.startswith("step "))
    assert any(x.startswith("validation: generated 2/4") for x in lines)
    run = tmp_path / "run"
    kept = {n: (run / n).read_bytes() for n in ("val_metrics.json", "val_predictions.jsonl", "train_log.csv",
                                                 "adapter_model.safetensors", "README.md")}
    lines.clear()
    again = finetune(cfg, resume=True, log=lines.append)
    assert again == first and any("run already finished" in x for x in lines)
    assert all((run / n).read_bytes() == b for n, b in kept.items())
    # killed during the end-of-run validation: only the missing steps run, nothing is trained
    (run / "val_metrics.json").unlink()
    lines.clear()
    redone = finetune(cfg, resume=True, log=lines.append)
    assert any("training finished at step 3" in x for x in lines)
    assert not any(x.startswith("step ") for x in lines)
    assert redone["train_steps"] == 3 and redone["val_loss"] == pytest.approx(first["val_loss"], abs=1e-5)
    assert (run / "train_log.csv").read_bytes() == kept["train_log.csv"]
    assert (run / "adapter_model.safetensors").read_bytes() == kept["adapter_model.safetensors"]
    assert json.loads((run / "val_metrics.json").read_text())["train_steps"] == 3
    # the model card: PEFT's empty one replaced by the run's own
    card = (run / "README.md").read_text()
    assert "More Information Needed" not in card
    for section in ("## Licence", "## Intended use", "## Base model", "## Data", "## Recipe", "## Validation figures",
                    "## What this folder contains"):
        assert section in card, section
    assert "CC BY-NC-ND 4.0" in card and "license: cc-by-nc-nd-4.0" in card  # trained on the OpenI train file
    assert "LoRA r=4, alpha=16" in card and "| training | `train.jsonl` | 48 |" in card
    assert "| validation | `validate.jsonl` | 8 |" in card and "not a diagnosis" in card
    assert f"{first['rougeL']:.2f}" in card
    assert "| `val_predictions.jsonl` |" in card and "| YES, the validation references verbatim |" in card
    assert "| `val_metrics.json` |" in card and str(tmp_path) not in card  # file names only, no paths


def test_eval_every_keeps_the_best_adapter_and_early_stopping_stops(tiny, tmp_path):
    pytest.importorskip("tensorboard")
    from safetensors.torch import load_file

    val = _small_validate(tmp_path)
    # learning: validation loss every 2 steps, the lowest one's adapter in best/
    run = tmp_path / "run"
    m = finetune(_cfg(tiny, run, "train.max_steps=4", "train.eval_every=2", "train.save_every=2",
                      "train.keep_checkpoints=5", f"data.validate={val}", "train.lr=3e-2"), log=lambda *a: None)
    rows = _log(run)
    losses = {int(r["step"]): float(r["val_loss"]) for r in rows if r["val_loss"]}
    assert sorted(losses) == [2, 4]
    assert m["best_step"] == min(losses, key=losses.get) and m["best_val_loss"] == pytest.approx(min(losses.values()))
    best = load_file(str(run / "best/adapter_model.safetensors"))
    at_step = load_file(str(run / f"checkpoints/step-{m['best_step']:06d}/trainable.safetensors"))
    assert {k.replace(".default", ""): v for k, v in at_step.items()}.keys() == best.keys()
    assert all(torch.equal(v, best[k.replace(".default", "")]) for k, v in at_step.items())
    assert (run / "best/config.yaml").exists() and "More Information Needed" not in (run / "best/README.md").read_text()
    assert f"step {m['best_step']}, the weights in `best/`" in (run / "README.md").read_text()
    # TensorBoard event files, written by the tensorboard package, in runs/
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list((run / "runs").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run / "runs"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [2, 4]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    # early stopping: with lr 0 the validation loss never improves after the first evaluation
    stopped = tmp_path / "stopped"
    lines = []
    m = finetune(_cfg(tiny, stopped, "train.max_steps=20", "train.eval_every=1", "train.early_stopping_patience=2",
                      f"data.validate={val}", "train.lr=0", "train.tensorboard=false"), log=lines.append)
    assert m["stopped_early_at"] == 3 and m["train_steps"] == 3 and m["best_step"] == 1
    assert len(_log(stopped)) == 3 and any("early stopping at step 3" in x for x in lines)
    assert not (stopped / "runs").exists()
    assert "stopped at step 3" in (stopped / "README.md").read_text()
    lines.clear()
    assert finetune(_cfg(tiny, stopped, "train.max_steps=20", "train.eval_every=1", "train.early_stopping_patience=2",
                         f"data.validate={val}", "train.lr=0"), resume=True, log=lines.append) == m
    assert any("run already finished" in x for x in lines)


def test_data_train_takes_a_prepared_folder_and_says_what_is_wrong_with_others(tiny, tmp_path):
    from radgpt.cli import main

    rows = [json.loads(x) for x in (REPO / "data/openi/clin-summ/train.jsonl").read_text().splitlines()[:60]]
    reports = tmp_path / "hospital.jsonl"
    reports.write_text("".join(json.dumps({"id": f"r{i}", "patient_id": f"p{i}", "findings": r["inputs"],
                                           "impression": r["target"]}) + "\n" for i, r in enumerate(rows)))
    assert main(["prepare", str(reports), "--out", str(tmp_path / "prepared"), "--quiet"]) == 0
    n_train = len((tmp_path / "prepared/alpaca/train.jsonl").read_text().splitlines())
    n_val = len((tmp_path / "prepared/alpaca/validate.jsonl").read_text().splitlines())
    # data.validate left at its default (OpenI): the folder's own validate split is used instead
    cfg = load_config(FinetuneConfig, None, [f"model.base={tiny}", f"out={tmp_path / 'run'}", "train.batch_size=8",
                                             "train.micro_batch_size=4", "train.max_steps=1", "eval.generate=false",
                                             "lora.r=4", f"data.train={tmp_path / 'prepared'}"])
    m = finetune(cfg, log=lambda *a: None)
    assert m["train_examples"] == n_train and "val_loss" in m
    import yaml

    data = yaml.safe_load((tmp_path / "run/config.yaml").read_text())["data"]
    assert data["train"].endswith("prepared/alpaca/train.jsonl")
    assert data["validate"].endswith("prepared/alpaca/validate.jsonl")
    card = (tmp_path / "run/README.md").read_text()
    assert "license: unknown" in card and "not known to radgpt" in card and "CC BY-NC-ND" not in card
    assert f"| validation | `validate.jsonl` | {n_val} |" in card
    # folders that are not a prepared dataset: say exactly what is wrong, and leave no run folder
    assert main(["prepare", str(reports), "--out", str(tmp_path / "inference"), "--quiet", "--for-inference"]) == 0
    with pytest.raises(FatalError, match="--for-inference"):
        finetune(_cfg(tiny, tmp_path / "r1", f"data.train={tmp_path / 'inference'}"), log=lambda *a: None)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain/notes.txt").write_text("x")
    with pytest.raises(FatalError, match=r"a folder, not a dataset file.*holds: notes.txt"):
        finetune(_cfg(tiny, tmp_path / "r2", f"data.train={tmp_path / 'plain'}"), log=lambda *a: None)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
