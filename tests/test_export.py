"""`radgpt export`: merged run → CTranslate2 folder that computes what transformers computes, found by
`impress`/`serve` only while it matches the run's adapter; the vLLM adapter-compatibility check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from radgpt.cli import main
from radgpt.export.engines import cache_export_dir, export_run, find_export
from radgpt.export.vllm import vllm_compat_problems
from radgpt.runs.run import RunFolder


def test_float32_export_scores_like_the_merged_transformers_model(tiny_run, tmp_path):
    import ctranslate2
    import torch

    from radgpt.runs.run import RunFolder

    out = export_run(tiny_run, tmp_path / "f32", quantization="float32", log=lambda *a: None)
    meta = json.loads((out / "radgpt_export.json").read_text())
    assert meta["quantization"] == "float32" and len(meta["adapter_sha256"]) == 64
    for name in ("prompt_template.json", "config.yaml", "retrieval_cases.jsonl", "tokenizer.json", "model.bin"):
        assert (out / name).exists(), name
    loaded = RunFolder(tiny_run).load(merge=True)
    ids = loaded.tokenizer("Findings: heart size normal. Impression: no acute disease.",
                           add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(loaded.model(torch.tensor([ids])).logits[0, :-1], -1)
    hf = logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    gen = ctranslate2.Generator(str(out), compute_type="float32")
    ct2 = gen.score_batch([loaded.tokenizer.convert_ids_to_tokens(ids)])[0].log_probs
    assert torch.allclose(hf, torch.tensor(ct2), atol=2e-3), (hf[:5], ct2[:5])
    del gen


def test_cache_export_is_used_only_while_it_matches_the_adapter(tiny_run, tmp_path, monkeypatch, capsys):
    from radgpt.impress.load import load_model

    monkeypatch.setenv("RADGPT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert find_export(run) is None
    assert load_model(str(run)).backend.name == "transformers"  # auto: no export yet
    assert main(["export", str(run)]) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert path == cache_export_dir(run)
    assert json.loads((path / "radgpt_export.json").read_text())["adapter_sha256"] == RunFolder(run).adapter_sha256
    assert find_export(run) == path
    assert load_model(str(run)).backend.name == "ctranslate2"
    assert main(["export", str(run)]) == 0 and "up to date" in capsys.readouterr().out
    # retrained adapter → the old export no longer matches, auto falls back to transformers
    adapter = run / "adapter_model.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(adapter))
    first = next(iter(tensors))
    tensors[first] = tensors[first] + 1.0
    save_file(tensors, str(adapter), metadata={"format": "pt"})
    assert find_export(run) is None
    assert load_model(str(run)).backend.name == "transformers"
    assert main(["export", str(run), "--out", str(path)]) == 2  # holds another export: needs --force
    assert "--force" in capsys.readouterr().err


def test_vllm_adapter_compatibility(tiny_run, tmp_path, capsys):
    assert vllm_compat_problems(tiny_run) == []
    assert main(["export", str(tiny_run), "--check-vllm"]) == 0
    assert "--lora-modules radgpt=" in capsys.readouterr().out
    bad = tmp_path / "bad"
    shutil.copytree(tiny_run, bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg.update(use_dora=True, modules_to_save=["classifier"], r=32, bias="all", target_modules=["q_proj", "conv1d"])
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    problems = " | ".join(vllm_compat_problems(bad))
    for word in ("DoRA", "modules_to_save", "--max-lora-rank 32", "bias=all", "conv1d"):
        assert word in problems, problems
    assert main(["export", str(bad), "--check-vllm"]) == 1


def test_export_refuses_what_is_not_a_run(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "not a radgpt run or export folder (no config.yaml)" in capsys.readouterr().err


def test_gguf_export_of_a_hugging_face_base_says_what_to_do_instead(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--quantization", "q8_0", "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "base is a GGUF" in err and "convert_hf_to_gguf.py" in err
    assert not (tmp_path / "g").exists()  # refused before any merge or write


def test_llama_cpp_backend_refuses_a_folder_without_gguf(tmp_path):
    import pytest

    from radgpt.common.errors import FatalError
    from radgpt.impress.backends.llamacpp import LlamaCppBackend

    with pytest.raises(FatalError, match="no model.gguf"):
        LlamaCppBackend(tmp_path)
