"""The shipped default model: packaged SmolLM2-135M-Instruct + the radgpt LoRA adapter in models/.

Slow (loads the real model, ~30 s the first time while the packaged GGUF is converted): CI runs it.
"""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "models" / "radgpt-smollm2-135m"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():
    if not (DEFAULT / "adapter_config.json").exists():
        pytest.fail(f"{DEFAULT} is missing its adapter")
    from radgpt.runs.run import RunFolder

    return RunFolder(DEFAULT).load()


@pytest.fixture(scope="module")
def impress_model():
    """The default model as `radgpt impress` loads it on a fresh install (transformers: no export yet)."""
    from radgpt.impress.load import load_model

    return load_model(str(DEFAULT), backend="transformers")


def _impressions(model, findings: list[str], repair: bool = False) -> list[str]:
    from radgpt.runs.decoding import Decoding

    return [r.impression for r in model.impress(findings, Decoding(max_new_tokens=48), repair=repair)]


def test_model_card_states_base_data_licence_and_command():
    card = (DEFAULT / "README.md").read_text()
    for needle in ("SmolLM2-135M-Instruct", "CC BY-NC-ND 4.0", "radgpt finetune --config", "ROUGE-L",
                   "non-commercial"):
        assert needle in card, needle


def test_normal_and_abnormal_findings_get_sensible_impressions(impress_model):
    normal = ("The heart is normal in size. The mediastinum is unremarkable. The lungs are clear. "
              "There is no pneumothorax or pleural effusion.")
    effusion = ("There is a large right pleural effusion with adjacent compressive atelectasis. "
                "The heart size is normal. No pneumothorax.")
    pneumonia = "Right upper lobe consolidation consistent with pneumonia. No effusion or pneumothorax."
    out = _impressions(impress_model, [normal, effusion, pneumonia])
    assert all(0 < len(x.split()) < 40 for x in out), out  # it stops: EOS was trained
    assert any(w in out[0].lower() for w in ("no acute", "normal", "negative")), out[0]
    assert "effusion" in out[1].lower(), out[1]
    assert "pneumonia" in out[2].lower(), out[2]


@pytest.mark.xfail(strict=True, reason="known failure, see the model card: pneumothorax (rare in OpenI train) is "
                                       "written as effusion/hemothorax or missed; fix it, then drop this mark")
def test_pneumothorax_is_named(impress_model):
    out = _impressions(impress_model, [PNEUMOTHORAX])
    assert "pneumothorax" in out[0].lower(), out[0]


PNEUMOTHORAX = "Large left pneumothorax with collapse of the left lung. Heart size normal. No effusion."


def test_the_default_path_repairs_what_the_model_misses(impress_model):
    """What a user gets: the repair adds the findings' own pneumothorax sentence, removes an invented finding,
    and the impression carries no high flag."""
    (res,) = impress_model.impress([PNEUMOTHORAX])
    assert "pneumothorax" in res.impression.lower(), res
    assert not any(f["severity"] == "high" for f in res.flags), res.flags
    assert "effusion" not in res.impression.lower() or "no effusion" in res.impression.lower(), res


def test_gguf_export_loads_back_with_the_merged_models_logits(default_model, tmp_path):
    """The GGUF writer's tensor names and RoPE row order, checked without llama.cpp: transformers' GGUF
    loader maps names back and undoes the reordering, so a wrong name or order shows in the logits."""
    import torch
    from transformers import AutoModelForCausalLM

    from radgpt.export.gguf import base_gguf, write_gguf

    out = write_gguf(default_model.model, base_gguf("packaged:smollm2-135m-instruct"), tmp_path / "m.gguf", "q8_0")
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name).eval()
    ids = default_model.tokenizer("Findings: The lungs are clear. No effusion. Impression:", return_tensors="pt").input_ids
    with torch.no_grad():
        a = default_model.model(ids).logits[0]
        b = back(ids).logits[0]
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert (a - b).abs().max() < 0.05 * a.abs().max()  # Q8_0 rounding only


def test_llama_cpp_backend_writes_the_same_impressions_as_ctranslate2(tmp_path):
    from radgpt.export.engines import export_run
    from radgpt.impress.load import load_model
    from radgpt.runs.decoding import Decoding

    folder = export_run(DEFAULT, tmp_path / "gguf", quantization="q8_0", log=lambda *a: None)
    findings = ["The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
                "There is a large right pleural effusion. The heart size is normal. No pneumothorax."]
    llama = load_model(str(folder), backend="llama.cpp", batch=True)
    assert llama.provenance()["backend"] == "llama.cpp"
    ct2 = load_model(str(DEFAULT), backend="ct2")
    a = [r.impression for r in llama.impress(findings, Decoding(max_new_tokens=48))]
    b = [r.impression for r in ct2.impress(findings, Decoding(max_new_tokens=48))]
    assert "effusion" in a[1].lower(), a
    assert a == b or sum(x == y for x, y in zip(a, b)) >= 1, (a, b)  # int8 vs q8_0 may differ on a word


def test_ctranslate2_impressions_do_not_depend_on_the_batch():
    """The default path (CTranslate2 int8): the same findings give the same impression alone, in a batch of
    other findings, and in another order (exact-length batches; see CT2Backend.max_batch)."""
    import json

    from radgpt.impress.load import load_model
    from radgpt.runs.decoding import Decoding

    rows = [json.loads(x) for x in (DEFAULT.parents[1] / "data/openi/clin-summ/train.jsonl").read_text().splitlines()]
    findings = [r["inputs"] for r in rows[:40]]
    model = load_model(str(DEFAULT), backend="ct2", batch=True)
    dec = Decoding(max_new_tokens=48)
    together = [r.impression for r in model.impress(findings, dec, repair=False)]
    reversed_ = [r.impression for r in model.impress(findings[::-1], dec, repair=False)][::-1]
    alone = [model.impress([f], dec, repair=False)[0].impression for f in findings]
    assert together == alone
    assert reversed_ == alone


def test_the_default_path_exports_the_default_model_once_on_first_use(tmp_path, monkeypatch):
    """A fresh install: `radgpt impress "…"` (backend auto) on the shipped model makes its CTranslate2 export
    once, says so, and runs on it — not on transformers (11 s per call here vs 1.5 s) — and a second load
    finds the export instead of making another. A run on a Hugging Face base stays on transformers
    (tests/test_export.py), since exporting a 7B model is the user's call."""
    import shutil

    from radgpt.export.engines import find_export
    from radgpt.impress.load import load_model

    monkeypatch.setenv("RADGPT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    shutil.copytree(DEFAULT, run)
    assert find_export(run) is None
    said: list[str] = []
    model = load_model(str(run), log=said.append)
    assert model.provenance()["backend"] == "ctranslate2"
    assert any("exporting it once" in m and "radgpt export" in m for m in said), said
    assert find_export(run) is not None
    said.clear()
    assert load_model(str(run), log=said.append).provenance()["backend"] == "ctranslate2"
    assert not any("exporting" in m for m in said), said
