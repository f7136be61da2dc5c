"""The engines' tokenizer (tokenizers straight from tokenizer.json) gives what transformers' AutoTokenizer gives:
the same ids, tokens and text — the prompt a CTranslate2/llama.cpp model sees must not change with the loader."""

import json

from radgpt.impress.backends.tokenizer import FolderTokenizer, folder_tokenizer
from tests.conftest import REPO

MODEL = REPO / "models/radgpt-smollm2-135m"


def test_same_ids_tokens_and_text_as_autotokenizer():
    from transformers import AutoTokenizer

    hf, ours = AutoTokenizer.from_pretrained(str(MODEL)), folder_tokenizer(MODEL)
    assert isinstance(ours, FolderTokenizer)
    rows = [json.loads(x) for x in (REPO / "data/openi/clin-summ/train.jsonl").read_text().splitlines()[:150]]
    texts = [t for r in rows for t in (r["inputs"], r["target"],
                                       f"<|im_start|>user\n{r['inputs']}<|im_end|>\n<|im_start|>assistant\n")]
    texts += ["café — “quoted” XXXX\u00a0x", "a\n\nb  c", "<|im_end|>"]
    for t in texts:
        ids = hf(t, add_special_tokens=False)["input_ids"]
        assert ours(t)["input_ids"] == ids, t
        assert ours.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert (ours.eos_token, ours.eos_token_id) == (hf.eos_token, hf.eos_token_id)
