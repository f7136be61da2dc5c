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
    from radgpt.models import load_run

    return load_run(DEFAULT)


def _impressions(loaded, findings: list[str]) -> list[str]:
    import yaml

    from radgpt.generate import Decoding, generate_batch
    from radgpt.retrieval import CaseIndex

    cfg = yaml.safe_load((DEFAULT / "config.yaml").read_text())
    k = cfg["data"]["retrieval_k"]
    index = CaseIndex.load(DEFAULT) if k else None
    prompts = []
    for f in findings:
        shots = [(c.findings, c.impression) for c, _ in reversed(index.search(f, k))] if index else []
        prompts.append(loaded.template.render(cfg["data"]["instruction"], f, shots))
    return generate_batch(loaded.model, loaded.tokenizer, prompts, Decoding(max_new_tokens=48))


def test_model_card_states_base_data_licence_and_command():
    card = (DEFAULT / "README.md").read_text()
    for needle in ("SmolLM2-135M-Instruct", "CC BY-NC-ND 4.0", "radgpt finetune --config", "ROUGE-L",
                   "non-commercial"):
        assert needle in card, needle


def test_normal_and_abnormal_findings_get_sensible_impressions(default_model):
    normal = ("The heart is normal in size. The mediastinum is unremarkable. The lungs are clear. "
              "There is no pneumothorax or pleural effusion.")
    effusion = ("There is a large right pleural effusion with adjacent compressive atelectasis. "
                "The heart size is normal. No pneumothorax.")
    pneumonia = "Right upper lobe consolidation consistent with pneumonia. No effusion or pneumothorax."
    out = _impressions(default_model, [normal, effusion, pneumonia])
    assert all(0 < len(x.split()) < 40 for x in out), out  # it stops: EOS was trained
    assert any(w in out[0].lower() for w in ("no acute", "normal", "negative")), out[0]
    assert "effusion" in out[1].lower(), out[1]
    assert "pneumonia" in out[2].lower(), out[2]


@pytest.mark.xfail(strict=True, reason="known failure, see the model card: pneumothorax (rare in OpenI train) is "
                                       "written as effusion/hemothorax or missed; fix it, then drop this mark")
def test_pneumothorax_is_named(default_model):
    out = _impressions(default_model, ["Large left pneumothorax with collapse of the left lung. Heart size "
                                       "normal. No effusion."])
    assert "pneumothorax" in out[0].lower(), out[0]
